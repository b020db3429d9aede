//! Confab: an XMPP server for companies.
//!
//! The flow of a stanza: TCP accept → TLS → XML stream (limits) →
//! negotiation → session task → router → modules / local sessions.
//! See ARCHITECTURE.md.

pub mod config;
pub mod net;
pub mod sasl;
pub mod sessions;
pub mod stanza;
pub mod store;
pub mod xml;

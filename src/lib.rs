//! Confab: an XMPP server for companies.
//!
//! The flow of a stanza: TCP accept → TLS → XML stream (limits) →
//! negotiation → session task → router → modules / local sessions.
//! See ARCHITECTURE.md.

pub mod admin;
pub mod auth;
pub mod c2s;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod modules;
pub mod net;
pub mod router;
pub mod sasl;
pub mod server;
pub mod sessions;
pub mod stanza;
pub mod store;
pub mod xml;

//! Confab: an XMPP server for companies.
//!
//! The flow of a stanza: TCP accept → TLS → XML stream (limits) →
//! negotiation → session task → router → modules / local sessions.
//! See ARCHITECTURE.md.

pub mod adhoc;
pub mod admin;
pub mod auth;
pub mod c2s;
pub mod config;
pub mod datadir;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod links;
pub mod modules;
pub mod muc;
pub mod net;
pub mod pep;
pub mod policy;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod sessions;
pub mod sms;
pub mod stanza;
pub mod store;
pub mod xml;

// Unit tests measure what the reader really allocates (xml::reader).
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

//! Integration tests: the real server in-process on ephemeral loopback
//! ports, a temporary data directory (real sled), real TLS, driven over
//! real sockets by the small client in `common`.

mod common;

mod adhoc;
mod archive;
mod auth;
mod authz;
mod calls;
mod carbons;
mod cli;
mod dnd;
mod errors;
mod hardening;
mod history;
mod im;
mod inbox;
mod iq;
mod muc;
mod pep;
mod persist;
mod s2s;
mod sm;
mod sms;

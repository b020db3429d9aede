//! Network: TLS setup, connections, listeners.

pub mod conn;
pub mod tls;

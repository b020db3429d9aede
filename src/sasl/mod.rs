//! Server side of the SASL mechanisms Confab offers: SCRAM (RFC 5802,
//! RFC 7677) with channel binding (RFC 9266, RFC 5929) and PLAIN (RFC 4616).
//!
//! Pure protocol code: no I/O, no async. The caller feeds the decoded SASL
//! payloads in and maps [`SaslError`] to the RFC 6120 §6.5 failure element.

use std::fmt;

pub mod plain;
pub mod scram;

/// SASL failure conditions (RFC 6120 §6.5) this module can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    MalformedRequest,
    NotAuthorized,
    InvalidAuthzid,
    /// Not produced by these parsers (base64 of the XML payload is the
    /// caller's business), kept so callers can share one error type.
    IncorrectEncoding,
    EncryptionRequired,
}

impl SaslError {
    /// The RFC 6120 §6.5 element name of this condition.
    pub fn condition(self) -> &'static str {
        match self {
            SaslError::MalformedRequest => "malformed-request",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::EncryptionRequired => "encryption-required",
        }
    }
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.condition())
    }
}

impl std::error::Error for SaslError {}

/// Channel-binding data of the TLS connection the exchange runs on.
///
/// An empty `Vec` counts as absent: binding to nothing would bind nothing.
#[derive(Clone, Default)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// Whether any channel-binding type is available (and so -PLUS may be offered).
    pub fn any(&self) -> bool {
        !self.types().is_empty()
    }

    /// Names of the available channel-binding types, strongest first.
    pub fn types(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.get("tls-exporter").is_some() {
            out.push("tls-exporter");
        }
        if self.get("tls-server-end-point").is_some() {
            out.push("tls-server-end-point");
        }
        out
    }

    /// The data for a channel-binding type name, if present and non-empty.
    pub fn get(&self, cb_name: &str) -> Option<&[u8]> {
        let data = match cb_name {
            "tls-exporter" => self.tls_exporter.as_deref(),
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            _ => None,
        };
        data.filter(|d| !d.is_empty())
    }
}

// Only says which types are present: the data is connection-specific and has
// no business in logs.
impl fmt::Debug for ChannelBindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBindings")
            .field("types", &self.types())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_bindings_types() {
        let none = ChannelBindings::default();
        assert!(!none.any());
        assert!(none.types().is_empty());

        let both = ChannelBindings {
            tls_exporter: Some(vec![1]),
            tls_server_end_point: Some(vec![2]),
        };
        assert!(both.any());
        assert_eq!(both.types(), vec!["tls-exporter", "tls-server-end-point"]);
        assert_eq!(both.get("tls-exporter"), Some(&[1u8][..]));
        assert_eq!(both.get("tls-unique"), None);

        let empty = ChannelBindings {
            tls_exporter: Some(Vec::new()),
            tls_server_end_point: None,
        };
        assert!(!empty.any());
        assert_eq!(format!("{empty:?}"), "ChannelBindings { types: [] }");
    }

    #[test]
    fn error_conditions() {
        assert_eq!(SaslError::NotAuthorized.to_string(), "not-authorized");
        assert_eq!(SaslError::MalformedRequest.condition(), "malformed-request");
    }
}

//! SASL PLAIN (RFC 4616) message parsing.
//!
//! Only parses: the caller looks the account up and checks the password
//! (e.g. with `ScramCredentials::verify_password`, which applies SASLprep).

use std::fmt;

use super::SaslError;

/// Longest authzid, authcid or password accepted, in bytes (RFC 4616 §2
/// lets servers limit these; 1024 is far beyond any real use).
const MAX_FIELD_LEN: usize = 1024;

/// A parsed PLAIN message. Holds a password: deliberately no derived Debug.
pub struct PlainMessage {
    /// `None` if the client sent an empty authzid.
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

impl fmt::Debug for PlainMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainMessage")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parse "authzid NUL authcid NUL passwd" (RFC 4616): UTF-8, no extra NULs,
/// authcid and password non-empty, each field <= 1024 bytes.
pub fn parse(msg: &[u8]) -> Result<PlainMessage, SaslError> {
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedRequest);
    };

    let field = |bytes: &[u8]| -> Result<String, SaslError> {
        if bytes.len() > MAX_FIELD_LEN {
            return Err(SaslError::MalformedRequest);
        }
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| SaslError::MalformedRequest)
    };

    let authzid = field(authzid)?;
    let authcid = field(authcid)?;
    let password = field(password)?;
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::MalformedRequest);
    }

    Ok(PlainMessage {
        authzid: (!authzid.is_empty()).then_some(authzid),
        authcid,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_without_authzid() {
        let m = parse(b"\0tim\0tanstaaftanstaaf").unwrap();
        assert_eq!(m.authzid, None);
        assert_eq!(m.authcid, "tim");
        assert_eq!(m.password, "tanstaaftanstaaf");
    }

    #[test]
    fn valid_with_authzid() {
        let m = parse("Ursel\0Kurt\0xipj3plmq\u{e9}".as_bytes()).unwrap();
        assert_eq!(m.authzid.as_deref(), Some("Ursel"));
        assert_eq!(m.authcid, "Kurt");
        assert_eq!(m.password, "xipj3plmq\u{e9}");
    }

    #[test]
    fn missing_parts() {
        for msg in [
            &b""[..],
            b"tim",
            b"\0tim",
            b"tim\0pw",
            b"\0\0",
            b"\0\0pw",
            b"a\0\0pw",
        ] {
            assert_eq!(parse(msg).unwrap_err(), SaslError::MalformedRequest);
        }
    }

    #[test]
    fn empty_password() {
        assert_eq!(parse(b"\0tim\0").unwrap_err(), SaslError::MalformedRequest);
    }

    #[test]
    fn extra_nul() {
        assert_eq!(
            parse(b"\0tim\0pw\0").unwrap_err(),
            SaslError::MalformedRequest
        );
        assert_eq!(
            parse(b"a\0b\0c\0d").unwrap_err(),
            SaslError::MalformedRequest
        );
    }

    #[test]
    fn non_utf8() {
        for msg in [&b"\xff\0tim\0pw"[..], b"\0t\xc3\0pw", b"\0tim\0p\x80w"] {
            assert_eq!(parse(msg).unwrap_err(), SaslError::MalformedRequest);
        }
    }

    #[test]
    fn field_length_limits() {
        let ok = "a".repeat(MAX_FIELD_LEN);
        let long = "a".repeat(MAX_FIELD_LEN + 1);
        assert!(parse(format!("{ok}\0{ok}\0{ok}").as_bytes()).is_ok());
        for msg in [
            format!("{long}\0u\0p"),
            format!("\0{long}\0p"),
            format!("\0u\0{long}"),
        ] {
            assert_eq!(
                parse(msg.as_bytes()).unwrap_err(),
                SaslError::MalformedRequest
            );
        }
    }

    #[test]
    fn debug_redacts_password() {
        let m = parse(b"\0tim\0secretpw").unwrap();
        let s = format!("{m:?}");
        assert!(!s.contains("secretpw"));
        assert!(s.contains("tim"));
    }

    #[test]
    fn prefixes_never_panic() {
        let msg = b"admin\0tim\0tanstaaf";
        for i in 0..=msg.len() {
            let _ = parse(&msg[..i]);
        }
    }
}

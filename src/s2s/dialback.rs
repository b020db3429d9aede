//! Server Dialback keys (XEP-0220, generated as XEP-0185 says) from a
//! secret kept in the data directory. Neither the secret nor a key is ever
//! logged.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const SECRET_FILE: &str = "dialback.secret";

pub struct Dialback {
    /// SHA-256 of the secret, hex: the HMAC key (XEP-0185 §3).
    hmac_key: String,
}

impl std::fmt::Debug for Dialback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialback { .. }")
    }
}

impl Dialback {
    /// The secret of `data_dir`, created (random, readable by the owner
    /// only) on first use. Every process serving the domain from the same
    /// data keeps giving keys that verify.
    pub fn load(data_dir: &Path) -> Result<Dialback, String> {
        let path = data_dir.join(SECRET_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => s.trim().to_string(),
            Ok(_) | Err(_) => {
                let bytes: [u8; 32] = rand::random();
                let s = hex(&bytes);
                crate::net::tls::write_private(&path, s.as_bytes())?;
                s
            }
        };
        Ok(Dialback {
            hmac_key: hex(&Sha256::digest(secret.as_bytes())),
        })
    }

    /// The key for a stream from `originating` to `receiving` with `id`.
    pub fn key(&self, receiving: &str, originating: &str, id: &str) -> String {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.hmac_key.as_bytes()) else {
            return String::new();
        };
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `key` is the one for that stream (in constant time).
    pub fn verify(&self, receiving: &str, originating: &str, id: &str, key: &str) -> bool {
        use subtle::ConstantTimeEq;
        let want = self.key(receiving, originating, id);
        !id.is_empty() && want.as_bytes().ct_eq(key.trim().as_bytes()).into()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_only_for_their_stream() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dialback::load(dir.path()).unwrap();
        let k = d.key("b.example", "a.example", "s1");
        assert_eq!(k.len(), 64);
        assert!(d.verify("b.example", "a.example", "s1", &k));
        assert!(!d.verify("b.example", "a.example", "s2", &k));
        assert!(!d.verify("a.example", "b.example", "s1", &k));
        assert!(!d.verify(
            "b.example",
            "a.example",
            "",
            &d.key("b.example", "a.example", "")
        ));
        // The secret persists: a restart gives the same keys.
        let again = Dialback::load(dir.path()).unwrap();
        assert_eq!(again.key("b.example", "a.example", "s1"), k);
    }
}

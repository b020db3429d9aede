//! Server side of SASL SCRAM (RFC 5802, RFC 7677) with channel binding
//! (RFC 9266 tls-exporter, RFC 5929 tls-server-end-point).
//!
//! The exchange is driven by [`ScramServer`]: `client_first`, then
//! `server_first`, then `client_final`. Any error ends the exchange; every
//! later call fails with `MalformedRequest`.

use std::fmt;
use std::mem;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{ChannelBindings, SaslError};

/// Messages longer than this are rejected before parsing: real ones are a
/// few hundred bytes, and the limit bounds the work an attacker can cause.
const MAX_MESSAGE_LEN: usize = 4096;
/// Random bytes in the server nonce (base64-encoded on the wire).
const SERVER_NONCE_BYTES: usize = 24;
/// Salt length for new credentials, also used for fake salts so that fake
/// and real ones look alike.
const SALT_LEN: usize = 16;
/// Iteration count shown for non-existent accounts: what callers use for
/// real ones.
const FAKE_ITERATIONS: u32 = 4096;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    /// The SASL mechanism name, e.g. "SCRAM-SHA-256-PLUS".
    pub fn mechanism(self, plus: bool) -> &'static str {
        match (self, plus) {
            (ScramHash::Sha1, false) => "SCRAM-SHA-1",
            (ScramHash::Sha1, true) => "SCRAM-SHA-1-PLUS",
            (ScramHash::Sha256, false) => "SCRAM-SHA-256",
            (ScramHash::Sha256, true) => "SCRAM-SHA-256-PLUS",
        }
    }

    /// Inverse of [`ScramHash::mechanism`]: the hash and whether it is -PLUS.
    pub fn from_mechanism(name: &str) -> Option<(ScramHash, bool)> {
        match name {
            "SCRAM-SHA-1" => Some((ScramHash::Sha1, false)),
            "SCRAM-SHA-1-PLUS" => Some((ScramHash::Sha1, true)),
            "SCRAM-SHA-256" => Some((ScramHash::Sha256, false)),
            "SCRAM-SHA-256-PLUS" => Some((ScramHash::Sha256, true)),
            _ => None,
        }
    }

    fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// HMAC accepts keys of any length, so this never returns `None` in
    /// practice; the `Option` only avoids an `expect` on the library's API.
    fn hmac(self, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        match self {
            ScramHash::Sha1 => hmac_with::<Hmac<Sha1>>(key, data),
            ScramHash::Sha256 => hmac_with::<Hmac<Sha256>>(key, data),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
        }
        out
    }
}

fn hmac_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let mut mac = <M as Mac>::new_from_slice(key).ok()?;
    mac.update(data);
    Some(mac.finalize().into_bytes().to_vec())
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rand::rng().fill(out.as_mut_slice());
    out
}

/// What the account store keeps per hash: never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub hash: ScramHash,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

// The keys are password-equivalent for SCRAM (ServerKey lets one
// impersonate the server): keep them out of logs.
impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .field("salt", &"<redacted>")
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl ScramCredentials {
    /// SaltedPassword = PBKDF2(SASLprep(password), salt, i); keys per RFC 5802.
    ///
    /// Fails with `MalformedRequest` if SASLprep rejects the password, or if
    /// the salt is empty or `iterations` is 0 (neither can be sent in a
    /// server-first-message).
    pub fn derive(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, SaslError> {
        if salt.is_empty() || iterations == 0 {
            return Err(SaslError::MalformedRequest);
        }
        let prepped = stringprep::saslprep(password).map_err(|_| SaslError::MalformedRequest)?;
        let salted = hash.salted_password(prepped.as_bytes(), salt, iterations);
        let client_key = hash
            .hmac(&salted, b"Client Key")
            .ok_or(SaslError::MalformedRequest)?;
        let server_key = hash
            .hmac(&salted, b"Server Key")
            .ok_or(SaslError::MalformedRequest)?;
        Ok(ScramCredentials {
            hash,
            iterations,
            salt: salt.to_vec(),
            stored_key: hash.hash(&client_key),
            server_key,
        })
    }

    /// Random 16-byte salt, `iterations` (callers use 4096).
    pub fn generate(hash: ScramHash, password: &str, iterations: u32) -> Result<Self, SaslError> {
        Self::derive(hash, password, &random_bytes(SALT_LEN), iterations)
    }

    /// Constant-time check of a plaintext password against these
    /// credentials (for PLAIN). False if SASLprep rejects the password.
    pub fn verify_password(&self, password: &str) -> bool {
        match Self::derive(self.hash, password, &self.salt, self.iterations) {
            Ok(derived) => bool::from(
                derived.stored_key.ct_eq(&self.stored_key)
                    & derived.server_key.ct_eq(&self.server_key),
            ),
            Err(_) => false,
        }
    }

    /// Whether these credentials can run an exchange with `hash`: guards
    /// against a corrupted store or a caller passing the wrong hash's keys.
    fn usable_for(&self, hash: ScramHash) -> bool {
        self.hash == hash
            && self.iterations > 0
            && !self.salt.is_empty()
            && self.stored_key.len() == hash.output_len()
            && self.server_key.len() == hash.output_len()
    }
}

/// Parsed client-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// With "=2C" and "=3D" unescaped; not otherwise normalised.
    pub username: String,
    /// Likewise unescaped; `None` if the gs2 header had no "a=".
    pub authzid: Option<String>,
}

/// What c= in the client-final-message must decode to.
#[derive(Clone)]
enum Cbind {
    /// Exactly this: the gs2 header, followed by the channel-binding data
    /// when the flag was 'p'.
    Exact(Vec<u8>),
    /// The gs2 header followed by data the server cannot know: 'tls-unique'
    /// requested on a connection where it is unavailable (see
    /// `ScramServer::client_first`).
    Unverifiable(Vec<u8>),
}

impl Cbind {
    fn matches(&self, c: &[u8]) -> bool {
        match self {
            Cbind::Exact(want) => c == want.as_slice(),
            Cbind::Unverifiable(header) => c.len() > header.len() && c.starts_with(header),
        }
    }
}

/// State after client_first: what the later steps need.
struct AfterClientFirst {
    username: String,
    client_nonce: String,
    client_first_bare: String,
    cbind: Cbind,
}

/// State after server_first.
struct AfterServerFirst {
    nonce: String,
    /// client-first-message-bare "," server-first-message "," — the
    /// AuthMessage up to the client-final-message-without-proof.
    auth_message_prefix: String,
    cbind: Cbind,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// False for a non-existent account: the exchange must then fail.
    account_exists: bool,
}

enum State {
    Initial,
    GotClientFirst(AfterClientFirst),
    SentServerFirst(AfterServerFirst),
    /// Succeeded or failed: nothing more may happen.
    Finished,
}

/// One SCRAM exchange, server side.
pub struct ScramServer {
    hash: ScramHash,
    plus: bool,
    plus_offered: bool,
    bindings: ChannelBindings,
    server_nonce: String,
    state: State,
}

// Redacting: the state holds keys and the exchange's messages.
impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.state {
            State::Initial => "initial",
            State::GotClientFirst(_) => "got-client-first",
            State::SentServerFirst(_) => "sent-server-first",
            State::Finished => "finished",
        };
        f.debug_struct("ScramServer")
            .field("mechanism", &self.hash.mechanism(self.plus))
            .field("plus_offered", &self.plus_offered)
            .field("stage", &stage)
            .finish()
    }
}

impl ScramServer {
    /// `plus`: the client chose the -PLUS mechanism. `plus_offered`: the
    /// server advertised -PLUS mechanisms on this connection (needed to
    /// detect downgrade: a client sending gs2 flag 'y' while the server
    /// offered PLUS must fail).
    pub fn new(hash: ScramHash, plus: bool, plus_offered: bool, bindings: ChannelBindings) -> Self {
        ScramServer {
            hash,
            plus,
            plus_offered,
            bindings,
            // Standard base64 never contains ',' so the nonce stays printable.
            server_nonce: B64.encode(random_bytes(SERVER_NONCE_BYTES)),
            state: State::Initial,
        }
    }

    /// Replace the random server nonce, to replay the RFC test vectors.
    #[cfg(test)]
    pub(crate) fn with_server_nonce(mut self, nonce: &str) -> Self {
        self.server_nonce = nonce.to_owned();
        self
    }

    /// Step 1: parse and check the client-first-message.
    ///
    /// gs2 flag 'n' is fine without -PLUS; 'y' fails with NotAuthorized if
    /// -PLUS was offered (downgrade); 'p=TYPE' only with -PLUS and only for
    /// a type present in the bindings; -PLUS requires 'p='. Channel-binding
    /// policy failures are NotAuthorized, syntax errors (including the
    /// unsupported mandatory extension 'm=') MalformedRequest.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        // Any failure leaves the exchange finished.
        let State::Initial = mem::replace(&mut self.state, State::Finished) else {
            return Err(SaslError::MalformedRequest);
        };
        let parsed = parse_client_first(msg)?;

        let header = parsed.gs2_header.into_bytes();
        let cbind = match (&parsed.cb_flag, self.plus) {
            (CbFlag::NotSupported, false) => Cbind::Exact(header),
            (CbFlag::ClientSupports, false) if !self.plus_offered => Cbind::Exact(header),
            (CbFlag::Binding(name), true) => match self.bindings.get(name) {
                Some(data) => Cbind::Exact([header.as_slice(), data].concat()),
                // tls-unique is undefined for TLS 1.3 (RFC 9266) and rustls
                // does not expose the TLS 1.2 Finished message either, yet
                // clients such as slixmpp 1.8 send it whenever their TLS
                // library returns something. Refusing would only make them
                // fall back to weaker exchanges (then PLAIN); accepting it
                // unverified gives exactly the protection of a non-PLUS
                // SCRAM login. tls-exporter and tls-server-end-point are
                // always verified.
                None if name == "tls-unique" => Cbind::Unverifiable(header),
                None => return Err(SaslError::NotAuthorized),
            },
            // 'y' although -PLUS was offered (a downgrade attack, RFC 5802
            // §6), 'p=' without -PLUS, or -PLUS without 'p='.
            _ => return Err(SaslError::NotAuthorized),
        };

        self.state = State::GotClientFirst(AfterClientFirst {
            username: parsed.first.username.clone(),
            client_nonce: parsed.client_nonce,
            client_first_bare: parsed.client_first_bare,
            cbind,
        });
        Ok(parsed.first)
    }

    /// Step 2: the server-first-message "r=...,s=...,i=...".
    ///
    /// `creds` is None when the account does not exist (or the stored
    /// credentials are unusable for this hash): a fake salt derived from the
    /// username and a per-process secret is sent with 4096 iterations, and
    /// `client_final` fails with NotAuthorized, so the exchange does not
    /// reveal whether the account exists.
    ///
    /// Called out of order it returns an empty message and finishes the
    /// exchange, so the following `client_final` fails.
    pub fn server_first(&mut self, creds: Option<&ScramCredentials>) -> Vec<u8> {
        let State::GotClientFirst(first) = mem::replace(&mut self.state, State::Finished) else {
            return Vec::new();
        };
        let hash = self.hash;
        let (salt, iterations, stored_key, server_key, account_exists) =
            match creds.filter(|c| c.usable_for(hash)) {
                Some(c) => (
                    c.salt.clone(),
                    c.iterations,
                    c.stored_key.clone(),
                    c.server_key.clone(),
                    true,
                ),
                // Random keys keep the final step's work the same as for a
                // real account; account_exists makes it fail regardless.
                None => (
                    fake_salt(hash, &first.username),
                    FAKE_ITERATIONS,
                    random_bytes(hash.output_len()),
                    random_bytes(hash.output_len()),
                    false,
                ),
            };

        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        self.state = State::SentServerFirst(AfterServerFirst {
            auth_message_prefix: format!("{},{},", first.client_first_bare, server_first),
            nonce,
            cbind: first.cbind,
            stored_key,
            server_key,
            account_exists,
        });
        server_first.into_bytes()
    }

    /// Step 3: check the client-final-message and return the
    /// server-final-message "v=..." on success.
    ///
    /// Syntax errors -> MalformedRequest; c= not matching the gs2 header
    /// (plus channel-binding data), a wrong nonce, a wrong proof or a
    /// non-existent account -> NotAuthorized; out of order -> MalformedRequest.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::SentServerFirst(st) = mem::replace(&mut self.state, State::Finished) else {
            return Err(SaslError::MalformedRequest);
        };
        let hash = self.hash;
        let text = check_message(msg)?;

        // client-final-message-without-proof "," proof: the proof is last.
        let (without_proof, proof_field) =
            text.rsplit_once(',').ok_or(SaslError::MalformedRequest)?;
        let proof_b64 = proof_field
            .strip_prefix("p=")
            .ok_or(SaslError::MalformedRequest)?;
        let mut fields = without_proof.split(',');
        let cbind_b64 = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or(SaslError::MalformedRequest)?;
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest)?;
        if !is_printable(nonce) || !fields.all(is_extension) {
            return Err(SaslError::MalformedRequest);
        }
        let cbind = decode_base64(cbind_b64)?;
        let proof = decode_base64(proof_b64)?;

        // Channel-binding data is not secret: a plain comparison will do.
        if !st.cbind.matches(&cbind) || nonce != st.nonce {
            return Err(SaslError::NotAuthorized);
        }

        let auth_message = format!("{}{}", st.auth_message_prefix, without_proof);
        let client_signature = hash
            .hmac(&st.stored_key, auth_message.as_bytes())
            .ok_or(SaslError::NotAuthorized)?;
        // The proof's length is public (fixed by the hash): checking it
        // first leaks nothing.
        if proof.len() != client_signature.len() {
            return Err(SaslError::NotAuthorized);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let ok = hash.hash(&client_key).ct_eq(&st.stored_key)
            & Choice::from(u8::from(st.account_exists));
        if !bool::from(ok) {
            return Err(SaslError::NotAuthorized);
        }

        let server_signature = hash
            .hmac(&st.server_key, auth_message.as_bytes())
            .ok_or(SaslError::NotAuthorized)?;
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// gs2-cbind-flag of the client-first-message.
enum CbFlag {
    /// 'n': the client does not support channel binding.
    NotSupported,
    /// 'y': the client supports it but thinks the server does not.
    ClientSupports,
    /// 'p=NAME': the client binds to channel-binding type NAME.
    Binding(String),
}

struct ParsedClientFirst {
    first: ClientFirst,
    cb_flag: CbFlag,
    /// The gs2 header exactly as received, trailing ',' included.
    gs2_header: String,
    client_first_bare: String,
    client_nonce: String,
}

/// Syntax of RFC 5802 §7 client-first-message; no policy checks.
fn parse_client_first(msg: &[u8]) -> Result<ParsedClientFirst, SaslError> {
    let text = check_message(msg)?;
    let mut gs2 = text.splitn(3, ',');
    let (Some(flag), Some(authz_field), Some(bare)) = (gs2.next(), gs2.next(), gs2.next()) else {
        return Err(SaslError::MalformedRequest);
    };

    let cb_flag = match flag {
        "n" => CbFlag::NotSupported,
        "y" => CbFlag::ClientSupports,
        _ => match flag.strip_prefix("p=") {
            Some(name) if is_cb_name(name) => CbFlag::Binding(name.to_owned()),
            _ => return Err(SaslError::MalformedRequest),
        },
    };
    let authzid = if authz_field.is_empty() {
        None
    } else {
        let name = authz_field
            .strip_prefix("a=")
            .ok_or(SaslError::MalformedRequest)?;
        Some(unescape_saslname(name)?)
    };

    let mut fields = bare.split(',');
    let username = fields
        .next()
        .and_then(|f| f.strip_prefix("n="))
        // Also rejects "m=": this server supports no mandatory extension.
        .ok_or(SaslError::MalformedRequest)?;
    let username = unescape_saslname(username)?;
    let client_nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .ok_or(SaslError::MalformedRequest)?;
    if !is_printable(client_nonce) || !fields.all(is_extension) {
        return Err(SaslError::MalformedRequest);
    }

    Ok(ParsedClientFirst {
        gs2_header: format!("{flag},{authz_field},"),
        client_first_bare: bare.to_owned(),
        client_nonce: client_nonce.to_owned(),
        cb_flag,
        first: ClientFirst { username, authzid },
    })
}

/// Size limit, UTF-8 and no NUL: common to every SCRAM message (RFC 5802
/// §7 allows NUL nowhere).
fn check_message(msg: &[u8]) -> Result<&str, SaslError> {
    if msg.len() > MAX_MESSAGE_LEN || msg.contains(&0) {
        return Err(SaslError::MalformedRequest);
    }
    std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)
}

/// saslname = 1*(value-safe-char / "=2C" / "=3D"); ',' and NUL were
/// excluded by the caller, so only '=' needs checking.
fn unescape_saslname(name: &str) -> Result<String, SaslError> {
    if name.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    let mut parts = name.split('=');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        if let Some(rest) = part.strip_prefix("2C") {
            out.push(',');
            out.push_str(rest);
        } else if let Some(rest) = part.strip_prefix("3D") {
            out.push('=');
            out.push_str(rest);
        } else {
            return Err(SaslError::MalformedRequest);
        }
    }
    Ok(out)
}

/// printable = %x21-2B / %x2D-7E (RFC 5802 §7), at least one.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// cb-name = 1*(ALPHA / DIGIT / "." / "-")
fn is_cb_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// attr-val = ALPHA "=" value, value = 1*value-char (no ',' or NUL, already
/// excluded). Extensions are checked for syntax and otherwise ignored.
fn is_extension(field: &str) -> bool {
    let mut chars = field.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.next() == Some('=')
        && chars.next().is_some()
}

/// base64 = 1*(4base64-char) [...]: non-empty, canonical padding.
fn decode_base64(s: &str) -> Result<Vec<u8>, SaslError> {
    match B64.decode(s) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(SaslError::MalformedRequest),
    }
}

/// A salt for a non-existent account: stable for a username within this
/// process, so repeated attempts cannot tell it from a real one, and
/// unpredictable across processes.
fn fake_salt(hash: ScramHash, username: &str) -> Vec<u8> {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    let secret = SECRET.get_or_init(rand::random);
    let mut data = Vec::with_capacity(username.len() + 32);
    data.extend_from_slice(b"confab scram fake salt\0");
    data.extend_from_slice(hash.mechanism(false).as_bytes());
    data.push(0);
    data.extend_from_slice(username.as_bytes());
    match ScramHash::Sha256.hmac(secret, &data) {
        Some(mut salt) => {
            salt.truncate(SALT_LEN);
            salt
        }
        // Unreachable (see ScramHash::hmac); a random salt is still safe.
        None => random_bytes(SALT_LEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    fn exporter_bindings() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(b"exporter-keying-material-32bytes".to_vec()),
            tls_server_end_point: Some(vec![0xab; 32]),
        }
    }

    // ---- RFC vectors -------------------------------------------------

    const SHA1_CLIENT_NONCE: &str = "fyko+d2lbbFgONRv9qkxdawL";
    const SHA1_SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";
    const SHA1_SALT: &str = "QSXCR+Q6sek8bf92";

    const SHA256_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SHA256_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SHA256_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

    fn rfc5802_creds() -> ScramCredentials {
        ScramCredentials::derive(ScramHash::Sha1, "pencil", &b64(SHA1_SALT), 4096).unwrap()
    }

    fn rfc7677_creds() -> ScramCredentials {
        ScramCredentials::derive(ScramHash::Sha256, "pencil", &b64(SHA256_SALT), 4096).unwrap()
    }

    #[test]
    fn rfc5802_sha1_example() {
        let creds = rfc5802_creds();
        let mut server = ScramServer::new(ScramHash::Sha1, false, false, Default::default())
            .with_server_nonce(SHA1_SERVER_NONCE);
        let first = server
            .client_first(format!("n,,n=user,r={SHA1_CLIENT_NONCE}").as_bytes())
            .unwrap();
        assert_eq!(first.username, "user");
        assert_eq!(first.authzid, None);
        let sf = server.server_first(Some(&creds));
        assert_eq!(
            sf,
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let sfin = server
            .client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,\
                  p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            )
            .unwrap();
        assert_eq!(sfin, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
        // Finished: nothing more.
        assert_eq!(
            server.client_final(b"c=biws,r=x,p=AAAA"),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn rfc7677_sha256_example() {
        let creds = rfc7677_creds();
        let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default())
            .with_server_nonce(SHA256_SERVER_NONCE);
        server
            .client_first(format!("n,,n=user,r={SHA256_CLIENT_NONCE}").as_bytes())
            .unwrap();
        let sf = server.server_first(Some(&creds));
        assert_eq!(
            sf,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let sfin = server
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(sfin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn rfc5802_wrong_proof_fails() {
        let creds = rfc5802_creds();
        let mut server = ScramServer::new(ScramHash::Sha1, false, false, Default::default())
            .with_server_nonce(SHA1_SERVER_NONCE);
        server
            .client_first(format!("n,,n=user,r={SHA1_CLIENT_NONCE}").as_bytes())
            .unwrap();
        server.server_first(Some(&creds));
        // First proof character changed.
        assert_eq!(
            server.client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,\
                  p=w0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
            ),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn derive_matches_rfc_vectors() {
        // StoredKey/ServerKey for the RFC 5802 §5 and RFC 7677 §3 examples
        // (user "user", password "pencil"), as published alongside them and
        // cross-checked with an independent implementation.
        let c = rfc5802_creds();
        assert_eq!(c.hash, ScramHash::Sha1);
        assert_eq!(c.iterations, 4096);
        assert_eq!(c.salt, b64(SHA1_SALT));
        assert_eq!(
            hex(&c.stored_key),
            "e9d94660c39d65c38fbad91c358f14da0eef2bd6"
        );
        assert_eq!(
            hex(&c.server_key),
            "0fe09258b3ac852ba502cc62ba903eaacdbf7d31"
        );

        let c = rfc7677_creds();
        assert_eq!(c.hash, ScramHash::Sha256);
        assert_eq!(
            hex(&c.stored_key),
            "586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6"
        );
        assert_eq!(
            hex(&c.server_key),
            "c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5"
        );

        // The test client's own PBKDF2 agrees with the RFC 5802 SaltedPassword.
        let salted = test_salted_password(ScramHash::Sha1, "pencil", &b64(SHA1_SALT), 4096);
        assert_eq!(hex(&salted), "1d96ee3a529b5a5f9e47c01f229a2cb8a6e15f7d");
    }

    #[test]
    fn verify_password_true_false() {
        let creds = rfc7677_creds();
        assert!(creds.verify_password("pencil"));
        assert!(!creds.verify_password("pencil2"));
        assert!(!creds.verify_password(""));
        // SASLprep maps U+00AD (soft hyphen) to nothing.
        assert!(creds.verify_password("pen\u{ad}cil"));
        // SASLprep prohibits control characters.
        assert!(!creds.verify_password("pencil\u{7}"));
    }

    #[test]
    fn generate_and_derive_errors() {
        let creds = ScramCredentials::generate(ScramHash::Sha256, "secret", 4096).unwrap();
        assert_eq!(creds.salt.len(), SALT_LEN);
        assert!(creds.verify_password("secret"));
        assert!(!creds.verify_password("Secret"));
        let other = ScramCredentials::generate(ScramHash::Sha256, "secret", 4096).unwrap();
        assert_ne!(creds.salt, other.salt);

        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha1, "a\u{7}b", b"salt", 4096),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha1, "pw", b"", 4096),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha1, "pw", b"salt", 0),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn debug_is_redacted() {
        let creds = rfc7677_creds();
        let s = format!("{creds:?}");
        assert!(!s.contains(&format!("{:?}", creds.stored_key)));
        assert!(!s.contains(&format!("{:?}", creds.server_key)));
        assert!(s.contains("redacted"));
        let server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        let s = format!("{server:?}");
        assert!(s.contains("SCRAM-SHA-256-PLUS"));
        assert!(!s.contains("exporter-keying"));
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(ScramHash::Sha1.mechanism(false), "SCRAM-SHA-1");
        assert_eq!(ScramHash::Sha1.mechanism(true), "SCRAM-SHA-1-PLUS");
        assert_eq!(ScramHash::Sha256.mechanism(false), "SCRAM-SHA-256");
        assert_eq!(ScramHash::Sha256.mechanism(true), "SCRAM-SHA-256-PLUS");
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            for plus in [false, true] {
                assert_eq!(
                    ScramHash::from_mechanism(hash.mechanism(plus)),
                    Some((hash, plus))
                );
            }
        }
        assert_eq!(ScramHash::from_mechanism("PLAIN"), None);
    }

    // ---- test client -------------------------------------------------

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// PBKDF2 written out independently of the pbkdf2 crate, so the test
    /// client does not just mirror the server's code.
    fn test_salted_password(hash: ScramHash, password: &str, salt: &[u8], i: u32) -> Vec<u8> {
        let mut block = salt.to_vec();
        block.extend_from_slice(&1u32.to_be_bytes());
        let mut u = hash.hmac(password.as_bytes(), &block).unwrap();
        let mut out = u.clone();
        for _ in 1..i {
            u = hash.hmac(password.as_bytes(), &u).unwrap();
            for (o, x) in out.iter_mut().zip(&u) {
                *o ^= x;
            }
        }
        out
    }

    /// A minimal SCRAM client: just enough to drive the server.
    struct TestClient {
        hash: ScramHash,
        password: String,
        gs2_header: String,
        cb_data: Vec<u8>,
        client_first_bare: String,
        client_nonce: String,
    }

    impl TestClient {
        fn new(hash: ScramHash, user: &str, password: &str, gs2_header: &str) -> Self {
            let client_nonce = B64.encode(random_bytes(18));
            TestClient {
                hash,
                password: password.to_owned(),
                gs2_header: gs2_header.to_owned(),
                cb_data: Vec::new(),
                client_first_bare: format!("n={user},r={client_nonce}"),
                client_nonce,
            }
        }

        fn with_cb_data(mut self, data: &[u8]) -> Self {
            self.cb_data = data.to_vec();
            self
        }

        fn client_first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
        }

        /// Returns the client-final-message and the expected server-final.
        fn client_final(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let sf = std::str::from_utf8(server_first).unwrap();
            let mut nonce = "";
            let mut salt = Vec::new();
            let mut iterations = 0;
            for attr in sf.split(',') {
                if let Some(v) = attr.strip_prefix("r=") {
                    nonce = v;
                } else if let Some(v) = attr.strip_prefix("s=") {
                    salt = b64(v);
                } else if let Some(v) = attr.strip_prefix("i=") {
                    iterations = v.parse().unwrap();
                }
            }
            assert!(nonce.starts_with(&self.client_nonce));
            assert!(nonce.len() > self.client_nonce.len());

            let mut cbind = self.gs2_header.as_bytes().to_vec();
            cbind.extend_from_slice(&self.cb_data);
            let without_proof = format!("c={},r={nonce}", B64.encode(&cbind));
            let auth_message = format!("{},{sf},{without_proof}", self.client_first_bare);

            let h = self.hash;
            let salted = test_salted_password(h, &self.password, &salt, iterations);
            let client_key = h.hmac(&salted, b"Client Key").unwrap();
            let stored_key = h.hash(&client_key);
            let client_sig = h.hmac(&stored_key, auth_message.as_bytes()).unwrap();
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&client_sig)
                .map(|(a, b)| a ^ b)
                .collect();
            let server_key = h.hmac(&salted, b"Server Key").unwrap();
            let server_sig = h.hmac(&server_key, auth_message.as_bytes()).unwrap();
            (
                format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
                format!("v={}", B64.encode(server_sig)).into_bytes(),
            )
        }
    }

    fn alice_creds(hash: ScramHash) -> ScramCredentials {
        ScramCredentials::generate(hash, "correct horse", 4096).unwrap()
    }

    /// Runs a whole exchange; returns the result of client_final.
    fn run(
        server: &mut ScramServer,
        client: &TestClient,
        creds: Option<&ScramCredentials>,
    ) -> Result<Vec<u8>, SaslError> {
        server.client_first(&client.client_first())?;
        let sf = server.server_first(creds);
        let (cf, expected) = client.client_final(&sf);
        let result = server.client_final(&cf)?;
        assert_eq!(result, expected);
        Ok(result)
    }

    // ---- full exchanges ---------------------------------------------

    #[test]
    fn plus_tls_exporter_success() {
        let creds = alice_creds(ScramHash::Sha256);
        let bindings = exporter_bindings();
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, bindings.clone());
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-exporter,,",
        )
        .with_cb_data(bindings.tls_exporter.as_deref().unwrap());
        assert!(run(&mut server, &client, Some(&creds)).is_ok());
    }

    #[test]
    fn plus_tls_server_end_point_success() {
        let creds = alice_creds(ScramHash::Sha256);
        let bindings = exporter_bindings();
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, bindings.clone());
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-server-end-point,,",
        )
        .with_cb_data(bindings.tls_server_end_point.as_deref().unwrap());
        assert!(run(&mut server, &client, Some(&creds)).is_ok());
    }

    #[test]
    fn plus_sha1_with_authzid_success() {
        let creds = alice_creds(ScramHash::Sha1);
        let bindings = exporter_bindings();
        let mut server = ScramServer::new(ScramHash::Sha1, true, true, bindings.clone());
        let client = TestClient::new(
            ScramHash::Sha1,
            "alice",
            "correct horse",
            "p=tls-exporter,a=bob=40example.org=2Cx,",
        )
        .with_cb_data(bindings.tls_exporter.as_deref().unwrap());
        // "=40" is not a valid escape.
        assert_eq!(
            run(&mut server, &client, Some(&creds)),
            Err(SaslError::MalformedRequest)
        );

        let mut server = ScramServer::new(ScramHash::Sha1, true, true, bindings.clone());
        let client = TestClient::new(
            ScramHash::Sha1,
            "alice",
            "correct horse",
            "p=tls-exporter,a=bob@example.org=2Cx=3Dy,",
        )
        .with_cb_data(bindings.tls_exporter.as_deref().unwrap());
        let first = server.client_first(&client.client_first()).unwrap();
        assert_eq!(first.authzid.as_deref(), Some("bob@example.org,x=y"));
        let sf = server.server_first(Some(&creds));
        let (cf, expected) = client.client_final(&sf);
        assert_eq!(server.client_final(&cf), Ok(expected));
    }

    #[test]
    fn plus_wrong_password_fails() {
        for (cb, name) in [
            (exporter_bindings().tls_exporter, "tls-exporter"),
            (
                exporter_bindings().tls_server_end_point,
                "tls-server-end-point",
            ),
        ] {
            let creds = alice_creds(ScramHash::Sha256);
            let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
            let client = TestClient::new(
                ScramHash::Sha256,
                "alice",
                "wrong horse",
                &format!("p={name},,"),
            )
            .with_cb_data(&cb.unwrap());
            assert_eq!(
                run(&mut server, &client, Some(&creds)),
                Err(SaslError::NotAuthorized)
            );
        }
    }

    #[test]
    fn plus_wrong_cb_data_fails() {
        let creds = alice_creds(ScramHash::Sha256);
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        // E.g. a man in the middle: its TLS connection has other key material.
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-exporter,,",
        )
        .with_cb_data(b"some-other-connection-exporter!!");
        assert_eq!(
            run(&mut server, &client, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );

        // Right data but for the other binding type.
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-exporter,,",
        )
        .with_cb_data(&exporter_bindings().tls_server_end_point.unwrap());
        assert_eq!(
            run(&mut server, &client, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );

        // c= carries only the gs2 header, without the data.
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-exporter,,",
        );
        assert_eq!(
            run(&mut server, &client, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn c_attribute_must_match_gs2_header() {
        let creds = alice_creds(ScramHash::Sha256);
        let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default());
        let client = TestClient::new(ScramHash::Sha256, "alice", "correct horse", "n,,");
        server.client_first(&client.client_first()).unwrap();
        let sf = server.server_first(Some(&creds));
        // The client computes its proof over a c= for 'y' while it sent 'n'.
        let lying = TestClient {
            gs2_header: "y,,".to_owned(),
            ..client
        };
        let (cf, _) = lying.client_final(&sf);
        assert_eq!(server.client_final(&cf), Err(SaslError::NotAuthorized));
    }

    #[test]
    fn y_flag_with_plus_offered_fails() {
        let mut server = ScramServer::new(ScramHash::Sha256, false, true, exporter_bindings());
        let client = TestClient::new(ScramHash::Sha256, "alice", "correct horse", "y,,");
        assert_eq!(
            server.client_first(&client.client_first()),
            Err(SaslError::NotAuthorized)
        );
        // The exchange is over.
        assert_eq!(
            server.client_first(&client.client_first()),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn y_flag_without_plus_offered_ok() {
        let creds = alice_creds(ScramHash::Sha256);
        let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default());
        let client = TestClient::new(ScramHash::Sha256, "alice", "correct horse", "y,,");
        assert!(run(&mut server, &client, Some(&creds)).is_ok());
    }

    #[test]
    fn n_flag_ok_without_plus_even_if_offered() {
        let creds = alice_creds(ScramHash::Sha1);
        let mut server = ScramServer::new(ScramHash::Sha1, false, true, exporter_bindings());
        let client = TestClient::new(ScramHash::Sha1, "alice", "correct horse", "n,,");
        assert!(run(&mut server, &client, Some(&creds)).is_ok());
    }

    #[test]
    fn p_flag_on_non_plus_fails() {
        let mut server = ScramServer::new(ScramHash::Sha256, false, true, exporter_bindings());
        assert_eq!(
            server.client_first(b"p=tls-exporter,,n=alice,r=abcdef"),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn plus_requires_p_flag() {
        for flag in ["n,,", "y,,"] {
            let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
            let msg = format!("{flag}n=alice,r=abcdef");
            assert_eq!(
                server.client_first(msg.as_bytes()),
                Err(SaslError::NotAuthorized)
            );
        }
    }

    #[test]
    fn tls_unique_is_accepted_unverified_with_the_right_header() {
        let creds = alice_creds(ScramHash::Sha256);
        // The client binds to data the server cannot see: accepted, as a
        // non-PLUS exchange would be.
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-unique,,",
        )
        .with_cb_data(b"finished-message");
        assert!(run(&mut server, &client, Some(&creds)).is_ok());
        // Without any data after the header, c= does not match.
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-unique,,",
        );
        server.client_first(&client.client_first()).unwrap();
        let sf = server.server_first(Some(&creds));
        let (cf, _) = client.client_final(&sf);
        assert_eq!(server.client_final(&cf), Err(SaslError::NotAuthorized));
        // A wrong password still fails.
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        let client = TestClient::new(ScramHash::Sha256, "alice", "wrong", "p=tls-unique,,")
            .with_cb_data(b"x");
        server.client_first(&client.client_first()).unwrap();
        let sf = server.server_first(Some(&creds));
        let (cf, _) = client.client_final(&sf);
        assert_eq!(server.client_final(&cf), Err(SaslError::NotAuthorized));
    }

    #[test]
    fn unknown_or_absent_cb_type_fails() {
        for cb in ["tls-exporter2", "TLS-EXPORTER"] {
            let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
            let msg = format!("p={cb},,n=alice,r=abcdef");
            assert_eq!(
                server.client_first(msg.as_bytes()),
                Err(SaslError::NotAuthorized),
                "{cb}"
            );
        }
        // Known type, but this connection has no such data.
        let only_endpoint = ChannelBindings {
            tls_exporter: None,
            tls_server_end_point: Some(vec![1; 32]),
        };
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, only_endpoint);
        assert_eq!(
            server.client_first(b"p=tls-exporter,,n=alice,r=abcdef"),
            Err(SaslError::NotAuthorized)
        );
        // Not a cb-name at all.
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_bindings());
        assert_eq!(
            server.client_first(b"p=tls_exporter,,n=alice,r=abcdef"),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn nonexistent_user_fails_with_stable_fake_salt() {
        let salts: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let mut server =
                    ScramServer::new(ScramHash::Sha256, false, false, Default::default());
                let client = TestClient::new(ScramHash::Sha256, "nobody", "anything", "n,,");
                server.client_first(&client.client_first()).unwrap();
                let sf = server.server_first(None);
                let sf_text = String::from_utf8(sf.clone()).unwrap();
                assert!(sf_text.ends_with(",i=4096"), "{sf_text}");
                let salt = sf_text
                    .split(',')
                    .find_map(|a| a.strip_prefix("s="))
                    .map(b64)
                    .unwrap();
                assert_eq!(salt.len(), SALT_LEN);
                let (cf, _) = client.client_final(&sf);
                assert_eq!(server.client_final(&cf), Err(SaslError::NotAuthorized));
                salt
            })
            .collect();
        assert_eq!(salts[0], salts[1]);
        assert_ne!(
            fake_salt(ScramHash::Sha256, "nobody"),
            fake_salt(ScramHash::Sha256, "somebody")
        );
        assert_ne!(
            fake_salt(ScramHash::Sha256, "nobody"),
            fake_salt(ScramHash::Sha1, "nobody")
        );
    }

    #[test]
    fn unusable_credentials_treated_as_nonexistent() {
        // SHA-1 keys offered to a SHA-256 exchange.
        let creds = alice_creds(ScramHash::Sha1);
        let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default());
        let client = TestClient::new(ScramHash::Sha256, "alice", "correct horse", "n,,");
        assert_eq!(
            run(&mut server, &client, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn username_unescaping() {
        let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default());
        let first = server.client_first(b"n,,n=a=2Cb=3Dc=3D,r=abc").unwrap();
        assert_eq!(first.username, "a,b=c=");
        // Not normalised: SASLprep is the account store's business.
        let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default());
        let first = server
            .client_first("n,,n=Ca\u{301}f\u{e9}\u{ad},r=abc".as_bytes())
            .unwrap();
        assert_eq!(first.username, "Ca\u{301}f\u{e9}\u{ad}");

        for bad in [
            &b"n,,n=a=2cb,r=abc"[..],
            b"n,,n=a=,r=abc",
            b"n,,n=a=2,r=abc",
            b"n,,n==3,r=abc",
            b"n,,n=a=41,r=abc",
            b"n,a=x=,n=a,r=abc",
            b"n,a=,n=a,r=abc",
            b"n,,n=,r=abc",
        ] {
            let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default());
            assert_eq!(
                server.client_first(bad),
                Err(SaslError::MalformedRequest),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn extensions_are_ignored_when_optional() {
        let creds = alice_creds(ScramHash::Sha256);
        let mut server = ScramServer::new(ScramHash::Sha256, false, false, Default::default());
        let client = TestClient::new(ScramHash::Sha256, "alice", "correct horse", "n,,");
        let mut cf1 = client.client_first();
        cf1.extend_from_slice(b",x=ext,y=other");
        let with_ext = TestClient {
            client_first_bare: format!("{},x=ext,y=other", client.client_first_bare),
            ..client
        };
        assert_eq!(cf1, with_ext.client_first());
        server.client_first(&cf1).unwrap();
        let sf = server.server_first(Some(&creds));

        // An extension in client-final is part of the AuthMessage.
        let (cf2, _) = with_ext.client_final(&sf);
        let cf2 = String::from_utf8(cf2).unwrap();
        let (without_proof, _) = cf2.rsplit_once(',').unwrap();
        let with_final_ext = format!("{without_proof},z=zz");
        // Recompute the proof over the extended message.
        let salted = test_salted_password(ScramHash::Sha256, "correct horse", &creds.salt, 4096);
        let h = ScramHash::Sha256;
        let auth_message = format!(
            "{},{},{with_final_ext}",
            with_ext.client_first_bare,
            String::from_utf8(sf).unwrap()
        );
        let client_key = h.hmac(&salted, b"Client Key").unwrap();
        let sig = h
            .hmac(&h.hash(&client_key), auth_message.as_bytes())
            .unwrap();
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let msg = format!("{with_final_ext},p={}", B64.encode(proof));
        assert!(server.client_final(msg.as_bytes()).is_ok());
    }

    // ---- malformed input ----------------------------------------------

    fn fresh() -> ScramServer {
        ScramServer::new(ScramHash::Sha256, false, false, Default::default())
    }

    #[test]
    fn malformed_client_first() {
        let oversize = format!("n,,n=alice,r={}", "a".repeat(MAX_MESSAGE_LEN));
        let cases: Vec<&[u8]> = vec![
            b"",
            b"garbage",
            b",,,",
            b"n,,",
            b"n,,n=alice",
            b"n,,n=alice,",
            b"n,,n=alice,r=",
            b"n,,n=alice,x=abc",
            b"n,,r=abc,n=alice",
            b"n,,m=ext,n=alice,r=abc",
            b"n,,n=alice,r=abc,m",
            b"n,,n=alice,r=abc,1=x",
            b"n,,n=alice,r=abc,xx=y",
            b"n,,n=alice,r=abc,x=",
            b"n,,n=alice,r=abc,",
            b"n,,n=alice,r=ab c",
            b"n,,n=alice,r=ab\x7f",
            "n,,n=alice,r=ab\u{e9}".as_bytes(),
            b"n,,n=al\0ice,r=abc",
            b"n,,n=al\xffice,r=abc",
            b"x,,n=alice,r=abc",
            b"N,,n=alice,r=abc",
            b"p,,n=alice,r=abc",
            b"p=,,n=alice,r=abc",
            b"n,b=x,n=alice,r=abc",
            b"n,,,n=alice,r=abc",
            b"n,n=alice,r=abc",
            b"n=alice,r=abc",
            oversize.as_bytes(),
        ];
        for msg in cases {
            assert_eq!(
                fresh().client_first(msg),
                Err(SaslError::MalformedRequest),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
        // Exactly at the limit is still parsed.
        let prefix = "n,,n=alice,r=";
        let at_limit = format!("{prefix}{}", "a".repeat(MAX_MESSAGE_LEN - prefix.len()));
        assert!(fresh().client_first(at_limit.as_bytes()).is_ok());
    }

    /// A server right after server_first, and a valid client-final for it.
    /// Deterministic, so every call yields the same client-final.
    fn ready_for_final() -> (ScramServer, Vec<u8>) {
        let creds =
            ScramCredentials::derive(ScramHash::Sha256, "correct horse", b"fixed salt", 4096)
                .unwrap();
        let mut server = fresh().with_server_nonce("fixed-server-nonce");
        let client = TestClient {
            client_first_bare: "n=alice,r=fixed-client-nonce".to_owned(),
            client_nonce: "fixed-client-nonce".to_owned(),
            ..TestClient::new(ScramHash::Sha256, "alice", "correct horse", "n,,")
        };
        server.client_first(&client.client_first()).unwrap();
        let sf = server.server_first(Some(&creds));
        let (cf, _) = client.client_final(&sf);
        (server, cf)
    }

    #[test]
    fn malformed_client_final() {
        let (_, valid) = ready_for_final();
        let valid = String::from_utf8(valid).unwrap();
        let (without_proof, proof) = valid.rsplit_once(',').unwrap();
        let (cb, rest) = without_proof.split_once(',').unwrap();
        let oversize = format!("{without_proof},x={},{proof}", "a".repeat(MAX_MESSAGE_LEN));
        let cases: Vec<String> = vec![
            String::new(),
            "garbage".into(),
            format!("{cb},{proof}"),                 // missing r=
            format!("{rest},{proof}"),               // missing c=
            without_proof.to_owned(),                // missing p=
            format!("{without_proof},{proof},x=y"),  // p= not last
            format!("{rest},{cb},{proof}"),          // wrong order
            format!("c=biws!,{rest},{proof}"),       // bad base64 in c=
            format!("c=biw,{rest},{proof}"),         // bad padding in c=
            format!("c=,{rest},{proof}"),            // empty c=
            format!("{without_proof},p=%%%%"),       // bad base64 in p=
            format!("{without_proof},p="),           // empty p=
            format!("{without_proof},=x,{proof}"),   // bad extension
            format!("{without_proof},xy=1,{proof}"), // bad extension
            format!("{cb},r=,{proof}"),              // empty nonce
            format!("{without_proof}\0,{proof}"),    // NUL
            oversize,
        ];
        for msg in &cases {
            let (mut server, _) = ready_for_final();
            assert_eq!(
                server.client_final(msg.as_bytes()),
                Err(SaslError::MalformedRequest),
                "{msg}"
            );
        }
        // "m=x" in client-final is an ordinary extension: well-formed, it
        // fails only because the proof does not cover it.
        let (mut server, _) = ready_for_final();
        let msg = format!("{without_proof},m=x,{proof}");
        assert_eq!(
            server.client_final(msg.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
        // The unmodified message is accepted.
        let (mut server, _) = ready_for_final();
        assert!(server.client_final(valid.as_bytes()).is_ok());
        // Non-UTF-8.
        let (mut server, _) = ready_for_final();
        let mut bytes = valid.clone().into_bytes();
        bytes.push(0xff);
        assert_eq!(
            server.client_final(&bytes),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn wrong_nonce_or_short_proof_fails() {
        let (mut server, valid) = ready_for_final();
        let valid = String::from_utf8(valid).unwrap();
        let tampered = valid.replacen(",r=", ",r=X", 1);
        assert_eq!(
            server.client_final(tampered.as_bytes()),
            Err(SaslError::NotAuthorized)
        );

        let (mut server, valid) = ready_for_final();
        let valid = String::from_utf8(valid).unwrap();
        let (without_proof, _) = valid.rsplit_once(',').unwrap();
        let short = format!("{without_proof},p={}", B64.encode([0u8; 20]));
        assert_eq!(
            server.client_final(short.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn calls_out_of_order() {
        // client_final first.
        let mut server = fresh();
        assert_eq!(
            server.client_final(b"c=biws,r=abc,p=AAAA"),
            Err(SaslError::MalformedRequest)
        );
        // server_first first: empty message, and the exchange is over.
        let mut server = fresh();
        assert!(server.server_first(None).is_empty());
        assert_eq!(
            server.client_first(b"n,,n=alice,r=abc"),
            Err(SaslError::MalformedRequest)
        );
        // client_final right after client_first.
        let mut server = fresh();
        server.client_first(b"n,,n=alice,r=abc").unwrap();
        assert_eq!(
            server.client_final(b"c=biws,r=abc,p=AAAA"),
            Err(SaslError::MalformedRequest)
        );
        // client_first twice.
        let mut server = fresh();
        server.client_first(b"n,,n=alice,r=abc").unwrap();
        assert_eq!(
            server.client_first(b"n,,n=alice,r=abc"),
            Err(SaslError::MalformedRequest)
        );
        // server_first twice.
        let mut server = fresh();
        server.client_first(b"n,,n=alice,r=abc").unwrap();
        assert!(!server.server_first(None).is_empty());
        assert!(server.server_first(None).is_empty());
        // client_final after a failed client_final.
        let (mut server, valid) = ready_for_final();
        assert_eq!(server.client_final(b"x"), Err(SaslError::MalformedRequest));
        assert_eq!(
            server.client_final(&valid),
            Err(SaslError::MalformedRequest)
        );
        // And the untouched valid message does work.
        let (mut server, valid) = ready_for_final();
        assert!(server.client_final(&valid).is_ok());
    }

    #[test]
    fn server_nonce_is_random_printable() {
        let a = fresh();
        let b = fresh();
        assert_ne!(a.server_nonce, b.server_nonce);
        assert!(is_printable(&a.server_nonce));
        assert!(b64(&a.server_nonce).len() >= 18);
    }

    #[test]
    fn prefixes_and_mutations_never_panic() {
        let bindings = exporter_bindings();
        let client = TestClient::new(
            ScramHash::Sha256,
            "alice",
            "correct horse",
            "p=tls-exporter,a=al=2Cice,",
        )
        .with_cb_data(bindings.tls_exporter.as_deref().unwrap());
        let creds = ScramCredentials::generate(ScramHash::Sha256, "correct horse", 1).unwrap();
        let first = client.client_first();

        // A fixed server nonce makes every server accept the same client-final.
        let new_server = || {
            ScramServer::new(ScramHash::Sha256, true, true, bindings.clone())
                .with_server_nonce("fixed-server-nonce-for-test")
        };
        let ready = || {
            let mut s = new_server();
            s.client_first(&first).unwrap();
            let sf = s.server_first(Some(&creds));
            (s, sf)
        };
        let (_, sf) = ready();
        let (final_msg, expected) = client.client_final(&sf);

        for i in 0..=first.len() {
            let r = new_server().client_first(&first[..i]);
            // A prefix cutting the nonce short is itself valid.
            if i == first.len() {
                assert!(r.is_ok());
            }
        }
        for i in 0..=final_msg.len() {
            let (mut s, _) = ready();
            let r = s.client_final(&final_msg[..i]);
            if i == final_msg.len() {
                assert_eq!(r, Ok(expected.clone()));
            } else {
                assert!(r.is_err());
            }
        }
        // Single-byte substitutions with bytes that matter to the grammar.
        for pos in 0..first.len() {
            for b in [b',', b'=', 0, 0xff, b'p', b'n', b'y', b'a', b'r', b'2'] {
                let mut m = first.clone();
                m[pos] = b;
                let _ = new_server().client_first(&m);
            }
        }
        for pos in 0..final_msg.len() {
            for b in [b',', b'=', 0, 0xff, b'c', b'r', b'p', b'A'] {
                let mut m = final_msg.clone();
                m[pos] = b;
                let (mut s, _) = ready();
                let r = s.client_final(&m);
                if m != final_msg {
                    assert!(r.is_err());
                }
            }
        }
    }
}

//! Configuration: a TOML file read with serde, with defaults and validation
//! errors that name the key at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the configuration is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "./config/confab.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XMPP domain this server serves.
    pub domain: String,
    /// Directory for the database, generated certificates and the admin socket.
    pub data_dir: PathBuf,
    pub listen: Listen,
    /// Certificate and key; without them a self-signed pair is generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    pub limits: Limits,
    /// Stream management (XEP-0198).
    pub sm: Sm,
    /// The message archive (XEP-0313).
    pub mam: Mam,
    pub inbox: Inbox,
    /// Group chat (XEP-0045) on a subdomain.
    pub muc: Muc,
    pub s2s: S2s,
    /// While every available resource of a user is `dnd`, chat and normal
    /// messages with a body to the user are held (durably, like offline
    /// messages) until one of them leaves `dnd` or another one comes
    /// online (`urn:confab:dnd-defer:0`).
    pub dnd_defers_delivery: bool,
    /// Accounts (bare JIDs of `domain`) that may run the administration
    /// commands (XEP-0050/XEP-0133) from any client.
    pub admins: Vec<String>,
    /// Authorization levels (PRODUCT.md §2): the defaults.
    pub authz: Authz,
    /// Links in message bodies (XEP-0372 references).
    pub links: crate::links::Settings,
    /// A STUN/TURN server whose credentials users get (XEP-0215).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<Turn>,
    /// The SMS gateway on a subdomain.
    pub sms: Sms,
    pub log: Log,
}

/// `[turn]`: a STUN/TURN server (coturn with `use-auth-secret`) that
/// clients are told about, with time-limited TURN credentials made from
/// its shared secret (the coturn REST API scheme).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// Host name or address clients reach it at.
    pub host: String,
    /// UDP and TCP port of STUN and TURN. Default 3478.
    #[serde(default = "Turn::default_port")]
    pub port: u16,
    /// coturn's `static-auth-secret`. Never logged.
    pub secret: String,
    /// Seconds TURN credentials stay valid. Default 86400.
    #[serde(default = "Turn::default_ttl")]
    pub ttl_s: u64,
}

/// `[sms]`: the SMS gateway (PRODUCT.md §8) on `domain`. It sends only
/// when `backend` names one; without it messages to the gateway get
/// `service-unavailable`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sms {
    /// Default `sms.` + the server's domain.
    pub domain: Option<String>,
    /// `"smpp"` or `"http"`; none: the gateway sends nothing.
    pub backend: Option<String>,
    /// Most SMS parts one message becomes; longer ones are refused.
    pub max_parts: usize,
    /// Who gets an incoming SMS from a number no user wrote to.
    pub default_recipient: Option<String>,
    pub smpp: Option<Smpp>,
    pub http: Option<SmsHttp>,
}

/// `[sms.http]`: an HTTP SMS service (`xeps/confab-sms.md`): each SMS is
/// POSTed as JSON to `url` with `Authorization: Bearer token`; the service
/// POSTs delivery reports and incoming SMS to `/sms/report` and
/// `/sms/incoming` on `[listen] http`, with `Bearer callback_token`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsHttp {
    pub url: String,
    /// Never logged.
    pub token: String,
    /// What the service presents on its callbacks; default `token`.
    /// Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_token: Option<String>,
    /// PEM file of CA certificates trusted for an `https` URL, in addition
    /// to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Seconds one POST may take.
    #[serde(default = "SmsHttp::default_timeout")]
    pub timeout_s: u64,
}

impl SmsHttp {
    fn default_timeout() -> u64 {
        10
    }

    /// The token the service's callbacks must carry.
    pub fn callback_token(&self) -> &str {
        self.callback_token.as_deref().unwrap_or(&self.token)
    }
}

impl std::fmt::Debug for SmsHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsHttp")
            .field("url", &self.url)
            .field("token", &"(hidden)")
            .field("callback_token", &"(hidden)")
            .field("ca_file", &self.ca_file)
            .field("timeout_s", &self.timeout_s)
            .finish()
    }
}

impl Default for Sms {
    fn default() -> Self {
        Sms {
            domain: None,
            backend: None,
            max_parts: 6,
            default_recipient: None,
            smpp: None,
            http: None,
        }
    }
}

/// `[sms.smpp]`: an SMS centre speaking SMPP 3.4 (bound as a
/// transceiver).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smpp {
    pub host: String,
    #[serde(default = "Smpp::default_port")]
    pub port: u16,
    pub system_id: String,
    /// Never logged.
    pub password: String,
    #[serde(default)]
    pub system_type: String,
    /// The sender address of SMS (empty: the SMS centre's default).
    #[serde(default)]
    pub source_addr: String,
    /// submit_sm sent and not yet answered, at most.
    #[serde(default = "Smpp::default_window")]
    pub window: usize,
    /// Seconds between enquire_link probes of an idle session.
    #[serde(default = "Smpp::default_enquire")]
    pub enquire_link_s: u64,
}

impl Smpp {
    fn default_port() -> u16 {
        2775
    }
    fn default_window() -> usize {
        10
    }
    fn default_enquire() -> u64 {
        30
    }
}

impl std::fmt::Debug for Smpp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smpp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("system_id", &self.system_id)
            .field("password", &"(hidden)")
            .field("source_addr", &self.source_addr)
            .field("window", &self.window)
            .finish()
    }
}

impl Turn {
    fn default_port() -> u16 {
        3478
    }
    fn default_ttl() -> u64 {
        86_400
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("secret", &"(hidden)")
            .field("ttl_s", &self.ttl_s)
            .finish()
    }
}

/// `[authz]`: the level users grant each other when no group policy
/// applies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Authz {
    /// What a user grants accounts of this server.
    pub default_local: crate::policy::Level,
    /// What a user grants users of other servers.
    pub default_remote: crate::policy::Level,
}

impl Default for Authz {
    fn default() -> Self {
        Authz {
            default_local: crate::policy::Level::Team,
            default_remote: crate::policy::Level::Public,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sm {
    /// Seconds a stream-managed session whose connection dropped waits for
    /// its client to resume it; then its unacknowledged messages go to
    /// offline storage.
    pub resume_timeout_s: u64,
    /// Stanzas sent and not yet acknowledged by a client before it is
    /// disconnected (its queue goes to offline storage).
    pub max_unacked: usize,
}

impl Default for Sm {
    fn default() -> Self {
        Sm {
            resume_timeout_s: 300,
            max_unacked: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mam {
    /// Archive one-to-one messages for both parties.
    pub enabled: bool,
    /// Most messages in one page of a query.
    pub max_page: usize,
}

impl Default for Mam {
    fn default() -> Self {
        Mam {
            enabled: true,
            max_page: 250,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inbox {
    /// Keep each user's journal of conversations (XEP-0430 inbox, unread
    /// counts).
    pub enabled: bool,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Muc {
    /// Serve rooms (persistent, members-only, every member equal).
    pub enabled: bool,
    /// The service's domain; `rooms.` + the server's domain when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Members a room may have at most.
    pub max_members: usize,
}

impl Default for Muc {
    fn default() -> Self {
        Muc {
            enabled: true,
            domain: None,
            max_members: 30,
        }
    }
}

impl Config {
    /// The group-chat service's domain.
    pub fn muc_domain(&self) -> String {
        self.muc
            .domain
            .clone()
            .unwrap_or_else(|| format!("rooms.{}", self.domain))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Client connections with STARTTLS (RFC 6120).
    pub c2s: Vec<String>,
    /// Client connections with direct TLS (XEP-0368).
    pub c2s_direct_tls: Vec<String>,
    /// Server-to-server connections with STARTTLS (RFC 6120).
    pub s2s: Vec<String>,
    /// Server-to-server connections with direct TLS (XEP-0368, ALPN
    /// `xmpp-server`).
    pub s2s_direct_tls: Vec<String>,
    /// HTTP (`src/http/`): callbacks of HTTP backends such as the SMS
    /// service. None by default.
    pub http: Vec<String>,
}

/// Federation (`[s2s]`): server-to-server streams with other domains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2s {
    /// Federate at all. Off: stanzas for other domains bounce with
    /// `remote-server-not-found` and no s2s port is opened.
    pub enabled: bool,
    /// Streams must be encrypted (STARTTLS or direct TLS) both ways.
    pub require_encryption: bool,
    /// A peer must present a certificate that verifies for its domain
    /// (against the system's CA store or `ca_file`); otherwise only the
    /// domains in `insecure_domains` are accepted, with dialback.
    pub require_valid_certs: bool,
    /// Peers whose unverifiable (e.g. self-signed) certificates are
    /// accepted, authenticated by Server Dialback.
    pub insecure_domains: Vec<String>,
    /// PEM file of CA certificates trusted for peers' certificates, in
    /// addition to the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Seconds a stream with no traffic stays open.
    pub idle_timeout_s: u64,
    /// Seconds to resolve, connect and authenticate to a peer before its
    /// queued stanzas bounce with `remote-server-timeout`.
    pub connect_timeout_s: u64,
    /// Stanzas queued for one peer while its stream connects.
    pub max_queue: usize,
    /// Sustained bytes per second read from one s2s stream (it carries
    /// many users' traffic). Reading pauses beyond it; a peer that stays
    /// beyond it for 5 s in a row is cut with `policy-violation`.
    pub bytes_per_sec: usize,
    /// Static addresses for peers ("partner.example" = "10.0.0.5:5269"),
    /// used instead of DNS.
    pub hosts: std::collections::BTreeMap<String, String>,
    /// Offer and request bidirectional streams (XEP-0288): one TCP
    /// connection carries a peer's traffic both ways.
    pub bidi: bool,
}

impl Default for S2s {
    fn default() -> Self {
        S2s {
            enabled: true,
            require_encryption: true,
            require_valid_certs: true,
            insecure_domains: Vec::new(),
            ca_file: None,
            idle_timeout_s: 600,
            connect_timeout_s: 30,
            max_queue: 1000,
            bytes_per_sec: 4 << 20,
            hosts: Default::default(),
            bidi: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest top-level element (stanza) accepted, in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting accepted inside a stanza.
    pub max_xml_depth: usize,
    /// Seconds a connection may take from TCP accept to a bound resource.
    pub negotiation_timeout_secs: u64,
    /// Seconds of silence from a client after which the server pings it;
    /// a client that stays silent for as long again is disconnected.
    pub idle_timeout_secs: u64,
    /// Sustained bytes per second read from one client connection; reading
    /// pauses beyond it (a flood slows down, nobody else notices).
    pub c2s_bytes_per_sec: usize,
    /// Simultaneous connections from one IP address (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Resources one account may have bound at once (0 = no limit).
    pub max_resources_per_account: usize,
    /// Largest presence stanza a client may send (status, extensions);
    /// presence is copied to every contact, so it is bounded apart.
    pub max_presence_bytes: usize,
    /// Failed logins from one IP address answered normally before further
    /// attempts are refused for a while.
    pub auth_failures_per_ip: u32,
    /// Failed logins for one account after which each further failure is
    /// answered only after a delay.
    pub auth_failures_per_account: u32,
    /// Messages kept for one offline user; more are bounced.
    pub max_offline_messages: usize,
    /// Bytes of offline messages kept for one user; more are bounced.
    pub max_offline_bytes: usize,
    /// Bytes of private XML storage (XEP-0049) one account may keep.
    pub max_private_bytes: usize,
    /// Largest vCard (XEP-0054) an account may store, in bytes.
    pub max_vcard_bytes: usize,
    /// Bytes of PEP items (XEP-0163: avatars, bookmarks, OMEMO keys…) one
    /// account may keep, all its nodes together.
    pub max_pep_bytes: usize,
    /// Stanzas queued for one connection before it is considered stuck.
    pub session_queue: usize,
    /// Bytes queued for one connection before it is considered stuck.
    pub session_queue_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter, e.g. "info" or "confab=debug".
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            listen: Listen::default(),
            tls: None,
            limits: Limits::default(),
            sm: Sm::default(),
            mam: Mam::default(),
            inbox: Inbox::default(),
            muc: Muc::default(),
            s2s: S2s::default(),
            dnd_defers_delivery: true,
            admins: Vec::new(),
            authz: Authz::default(),
            links: Default::default(),
            turn: None,
            sms: Sms::default(),
            log: Log::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            c2s: vec!["127.0.0.1:5222".into()],
            c2s_direct_tls: vec!["127.0.0.1:5223".into()],
            s2s: vec!["127.0.0.1:5269".into()],
            s2s_direct_tls: Vec::new(),
            http: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_xml_depth: 64,
            negotiation_timeout_secs: 30,
            idle_timeout_secs: 300,
            c2s_bytes_per_sec: 262_144,
            max_connections_per_ip: 1024,
            max_resources_per_account: 32,
            max_presence_bytes: 16 * 1024,
            auth_failures_per_ip: 20,
            auth_failures_per_account: 10,
            max_offline_messages: 1000,
            max_offline_bytes: 10 << 20,
            max_private_bytes: 1 << 20,
            max_vcard_bytes: 128 * 1024,
            max_pep_bytes: 4 << 20,
            session_queue: 4096,
            session_queue_bytes: 2 << 20,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

/// A configuration error: which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A bare domain name (no node, no resource).
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && !d.contains('@')
        && !d.contains('/')
        && xmpp_parsers::jid::BareJid::new(d).is_ok()
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Parse TOML text and validate it.
    pub fn from_toml(text: &str) -> Result<Config, Vec<ConfigError>> {
        let config: Config = toml::from_str(text).map_err(|e| vec![toml_error(&e, text)])?;
        config.validate()?;
        Ok(config)
    }

    /// Read a file, or the built-in defaults when `path` is None and the
    /// default path does not exist. Returns the source used.
    pub fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), Vec<ConfigError>> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                p.exists().then_some(p)
            }
        };
        match path {
            None => {
                let c = Config::default();
                c.validate()?;
                Ok((c, None))
            }
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| vec![err("", format!("cannot read {}: {e}", p.display()))])?;
                let c = Config::from_toml(&text).map_err(|errs| {
                    errs.into_iter()
                        .map(|mut e| {
                            e.message = format!("{} (in {})", e.message, p.display());
                            e
                        })
                        .collect::<Vec<_>>()
                })?;
                Ok((c, Some(p)))
            }
        }
    }

    /// Check every value; all problems are reported, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if let Err(e) = xmpp_parsers::jid::BareJid::new(&self.domain) {
            errors.push(err(
                "domain",
                format!(
                    "expected a domain name like \"example.com\", got {:?} ({e})",
                    self.domain
                ),
            ));
        } else if self.domain.contains('@') || self.domain.contains('/') || self.domain.is_empty() {
            errors.push(err(
                "domain",
                format!(
                    "expected a bare domain name like \"example.com\", got {:?}",
                    self.domain
                ),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            errors.push(err(
                "data_dir",
                "expected a directory path, got an empty string",
            ));
        }
        for (key, list) in [
            ("listen.c2s", &self.listen.c2s),
            ("listen.c2s_direct_tls", &self.listen.c2s_direct_tls),
            ("listen.s2s", &self.listen.s2s),
            ("listen.s2s_direct_tls", &self.listen.s2s_direct_tls),
            ("listen.http", &self.listen.http),
        ] {
            for (i, a) in list.iter().enumerate() {
                if a.parse::<SocketAddr>().is_err() {
                    errors.push(err(
                        format!("{key}[{i}]"),
                        format!("expected an IP address and port like \"0.0.0.0:5222\", got {a:?}"),
                    ));
                }
            }
        }
        if self.listen.c2s.is_empty() && self.listen.c2s_direct_tls.is_empty() {
            errors.push(err(
                "listen",
                "expected at least one address in c2s or c2s_direct_tls",
            ));
        }
        if let Some(tls) = &self.tls {
            for (key, p) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !p.is_file() {
                    errors.push(err(
                        key,
                        format!(
                            "expected a readable PEM file, {} does not exist",
                            p.display()
                        ),
                    ));
                }
            }
        }
        let l = &self.limits;
        let ranges: [(&str, u64, u64, u64); 25] = [
            (
                "limits.max_stanza_bytes",
                l.max_stanza_bytes as u64,
                10_000,
                64 * 1024 * 1024,
            ),
            ("limits.max_xml_depth", l.max_xml_depth as u64, 8, 256),
            (
                "limits.negotiation_timeout_secs",
                l.negotiation_timeout_secs,
                1,
                3600,
            ),
            ("limits.idle_timeout_secs", l.idle_timeout_secs, 5, 86_400),
            (
                "limits.c2s_bytes_per_sec",
                l.c2s_bytes_per_sec as u64,
                1024,
                u64::MAX,
            ),
            (
                "limits.auth_failures_per_ip",
                l.auth_failures_per_ip as u64,
                1,
                1_000_000,
            ),
            (
                "limits.auth_failures_per_account",
                l.auth_failures_per_account as u64,
                1,
                1_000_000,
            ),
            (
                "limits.max_offline_messages",
                l.max_offline_messages as u64,
                0,
                10_000_000,
            ),
            (
                "limits.session_queue",
                l.session_queue as u64,
                16,
                1_000_000,
            ),
            (
                "limits.session_queue_bytes",
                l.session_queue_bytes as u64,
                // A queue must hold at least two of the largest stanzas.
                (l.max_stanza_bytes as u64).saturating_mul(2),
                u64::from(u32::MAX),
            ),
            (
                "limits.max_resources_per_account",
                l.max_resources_per_account as u64,
                0,
                1_000_000,
            ),
            (
                "limits.max_presence_bytes",
                l.max_presence_bytes as u64,
                512,
                l.max_stanza_bytes as u64,
            ),
            (
                "limits.max_offline_bytes",
                l.max_offline_bytes as u64,
                0,
                u64::MAX,
            ),
            (
                "limits.max_private_bytes",
                l.max_private_bytes as u64,
                0,
                u64::MAX,
            ),
            (
                "limits.max_vcard_bytes",
                l.max_vcard_bytes as u64,
                0,
                u64::MAX,
            ),
            ("limits.max_pep_bytes", l.max_pep_bytes as u64, 0, u64::MAX),
            ("sm.resume_timeout_s", self.sm.resume_timeout_s, 0, 86_400),
            ("sm.max_unacked", self.sm.max_unacked as u64, 5, 100_000),
            // A page is sent unacknowledged: it must fit well within what a
            // stream-managed client may leave unacknowledged.
            (
                "mam.max_page",
                self.mam.max_page as u64,
                1,
                (self.sm.max_unacked as u64 / 2).clamp(1, 10_000),
            ),
            (
                "limits.max_connections_per_ip",
                l.max_connections_per_ip as u64,
                0,
                u64::MAX,
            ),
            // A room of one is a note; XEP-0045 rooms beyond a few
            // thousand members are another kind of service.
            ("muc.max_members", self.muc.max_members as u64, 2, 10_000),
            ("s2s.idle_timeout_s", self.s2s.idle_timeout_s, 5, 86_400),
            ("s2s.connect_timeout_s", self.s2s.connect_timeout_s, 1, 600),
            ("s2s.max_queue", self.s2s.max_queue as u64, 1, 1_000_000),
            (
                "s2s.bytes_per_sec",
                self.s2s.bytes_per_sec as u64,
                1024,
                u64::MAX,
            ),
        ];
        for (key, v, min, max) in ranges {
            if v < min || v > max {
                let range = if max == u64::MAX {
                    format!("at least {min}")
                } else {
                    format!("between {min} and {max}")
                };
                errors.push(err(
                    key,
                    format!("expected a whole number {range}, got {v}"),
                ));
            }
        }
        if let Some(d) = &self.muc.domain {
            let ok = xmpp_parsers::jid::BareJid::new(d)
                .is_ok_and(|j| j.node().is_none() && !d.is_empty());
            if !ok {
                errors.push(err(
                    "muc.domain",
                    format!("expected a domain name like \"rooms.example.com\", got {d:?}"),
                ));
            } else if *d == self.domain {
                errors.push(err(
                    "muc.domain",
                    "expected a domain of its own (like \"rooms.\" + domain), not the server's domain",
                ));
            }
        }
        let lk = &self.links;
        for (key, v, max) in [
            ("links.country_code", &lk.country_code, 3),
            ("links.area_code", &lk.area_code, 6),
            ("links.base_number", &lk.base_number, 12),
            ("links.trunk_prefix", &lk.trunk_prefix, 4),
            ("links.international_prefix", &lk.international_prefix, 4),
        ] {
            if v.len() > max || !v.bytes().all(|b| b.is_ascii_digit()) {
                errors.push(err(
                    key,
                    format!("expected up to {max} digits (or \"\"), got {v:?}"),
                ));
            }
        }
        if lk.extension_digits > 8 {
            errors.push(err(
                "links.extension_digits",
                format!(
                    "expected a whole number between 0 and 8, got {}",
                    lk.extension_digits
                ),
            ));
        }
        match self.sms.backend.as_deref() {
            None => {}
            Some("smpp") if self.sms.smpp.is_none() => errors.push(err(
                "sms.smpp",
                "backend = \"smpp\" needs an [sms.smpp] section (host, system_id, password)",
            )),
            Some("smpp") => {}
            Some("http") if self.sms.http.is_none() => errors.push(err(
                "sms.http",
                "backend = \"http\" needs an [sms.http] section (url, token)",
            )),
            Some("http") => {}
            Some(b) => errors.push(err(
                "sms.backend",
                format!("expected \"smpp\" or \"http\", got {b:?}"),
            )),
        }
        if !(1..=255).contains(&self.sms.max_parts) {
            errors.push(err(
                "sms.max_parts",
                format!(
                    "expected a whole number between 1 and 255, got {}",
                    self.sms.max_parts
                ),
            ));
        }
        if let Some(s) = &self.sms.smpp {
            if s.host.is_empty() {
                errors.push(err("sms.smpp.host", "expected a host name or address"));
            }
            if s.system_id.is_empty() || s.system_id.len() > 15 {
                errors.push(err("sms.smpp.system_id", "expected 1 to 15 characters"));
            }
            if s.password.len() > 8 {
                errors.push(err(
                    "sms.smpp.password",
                    "SMPP 3.4 passwords have at most 8 characters",
                ));
            }
            if !(1..=1000).contains(&s.window) {
                errors.push(err(
                    "sms.smpp.window",
                    format!("expected 1 to 1000, got {}", s.window),
                ));
            }
            if !(5..=3600).contains(&s.enquire_link_s) {
                errors.push(err(
                    "sms.smpp.enquire_link_s",
                    format!("expected 5 to 3600, got {}", s.enquire_link_s),
                ));
            }
        }
        if let Some(h) = &self.sms.http {
            if let Err(e) = crate::http::client::Target::parse(&h.url) {
                errors.push(err("sms.http.url", format!("{e}, got {:?}", h.url)));
            }
            if h.token.is_empty() {
                errors.push(err("sms.http.token", "expected the service's API token"));
            }
            if h.callback_token.as_deref() == Some("") {
                errors.push(err(
                    "sms.http.callback_token",
                    "expected a token (leave it out to use token)",
                ));
            }
            if !(1..=300).contains(&h.timeout_s) {
                errors.push(err(
                    "sms.http.timeout_s",
                    format!("expected 1 to 300, got {}", h.timeout_s),
                ));
            }
            if let Some(ca) = &h.ca_file {
                if !ca.is_file() {
                    errors.push(err(
                        "sms.http.ca_file",
                        format!(
                            "expected a readable PEM file, {} does not exist",
                            ca.display()
                        ),
                    ));
                }
            }
        }
        if let Some(r) = &self.sms.default_recipient {
            let ok = xmpp_parsers::jid::BareJid::new(r)
                .is_ok_and(|j| j.node().is_some() && j.domain().as_str() == self.domain);
            if !ok {
                errors.push(err(
                    "sms.default_recipient",
                    format!(
                        "expected an account of this server like \"reception@{}\", got {r:?}",
                        self.domain
                    ),
                ));
            }
        }
        if let Some(t) = &self.turn {
            if t.host.is_empty() || t.host.contains(|c: char| c.is_whitespace() || c == '/') {
                errors.push(err(
                    "turn.host",
                    format!(
                        "expected a host name or address like \"turn.example.com\", got {:?}",
                        t.host
                    ),
                ));
            }
            if t.port == 0 {
                errors.push(err(
                    "turn.port",
                    "expected a port between 1 and 65535, got 0",
                ));
            }
            if t.secret.is_empty() {
                errors.push(err(
                    "turn.secret",
                    "expected coturn's static-auth-secret, got an empty string",
                ));
            }
            if !(60..=30 * 86_400).contains(&t.ttl_s) {
                errors.push(err(
                    "turn.ttl_s",
                    format!(
                        "expected a whole number between 60 and 2592000, got {}",
                        t.ttl_s
                    ),
                ));
            }
        }
        for a in &self.admins {
            let ok = xmpp_parsers::jid::BareJid::new(a).is_ok_and(|j| {
                j.node().is_some() && j.domain().as_str() == self.domain && j.as_str() == a
            });
            if !ok {
                errors.push(err(
                    "admins",
                    format!(
                        "expected accounts of this server like \"admin@{}\" (bare, normalised), got {a:?}",
                        self.domain
                    ),
                ));
            }
        }
        for d in &self.s2s.insecure_domains {
            if !is_domain(d) {
                errors.push(err(
                    "s2s.insecure_domains",
                    format!("expected domain names like \"partner.example\", got {d:?}"),
                ));
            }
        }
        if let Some(ca) = &self.s2s.ca_file {
            if !ca.is_file() {
                errors.push(err(
                    "s2s.ca_file",
                    format!(
                        "expected a readable PEM file, {} does not exist",
                        ca.display()
                    ),
                ));
            }
        }
        for (d, a) in &self.s2s.hosts {
            if !is_domain(d) {
                errors.push(err(
                    format!("s2s.hosts.{d}"),
                    format!("expected a domain name as the key, got {d:?}"),
                ));
            } else if crate::s2s::resolve::parse_host_port(a).is_none() {
                errors.push(err(
                    format!("s2s.hosts.{d}"),
                    format!("expected \"host:port\" like \"10.0.0.5:5269\", got {a:?}"),
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errors.push(err(
                "log.level",
                format!("expected a level (error, warn, info, debug, trace) or a filter like \"confab=debug\", got {:?}", self.log.level),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn c2s_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .c2s
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    pub fn c2s_direct_tls_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .c2s_direct_tls
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    pub fn s2s_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .s2s
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    pub fn s2s_direct_tls_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .s2s_direct_tls
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .http
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    pub fn negotiation_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.negotiation_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_secs)
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// Turn a toml/serde error into one that names the key path.
fn toml_error(e: &toml::de::Error, text: &str) -> ConfigError {
    let msg = e.message().to_string();
    let key = e
        .span()
        .and_then(|span| key_at(text, span.start))
        .unwrap_or_default();
    let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    let message = if line > 0 {
        format!("{msg} (line {line}, column {col})")
    } else {
        msg
    };
    err(key, message)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count() + 1)
        .unwrap_or(1);
    (line, col)
}

/// The dotted key path of the line at `offset`: the enclosing `[table]`
/// plus the key on that line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let end = line_start + line.len();
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            table = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if offset < end {
                return Some(table);
            }
        } else if offset < end {
            let key = trimmed.split('=').next().unwrap_or("").trim();
            if key.is_empty() {
                return (!table.is_empty()).then_some(table);
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
        line_start = end;
    }
    (!table.is_empty()).then_some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.c2s_addrs(), vec!["127.0.0.1:5222".parse().unwrap()]);
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/confab.example.toml");
        // The example names certificate files that do not exist here.
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(config.domain, "example.com");
        assert_eq!(config.limits.max_stanza_bytes, 262_144);
    }

    #[test]
    fn unknown_key_is_named() {
        let errs = Config::from_toml("domain = \"a.example\"\n[limits]\nmax_stanza_byte = 5\n")
            .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].key, "limits.max_stanza_byte");
        assert!(
            errs[0].message.contains("unknown field"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn bad_type_is_named() {
        let errs = Config::from_toml("[limits]\nmax_stanza_bytes = \"big\"\n").unwrap_err();
        assert_eq!(errs[0].key, "limits.max_stanza_bytes");
    }

    #[test]
    fn bad_values_are_all_reported() {
        let errs = Config::from_toml(
            "domain = \"not a domain@\"\n[listen]\nc2s = [\"nonsense\"]\n[limits]\nmax_stanza_bytes = 10\n",
        )
        .unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"domain"), "{keys:?}");
        assert!(keys.contains(&"listen.c2s[0]"), "{keys:?}");
        assert!(keys.contains(&"limits.max_stanza_bytes"), "{keys:?}");
    }
}

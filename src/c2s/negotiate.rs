//! Stream negotiation (RFC 6120 §4–§7): stream headers, STARTTLS (required
//! before SASL), SASL, resource binding. Bounded as a whole by
//! `limits.negotiation_timeout_secs`.

use std::sync::Arc;

use base64::Engine;
use minidom::Element;
use xmpp_parsers::jid::{BareJid, FullJid, ResourcePart};
use xmpp_parsers::stream_error::DefinedCondition as SC;

use super::ClientState;
use crate::net::conn::{ConnError, XmlConn};
use crate::sasl::scram::{ScramHash, ScramServer};
use crate::sasl::{plain, ChannelBindings};
use crate::server::Ctx;
use crate::sessions::{self, Inbox};
use crate::stanza::{self, element, random_id, Kind};
use crate::xml::{ns, writer, Frame, ReadError, StreamHeader};

/// A successfully bound session, ready for the session loop.
pub struct Bound {
    pub state: ClientState,
    pub inbox: Inbox,
    /// Stanzas taken from the mailbox and not yet written (while the
    /// session had no connection, or when a write failed).
    pub pending: Vec<crate::sessions::Queued>,
    /// Set when the session was just resumed (XEP-0198): the `h` the
    /// client sent.
    pub resumed: Option<u32>,
}

/// How negotiation ended without a session.
pub(crate) enum Fail {
    /// Send this stream error, then close.
    Stream(SC, String),
    /// The peer is gone; just close.
    Closed,
    /// The peer ended its stream with a stream error: close ours, with no
    /// error of our own (RFC 6120 §4.9.1.1).
    PeerError,
}

fn fail(cond: SC, text: &str) -> Fail {
    Fail::Stream(cond, text.to_string())
}

/// The stream error for a read problem.
pub(crate) fn read_failure(e: ConnError) -> Fail {
    match e {
        ConnError::Eof | ConnError::Io(_) => Fail::Closed,
        ConnError::Xml(x) => {
            let cond = match &x {
                ReadError::NotWellFormed(_) => SC::NotWellFormed,
                ReadError::RestrictedXml(_) => SC::RestrictedXml,
                ReadError::UnsupportedEncoding => SC::UnsupportedEncoding,
                ReadError::BadNamespacePrefix => SC::BadNamespacePrefix,
                ReadError::PolicyViolation(_) => SC::PolicyViolation,
            };
            Fail::Stream(cond, x.to_string())
        }
    }
}

/// Most failed SASL attempts allowed on one stream (RFC 6120 §6.4.5).
const MAX_SASL_ATTEMPTS: u32 = 5;
/// Largest SASL payload accepted (decoded).
const MAX_SASL_BYTES: usize = 4096;

struct Negotiation {
    header_sent: bool,
    /// Our stream header, not yet written.
    pending: Vec<u8>,
    stream_id: String,
    lang: Option<String>,
    authed: Option<BareJid>,
    sasl_failures: u32,
    /// Channel bindings of the TLS connection (set once TLS is up).
    bindings: ChannelBindings,
}

/// Negotiate a client stream. Returns the connection and the bound session,
/// or `None` when the stream ended (errors already sent).
pub async fn run(
    ctx: &Arc<Ctx>,
    mut conn: Box<XmlConn>,
    direct_tls: bool,
) -> Option<(Box<XmlConn>, Box<Bound>)> {
    let mut neg = Negotiation {
        header_sent: false,
        pending: Vec::new(),
        stream_id: String::new(),
        lang: None,
        authed: None,
        sasl_failures: 0,
        bindings: ChannelBindings::default(),
    };
    let mut shutdown = ctx.shutdown_signal();
    let timeout = ctx.config.negotiation_timeout();
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, neg.negotiate(ctx, &mut conn, direct_tls)) => match r {
            Ok(r) => r,
            Err(_) => Err(fail(SC::ConnectionTimeout, "stream negotiation took too long")),
        },
        _ = crate::server::shutdown_requested(&mut shutdown) => Err(fail(SC::SystemShutdown, "server shutting down")),
    };
    match outcome {
        Ok(bound) => Some((conn, bound)),
        Err(Fail::Stream(cond, text)) => {
            tracing::debug!(peer = %conn.peer, condition = %cond, %text, "stream error during negotiation");
            if matches!(conn.io, crate::net::conn::Transport::Gone) {
                return None;
            }
            if !neg.header_sent {
                neg.send_header(ctx, None);
            }
            if !neg.pending.is_empty() {
                let _ = conn.write_all(&std::mem::take(&mut neg.pending)).await;
            }
            super::close_with_error(&mut conn, cond, Some(&text)).await;
            None
        }
        Err(Fail::Closed) => {
            conn.shutdown().await;
            None
        }
        Err(Fail::PeerError) => {
            tracing::debug!(peer = %conn.peer, "the client ended its stream with an error");
            let mut out = std::mem::take(&mut neg.pending);
            if neg.header_sent {
                out.extend_from_slice(writer::STREAM_CLOSE);
            }
            let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, conn.write_all(&out)).await;
            conn.shutdown().await;
            None
        }
    }
}

impl Negotiation {
    /// Our stream header, written together with what follows it (the
    /// features, or a stream error): one write instead of two.
    fn send_header(&mut self, ctx: &Ctx, to: Option<&str>) {
        self.stream_id = random_id(12);
        let lang = self.lang.as_deref().unwrap_or("en");
        self.pending = writer::stream_header(&ctx.domain, to, &self.stream_id, ns::CLIENT, lang);
        self.header_sent = true;
    }

    async fn send(&mut self, conn: &mut XmlConn, el: &Element) -> Result<(), Fail> {
        let mut out = std::mem::take(&mut self.pending);
        writer::write_stream_element(el, &mut out);
        conn.write_all(&out).await.map_err(|_| Fail::Closed)
    }

    async fn next_element(&self, conn: &mut XmlConn) -> Result<Element, Fail> {
        match conn.read_frame().await {
            Ok(Frame::Element(el)) if el.is("error", ns::STREAM) => Err(Fail::PeerError),
            Ok(Frame::Element(el)) => Ok(el),
            Ok(Frame::Close) => Err(Fail::Closed),
            Ok(Frame::Header(_)) => Err(fail(SC::NotWellFormed, "unexpected stream header")),
            Err(e) => Err(read_failure(e)),
        }
    }

    /// Validate the peer's stream header and answer with ours.
    async fn accept_header(&mut self, ctx: &Ctx, conn: &mut XmlConn) -> Result<(), Fail> {
        self.header_sent = false;
        let h: StreamHeader = match conn.read_frame().await {
            Ok(Frame::Header(h)) => h,
            Ok(_) => return Err(fail(SC::NotWellFormed, "expected a stream header")),
            Err(e) => return Err(read_failure(e)),
        };
        if h.lang.is_some() {
            self.lang = h.lang.clone();
        }
        let reply_to = h
            .from
            .as_deref()
            .filter(|f| xmpp_parsers::jid::Jid::new(f).is_ok());
        self.send_header(ctx, reply_to);
        if h.element_ns != ns::STREAM || h.element_name != "stream" {
            return Err(fail(
                SC::InvalidNamespace,
                "the stream element must be {http://etherx.jabber.org/streams}stream",
            ));
        }
        if h.default_ns.as_deref() != Some(ns::CLIENT) {
            return Err(fail(
                SC::InvalidNamespace,
                "this port serves the jabber:client namespace",
            ));
        }
        let version_ok = h
            .version
            .as_deref()
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(major, minor)| major == "1" && minor.parse::<u32>().is_ok());
        if !version_ok {
            return Err(fail(
                SC::UnsupportedVersion,
                "only XMPP 1.0 streams are supported",
            ));
        }
        let to_ok =
            h.to.as_deref()
                .and_then(|t| BareJid::new(t).ok())
                .is_some_and(|t| t.node().is_none() && t.domain().as_str() == ctx.domain);
        if !to_ok {
            return Err(fail(
                SC::HostUnknown,
                "this server does not serve that domain",
            ));
        }
        Ok(())
    }

    /// XEP-0478: the limits of this stage of the stream (smaller before
    /// authentication).
    fn limits_element(ctx: &Ctx, conn: &XmlConn) -> Element {
        let mut l = Element::bare("limits", ns::STREAM_LIMITS);
        let mut mb = Element::bare("max-bytes", ns::STREAM_LIMITS);
        mb.append_text(conn.limits().max_stanza_bytes.to_string());
        l.append_child(mb);
        let mut idle = Element::bare("idle-seconds", ns::STREAM_LIMITS);
        idle.append_text(ctx.config.limits.idle_timeout_secs.to_string());
        l.append_child(idle);
        l
    }

    fn mechanisms(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.bindings.any() {
            m.push(ScramHash::Sha256.mechanism(true));
            m.push(ScramHash::Sha1.mechanism(true));
        }
        m.push(ScramHash::Sha256.mechanism(false));
        m.push(ScramHash::Sha1.mechanism(false));
        m.push("PLAIN");
        m
    }

    fn features(&self, ctx: &Ctx, conn: &XmlConn) -> Element {
        let mut f = Element::bare("features", ns::STREAM);
        if !conn.is_tls() {
            let mut st = Element::bare("starttls", ns::TLS);
            st.append_child(Element::bare("required", ns::TLS));
            f.append_child(st);
        } else if self.authed.is_none() {
            let mut mechs = Element::bare("mechanisms", ns::SASL);
            for m in self.mechanisms() {
                let mut e = Element::bare("mechanism", ns::SASL);
                e.append_text(m);
                mechs.append_child(e);
            }
            f.append_child(mechs);
            if self.bindings.any() {
                // XEP-0440: which channel-binding types can be used.
                let mut cb = Element::bare("sasl-channel-binding", ns::SASL_CB);
                for t in self.bindings.types() {
                    cb.append_child(element("channel-binding", ns::SASL_CB, &[("type", t)]));
                }
                f.append_child(cb);
            }
        } else {
            f.append_child(Element::bare("bind", ns::BIND));
            f.append_child(Element::bare("sm", ns::SM));
            f.append_child(Element::bare("csi", ns::CSI));
            let mut session = Element::bare("session", ns::SESSION);
            session.append_child(Element::bare("optional", ns::SESSION));
            f.append_child(session);
            f.append_child(Element::bare("ver", ns::ROSTERVER));
            f.append_child(Element::bare("sub", ns::PREAPPROVAL));
        }
        f.append_child(Self::limits_element(ctx, conn));
        f
    }

    async fn negotiate(
        &mut self,
        ctx: &Arc<Ctx>,
        conn: &mut XmlConn,
        direct_tls: bool,
    ) -> Result<Box<Bound>, Fail> {
        if direct_tls {
            self.start_tls(ctx, conn, true).await?;
        }
        loop {
            self.accept_header(ctx, conn).await?;
            let features = self.features(ctx, conn);
            self.send(conn, &features).await?;
            if !conn.is_tls() {
                self.await_starttls(ctx, conn).await?;
            } else if self.authed.is_none() {
                self.await_sasl(ctx, conn).await?;
            } else {
                return self.await_bind(ctx, conn).await;
            }
        }
    }

    async fn start_tls(&mut self, ctx: &Ctx, conn: &mut XmlConn, direct: bool) -> Result<(), Fail> {
        let config = if direct {
            ctx.tls.direct.clone()
        } else {
            ctx.tls.starttls.clone()
        };
        if let Err(e) = conn.upgrade_tls(config).await {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            return Err(Fail::Closed);
        }
        self.bindings = conn.channel_bindings(&ctx.tls.server_end_point);
        if let Some((version, alpn)) = conn.tls_info() {
            tracing::debug!(peer = %conn.peer, %version, alpn = ?alpn, direct, "TLS established");
        }
        Ok(())
    }

    async fn await_starttls(&mut self, ctx: &Ctx, conn: &mut XmlConn) -> Result<(), Fail> {
        let el = self.next_element(conn).await?;
        if el.is("starttls", ns::TLS) {
            if !conn.is_drained() {
                // Data after <starttls/> before <proceed/>: plaintext that
                // would be read as if it came over TLS (CVE-2011-0411).
                self.send(conn, &Element::bare("failure", ns::TLS)).await?;
                let _ = conn.write_all(writer::STREAM_CLOSE).await;
                return Err(Fail::Closed);
            }
            self.send(conn, &Element::bare("proceed", ns::TLS)).await?;
            return self.start_tls(ctx, conn, false).await;
        }
        if Kind::of(&el).is_some() {
            return Err(fail(SC::NotAuthorized, "stanzas before authentication"));
        }
        Err(fail(
            SC::PolicyViolation,
            "STARTTLS is required on this server",
        ))
    }

    async fn await_sasl(&mut self, ctx: &Arc<Ctx>, conn: &mut XmlConn) -> Result<(), Fail> {
        loop {
            let el = self.next_element(conn).await?;
            if el.is("auth", ns::SASL) {
                if let Some(jid) = self.sasl(ctx, conn, &el).await? {
                    self.authed = Some(jid);
                    conn.set_limits(ctx.limits);
                    conn.reset_stream();
                    return Ok(());
                }
                self.sasl_failures += 1;
                if self.sasl_failures >= MAX_SASL_ATTEMPTS {
                    return Err(fail(
                        SC::PolicyViolation,
                        "too many failed authentication attempts",
                    ));
                }
                continue;
            }
            if el.is("abort", ns::SASL) {
                self.send(conn, &sasl_failure("aborted", None)).await?;
                continue;
            }
            if Kind::of(&el).is_some() {
                return Err(fail(SC::NotAuthorized, "stanzas before authentication"));
            }
            return Err(fail(
                SC::UnsupportedStanzaType,
                "expected SASL authentication",
            ));
        }
    }

    /// One SASL exchange. `Ok(Some(jid))` on success, `Ok(None)` after a
    /// failure was sent.
    async fn sasl(
        &mut self,
        ctx: &Arc<Ctx>,
        conn: &mut XmlConn,
        auth: &Element,
    ) -> Result<Option<BareJid>, Fail> {
        let ip = conn.peer.ip();
        let mech = auth.attr("mechanism").unwrap_or("").to_string();
        // Counted before anything is evaluated, so simultaneous attempts
        // cannot slip past the limit.
        let mut attempt = match ctx.throttle.begin(ip) {
            Ok(a) => a,
            Err(_) => {
                tracing::warn!(%ip, mechanism = %mech, "login refused: too many failures from this address");
                self.send(
                    conn,
                    &sasl_failure(
                        "temporary-auth-failure",
                        Some("too many failed attempts; try again later"),
                    ),
                )
                .await?;
                return Ok(None);
            }
        };
        let initial = match decode_sasl(&auth.text()) {
            Ok(d) => d,
            Err(cond) => {
                self.send(conn, &sasl_failure(cond, None)).await?;
                return Ok(None);
            }
        };
        let outcome = if mech == "PLAIN" {
            self.sasl_plain(ctx, conn, initial, &mut attempt).await?
        } else if let Some((hash, plus)) = ScramHash::from_mechanism(&mech) {
            if plus && !self.bindings.any() {
                self.send(conn, &sasl_failure("invalid-mechanism", None))
                    .await?;
                return Ok(None);
            }
            self.sasl_scram(ctx, conn, hash, plus, initial, &mut attempt)
                .await?
        } else {
            self.send(conn, &sasl_failure("invalid-mechanism", None))
                .await?;
            return Ok(None);
        };
        match outcome {
            SaslOutcome::Success(jid, data) => {
                let account = ctx.stores.accounts.get(&jid).await.ok().flatten();
                if account.is_some_and(|a| a.disabled) {
                    tracing::warn!(%ip, jid = %jid, "login refused: account disabled");
                    self.send(conn, &sasl_failure("account-disabled", None))
                        .await?;
                    return Ok(None);
                }
                attempt.succeeded();
                tracing::info!(%ip, jid = %jid, mechanism = %mech, "login");
                let mut success = Element::bare("success", ns::SASL);
                if let Some(d) = data {
                    success.append_text(base64::engine::general_purpose::STANDARD.encode(d));
                }
                self.send(conn, &success).await?;
                Ok(Some(jid))
            }
            SaslOutcome::Failure(cond, user) => {
                tracing::warn!(%ip, user = user.as_deref().unwrap_or("-"), mechanism = %mech, condition = cond, "failed login");
                attempt.failed();
                self.send(conn, &sasl_failure(cond, None)).await?;
                Ok(None)
            }
            SaslOutcome::Throttled(user) => {
                tracing::warn!(%ip, user = %user, mechanism = %mech, "login refused: too many failures for this account");
                self.send(
                    conn,
                    &sasl_failure(
                        "temporary-auth-failure",
                        Some("too many failed attempts for this account; try again later"),
                    ),
                )
                .await?;
                Ok(None)
            }
            SaslOutcome::Aborted => {
                self.send(conn, &sasl_failure("aborted", None)).await?;
                Ok(None)
            }
        }
    }

    /// Send a challenge and read the client's response.
    async fn challenge(&mut self, conn: &mut XmlConn, data: &[u8]) -> Result<Response, Fail> {
        let mut c = Element::bare("challenge", ns::SASL);
        if !data.is_empty() {
            c.append_text(base64::engine::general_purpose::STANDARD.encode(data));
        }
        self.send(conn, &c).await?;
        let el = self.next_element(conn).await?;
        if el.is("abort", ns::SASL) {
            return Ok(Response::Abort);
        }
        if !el.is("response", ns::SASL) {
            return Err(fail(SC::UnsupportedStanzaType, "expected a SASL response"));
        }
        Ok(match decode_sasl(&el.text()) {
            Ok(d) => Response::Data(d.unwrap_or_default()),
            Err(cond) => Response::Bad(cond),
        })
    }

    async fn sasl_plain(
        &mut self,
        ctx: &Arc<Ctx>,
        conn: &mut XmlConn,
        initial: Option<Vec<u8>>,
        attempt: &mut crate::auth::Attempt<'_>,
    ) -> Result<SaslOutcome, Fail> {
        let data = match initial {
            Some(d) => d,
            None => match self.challenge(conn, b"").await? {
                Response::Data(d) => d,
                Response::Bad(cond) => return Ok(SaslOutcome::Failure(cond, None)),
                Response::Abort => return Ok(SaslOutcome::Aborted),
            },
        };
        let msg = match plain::parse(&data) {
            Ok(m) => m,
            Err(e) => return Ok(SaslOutcome::Failure(e.condition(), None)),
        };
        let Some(jid) = crate::auth::account_jid(&msg.authcid, &ctx.domain) else {
            return Ok(SaslOutcome::Failure("not-authorized", None));
        };
        let user = Some(jid.to_string());
        if let Some(z) = &msg.authzid {
            if BareJid::new(z).ok().as_ref() != Some(&jid) {
                return Ok(SaslOutcome::Failure("invalid-authzid", user));
            }
        }
        if attempt.account(jid.as_str()).is_err() {
            return Ok(SaslOutcome::Throttled(jid.to_string()));
        }
        let account = ctx.stores.accounts.get(&jid).await.ok().flatten();
        let creds = account.map(|a| crate::auth::credentials(ScramHash::Sha256, &a.scram_sha256));
        let ok = crate::auth::verify_plain(creds, msg.password).await;
        Ok(if ok {
            SaslOutcome::Success(jid, None)
        } else {
            SaslOutcome::Failure("not-authorized", user)
        })
    }

    async fn sasl_scram(
        &mut self,
        ctx: &Arc<Ctx>,
        conn: &mut XmlConn,
        hash: ScramHash,
        plus: bool,
        initial: Option<Vec<u8>>,
        attempt: &mut crate::auth::Attempt<'_>,
    ) -> Result<SaslOutcome, Fail> {
        let mut scram = ScramServer::new(hash, plus, self.bindings.any(), self.bindings.clone());
        let first = match initial {
            Some(d) => d,
            None => match self.challenge(conn, b"").await? {
                Response::Data(d) => d,
                Response::Bad(cond) => return Ok(SaslOutcome::Failure(cond, None)),
                Response::Abort => return Ok(SaslOutcome::Aborted),
            },
        };
        let cf = match scram.client_first(&first) {
            Ok(cf) => cf,
            Err(e) => return Ok(SaslOutcome::Failure(e.condition(), None)),
        };
        let jid = crate::auth::account_jid(&cf.username, &ctx.domain);
        if let Some(j) = &jid {
            if attempt.account(j.as_str()).is_err() {
                return Ok(SaslOutcome::Throttled(j.to_string()));
            }
        }
        let account = match &jid {
            Some(j) => ctx.stores.accounts.get(j).await.ok().flatten(),
            None => None,
        };
        let creds = account.as_ref().map(|a| match hash {
            ScramHash::Sha1 => crate::auth::credentials(hash, &a.scram_sha1),
            ScramHash::Sha256 => crate::auth::credentials(hash, &a.scram_sha256),
        });
        let server_first = scram.server_first(creds.as_ref());
        let user = jid.as_ref().map(|j| j.to_string());
        let fin = match self.challenge(conn, &server_first).await? {
            Response::Data(d) => d,
            Response::Bad(cond) => return Ok(SaslOutcome::Failure(cond, user)),
            Response::Abort => return Ok(SaslOutcome::Aborted),
        };
        match scram.client_final(&fin) {
            Ok(server_final) => {
                let Some(jid) = jid.filter(|_| account.is_some()) else {
                    return Ok(SaslOutcome::Failure("not-authorized", user));
                };
                if let Some(z) = &cf.authzid {
                    if BareJid::new(z).ok().as_ref() != Some(&jid) {
                        return Ok(SaslOutcome::Failure("invalid-authzid", user));
                    }
                }
                Ok(SaslOutcome::Success(jid, Some(server_final)))
            }
            Err(e) => Ok(SaslOutcome::Failure(e.condition(), user)),
        }
    }

    async fn await_bind(&mut self, ctx: &Arc<Ctx>, conn: &mut XmlConn) -> Result<Box<Bound>, Fail> {
        let Some(bare) = self.authed.clone() else {
            return Err(fail(SC::InternalServerError, "not authenticated"));
        };
        loop {
            let el = self.next_element(conn).await?;
            let is_bind = el.is("iq", ns::CLIENT)
                && el.attr("type") == Some("set")
                && el.has_child("bind", ns::BIND);
            if el.is("resume", ns::SM) {
                if let Some(b) = self.resume(ctx, conn, &bare, &el).await? {
                    return Ok(b);
                }
                continue;
            }
            if el.is("enable", ns::SM) {
                // XEP-0198 §3: stream management is enabled after binding.
                self.send(conn, &crate::c2s::sm::failed("unexpected-request", None))
                    .await?;
                continue;
            }
            if !is_bind {
                if Kind::of(&el).is_some() {
                    return Err(fail(
                        SC::NotAuthorized,
                        "bind a resource before sending stanzas",
                    ));
                }
                return Err(fail(SC::UnsupportedStanzaType, "expected resource binding"));
            }
            let id = el.attr("id").unwrap_or("").to_string();
            let requested = el
                .get_child("bind", ns::BIND)
                .and_then(|b| b.get_child("resource", ns::BIND))
                .map(|r| r.text())
                .filter(|r| !r.trim().is_empty());
            let resource = match requested {
                None => format!("confab-{}", random_id(6)),
                Some(r) => r,
            };
            let full: FullJid = match ResourcePart::new(&resource) {
                Ok(r) => bare.with_resource(&r),
                Err(_) => {
                    let err = stanza::simple_error(
                        xmpp_parsers::stanza_error::DefinedCondition::BadRequest,
                        Some("invalid resource"),
                    );
                    if let Some(reply) = stanza::error_reply(&el, err) {
                        self.send(conn, &reply).await?;
                    }
                    continue;
                }
            };
            let id_no = ctx.sessions.next_id();
            let limits = &ctx.config.limits;
            let (mailbox, inbox) = sessions::mailbox(
                id_no,
                limits.session_queue,
                limits.session_queue_bytes,
                ctx.clock(),
            );
            match ctx
                .sessions
                .bind(full.clone(), mailbox, limits.max_resources_per_account)
            {
                Ok(Some(old)) => {
                    old.mailbox.close(
                        SC::Conflict,
                        "replaced by a new connection with the same resource",
                    );
                    // The old session's end announces nothing (the
                    // resource is the new session's now): it goes
                    // unavailable here, before the new one can send
                    // presence.
                    if old.available {
                        crate::modules::presence::resource_replaced(ctx, &full).await;
                    }
                }
                Ok(None) => {}
                Err(sessions::TooManyResources) => {
                    let err = stanza::simple_error(
                        xmpp_parsers::stanza_error::DefinedCondition::ResourceConstraint,
                        Some("this account has as many resources connected as it may"),
                    );
                    if let Some(reply) = stanza::error_reply(&el, err) {
                        self.send(conn, &reply).await?;
                    }
                    continue;
                }
            }
            // An account deleted while this login was under way: its
            // sessions were ended before this one was bound.
            if !ctx.stores.accounts.exists(&bare).unwrap_or(false) {
                ctx.sessions.unbind(&full, id_no);
                return Err(fail(SC::NotAuthorized, "account deleted"));
            }
            let mut result = element("iq", ns::CLIENT, &[("type", "result"), ("id", &id)]);
            let mut b = Element::bare("bind", ns::BIND);
            let mut j = Element::bare("jid", ns::BIND);
            j.append_text(full.as_str());
            b.append_child(j);
            result.append_child(b);
            if self.send(conn, &result).await.is_err() {
                ctx.sessions.unbind(&full, id_no);
                return Err(Fail::Closed);
            }
            tracing::debug!(jid = %full, "resource bound");
            // Boxed, like the connection: moved through the task's futures
            // as a pointer, not as a copy in each of their states.
            return Ok(Box::new(Bound {
                state: ClientState::new(full, id_no, self.lang.clone()),
                inbox,
                pending: Vec::new(),
                resumed: None,
            }));
        }
    }

    /// `<resume/>` (XEP-0198 §5) instead of binding: take the session over
    /// if it exists, is the same account's, and is still waiting (or still
    /// connected: its old connection is then closed). Otherwise
    /// `<failed/>`, and the client may bind a new resource.
    async fn resume(
        &mut self,
        ctx: &Arc<Ctx>,
        conn: &mut XmlConn,
        bare: &BareJid,
        el: &Element,
    ) -> Result<Option<Box<Bound>>, Fail> {
        let previd = el.attr("previd").unwrap_or("");
        let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
            self.send(conn, &crate::c2s::sm::failed("bad-request", None))
                .await?;
            return Ok(None);
        };
        match ctx.resumable.take(previd, bare).await {
            Some(mut b) => {
                b.resumed = Some(h);
                Ok(Some(b))
            }
            None => {
                self.send(conn, &crate::c2s::sm::failed("item-not-found", None))
                    .await?;
                Ok(None)
            }
        }
    }
}

enum Response {
    Data(Vec<u8>),
    Bad(&'static str),
    Abort,
}

enum SaslOutcome {
    Success(BareJid, Option<Vec<u8>>),
    /// Condition and, when known, the account tried.
    Failure(&'static str, Option<String>),
    /// Not evaluated: the account is under attack (see `auth::AuthThrottle`).
    Throttled(String),
    Aborted,
}

/// Decode the text of `<auth>`/`<response>`: `None` for no data, empty for
/// `=` (RFC 6120 §6.4.2).
fn decode_sasl(text: &str) -> Result<Option<Vec<u8>>, &'static str> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t == "=" {
        return Ok(Some(Vec::new()));
    }
    if t.len() > MAX_SASL_BYTES * 4 / 3 + 4 {
        return Err("malformed-request");
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map(Some)
        .map_err(|_| "incorrect-encoding")
}

fn sasl_failure(cond: &str, text: Option<&str>) -> Element {
    let mut f = Element::bare("failure", ns::SASL);
    f.append_child(Element::bare(cond, ns::SASL));
    if let Some(t) = text {
        let mut te = element("text", ns::SASL, &[]);
        if let Ok(n) = rxml::NcName::try_from("lang") {
            te.attrs_mut().insert(rxml::Namespace::XML, n, "en".into());
        }
        te.append_text(t);
        f.append_child(te);
    }
    f
}

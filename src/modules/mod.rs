//! The module registry. A feature is one file that registers, at start-up,
//! what it handles: IQ handlers by payload namespace, disco features,
//! stanza filters at named points of the pipeline, and event listeners.
//! The router consults the registry; the pipeline order is in `router.rs`.
//!
//! Modules never write to sockets: they return payloads or route stanzas.

use crate::stanza::Bare;
use std::collections::HashMap;
use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::stanza_error::StanzaError;

use crate::server::Ctx;
use crate::store::BoxFuture;

pub mod authz;
pub mod blocking;
pub mod calls;
pub mod carbons;
pub mod disco;
pub mod dnd;
pub mod extdisco;
pub mod history;
pub mod inbox;
pub mod links;
pub mod mam;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod private;
pub mod read_status;
pub mod roster;
pub mod session;
pub mod time;
pub mod vcard;
pub mod version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqType {
    Get,
    Set,
}

/// Whom an IQ handled by the server is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The server's own domain.
    Server,
    /// A local account's bare JID (the server answers on its behalf).
    Account(BareJid),
}

/// An IQ get/set the server handles.
#[derive(Debug, Clone)]
pub struct IqRequest {
    pub id: String,
    pub from: Jid,
    pub target: Target,
    pub typ: IqType,
    /// The one child element.
    pub payload: Element,
}

impl IqRequest {
    /// The requesting user's bare JID, if the request came from a local
    /// account.
    pub fn local_user(&self, ctx: &Ctx) -> Option<BareJid> {
        let bare = self.from.bare();
        (bare.domain().as_str() == ctx.domain && bare.node().is_some()).then_some(bare)
    }

    /// The request comes from the account it is addressed to (or from a
    /// local user to the server when `Target::Server`).
    pub fn is_self(&self) -> bool {
        match &self.target {
            Target::Account(a) => self.from.bare() == *a,
            Target::Server => false,
        }
    }
}

impl IqRequest {
    /// For requests only the account's owner may make (about their own
    /// archive, inbox, history): the owner's bare JID, else `forbidden`
    /// saying `why`.
    #[allow(clippy::result_large_err)]
    pub fn owner_only(&self, why: &str) -> Result<BareJid, StanzaError> {
        if self.is_self() {
            Ok(self.from.bare())
        } else {
            Err(crate::stanza::simple_error(
                xmpp_parsers::stanza_error::DefinedCondition::Forbidden,
                Some(why),
            ))
        }
    }
}

/// A `bad-request` error saying what is wrong.
pub fn bad_request(text: &str) -> StanzaError {
    crate::stanza::simple_error(
        xmpp_parsers::stanza_error::DefinedCondition::BadRequest,
        Some(text),
    )
}

/// A storage failure while answering: logged (what failed), and an
/// `internal-server-error` that says nothing more.
pub fn store_failed(what: &str, e: crate::store::StoreError) -> StanzaError {
    tracing::error!(error = %e, "{what} failed");
    crate::stanza::simple_error(
        xmpp_parsers::stanza_error::DefinedCondition::InternalServerError,
        None,
    )
}

/// `Ok(Some(payload))` → result with payload; `Ok(None)` → empty result.
pub type IqResult = Result<Option<Element>, StanzaError>;

pub trait IqHandler: Send + Sync {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult>;
}

/// What a filter decides about a stanza.
pub enum Verdict {
    Pass,
    /// Drop silently.
    Drop,
    /// Refuse with this error (sent back to the sender).
    Reject(Box<StanzaError>),
}

/// Points of the pipeline where filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// A stanza from a local session, stamped, before routing.
    Outbound,
    /// Before delivery to a local user (`to` is that user).
    Deliver,
}

/// Stages where processors may change a stanza on its way (filters only
/// look; processors change, and run after the filters of their point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// A stanza from a local client, stamped, after the `Outbound`
    /// filters, before routing.
    FromClient,
    /// A stanza about to be delivered to a local user (after the `Deliver`
    /// filters): where messages are archived and get their stanza-id.
    BeforeLocalDelivery,
    /// A stanza from a local user about to leave for another server, as
    /// the user sent it (before the border rules): the local side's
    /// archive and journal. Gateways run it too for a message they take
    /// out of XMPP (an SMS accepted for sending).
    BeforeRemote,
    /// A local user's presence on its way to one contact that subscribed
    /// to it (a broadcast, an answer to a probe, the presence a contact
    /// gets at login), before the user's `Outbound` filters; not directed
    /// presence, which goes as the user sent it.
    ToSubscriber,
    /// A stanza that came from another server, after the stream's spoof
    /// check and the border rules, before routing.
    FromRemote,
}

/// The direction a stanza crosses the federation border.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Leaving for another server.
    Out,
    /// Arriving from another server.
    In,
}

/// A rule for what may cross the border to or from other servers: it hands
/// the stanza back (maybe changed) or `None` to drop it.
pub trait BorderRule: Send + Sync {
    fn cross(&self, ctx: &Ctx, dir: Crossing, el: Element) -> Option<Element>;
}

pub trait Processor: Send + Sync {
    /// `from` and `to` are the stanza's addresses.
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()>;
}

/// A feature that may take a stanza for a local user before it is
/// delivered (after the `BeforeLocalDelivery` processors, so a message is
/// archived and has its stanza-id): it hands the stanza back to go on, or
/// returns `None` when it took it (and answers for it from then on).
pub trait Holder: Send + Sync {
    fn hold<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
        el: Element,
    ) -> BoxFuture<'a, Option<Element>>;
}

pub trait Filter: Send + Sync {
    /// `from` and `to` are the stanza's addresses.
    fn check<'a>(
        &'a self,
        ctx: &'a Ctx,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a Element,
    ) -> BoxFuture<'a, Verdict>;
}

/// Things that happen, for modules that react to them.
pub enum Event<'a> {
    /// A resource sent its first available presence.
    InitialPresence { full: &'a FullJid, priority: i8 },
    /// A resource broadcast presence: available (`el` is the presence
    /// as its contacts got it), or unavailable.
    Presence {
        full: &'a FullJid,
        available: bool,
        el: &'a Element,
    },
    /// A session ended (after its unavailable presence went out).
    SessionClosed { full: &'a FullJid },
    /// An account was deleted.
    UserDeleted { jid: &'a BareJid },
    /// `user` became a member of `room` (`joined`), or stopped being one;
    /// `name` is the room's name, `nick` the member's nickname in it.
    Membership {
        room: &'a BareJid,
        user: &'a BareJid,
        name: &'a str,
        nick: Option<&'a str>,
        joined: bool,
    },
    /// A user hid messages from their own view (`history.rs`): the whole
    /// conversation `with`, or the messages `ids`; asked by `by`.
    HistoryHidden {
        user: &'a BareJid,
        with: Option<&'a BareJid>,
        ids: &'a [u64],
        by: &'a Jid,
    },
}

pub trait Listener: Send + Sync {
    fn on_event<'a>(&'a self, ctx: &'a Arc<Ctx>, ev: &'a Event<'a>) -> BoxFuture<'a, ()>;
}

/// A service on a subdomain of the server (rooms., sms., upload.): the
/// router hands it every stanza addressed to its domain; it sends through
/// the router like a user does.
pub trait Component: Send + Sync {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, el: Element) -> BoxFuture<'a, ()>;
}

/// A feature whose conversations have one shared archive (rooms): kept
/// in the archive under the conversation's JID, each member seeing it
/// through a [`crate::store::ViewMask`] of what they deleted. The journal
/// and history deletion reach such conversations through this.
pub trait SharedConversations: Send + Sync {
    /// `user`'s view of `conv`, when `conv` is one of these conversations
    /// and `user` takes part in it.
    fn view<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
        conv: &'a BareJid,
    ) -> BoxFuture<'a, crate::store::StoreResult<Option<crate::store::ViewMask>>>;
    /// The conversations of this kind `user` takes part in.
    fn of_user<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
    ) -> BoxFuture<'a, crate::store::StoreResult<Vec<BareJid>>>;
    /// The conversation's name, if it has one.
    fn name<'a>(&'a self, ctx: &'a Arc<Ctx>, conv: &'a BareJid) -> BoxFuture<'a, Option<String>>;
    /// Replace `user`'s view of `conv`.
    fn set_view<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
        conv: &'a BareJid,
        view: crate::store::ViewMask,
    ) -> BoxFuture<'a, crate::store::StoreResult<()>>;
}

/// A feature that sends IQs of its own from the server and takes their
/// answers: results and errors addressed to the server whose id starts
/// with the prefix it registered.
pub trait IqResponses: Send + Sync {
    fn response<'a>(&'a self, ctx: &'a Arc<Ctx>, el: Element) -> BoxFuture<'a, ()>;
}

/// Personal eventing (XEP-0163) as other features use it: the server
/// publishing to, or retracting from, a node of an account on its own
/// (bookmarks of the rooms a user is a member of), with the notifications
/// a publish by the owner would cause.
pub trait PersonalEvents: Send + Sync {
    /// Publish `payload` as item `id` of `owner`'s `node`, creating the
    /// node with `config` if it does not exist. Durable once resolved.
    fn publish<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        node: &'a str,
        config: &'a crate::store::PepNodeConfig,
        id: &'a str,
        payload: Element,
    ) -> BoxFuture<'a, crate::store::StoreResult<()>>;
    /// Retract item `id` of `owner`'s `node`, if it is there.
    fn retract<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        node: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, crate::store::StoreResult<()>>;
}

/// What an account shows in service discovery beyond its features: items
/// and nodes (PEP nodes), for the requester `from`.
/// Nodes of the server's own disco (XEP-0030 node queries at the
/// domain): the ad-hoc command list and each command. `None`: not a node
/// of this feature.
/// A feature that works in the background while the server runs (the
/// SMS gateway's link to its SMS centre): started once the server
/// serves, stopped with it.
pub trait Service: Send + Sync {
    fn run(self: Arc<Self>, ctx: Arc<Ctx>) -> BoxFuture<'static, ()>;
}

pub trait ServerNodes: Send + Sync {
    fn items<'a>(&'a self, ctx: &'a Arc<Ctx>, from: &'a Jid, node: &'a str)
        -> Option<Vec<Element>>;
    fn info<'a>(&'a self, ctx: &'a Arc<Ctx>, from: &'a Jid, node: &'a str) -> Option<IqResult>;
}

pub trait AccountDisco: Send + Sync {
    /// disco#items of the account (no node).
    fn items<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        from: &'a Jid,
    ) -> BoxFuture<'a, Vec<Element>>;
    /// disco#info of one of the account's nodes: `None` when the node is
    /// not this feature's.
    fn node_info<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        from: &'a Jid,
        node: &'a str,
    ) -> BoxFuture<'a, Option<IqResult>>;
}

struct IqEntry {
    handler: Arc<dyn IqHandler>,
    server: bool,
    account: bool,
}

/// Collected at start-up; read-only afterwards.
#[derive(Default)]
pub struct Registry {
    iq: HashMap<&'static str, IqEntry>,
    server_features: Vec<&'static str>,
    account_features: Vec<&'static str>,
    filters: HashMap<Point, Vec<Arc<dyn Filter>>>,
    processors: HashMap<Stage, Vec<Arc<dyn Processor>>>,
    holders: Vec<Arc<dyn Holder>>,
    border: Vec<Arc<dyn BorderRule>>,
    listeners: Vec<Arc<dyn Listener>>,
    components: HashMap<String, Arc<dyn Component>>,
    shared: Vec<Arc<dyn SharedConversations>>,
    responses: Vec<(&'static str, Arc<dyn IqResponses>)>,
    personal_events: Option<Arc<dyn PersonalEvents>>,
    account_identities: Vec<(&'static str, &'static str)>,
    account_disco: Vec<Arc<dyn AccountDisco>>,
    server_nodes: Vec<Arc<dyn ServerNodes>>,
    every_resource: Vec<fn(&Element) -> bool>,
    services: Vec<Arc<dyn Service>>,
    http: Vec<(&'static str, Arc<dyn crate::http::HttpHandler>)>,
}

impl Registry {
    /// Handle IQs whose payload is in `ns`, addressed to the server and/or
    /// to accounts.
    pub fn iq(&mut self, ns: &'static str, server: bool, account: bool, h: Arc<dyn IqHandler>) {
        self.iq.insert(
            ns,
            IqEntry {
                handler: h,
                server,
                account,
            },
        );
    }

    pub fn server_feature(&mut self, var: &'static str) {
        if !self.server_features.contains(&var) {
            self.server_features.push(var);
        }
    }

    pub fn account_feature(&mut self, var: &'static str) {
        if !self.account_features.contains(&var) {
            self.account_features.push(var);
        }
    }

    pub fn filter(&mut self, point: Point, f: Arc<dyn Filter>) {
        self.filters.entry(point).or_default().push(f);
    }

    pub fn processor(&mut self, stage: Stage, p: Arc<dyn Processor>) {
        self.processors.entry(stage).or_default().push(p);
    }

    /// Run the processors of a stage, in registration order.
    pub fn holder(&mut self, h: Arc<dyn Holder>) {
        self.holders.push(h);
    }

    /// Offer a stanza for `user` to the holders, in order: the stanza to
    /// deliver, or `None` when one of them took it.
    pub async fn run_holders(
        &self,
        ctx: &Arc<Ctx>,
        user: &BareJid,
        mut el: Element,
    ) -> Option<Element> {
        for h in &self.holders {
            el = h.hold(ctx, user, el).await?;
        }
        Some(el)
    }

    pub async fn run_processors(
        &self,
        ctx: &Arc<Ctx>,
        stage: Stage,
        from: &Jid,
        to: &Jid,
        el: &mut Element,
    ) {
        if let Some(list) = self.processors.get(&stage) {
            for p in list {
                p.process(ctx, from, to, el).await;
            }
        }
    }

    /// A rule for stanzas crossing the federation border, both ways.
    pub fn border_rule(&mut self, b: Arc<dyn BorderRule>) {
        self.border.push(b);
    }

    /// Apply the border rules, in order: the stanza that crosses, if any.
    pub fn cross(&self, ctx: &Ctx, dir: Crossing, mut el: Element) -> Option<Element> {
        for b in &self.border {
            el = b.cross(ctx, dir, el)?;
        }
        Some(el)
    }

    /// Run `s` in the background while the server runs.
    pub fn service(&mut self, s: Arc<dyn Service>) {
        self.services.push(s);
    }

    pub fn services(&self) -> &[Arc<dyn Service>] {
        &self.services
    }

    /// Serve the HTTP paths that start with `prefix` (on `[listen] http`).
    pub fn http(&mut self, prefix: &'static str, h: Arc<dyn crate::http::HttpHandler>) {
        self.http.push((prefix, h));
    }

    /// The HTTP handler of the longest prefix `path` starts with.
    pub fn http_handler(&self, path: &str) -> Option<&Arc<dyn crate::http::HttpHandler>> {
        self.http
            .iter()
            .filter(|(p, _)| path.starts_with(p))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, h)| h)
    }

    /// Messages to a bare JID that `rule` picks go to every available
    /// resource (of non-negative priority), not only the highest-priority
    /// ones (call invitations ring everywhere).
    pub fn to_every_resource(&mut self, rule: fn(&Element) -> bool) {
        self.every_resource.push(rule);
    }

    /// Whether a message to a bare JID goes to every resource.
    pub fn goes_to_every_resource(&self, el: &Element) -> bool {
        self.every_resource.iter().any(|r| r(el))
    }

    pub fn listener(&mut self, l: Arc<dyn Listener>) {
        self.listeners.push(l);
    }

    /// Serve `domain` with a component.
    pub fn component(&mut self, domain: String, c: Arc<dyn Component>) {
        self.components.insert(domain, c);
    }

    /// The component serving `domain`.
    pub fn component_for(&self, domain: &str) -> Option<&Arc<dyn Component>> {
        self.components.get(domain)
    }

    /// The domains components serve, sorted.
    pub fn component_domains(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.components.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn shared_conversations(&mut self, s: Arc<dyn SharedConversations>) {
        self.shared.push(s);
    }

    /// `user`'s view of a shared conversation (`None`: `conv` is not one,
    /// or `user` takes no part in it), and the feature that keeps it.
    pub async fn shared_view(
        &self,
        ctx: &Arc<Ctx>,
        user: &BareJid,
        conv: &BareJid,
    ) -> crate::store::StoreResult<Option<(crate::store::ViewMask, Arc<dyn SharedConversations>)>>
    {
        for s in &self.shared {
            if let Some(v) = s.view(ctx, user, conv).await? {
                return Ok(Some((v, s.clone())));
            }
        }
        Ok(None)
    }

    /// Every shared conversation `user` takes part in, with the feature
    /// that keeps it.
    pub async fn shared_of_user(
        &self,
        ctx: &Arc<Ctx>,
        user: &BareJid,
    ) -> crate::store::StoreResult<Vec<(BareJid, Arc<dyn SharedConversations>)>> {
        let mut out = Vec::new();
        for s in &self.shared {
            for c in s.of_user(ctx, user).await? {
                out.push((c, s.clone()));
            }
        }
        Ok(out)
    }

    /// The name of a shared conversation.
    pub async fn shared_name(&self, ctx: &Arc<Ctx>, conv: &BareJid) -> Option<String> {
        for s in &self.shared {
            if let Some(n) = s.name(ctx, conv).await {
                return Some(n);
            }
        }
        None
    }

    /// Take the results and errors addressed to the server whose id
    /// starts with `prefix`.
    pub fn iq_responses(&mut self, prefix: &'static str, h: Arc<dyn IqResponses>) {
        self.responses.push((prefix, h));
    }

    /// Hand an IQ result or error addressed to the server to the feature
    /// that sent the request (nothing happens when none did).
    pub async fn iq_response(&self, ctx: &Arc<Ctx>, el: Element) {
        let id = el.attr("id").unwrap_or_default();
        if let Some((_, h)) = self.responses.iter().find(|(p, _)| id.starts_with(p)) {
            h.response(ctx, el).await;
        }
    }

    pub fn personal_events(&mut self, p: Arc<dyn PersonalEvents>) {
        self.personal_events = Some(p);
    }

    /// Personal eventing, when a feature provides it.
    pub fn pep(&self) -> Option<&Arc<dyn PersonalEvents>> {
        self.personal_events.as_ref()
    }

    /// An identity every account shows in disco#info besides
    /// `account/registered`.
    pub fn account_identity(&mut self, category: &'static str, typ: &'static str) {
        self.account_identities.push((category, typ));
    }

    pub fn account_identities(&self) -> &[(&'static str, &'static str)] {
        &self.account_identities
    }

    pub fn account_disco(&mut self, d: Arc<dyn AccountDisco>) {
        self.account_disco.push(d);
    }

    pub fn account_discos(&self) -> &[Arc<dyn AccountDisco>] {
        &self.account_disco
    }

    pub fn server_nodes(&mut self, n: Arc<dyn ServerNodes>) {
        self.server_nodes.push(n);
    }

    pub fn server_node_providers(&self) -> &[Arc<dyn ServerNodes>] {
        &self.server_nodes
    }

    pub fn iq_handler(&self, ns: &str, target: &Target) -> Option<Arc<dyn IqHandler>> {
        let e = self.iq.get(ns)?;
        let ok = match target {
            Target::Server => e.server,
            Target::Account(_) => e.account,
        };
        ok.then(|| e.handler.clone())
    }

    pub fn server_features(&self) -> &[&'static str] {
        &self.server_features
    }

    pub fn account_features(&self) -> &[&'static str] {
        &self.account_features
    }

    /// Run the filters of a point; the first that does not pass wins.
    pub async fn run_filters(
        &self,
        ctx: &Ctx,
        point: Point,
        from: &Jid,
        to: &Jid,
        el: &Element,
    ) -> Verdict {
        if let Some(list) = self.filters.get(&point) {
            for f in list {
                match f.check(ctx, from, to, el).await {
                    Verdict::Pass => continue,
                    other => return other,
                }
            }
        }
        Verdict::Pass
    }

    pub async fn emit(&self, ctx: &Arc<Ctx>, ev: Event<'_>) {
        for l in &self.listeners {
            l.on_event(ctx, &ev).await;
        }
    }
}

/// A server push (an IQ set from the account to itself, as roster and
/// block-list pushes are) of `payload` to each of `user`'s resources that
/// asked for it.
pub fn push(ctx: &Ctx, user: &BareJid, interest: crate::sessions::Interest, payload: &Element) {
    for r in ctx.sessions.resources(user) {
        if !r.wants(interest) {
            continue;
        }
        let mut iq = crate::stanza::element(
            "iq",
            crate::xml::ns::CLIENT,
            &[
                ("type", "set"),
                ("id", &format!("push-{}", crate::stanza::random_id(6))),
                ("to", r.full.as_str()),
            ],
        );
        iq.append_child(payload.clone());
        let _ = r.mailbox.deliver(iq);
    }
}

/// A notice from the account to each of its bound resources but `except`
/// (the one whose request caused it): a headline message holding the
/// payload `make` builds (only if there is such a resource), neither
/// archived nor stored offline nor carbon-copied.
pub fn tell_other_resources(
    ctx: &Ctx,
    user: &BareJid,
    except: &Jid,
    make: impl FnOnce() -> Element,
) {
    let others = ctx
        .sessions
        .resources_where(user, |r| r.full.as_str() != except.as_str());
    if others.is_empty() {
        return;
    }
    let payload = make();
    for r in others {
        let mut m = crate::stanza::element(
            "message",
            crate::xml::ns::CLIENT,
            &[
                ("type", "headline"),
                ("from", user.as_str()),
                ("to", r.full.as_str()),
                ("id", &crate::stanza::random_id(6)),
            ],
        );
        m.append_child(payload.clone());
        let _ = r.mailbox.deliver(m);
    }
}

/// Register every module, in order. A feature is switched off by removing
/// its line here.
pub fn registry(config: &crate::config::Config) -> Registry {
    let mut r = Registry::default();
    disco::register(&mut r);
    ping::register(&mut r);
    version::register(&mut r);
    time::register(&mut r);
    session::register(&mut r);
    roster::register(&mut r);
    vcard::register(&mut r);
    private::register(&mut r);
    blocking::register(&mut r);
    authz::register(&mut r);
    extdisco::register(&mut r);
    calls::register(&mut r);
    links::register(&mut r, config);
    carbons::register(&mut r);
    mam::register(&mut r, config);
    history::register(&mut r, config);
    inbox::register(&mut r, config);
    offline::register(&mut r);
    dnd::register(&mut r, config);
    presence::register(&mut r);
    read_status::register(&mut r);
    crate::pep::register(&mut r);
    crate::muc::register(&mut r, config);
    crate::sms::register(&mut r, config);
    crate::adhoc::register(&mut r);
    r
}

// Stanza errors are the answer to one IQ, built once per request.
#![allow(clippy::result_large_err)]

//! The message archive (XEP-0313 `urn:xmpp:mam:2` and `#extended`) and
//! unique stanza ids (XEP-0359).
//!
//! Every one-to-one message with content worth keeping (see
//! [`archivable`]) is written once, to the log of its conversation, in
//! the view of each party whose preferences say so, just before it is
//! delivered to a local user (or stored offline for one). The archive id
//! is also the XEP-0359 `<stanza-id/>` the recipient's copy carries, and
//! the sender's carbon copies carry it with the sender's JID as `by`. A
//! stanza-id a client sends with `by` set to one of our JIDs is removed
//! before anything else sees the stanza.
//!
//! The write is visible to queries at once; it reaches the disk with the
//! next group commit, which a XEP-0198 acknowledgement waits for.

use crate::stanza::Bare;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use minidom::Element;
use serde::{Deserialize, Serialize};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use super::{IqHandler, IqRequest, IqResult, IqType, Processor, Registry, Stage};
use crate::server::Ctx;
use crate::sessions::Fate;
use crate::stanza::{element, simple_error, stanza_type};
use crate::store::{ArchiveQuery, ArchiveWrite, BoxFuture};
use crate::xml::{ns, writer};

pub fn register(r: &mut Registry, config: &crate::config::Config) {
    r.processor(Stage::FromClient, Arc::new(StripForgedIds));
    // Other servers cannot forge ids by our JIDs either.
    r.processor(Stage::FromRemote, Arc::new(StripForgedIds));
    r.server_feature(ns::SID);
    // Clients look for it where the ids come from: the account.
    r.account_feature(ns::SID);
    // Stripping forged ids is always on; archiving, its queries and its
    // features follow the config (off: a MAM query gets
    // service-unavailable, as from a server without an archive).
    if !config.mam.enabled {
        return;
    }
    let cache = Arc::new(PrefsCache::default());
    let archiver = Arc::new(Archiver {
        cache: cache.clone(),
    });
    r.processor(Stage::BeforeLocalDelivery, archiver.clone());
    // A message to a remote user is archived for its local sender, as sent.
    r.processor(Stage::BeforeRemote, archiver);
    r.listener(Arc::new(ForgetPrefs {
        cache: cache.clone(),
    }));
    r.account_feature(ns::MAM);
    r.account_feature(ns::MAM_EXTENDED);
    // Also on the server, as ejabberd does: some clients (Profanity 0.13)
    // look there, and never ask their account.
    r.server_feature(ns::MAM);
    r.server_feature(ns::MAM_EXTENDED);
    r.iq(ns::MAM, false, true, Arc::new(Mam { cache }));
}

const REACTIONS: &str = "urn:xmpp:reactions:0";
const RETRACT: &str = "urn:xmpp:message-retract:1";
const RETRACT_0: &str = "urn:xmpp:message-retract:0";
const FASTEN: &str = "urn:xmpp:fasten:0";
const CORRECT: &str = "urn:xmpp:message-correct:0";
const OMEMO: &str = "eu.siacs.conversations.axolotl";
const OMEMO_2: &str = "urn:xmpp:omemo:2";
const CONFERENCE: &str = "jabber:x:conference";

/// Whether a message is kept in the archive: a one-to-one chat or normal
/// message with a body or another payload a device needs to show the
/// conversation (receipts and markers, so another device can sync status;
/// corrections, reactions, retractions, encrypted payloads, invitations,
/// call invitations), unless the sender asked not to store it (XEP-0334).
/// Never headlines, errors, group chat, carbon copies or bare chat states.
pub fn archivable(el: &Element) -> bool {
    el.name() == "message" && matches!(stanza_type(el), "" | "normal" | "chat") && keeps(el, true)
}

/// Whether a message holds something worth keeping (see [`archivable`]);
/// receipts and markers count only with `status`.
pub(crate) fn keeps(el: &Element, status: bool) -> bool {
    let mut keep = false;
    for c in el.children() {
        let n = c.ns();
        match (n.as_str(), c.name()) {
            (ns::HINTS, "no-store" | "no-permanent-store") => return false,
            // A carbon copy or an archive result is a copy; `<private/>`
            // only keeps a message out of carbons.
            (ns::CARBONS, "sent" | "received") | (ns::MAM, _) => return false,
            (ns::HINTS, "store") | (ns::CLIENT, "body") => keep = true,
            (ns::RECEIPTS, "received")
            | (ns::MARKERS, "received" | "displayed" | "acknowledged") => keep |= status,
            (REACTIONS, "reactions")
            | (RETRACT | RETRACT_0, "retract")
            | (FASTEN, "apply-to")
            | (CORRECT, "replace")
            | (OMEMO | OMEMO_2, "encrypted")
            | (CONFERENCE, "x")
            | (ns::JINGLE_MESSAGE, _) => keep = true,
            _ => {}
        }
    }
    keep
}

/// A JID that is ours: the domain, a subdomain, or an account on it.
fn is_ours(ctx: &Ctx, jid: &str) -> bool {
    let Ok(j) = Jid::new(jid) else {
        // Not a JID: not one a client could take for ours either.
        return false;
    };
    let domain = j.domain().as_str();
    domain == ctx.domain || domain.ends_with(&format!(".{}", ctx.domain))
}

/// A client may not forge the ids this server assigns (XEP-0359 §3.1).
struct StripForgedIds;

impl Processor for StripForgedIds {
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        _from: &'a Jid,
        _to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if el.name() != "message" {
                return;
            }
            crate::stanza::retain_children(el, |c| {
                !(c.is("stanza-id", ns::SID) && c.attr("by").is_none_or(|by| is_ours(ctx, by)))
            });
        })
    }
}

/// Archiving preferences (XEP-0313 §6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Prefs {
    default: Policy,
    always: Vec<String>,
    never: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Policy {
    Always,
    Never,
    Roster,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Always => "always",
            Policy::Never => "never",
            Policy::Roster => "roster",
        }
    }
}

const PREFS_KEY: &str = "mam:prefs";

impl Prefs {
    fn standard() -> Prefs {
        Prefs {
            default: Policy::Always,
            always: Vec::new(),
            never: Vec::new(),
        }
    }
}

/// Every user's preferences are read for every message they exchange:
/// they are kept in memory once read (bounded; dropped when an account
/// goes, replaced when the user sets them).
struct PrefsCache {
    shards: Vec<std::sync::Mutex<std::collections::HashMap<BareJid, Arc<Prefs>>>>,
}

const CACHE_SHARDS: usize = 16;
/// Users per shard kept at most; a full shard starts again empty.
const CACHE_PER_SHARD: usize = 4096;

impl std::default::Default for PrefsCache {
    fn default() -> Self {
        PrefsCache {
            shards: (0..CACHE_SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl PrefsCache {
    fn shard(
        &self,
        user: &BareJid,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<BareJid, Arc<Prefs>>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        self.shards[(h.finish() as usize) % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, user: &BareJid) -> Option<Arc<Prefs>> {
        self.shard(user).get(user).cloned()
    }

    /// Keep what was read from the store, unless something newer (a set)
    /// is there already.
    fn loaded(&self, user: &BareJid, p: Arc<Prefs>) {
        let mut m = self.shard(user);
        if m.len() >= CACHE_PER_SHARD {
            m.clear();
        }
        m.entry(user.clone()).or_insert(p);
    }

    fn set(&self, user: &BareJid, p: Arc<Prefs>) {
        self.shard(user).insert(user.clone(), p);
    }

    fn forget(&self, user: &BareJid) {
        self.shard(user).remove(user);
    }
}

/// A deleted account's preferences are not those of a new one of the
/// same name.
struct ForgetPrefs {
    cache: Arc<PrefsCache>,
}

impl super::Listener for ForgetPrefs {
    fn on_event<'a>(&'a self, _ctx: &'a Arc<Ctx>, ev: &'a super::Event<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let super::Event::UserDeleted { jid } = ev {
                self.cache.forget(jid);
            }
        })
    }
}

async fn prefs(ctx: &Ctx, cache: &PrefsCache, user: &BareJid) -> Arc<Prefs> {
    if let Some(p) = cache.get(user) {
        return p;
    }
    let p = Arc::new(read_prefs(ctx, user).await);
    cache.loaded(user, p.clone());
    p
}

async fn read_prefs(ctx: &Ctx, user: &BareJid) -> Prefs {
    match ctx.stores.userdata.get(user, PREFS_KEY).await {
        Ok(Some(v)) => serde_json::from_str(&v).unwrap_or_else(|_| Prefs::standard()),
        Ok(None) => Prefs::standard(),
        Err(e) => {
            tracing::error!(error = %e, "archive preferences unreadable");
            Prefs::standard()
        }
    }
}

/// Whether `user` archives messages exchanged with `other`.
async fn archives_for(ctx: &Ctx, cache: &PrefsCache, user: &BareJid, other: &BareJid) -> bool {
    let p = prefs(ctx, cache, user).await;
    let o = other.as_str();
    if p.never.iter().any(|j| j == o) {
        return false;
    }
    if p.always.iter().any(|j| j == o) {
        return true;
    }
    match p.default {
        Policy::Always => true,
        Policy::Never => false,
        Policy::Roster => matches!(
            ctx.stores.rosters.item(user, o).await,
            Ok(Some(item)) if item.listed
        ),
    }
}

pub(crate) fn is_local_user(ctx: &Ctx, j: &BareJid) -> bool {
    ctx.is_account_address(j.node().is_some(), j.domain().as_str())
}

/// The MAM id of an archive id, and back.
pub fn id_string(id: u64) -> String {
    id.to_string()
}

fn parse_id(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

pub(crate) fn stamp_of(id: u64) -> DateTime<Utc> {
    Utc.timestamp_micros(id as i64)
        .single()
        .unwrap_or_else(Utc::now)
}

fn stanza_id(by: &BareJid, id: u64) -> Element {
    element(
        "stanza-id",
        ns::SID,
        &[("by", by.as_str()), ("id", &id_string(id))],
    )
}

/// Archive a message on its way to a local user.
struct Archiver {
    cache: Arc<PrefsCache>,
}

impl Processor for Archiver {
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !archivable(el) {
                return;
            }
            let (sender, recipient) = (from.bare(), to.bare());
            // Archived already: a message routed again (its session ended
            // before it was acknowledged). Clients cannot send such an id:
            // ids by our JIDs are removed from what they send.
            if el
                .children()
                .any(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(recipient.as_str()))
            {
                return;
            }
            let mut owners = Vec::with_capacity(2);
            if is_local_user(ctx, &recipient)
                && archives_for(ctx, &self.cache, &recipient, &sender).await
            {
                owners.push(recipient.clone());
            }
            let for_sender = sender != recipient
                && is_local_user(ctx, &sender)
                && archives_for(ctx, &self.cache, &sender, &recipient).await;
            if for_sender {
                owners.push(sender.clone());
            }
            if owners.is_empty() {
                return;
            }
            let id = ctx.stores.archive.next_id();
            let w = ArchiveWrite {
                id,
                pair: (sender.clone(), recipient.clone()),
                owners,
                from: from.to_string(),
                to: to.to_string(),
                xml: writer::to_string(el),
            };
            let for_recipient = w.owners.contains(&recipient);
            if let Err(e) = ctx.stores.archive.append(w).await {
                tracing::error!(error = %e, "archive write failed");
                return;
            }
            if for_recipient {
                el.append_child(stanza_id(&recipient, id));
            }
            if for_sender {
                crate::router::note_sender_stanza_id(stanza_id(&sender, id));
            }
        })
    }
}

/// `<query/>`, `<metadata/>` and `<prefs/>` of `urn:xmpp:mam:2`, for the
/// user's own archive.
struct Mam {
    cache: Arc<PrefsCache>,
}

fn bad(text: &str) -> StanzaError {
    super::bad_request(text)
}

fn internal(e: crate::store::StoreError) -> StanzaError {
    super::store_failed("archive read", e)
}

impl IqHandler for Mam {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let user = req.owner_only("an archive is queried by its own account")?;
            // The ids a client names came with messages it received: let
            // their writes land first.
            ctx.stores.archive.barrier().await.map_err(internal)?;
            match (req.typ, req.payload.name()) {
                (IqType::Get, "prefs") => {
                    Ok(Some(prefs_element(&*prefs(ctx, &self.cache, &user).await)))
                }
                (IqType::Set, "prefs") => set_prefs(ctx, &self.cache, &user, &req.payload).await,
                _ => answer(ctx, &req, &user, None).await,
            }
        })
    }
}

/// The query form, a query or the metadata of the archive of `archive`
/// (a user's, or a room's), as `mask` shows it when set (a member's view
/// of a room). The caller checked who may ask.
pub(crate) async fn answer(
    ctx: &Arc<Ctx>,
    req: &IqRequest,
    archive: &BareJid,
    mask: Option<Arc<crate::store::ViewMask>>,
) -> IqResult {
    match (req.typ, req.payload.name()) {
        (IqType::Get, "query") => Ok(Some(query_form())),
        (IqType::Set, "query") => query(ctx, req, archive, mask).await,
        (IqType::Get, "metadata") => match mask {
            None => metadata(ctx, archive),
            Some(m) => masked_metadata(ctx, archive, m).await,
        },
        _ => Err(simple_error(Cond::BadRequest, None)),
    }
}

/// An archived message as a MAM `<result/>`: forwarded with a delay of
/// its archiving time (also the inbox's last messages).
pub(crate) fn result_element(id: u64, queryid: Option<&str>, stored: Element) -> Element {
    let mut result = element("result", ns::MAM, &[("id", &id_string(id))]);
    if let Some(q) = queryid {
        crate::stanza::set_attr(&mut result, "queryid", q);
    }
    let mut fwd = Element::bare("forwarded", ns::FORWARD);
    fwd.append_child(element(
        "delay",
        ns::DELAY,
        &[(
            "stamp",
            &stamp_of(id).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        )],
    ));
    fwd.append_child(stored);
    result.append_child(fwd);
    result
}

/// A data-form field (XEP-0004), with its value if any.
pub(crate) fn form_field(var: &str, typ: &str, value: Option<&str>) -> Element {
    let mut f = element("field", ns::DATA_FORMS, &[("var", var), ("type", typ)]);
    if let Some(v) = value {
        let mut val = Element::bare("value", ns::DATA_FORMS);
        val.append_text(v);
        f.append_child(val);
    }
    f
}

fn field(var: &str, typ: &str) -> Element {
    form_field(var, typ, None)
}

/// The search form (XEP-0313 §4.1.1, with the `#extended` fields).
fn query_form() -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", "form")]);
    x.append_child(form_field("FORM_TYPE", "hidden", Some(ns::MAM)));
    x.append_child(field("with", "jid-single"));
    x.append_child(field("start", "text-single"));
    x.append_child(field("end", "text-single"));
    x.append_child(field("before-id", "text-single"));
    x.append_child(field("after-id", "text-single"));
    x.append_child(field("ids", "text-multi"));
    let mut q = Element::bare("query", ns::MAM);
    q.append_child(x);
    q
}

/// A XEP-0082 date-time as an archive id bound (microseconds).
pub(crate) fn parse_time(s: &str) -> Result<u64, StanzaError> {
    let t = DateTime::parse_from_rfc3339(s.trim())
        .map_err(|_| bad("a date is YYYY-MM-DDThh:mm:ssZ (XEP-0082)"))?;
    u64::try_from(t.with_timezone(&Utc).timestamp_micros()).map_err(|_| bad("a date before 1970"))
}

/// An id the client names must be in its archive (as its mask shows it).
fn known_id(
    ctx: &Ctx,
    user: &BareJid,
    mask: Option<&crate::store::ViewMask>,
    s: &str,
) -> Result<u64, StanzaError> {
    let id = parse_id(s);
    match id {
        Some(id)
            if mask.is_none_or(|m| m.shows(id))
                && ctx.stores.archive.contains(user, id).map_err(internal)? =>
        {
            Ok(id)
        }
        _ => Err(simple_error(
            Cond::ItemNotFound,
            Some("no message with this id in the archive"),
        )),
    }
}

struct Parsed {
    q: ArchiveQuery,
    flip: bool,
}

fn parse_query(
    ctx: &Ctx,
    user: &BareJid,
    mask: Option<Arc<crate::store::ViewMask>>,
    payload: &Element,
) -> Result<Parsed, StanzaError> {
    let max_page = ctx.config.mam.max_page;
    let mut q = ArchiveQuery {
        user: Some(user.clone()),
        max: max_page,
        mask,
        ..Default::default()
    };
    let m = q.mask.clone();
    let known_id = |ctx: &Ctx, user: &BareJid, s: &str| known_id(ctx, user, m.as_deref(), s);
    let mut flip = payload.has_child("flip-page", ns::MAM);
    for x in payload.children().filter(|c| c.is("x", ns::DATA_FORMS)) {
        if !matches!(x.attr("type"), Some("submit") | None) {
            return Err(bad("the search form is submitted with type 'submit'"));
        }
        for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let var = f.attr("var").unwrap_or("");
            let values: Vec<String> = f
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(|c| c.text())
                .collect();
            let one = values.first().map(String::as_str).unwrap_or("").trim();
            match var {
                "FORM_TYPE" => {
                    if one != ns::MAM {
                        return Err(bad("FORM_TYPE is urn:xmpp:mam:2"));
                    }
                }
                "with" => {
                    if one.is_empty() {
                        continue;
                    }
                    let j = Jid::new(one).map_err(|_| bad("'with' is not a JID"))?;
                    q.with = Some(j.bare());
                    if j.resource().is_some() {
                        q.with_full = Some(j.to_string());
                    }
                }
                "start" if !one.is_empty() => q.start = Some(parse_time(one)?),
                "end" if !one.is_empty() => q.end = Some(parse_time(one)?),
                "start" | "end" => {}
                "after-id" if !one.is_empty() => q.after = Some(known_id(ctx, user, one)?),
                "before-id" if !one.is_empty() => q.before = Some(known_id(ctx, user, one)?),
                "after-id" | "before-id" => {}
                "ids" => {
                    let mut ids = Vec::new();
                    for v in &values {
                        ids.push(known_id(ctx, user, v)?);
                    }
                    q.ids = Some(ids);
                }
                "flip-page" => flip = matches!(one, "true" | "1"),
                other => {
                    return Err(bad(&format!("unknown field '{other}' in the search form")));
                }
            }
        }
    }
    // RSM paging is in `<set xmlns='http://jabber.org/protocol/rsm'/>`;
    // some clients (Profanity 0.13) put `<after/>`, `<before/>` or
    // `<max/>` straight into the query, in its namespace: taken too.
    let loose = payload
        .children()
        .filter(|c| c.ns() == ns::MAM && matches!(c.name(), "max" | "after" | "before" | "index"));
    let rsm = payload
        .get_child("set", ns::RSM)
        .into_iter()
        .flat_map(|set| set.children());
    {
        for c in rsm.chain(loose) {
            let t = c.text();
            let t = t.trim();
            match c.name() {
                "max" => {
                    let m: usize = t.parse().map_err(|_| bad("<max/> is a number"))?;
                    q.max = m.min(max_page);
                }
                "after" if !t.is_empty() => q.after = Some(known_id(ctx, user, t)?),
                "after" => {}
                "before" => {
                    q.from_end = true;
                    if !t.is_empty() {
                        q.before = Some(known_id(ctx, user, t)?);
                    }
                }
                "index" => {
                    q.index = Some(t.parse().map_err(|_| bad("<index/> is a number"))?);
                }
                _ => {}
            }
        }
    }
    if let (Some(s), Some(e)) = (q.start, q.end) {
        if s > e {
            return Err(bad("'start' is after 'end'"));
        }
    }
    Ok(Parsed { q, flip })
}

async fn query(
    ctx: &Arc<Ctx>,
    req: &IqRequest,
    user: &BareJid,
    mask: Option<Arc<crate::store::ViewMask>>,
) -> IqResult {
    let Parsed { q, flip } = parse_query(ctx, user, mask, &req.payload)?;
    let from_end = q.from_end;
    let mut page = ctx.stores.archive.query(q).await.map_err(internal)?;
    let queryid = req.payload.attr("queryid");
    let full = req.from.clone().try_into_full().ok();
    // The results, serialized, oldest first.
    let mut results = Vec::with_capacity(page.items.len());
    for a in &page.items {
        let stored = match crate::xml::parse(&a.xml) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, id = a.id, "an archived message does not read back");
                continue;
            }
        };
        let result = result_element(a.id, queryid, stored);
        let mut msg = element(
            "message",
            ns::CLIENT,
            &[
                ("to", req.from.as_str()),
                ("from", user.as_str()),
                ("id", &crate::stanza::random_id(6)),
            ],
        );
        msg.append_child(result);
        results.push((a.id, crate::sessions::serialize(&msg)));
    }
    // The page goes into the session's queue before anything is written:
    // it must fit, with room to spare. A page of large messages is cut
    // short (from its far end) and says it is not complete.
    let budget = ctx.config.limits.session_queue_bytes / 2;
    let mut total = 0usize;
    let fits = |r: &(u64, std::sync::Arc<[u8]>), total: &mut usize, n: usize| {
        *total += r.1.len();
        n == 0 || *total <= budget
    };
    let keep = if from_end {
        results
            .iter()
            .rev()
            .enumerate()
            .take_while(|(n, r)| fits(r, &mut total, *n))
            .count()
    } else {
        results
            .iter()
            .enumerate()
            .take_while(|(n, r)| fits(r, &mut total, *n))
            .count()
    };
    if keep < results.len() {
        if from_end {
            results.drain(..results.len() - keep);
        } else {
            results.truncate(keep);
        }
        page.complete = false;
    }
    if flip {
        results.reverse();
    }
    // The results go to the requesting session before the IQ result; they
    // are answers, not messages to keep if the session ends.
    if let Some(me) = full.as_ref().and_then(|f| ctx.sessions.get(f)) {
        for (_, xml) in &results {
            if me.mailbox.deliver_bytes(xml.clone(), Fate::Drop).is_err() {
                return Err(simple_error(Cond::ResourceConstraint, None));
            }
        }
    }
    let first_index = page.first_index
        + if from_end {
            page.items.len().saturating_sub(keep)
        } else {
            0
        };
    let items: Vec<u64> = results.iter().map(|(id, _)| *id).collect();
    let mut fin = Element::bare("fin", ns::MAM);
    if page.complete {
        crate::stanza::set_attr(&mut fin, "complete", "true");
    }
    if let Some(q) = queryid {
        crate::stanza::set_attr(&mut fin, "queryid", q);
    }
    let mut set = Element::bare("set", ns::RSM);
    if let (Some(first), Some(last)) = (items.first(), items.last()) {
        let mut f = element("first", ns::RSM, &[]);
        if !flip {
            crate::stanza::set_attr(&mut f, "index", first_index.to_string());
        }
        f.append_text(id_string(*first));
        set.append_child(f);
        let mut l = element("last", ns::RSM, &[]);
        l.append_text(id_string(*last));
        set.append_child(l);
    }
    let mut c = element("count", ns::RSM, &[]);
    c.append_text(page.count.to_string());
    set.append_child(c);
    fin.append_child(set);
    Ok(Some(fin))
}

fn metadata(ctx: &Ctx, user: &BareJid) -> IqResult {
    metadata_of(ctx.stores.archive.bounds(user).map_err(internal)?)
}

/// The first and last messages `mask` shows of the archive of `archive`.
async fn masked_metadata(
    ctx: &Ctx,
    archive: &BareJid,
    mask: Arc<crate::store::ViewMask>,
) -> IqResult {
    let mut ends = Vec::with_capacity(2);
    for from_end in [false, true] {
        let page = ctx
            .stores
            .archive
            .query(ArchiveQuery {
                user: Some(archive.clone()),
                from_end,
                max: 1,
                mask: Some(mask.clone()),
                ..Default::default()
            })
            .await
            .map_err(internal)?;
        ends.extend(page.items.first().map(|a| a.id));
    }
    metadata_of(match ends[..] {
        [first, last] => Some((first, last)),
        _ => None,
    })
}

fn metadata_of(bounds: Option<(u64, u64)>) -> IqResult {
    let mut m = Element::bare("metadata", ns::MAM);
    if let Some((first, last)) = bounds {
        for (name, id) in [("start", first), ("end", last)] {
            m.append_child(element(
                name,
                ns::MAM,
                &[
                    ("id", &id_string(id)),
                    (
                        "timestamp",
                        &stamp_of(id).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ),
                ],
            ));
        }
    }
    Ok(Some(m))
}

fn prefs_element(p: &Prefs) -> Element {
    let mut e = element("prefs", ns::MAM, &[("default", p.default.as_str())]);
    for (name, list) in [("always", &p.always), ("never", &p.never)] {
        let mut l = Element::bare(name, ns::MAM);
        for j in list {
            let mut je = Element::bare("jid", ns::MAM);
            je.append_text(j);
            l.append_child(je);
        }
        e.append_child(l);
    }
    e
}

/// Most JIDs in the always and never lists together.
const MAX_PREF_JIDS: usize = 1000;

async fn set_prefs(ctx: &Ctx, cache: &PrefsCache, user: &BareJid, el: &Element) -> IqResult {
    let default = match el.attr("default") {
        Some("always") => Policy::Always,
        Some("never") => Policy::Never,
        Some("roster") => Policy::Roster,
        _ => return Err(bad("default is always, never or roster")),
    };
    let mut p = Prefs {
        default,
        always: Vec::new(),
        never: Vec::new(),
    };
    for (name, list) in [("always", &mut p.always), ("never", &mut p.never)] {
        if let Some(l) = el.get_child(name, ns::MAM) {
            for j in l.children().filter(|c| c.is("jid", ns::MAM)) {
                let bare = BareJid::new(j.text().trim())
                    .map_err(|_| simple_error(Cond::JidMalformed, None))?;
                list.push(bare.to_string());
            }
        }
    }
    if p.always.len() + p.never.len() > MAX_PREF_JIDS {
        return Err(simple_error(
            Cond::ResourceConstraint,
            Some("too many JIDs in the archiving preferences"),
        ));
    }
    let json =
        serde_json::to_string(&p).map_err(|_| simple_error(Cond::InternalServerError, None))?;
    ctx.stores
        .userdata
        .put(user, PREFS_KEY, Some(json))
        .await
        .map_err(internal)?;
    let reply = prefs_element(&p);
    cache.set(user, Arc::new(p));
    Ok(Some(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Element {
        crate::xml::parse(s).unwrap()
    }

    #[test]
    fn what_is_archived() {
        let c = "xmlns='jabber:client'";
        for yes in [
            format!("<message {c} type='chat'><body>x</body></message>"),
            format!("<message {c}><body>x</body></message>"),
            format!("<message {c} type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='a'/></message>"),
            format!("<message {c} type='chat'><received xmlns='urn:xmpp:receipts' id='a'/></message>"),
            format!("<message {c} type='chat'><reactions xmlns='urn:xmpp:reactions:0' id='a'/></message>"),
            format!("<message {c} type='chat'><retract xmlns='urn:xmpp:message-retract:1' id='a'/></message>"),
        ] {
            assert!(archivable(&m(&yes)), "{yes}");
        }
        for no in [
            format!("<message {c} type='headline'><body>x</body></message>"),
            format!("<message {c} type='error'><body>x</body></message>"),
            format!("<message {c} type='groupchat'><body>x</body></message>"),
            format!("<message {c} type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"),
            format!("<message {c} type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"),
            format!("<message {c} type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>"),
        ] {
            assert!(!archivable(&m(&no)), "{no}");
        }
    }
}

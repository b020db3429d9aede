// Stanza errors are the answer to one IQ, built once per request.
#![allow(clippy::result_large_err)]

//! The journal: each user's conversations with their last message and
//! unread count, queried as the XEP-0430 inbox (`urn:xmpp:inbox:1`;
//! PRODUCT.md §7, `xeps/xep-0430.md`).
//!
//! A conversation is a bare JID: the peer of a one-to-one chat, or a
//! room. Its entry changes as messages pass:
//! - a message with a body from the peer, on its way to the user, adds
//!   one unread and becomes the last message (with the stanza-id the
//!   user's archive gave it);
//! - a message with a body the user sends sets unread to 0;
//! - a `displayed` or `acknowledged` marker (XEP-0333) the user sends,
//!   from any device, for one of the unread messages (its `id` or its
//!   stanza-id) leaves unread only the messages after it;
//! - the user's actions (archive, mute, read), and deleting history
//!   (`history.rs`).
//!
//! Changes that no message shows the user's other resources (markers,
//! reads from another device, actions, deletes) are pushed to them.

use crate::stanza::Bare;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use super::mam::{form_field as field, is_local_user, parse_time, result_element};
use super::{Event, IqHandler, IqRequest, IqResult, IqType, Listener, Processor, Registry, Stage};
use crate::server::Ctx;
use crate::sessions::Fate;
use crate::stanza::{element, set_attr, simple_error, stanza_type};
use crate::store::{ArchiveQuery, BoxFuture, JournalEntry};
use crate::xml::ns;

pub const NS: &str = "urn:xmpp:inbox:1";
/// The Confab form field that filters by name (xeps/xep-0430.md).
pub const NAME_FIELD: &str = "urn:confab:inbox:name";
/// Entries in a page without RSM, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;

pub fn register(r: &mut Registry, config: &crate::config::Config) {
    if !config.inbox.enabled {
        return;
    }
    r.server_feature(NS);
    r.account_feature(NS);
    r.iq(NS, false, true, Arc::new(Inbox));
    r.processor(Stage::FromClient, Arc::new(Markers));
    r.processor(Stage::BeforeLocalDelivery, Arc::new(Counter));
    r.processor(Stage::BeforeRemote, Arc::new(Counter));
    r.listener(Arc::new(Hidden));
}

/// A stable 64-bit hash of a message's `id` attribute (FNV-1a), kept for
/// the markers that name it.
fn id_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// An instant message: what counts in the journal.
fn instant(el: &Element) -> bool {
    el.name() == "message"
        && matches!(stanza_type(el), "" | "normal" | "chat")
        && el.has_child("body", ns::CLIENT)
        && !el.children().any(|c| {
            let n = c.ns();
            (n == ns::CARBONS && matches!(c.name(), "sent" | "received")) || n == ns::MAM
        })
}

/// The archive id a copy carries for `by`.
fn stanza_id_for(el: &Element, by: &BareJid) -> Option<u64> {
    el.children()
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by.as_str()))
        .and_then(|c| c.attr("id"))
        .and_then(|i| i.parse().ok())
}

fn now_secs() -> i64 {
    Utc::now().timestamp()
}

/// The `<entry/>` of an entry.
fn entry_element(e: &JournalEntry, name: Option<&str>) -> Element {
    let mut el = element(
        "entry",
        NS,
        &[
            ("jid", &e.jid),
            ("unread", &e.unread.to_string()),
            ("archive", if e.archived { "true" } else { "false" }),
            (
                "mute",
                &(if e.mute_until > now_secs() {
                    e.mute_until
                } else {
                    0
                })
                .to_string(),
            ),
        ],
    );
    if e.last_id != 0 {
        set_attr(&mut el, "id", super::mam::id_string(e.last_id));
    }
    if let Some(n) = name {
        set_attr(&mut el, "name", n);
    }
    el
}

/// Push an entry change (`None`: removed) to the user's resources other
/// than the one that caused it.
fn push(ctx: &Ctx, user: &BareJid, conv: &str, e: Option<&JournalEntry>, except: &Jid) {
    super::tell_other_resources(ctx, user, except, || match e {
        Some(e) => entry_element(e, None),
        None => element("entry", NS, &[("jid", conv), ("removed", "true")]),
    });
}

/// One instant message in `owner`'s conversation with `peer`, whose id in
/// the owner's archive is `id`: from the peer (`Some` hash of its `id`
/// attribute: one more unread) or by the owner (`None`: all read). The
/// entry before and after.
async fn count(
    ctx: &Ctx,
    owner: &BareJid,
    peer: &BareJid,
    id: Option<u64>,
    from_peer: Option<u64>,
) -> crate::store::StoreResult<(Option<JournalEntry>, Option<JournalEntry>)> {
    let activity = id.unwrap_or_else(|| ctx.stores.archive.next_id());
    let jid = peer.as_str().to_string();
    ctx.stores
        .journal
        .update(
            owner,
            peer.as_str(),
            Box::new(move |e| {
                let mut e = e.unwrap_or_else(|| JournalEntry {
                    jid: jid.clone(),
                    ..Default::default()
                });
                // Counted already (routed again after its session ended
                // unacknowledged).
                if id.is_some_and(|i| i <= e.last_id) {
                    return Some(e);
                }
                e.last_id = id.unwrap_or(0);
                e.activity = activity.max(e.activity.saturating_add(1));
                e.archived = false;
                match from_peer {
                    Some(hash) => {
                        e.unread = e.unread.saturating_add(1);
                        e.pending.push((id.unwrap_or(0), hash));
                        if e.pending.len() > JournalEntry::TRACKED {
                            let over = e.pending.len() - JournalEntry::TRACKED;
                            e.pending.drain(..over);
                        }
                    }
                    None => {
                        e.unread = 0;
                        e.pending.clear();
                    }
                }
                Some(e)
            }),
        )
        .await
}

/// A room message with a body, archived in the room as `id`: one more
/// unread for every member but the sender, for whom it reads the room.
pub(crate) async fn room_message(
    ctx: &Arc<Ctx>,
    room: &crate::store::RoomRecord,
    jid: &BareJid,
    sender: &BareJid,
    from: &Jid,
    id: u64,
    id_attr: &str,
) {
    if !ctx.config.inbox.enabled {
        return;
    }
    let hash = id_hash(id_attr);
    for m in &room.members {
        let Ok(member) = BareJid::new(&m.jid) else {
            continue;
        };
        if member == *sender {
            match count(ctx, &member, jid, Some(id), None).await {
                Ok((Some(before), Some(after))) if before.unread > 0 => {
                    push(ctx, &member, jid.as_str(), Some(&after), from);
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "journal write failed"),
            }
        } else if let Err(err) = count(ctx, &member, jid, Some(id), Some(hash)).await {
            tracing::error!(error = %err, "journal write failed");
        }
    }
}

/// `user`'s entry for `conv` goes (they left the room); their devices
/// are told.
pub(crate) async fn forget_conversation(ctx: &Arc<Ctx>, user: &BareJid, conv: &BareJid) {
    if !ctx.config.inbox.enabled {
        return;
    }
    match ctx
        .stores
        .journal
        .update(user, conv.as_str(), Box::new(|_| None))
        .await
    {
        Ok((Some(_), _)) => {
            let nobody = Jid::from(ctx.domain_jid.clone());
            push(ctx, user, conv.as_str(), None, &nobody);
        }
        Ok(_) => {}
        Err(err) => tracing::error!(error = %err, "journal write failed"),
    }
}

/// Counts messages on their way to a local user (after the archive, so
/// they carry their stanza-ids), for the recipient and for a local sender.
struct Counter;

impl Processor for Counter {
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !instant(el) {
                return;
            }
            let (sender, recipient) = (from.bare(), to.bare());
            let hash = id_hash(el.attr("id").unwrap_or(""));
            let rid = stanza_id_for(el, &recipient);
            if sender != recipient && is_local_user(ctx, &recipient) {
                if let Err(err) = count(ctx, &recipient, &sender, rid, Some(hash)).await {
                    tracing::error!(error = %err, "journal write failed");
                }
            }
            if !is_local_user(ctx, &sender) {
                return;
            }
            // The sender's own view: a message the user sent reads the
            // conversation.
            let sid = if sender == recipient {
                rid
            } else {
                crate::router::sender_archive_id()
            };
            let r = count(ctx, &sender, &recipient, sid, None).await;
            match r {
                Ok((Some(before), Some(after))) if before.unread > 0 => {
                    push(ctx, &sender, recipient.as_str(), Some(&after), from);
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "journal write failed"),
            }
        })
    }
}

/// The user's own `displayed`/`acknowledged` markers, as they leave a
/// client (whoever the peer is, and wherever it is).
struct Markers;

impl Processor for Markers {
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if el.name() != "message" {
                return;
            }
            let Some(id) = el
                .children()
                .find(|c| c.ns() == ns::MARKERS && matches!(c.name(), "displayed" | "acknowledged"))
                .and_then(|c| c.attr("id"))
                .map(str::to_string)
            else {
                return;
            };
            let user = from.bare();
            let peer = to.bare();
            let hash = id_hash(&id);
            let as_sid: Option<u64> = id.parse().ok();
            let r = ctx
                .stores
                .journal
                .update(
                    &user,
                    peer.as_str(),
                    Box::new(move |e| {
                        let mut e = e?;
                        let at = e.pending.iter().rposition(|(sid, h)| {
                            *h == hash || (*sid != 0 && Some(*sid) == as_sid)
                        });
                        if let Some(i) = at {
                            e.pending.drain(..=i);
                            e.unread = e.pending.len() as u32;
                        }
                        Some(e)
                    }),
                )
                .await;
            match r {
                Ok((Some(before), Some(after))) if before.unread != after.unread => {
                    push(ctx, &user, peer.as_str(), Some(&after), from);
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "journal write failed"),
            }
        })
    }
}

/// History the user deleted leaves the journal too.
struct Hidden;

impl Listener for Hidden {
    fn on_event<'a>(&'a self, ctx: &'a Arc<Ctx>, ev: &'a Event<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Event::HistoryHidden {
                user,
                with,
                ids,
                by,
            } = ev
            else {
                return;
            };
            if let Err(err) = hidden(ctx, user, *with, ids, by).await {
                tracing::error!(error = %err, "journal write failed");
            }
        })
    }
}

async fn hidden(
    ctx: &Arc<Ctx>,
    user: &BareJid,
    with: Option<&BareJid>,
    ids: &[u64],
    by: &Jid,
) -> crate::store::StoreResult<()> {
    let journal = &ctx.stores.journal;
    if let Some(w) = with {
        let (before, _) = journal.update(user, w.as_str(), Box::new(|_| None)).await?;
        journal.sync().await?;
        if before.is_some() {
            push(ctx, user, w.as_str(), None, by);
        }
        return Ok(());
    }
    let entries = journal.entries(user).await?;
    for e in entries {
        let hit = |id: &u64| ids.binary_search(id).is_ok();
        if !hit(&e.last_id) && !e.pending.iter().any(|(sid, _)| hit(sid)) {
            continue;
        }
        // The last message went: the newest one with a body left in view.
        let mut last_id = None;
        let mut empty = false;
        if hit(&e.last_id) {
            let conv = match Jid::new(&e.jid) {
                Ok(j) => j.bare(),
                Err(_) => continue,
            };
            let q = match ctx.registry.shared_view(ctx, user, &conv).await? {
                // A room: its archive as the user's view shows it.
                Some((mask, _)) => ArchiveQuery {
                    user: Some(conv),
                    mask: Some(Arc::new(mask)),
                    from_end: true,
                    max: 50,
                    ..Default::default()
                },
                None => ArchiveQuery {
                    user: Some(user.clone()),
                    with: Some(conv),
                    from_end: true,
                    max: 50,
                    ..Default::default()
                },
            };
            let page = ctx.stores.archive.query(q).await?;
            empty = page.count == 0;
            last_id = page
                .items
                .iter()
                .rev()
                .find(|a| {
                    !hit(&a.id)
                        && crate::xml::parse(&a.xml).is_ok_and(|m| m.has_child("body", ns::CLIENT))
                })
                .map(|a| a.id);
        }
        let owned: Vec<u64> = ids.to_vec();
        let replace_last = hit(&e.last_id);
        let (_, after) = journal
            .update(
                user,
                &e.jid,
                Box::new(move |cur| {
                    let mut cur = cur?;
                    if replace_last && empty {
                        return None;
                    }
                    let gone = cur
                        .pending
                        .iter()
                        .filter(|(sid, _)| owned.binary_search(sid).is_ok())
                        .count();
                    cur.pending
                        .retain(|(sid, _)| owned.binary_search(sid).is_err());
                    cur.unread = cur.unread.saturating_sub(gone as u32);
                    if replace_last {
                        cur.last_id = last_id.unwrap_or(0);
                    }
                    Some(cur)
                }),
            )
            .await?;
        push(ctx, user, &e.jid, after.as_ref(), by);
    }
    journal.sync().await
}

struct Inbox;

fn bad(text: &str) -> StanzaError {
    super::bad_request(text)
}

fn internal(e: crate::store::StoreError) -> StanzaError {
    super::store_failed("journal read", e)
}

impl IqHandler for Inbox {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let user = req.owner_only("an inbox is queried by its own account")?;
            match (req.typ, req.payload.name()) {
                (_, "inbox") => query(ctx, &req, &user).await,
                (IqType::Get, "query") => Ok(Some(form())),
                (IqType::Set, "entry") => action(ctx, &req, &user).await,
                _ => Err(bad(
                    "an inbox request is <inbox/>, <query/> (get) or <entry/> (set)",
                )),
            }
        })
    }
}

/// The query form.
fn form() -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", "form")]);
    x.append_child(field("FORM_TYPE", "hidden", Some(NS)));
    x.append_child(field("start", "text-single", None));
    x.append_child(field("end", "text-single", None));
    x.append_child(field("hidden", "boolean", Some("false")));
    x.append_child(field("unread-only", "boolean", Some("false")));
    let mut order = field("order", "list-single", Some("desc"));
    for o in ["desc", "asc"] {
        let mut opt = element("option", ns::DATA_FORMS, &[("label", o)]);
        let mut v = Element::bare("value", ns::DATA_FORMS);
        v.append_text(o);
        opt.append_child(v);
        order.append_child(opt);
    }
    x.append_child(order);
    x.append_child(field(NAME_FIELD, "text-single", None));
    let mut q = Element::bare("query", NS);
    q.append_child(x);
    q
}

fn parse_bool(s: &str) -> Result<bool, StanzaError> {
    match s.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad("a boolean is true, false, 1 or 0")),
    }
}

/// A parsed inbox query.
#[derive(Default)]
struct Filter {
    start: Option<u64>,
    end: Option<u64>,
    hidden: bool,
    unread_only: bool,
    asc: bool,
    name: Option<String>,
    messages: bool,
    max: usize,
    after: Option<u64>,
    before: Option<Option<u64>>,
}

fn parse_filter(payload: &Element) -> Result<Filter, StanzaError> {
    let mut f = Filter {
        messages: true,
        max: DEFAULT_PAGE,
        ..Default::default()
    };
    if let Some(v) = payload.attr("unread-only") {
        f.unread_only = parse_bool(v)?;
    }
    if let Some(v) = payload.attr("messages") {
        f.messages = parse_bool(v)?;
    }
    for x in payload.children().filter(|c| c.is("x", ns::DATA_FORMS)) {
        if !matches!(x.attr("type"), Some("submit") | None) {
            return Err(bad("the form is submitted with type 'submit'"));
        }
        for fl in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let var = fl.attr("var").unwrap_or("");
            let value = fl
                .get_child("value", ns::DATA_FORMS)
                .map(|v| v.text())
                .unwrap_or_default();
            let v = value.trim();
            match var {
                "FORM_TYPE" => {
                    if v != NS {
                        return Err(bad("FORM_TYPE is urn:xmpp:inbox:1"));
                    }
                }
                "start" if !v.is_empty() => f.start = Some(parse_time(v)?),
                "end" if !v.is_empty() => f.end = Some(parse_time(v)?),
                "start" | "end" => {}
                "hidden" if !v.is_empty() => f.hidden = parse_bool(v)?,
                "unread-only" if !v.is_empty() => f.unread_only |= parse_bool(v)?,
                "hidden" | "unread-only" => {}
                "order" => match v {
                    "" | "desc" => f.asc = false,
                    "asc" => f.asc = true,
                    _ => return Err(bad("order is asc or desc")),
                },
                NAME_FIELD => {
                    if !v.is_empty() {
                        f.name = Some(v.to_lowercase());
                    }
                }
                other => return Err(bad(&format!("unknown field '{other}' in the inbox form"))),
            }
        }
    }
    if let Some(set) = payload.get_child("set", ns::RSM) {
        for c in set.children() {
            let t = c.text();
            let t = t.trim();
            match c.name() {
                "max" => {
                    let m: usize = t.parse().map_err(|_| bad("<max/> is a number"))?;
                    f.max = m.min(MAX_PAGE);
                }
                "after" if !t.is_empty() => {
                    f.after = Some(t.parse().map_err(|_| bad("not a cursor of this inbox"))?)
                }
                "before" => {
                    f.before = Some(if t.is_empty() {
                        None
                    } else {
                        Some(t.parse().map_err(|_| bad("not a cursor of this inbox"))?)
                    })
                }
                _ => {}
            }
        }
    }
    if let (Some(s), Some(e)) = (f.start, f.end) {
        if s > e {
            return Err(bad("'start' is after 'end'"));
        }
    }
    Ok(f)
}

/// The name of a conversation: the user's roster name for it, else the
/// vCard FN of a local account.
async fn vcard_name(ctx: &Ctx, jid: &str) -> Option<String> {
    let j = BareJid::new(jid).ok()?;
    if !is_local_user(ctx, &j) {
        return None;
    }
    let xml = ctx.stores.userdata.get(&j, "vcard").await.ok()??;
    let v = crate::xml::parse(&xml).ok()?;
    let fname = v
        .children()
        .find(|c| c.name() == "FN")
        .map(|c| c.text().trim().to_string())?;
    (!fname.is_empty()).then_some(fname)
}

struct Names {
    roster: HashMap<String, String>,
    cache: HashMap<String, Option<String>>,
}

impl Names {
    async fn load(ctx: &Ctx, user: &BareJid) -> Result<Names, StanzaError> {
        let (_, items) = ctx.stores.rosters.roster(user).await.map_err(internal)?;
        Ok(Names {
            roster: items
                .into_iter()
                .filter(|i| i.listed)
                .filter_map(|i| i.name.filter(|n| !n.is_empty()).map(|n| (i.jid, n)))
                .collect(),
            cache: HashMap::new(),
        })
    }

    async fn of(&mut self, ctx: &Arc<Ctx>, jid: &str) -> Option<String> {
        if let Some(n) = self.roster.get(jid) {
            return Some(n.clone());
        }
        if let Some(n) = self.cache.get(jid) {
            return n.clone();
        }
        let n = match BareJid::new(jid) {
            Ok(j) => match ctx.registry.shared_name(ctx, &j).await {
                Some(n) => Some(n),
                None => vcard_name(ctx, jid).await,
            },
            Err(_) => None,
        };
        self.cache.insert(jid.to_string(), n.clone());
        n
    }
}

/// The last message of an entry: from the room's archive when the entry
/// is a room the user's view of which shows it, else from the user's own.
async fn last_message(
    ctx: &Arc<Ctx>,
    user: &BareJid,
    e: &JournalEntry,
) -> crate::store::StoreResult<Option<crate::store::Archived>> {
    if let Ok(conv) = BareJid::new(&e.jid) {
        if let Some((mask, _)) = ctx.registry.shared_view(ctx, user, &conv).await? {
            if mask.shows(e.last_id) {
                if let Some(a) = ctx.stores.archive.get(&conv, e.last_id).await? {
                    return Ok(Some(a));
                }
            }
        }
    }
    ctx.stores.archive.get(user, e.last_id).await
}

async fn query(ctx: &Arc<Ctx>, req: &IqRequest, user: &BareJid) -> IqResult {
    let f = parse_filter(&req.payload)?;
    let queryid = req.payload.attr("queryid").unwrap_or(&req.id).to_string();
    let mut names = Names::load(ctx, user).await?;
    let mut list = ctx.stores.journal.entries(user).await.map_err(internal)?;
    list.retain(|e| {
        f.start.is_none_or(|s| e.activity >= s)
            && f.end.is_none_or(|x| e.activity <= x)
            && (f.hidden || !e.archived)
            && (!f.unread_only || e.unread > 0)
    });
    if let Some(needle) = &f.name {
        let mut keep = Vec::with_capacity(list.len());
        for e in list {
            let name = names.of(ctx, &e.jid).await;
            if e.jid.to_lowercase().contains(needle.as_str())
                || name.is_some_and(|n| n.to_lowercase().contains(needle.as_str()))
            {
                keep.push(e);
            }
        }
        list = keep;
    }
    if f.asc {
        list.sort_by_key(|e| e.activity);
    } else {
        list.sort_by_key(|e| std::cmp::Reverse(e.activity));
    }
    let total = list.len();
    let unread_convs = list.iter().filter(|e| e.unread > 0).count();
    let all_unread: u64 = list.iter().map(|e| u64::from(e.unread)).sum();
    // Whether `a` comes before the cursor `c` in the list's order.
    let before_cursor = |a: u64, c: u64| if f.asc { a < c } else { a > c };
    let (lo, hi) = match (f.after, f.before) {
        (_, Some(b)) => {
            let end = b.map_or(list.len(), |c| {
                list.partition_point(|e| before_cursor(e.activity, c))
            });
            (end.saturating_sub(f.max), end)
        }
        (Some(c), None) => {
            let start = list.partition_point(|e| before_cursor(e.activity, c) || e.activity == c);
            (start, (start + f.max).min(list.len()))
        }
        (None, None) => (0, f.max.min(list.len())),
    };
    let page = &list[lo..hi];
    if f.messages && page.iter().any(|e| e.last_id != 0) {
        // The last messages may still be on their way into the archive.
        ctx.stores.archive.barrier().await.map_err(internal)?;
    }
    let full = req.from.clone().try_into_full().ok();
    let me = full.as_ref().and_then(|f| ctx.sessions.get(f));
    for e in page {
        let name = names.of(ctx, &e.jid).await;
        let mut msg = element(
            "message",
            ns::CLIENT,
            &[
                ("to", req.from.as_str()),
                ("from", user.as_str()),
                ("id", &crate::stanza::random_id(6)),
            ],
        );
        msg.append_child(entry_element(e, name.as_deref()));
        if f.messages && e.last_id != 0 {
            if let Some(a) = last_message(ctx, user, e).await.map_err(internal)? {
                if let Ok(stored) = crate::xml::parse(&a.xml) {
                    msg.append_child(result_element(a.id, Some(&queryid), stored));
                }
            }
        }
        if let Some(me) = &me {
            if me
                .mailbox
                .deliver_bytes(crate::sessions::serialize(&msg), Fate::Drop)
                .is_err()
            {
                return Err(simple_error(Cond::ResourceConstraint, None));
            }
        }
    }
    let mut fin = element(
        "fin",
        NS,
        &[
            ("total", &total.to_string()),
            ("unread", &unread_convs.to_string()),
            ("all-unread", &all_unread.to_string()),
        ],
    );
    let mut set = Element::bare("set", ns::RSM);
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let mut fe = element("first", ns::RSM, &[("index", &lo.to_string())]);
        fe.append_text(first.activity.to_string());
        set.append_child(fe);
        let mut le = Element::bare("last", ns::RSM);
        le.append_text(last.activity.to_string());
        set.append_child(le);
    }
    let mut c = Element::bare("count", ns::RSM);
    c.append_text(total.to_string());
    set.append_child(c);
    fin.append_child(set);
    Ok(Some(fin))
}

/// Archive, mute or read an entry.
async fn action(ctx: &Arc<Ctx>, req: &IqRequest, user: &BareJid) -> IqResult {
    let p = &req.payload;
    let Some(jid) = p.attr("jid") else {
        return Err(bad("an entry names its conversation in 'jid'"));
    };
    let conv = Jid::new(jid.trim())
        .map_err(|_| bad("'jid' is not a JID"))?
        .bare();
    let mut archive = None;
    let mut mute = None;
    let mut read = None;
    for c in p.children().filter(|c| c.ns() == NS) {
        let t = c.text();
        match c.name() {
            "archive" => archive = Some(parse_bool(&t)?),
            "read" => read = Some(parse_bool(&t)?),
            "mute" => {
                let secs: i64 = t
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s| *s >= 0)
                    .ok_or_else(|| bad("mute is a number of seconds"))?;
                mute = Some(if secs == 0 {
                    0
                } else {
                    now_secs().saturating_add(secs)
                });
            }
            _ => return Err(bad("an entry action is archive, mute or read")),
        }
    }
    if archive.is_none() && mute.is_none() && read.is_none() {
        return Err(bad("an entry action is archive, mute or read"));
    }
    let (before, after) = ctx
        .stores
        .journal
        .update(
            user,
            conv.as_str(),
            Box::new(move |e| {
                let mut e = e?;
                if let Some(a) = archive {
                    e.archived = a;
                }
                if let Some(m) = mute {
                    e.mute_until = m;
                }
                match read {
                    Some(true) => {
                        e.unread = 0;
                        e.pending.clear();
                    }
                    Some(false) => e.unread = e.unread.max(1),
                    None => {}
                }
                Some(e)
            }),
        )
        .await
        .map_err(internal)?;
    let Some(after) = after else {
        return Err(simple_error(
            Cond::ItemNotFound,
            Some("no conversation with this JID in the inbox"),
        ));
    };
    ctx.stores.journal.sync().await.map_err(internal)?;
    if before.as_ref() != Some(&after) {
        push(ctx, user, conv.as_str(), Some(&after), &req.from);
    }
    Ok(Some(entry_element(&after, None)))
}

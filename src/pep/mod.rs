// Stanza errors are the answer to one IQ, built once per request.
#![allow(clippy::result_large_err)]

//! Personal Eventing Protocol (XEP-0163): a publish-subscribe service on
//! every account's bare JID, where clients keep avatars (XEP-0084), the
//! nickname (XEP-0172), OMEMO device lists and bundles (XEP-0384),
//! bookmarks (XEP-0402, and XEP-0048's `storage:bookmarks` kept in step
//! by `bookmarks.rs`) and whatever else they publish.
//!
//! - Only the owner publishes, retracts, creates, configures, deletes and
//!   purges; nodes are created on first publish (auto-create), with the
//!   publish options (XEP-0223) as their configuration.
//! - Who may read follows the node's access model: `open`, `presence`
//!   (the default: contacts subscribed to the owner's presence), `roster`
//!   (contacts in the node's roster groups), `whitelist` (the owner).
//! - Notifications go to the available resources of the owner and of the
//!   contacts the access model admits that advertise `NODE+notify` in
//!   their entity capabilities (`caps.rs`); a resource that becomes
//!   available (or changes capabilities) gets the last item of each node
//!   it wants, unless the node says `send_last_published_item=never`.
//!   Subscriptions are implicit (presence and capabilities); explicit
//!   `<subscribe/>` is not offered.
//! - Items are on disk (`store::PepStore`) before the publish is answered,
//!   within `[limits] max_pep_bytes` per account.

mod bookmarks;
pub mod caps;
mod config;

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::pubsub::owner::{Owner, Payload as OwnerPayload};
use xmpp_parsers::pubsub::pubsub::PubSub;
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use crate::modules::{
    bad_request, roster, store_failed, AccountDisco, Event, IqHandler, IqRequest, IqResponses,
    IqResult, IqType, Listener, PersonalEvents, Registry, Target,
};
use crate::router;
use crate::server::Ctx;
use crate::stanza::{element, simple_error};
use crate::store::{
    AccessModel, BoxFuture, PepItem, PepNodeConfig, PepPublished, SendLast, StoreResult,
};
use crate::xml::{ns, writer};

pub use bookmarks::{room_membership, BOOKMARKS, LEGACY_BOOKMARKS};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_META: &str = "http://jabber.org/protocol/pubsub#meta-data";

/// Items a node keeps at most: what `max_items=max` means (as Prosody's
/// `pep_max_items`).
pub const MAX_ITEMS: u32 = 256;
/// The same for the bookmarks node: one item per room the owner is in.
pub const MAX_BOOKMARKS: u32 = 1024;
/// Nodes one account may have.
const MAX_NODES: usize = 256;
/// Longest node name and item id.
const MAX_NAME: usize = 1024;

/// The pubsub features every account offers (disco#info).
const FEATURES: &[&str] = &[
    NS_PUBSUB,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#config-node-max",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "urn:xmpp:bookmarks:1#compat-pep",
];

pub fn register(r: &mut Registry) {
    let pep = Arc::new(Pep {
        caps: Arc::new(caps::Caps::default()),
    });
    r.iq(NS_PUBSUB, false, true, pep.clone());
    r.iq(NS_OWNER, false, true, pep.clone());
    for f in FEATURES {
        r.account_feature(f);
    }
    r.account_identity("pubsub", "pep");
    r.listener(pep.clone());
    r.iq_responses(caps::QUERY_PREFIX, pep.clone());
    r.account_disco(pep.clone());
    r.personal_events(pep);
}

struct Pep {
    caps: Arc<caps::Caps>,
}

/// A pubsub error: a defined condition with the `pubsub#errors` condition
/// `app` (XEP-0060 §7, §6.5.9), its `feature` when it is `unsupported`.
pub fn pubsub_error(
    cond: Cond,
    app: &str,
    feature: Option<&str>,
    text: Option<&str>,
) -> StanzaError {
    let mut e = simple_error(cond, text);
    let mut a = Element::bare(app, NS_ERRORS);
    if let Some(f) = feature {
        crate::stanza::set_attr(&mut a, "feature", f);
    }
    e.other = Some(a);
    e
}

fn unsupported(feature: &str) -> StanzaError {
    pubsub_error(
        Cond::FeatureNotImplemented,
        "unsupported",
        Some(feature),
        Some("PEP subscriptions are implicit: presence and entity capabilities (+notify)"),
    )
}

fn no_node() -> StanzaError {
    simple_error(Cond::ItemNotFound, Some("no such node"))
}

fn owner_only(req: &IqRequest) -> Result<(), StanzaError> {
    if req.is_self() {
        Ok(())
    } else {
        Err(pubsub_error(
            Cond::Forbidden,
            "insufficient-privileges",
            None,
            Some("only the account's owner changes its PEP nodes"),
        ))
    }
}

fn need(req: &IqRequest, typ: IqType) -> Result<(), StanzaError> {
    if req.typ == typ {
        Ok(())
    } else {
        Err(bad_request(match typ {
            IqType::Get => "this request is an IQ get",
            IqType::Set => "this request is an IQ set",
        }))
    }
}

fn nodeid_required() -> StanzaError {
    pubsub_error(
        Cond::NotAcceptable,
        "nodeid-required",
        None,
        Some("PEP nodes have names"),
    )
}

fn node_name(n: &str) -> Result<&str, StanzaError> {
    if n.is_empty() {
        return Err(nodeid_required());
    }
    if n.len() > MAX_NAME {
        return Err(bad_request(&format!(
            "a node name has at most {MAX_NAME} bytes"
        )));
    }
    Ok(n)
}

/// Whether `owner` may get the new node `node`: `conflict` when it
/// exists, `max-nodes-exceeded` when the account has all it may have.
async fn may_add_node(ctx: &Ctx, owner: &BareJid, node: &str) -> Result<(), StanzaError> {
    let nodes = ctx
        .stores
        .pep
        .nodes(owner)
        .await
        .map_err(|e| store_failed("PEP read", e))?;
    if nodes.iter().any(|(n, _)| n == node) {
        return Err(simple_error(Cond::Conflict, Some("the node exists")));
    }
    if nodes.len() >= MAX_NODES {
        return Err(pubsub_error(
            Cond::ResourceConstraint,
            "max-nodes-exceeded",
            None,
            Some(&format!("an account has at most {MAX_NODES} PEP nodes")),
        ));
    }
    Ok(())
}

/// Whether `viewer` may read `owner`'s node of this configuration: the
/// one place that applies the access models.
async fn may_read(
    ctx: &Ctx,
    owner: &BareJid,
    viewer: &BareJid,
    c: &PepNodeConfig,
) -> Result<(), StanzaError> {
    if owner == viewer {
        return Ok(());
    }
    let item = || async {
        ctx.stores
            .rosters
            .item(owner, viewer.as_str())
            .await
            .ok()
            .flatten()
    };
    match c.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence => {
            if item().await.is_some_and(|i| i.subscription.has_from()) {
                Ok(())
            } else {
                Err(pubsub_error(
                    Cond::NotAuthorized,
                    "presence-subscription-required",
                    None,
                    None,
                ))
            }
        }
        AccessModel::Roster => {
            let allowed = item().await.is_some_and(|i| {
                i.groups
                    .iter()
                    .any(|g| c.roster_groups_allowed.iter().any(|a| a == g))
            });
            if allowed {
                Ok(())
            } else {
                Err(pubsub_error(
                    Cond::NotAuthorized,
                    "not-in-roster-group",
                    None,
                    None,
                ))
            }
        }
        AccessModel::Whitelist => Err(pubsub_error(Cond::NotAllowed, "closed-node", None, None)),
    }
}

fn parse_payload(xml: &str) -> Option<Element> {
    crate::xml::parse(xml).ok()
}

/// `<item id=…>payload</item>` in `namespace`.
fn item_element(namespace: &str, item: &PepItem, publisher: bool) -> Element {
    let mut el = element("item", namespace, &[("id", &item.id)]);
    if publisher && !item.publisher.is_empty() {
        if let Ok(j) = Jid::new(&item.publisher) {
            crate::stanza::set_attr(&mut el, "publisher", j.to_bare().as_str());
        }
    }
    if let Some(p) = parse_payload(&item.xml) {
        el.append_child(p);
    }
    el
}

/// What a notification says.
enum Change<'a> {
    Published(&'a [PepItem]),
    Retracted(&'a [String]),
    Deleted,
    Purged,
}

fn event(node: &str, change: &Change<'_>) -> Element {
    let mut ev = Element::bare("event", NS_EVENT);
    let inner = match change {
        Change::Published(items) => {
            let mut i = element("items", NS_EVENT, &[("node", node)]);
            for it in *items {
                i.append_child(item_element(NS_EVENT, it, true));
            }
            i
        }
        Change::Retracted(ids) => {
            let mut i = element("items", NS_EVENT, &[("node", node)]);
            for id in *ids {
                i.append_child(element("retract", NS_EVENT, &[("id", id)]));
            }
            i
        }
        Change::Deleted => element("delete", NS_EVENT, &[("node", node)]),
        Change::Purged => element("purge", NS_EVENT, &[("node", node)]),
    };
    ev.append_child(inner);
    ev
}

/// A notification from `owner` to one resource (a headline: never
/// archived, stored offline or carbon-copied), through the owner's and
/// the recipient's filters.
async fn send_event(
    ctx: &Arc<Ctx>,
    owner: &BareJid,
    to: &FullJid,
    ev: Element,
    delay: Option<chrono::DateTime<chrono::Utc>>,
) {
    let mut m = element(
        "message",
        ns::CLIENT,
        &[
            ("type", "headline"),
            ("from", owner.as_str()),
            ("to", to.as_str()),
            ("id", &crate::stanza::random_id(8)),
        ],
    );
    m.append_child(ev);
    if let Some(stamp) = delay {
        crate::stanza::add_delay(&mut m, owner.as_str(), stamp);
    }
    router::send_as_user(ctx, m).await;
}

impl Pep {
    /// The available resources of `user` that want notifications of
    /// `node`.
    fn wanting(&self, ctx: &Ctx, user: &BareJid, node: &str) -> Vec<FullJid> {
        ctx.sessions
            .resources_where(user, |r| r.available)
            .into_iter()
            .filter(|r| self.caps.notify(&r.full).is_some_and(|n| n.wants(node)))
            .map(|r| r.full)
            .collect()
    }

    /// Tell everyone who may see `owner`'s node and wants to.
    async fn notify(
        &self,
        ctx: &Arc<Ctx>,
        owner: &BareJid,
        node: &str,
        c: &PepNodeConfig,
        change: Change<'_>,
    ) {
        let ev = event(node, &change);
        for full in self.wanting(ctx, owner, node) {
            send_event(ctx, owner, &full, ev.clone(), None).await;
        }
        if c.access_model == AccessModel::Whitelist {
            return;
        }
        let contacts = roster::contacts(ctx, owner, |i| i.subscription.has_from()).await;
        for item in contacts {
            let Ok(contact) = BareJid::new(&item.jid) else {
                continue;
            };
            if !ctx.is_account_address(true, contact.domain().as_str()) {
                // Federation is not part of this server yet.
                continue;
            }
            let targets = self.wanting(ctx, &contact, node);
            if targets.is_empty() || may_read(ctx, owner, &contact, c).await.is_err() {
                continue;
            }
            for full in targets {
                send_event(ctx, owner, &full, ev.clone(), None).await;
            }
        }
    }

    /// Store an item in `node` (created with `c` if it does not exist;
    /// `c` is the node's configuration otherwise) and notify: `false`
    /// when the account's quota would be exceeded (nothing changed).
    async fn put(
        &self,
        ctx: &Arc<Ctx>,
        owner: &BareJid,
        node: &str,
        c: &PepNodeConfig,
        item: &PepItem,
    ) -> StoreResult<bool> {
        let max = ctx.config.limits.max_pep_bytes;
        match ctx
            .stores
            .pep
            .publish(owner, node, c, item.clone(), max)
            .await?
        {
            PepPublished::Stored { .. } => {
                self.notify(
                    ctx,
                    owner,
                    node,
                    c,
                    Change::Published(std::slice::from_ref(item)),
                )
                .await;
                Ok(true)
            }
            PepPublished::OverQuota => Ok(false),
        }
    }

    /// The server publishing on an account's behalf: the node keeps its
    /// configuration, or is created with `fallback`; over the quota the
    /// item is not kept (and that is logged).
    async fn put_server(
        &self,
        ctx: &Arc<Ctx>,
        owner: &BareJid,
        node: &str,
        fallback: &PepNodeConfig,
        id: &str,
        payload: &Element,
    ) -> StoreResult<()> {
        let c = ctx
            .stores
            .pep
            .node(owner, node)
            .await?
            .unwrap_or_else(|| fallback.clone());
        let item = PepItem {
            id: id.to_string(),
            xml: writer::to_string(payload),
            publisher: owner.to_string(),
            published: chrono::Utc::now().timestamp_millis(),
        };
        if !self.put(ctx, owner, node, &c, &item).await? {
            tracing::warn!(user = %owner, node, "PEP item not kept: the account is over its quota");
        }
        Ok(())
    }

    /// The checks and writes of a publish, and its notifications: the
    /// item as stored.
    async fn publish_item(
        &self,
        ctx: &Arc<Ctx>,
        owner: &BareJid,
        node: &str,
        options: &config::PublishOptions,
        base: PepNodeConfig,
        item: PepItem,
    ) -> Result<PepItem, StanzaError> {
        let existing = ctx
            .stores
            .pep
            .node(owner, node)
            .await
            .map_err(|e| store_failed("PEP read", e))?;
        let c = match existing {
            Some(c) => {
                options.check(&c)?;
                c
            }
            None => {
                may_add_node(ctx, owner, node).await?;
                options.new_node(base)?
            }
        };
        let stored = self
            .put(ctx, owner, node, &c, &item)
            .await
            .map_err(|e| store_failed("PEP write", e))?;
        if !stored {
            return Err(simple_error(
                Cond::ResourceConstraint,
                Some(&format!(
                    "an account's PEP items are limited to {} bytes",
                    ctx.config.limits.max_pep_bytes
                )),
            ));
        }
        Ok(item)
    }

    /// Retract items, and tell who may see them when the node or the
    /// request asks for it: whether any was there.
    async fn retract_items(
        &self,
        ctx: &Arc<Ctx>,
        owner: &BareJid,
        node: &str,
        ids: &[String],
        notify: bool,
    ) -> Result<bool, StanzaError> {
        let Some(c) = ctx
            .stores
            .pep
            .node(owner, node)
            .await
            .map_err(|e| store_failed("PEP read", e))?
        else {
            return Ok(false);
        };
        let mut gone = Vec::new();
        for id in ids {
            if ctx
                .stores
                .pep
                .retract(owner, node, id)
                .await
                .map_err(|e| store_failed("PEP write", e))?
            {
                gone.push(id.clone());
            }
        }
        if !gone.is_empty() && (notify || c.notify_retract) {
            self.notify(ctx, owner, node, &c, Change::Retracted(&gone))
                .await;
        }
        Ok(!gone.is_empty())
    }

    async fn pubsub(&self, ctx: &Arc<Ctx>, owner: &BareJid, req: &IqRequest) -> IqResult {
        let ps = PubSub::try_from(req.payload.clone())
            .map_err(|e| bad_request(&format!("unreadable pubsub request: {e}")))?;
        if let Some(r) = bookmarks::legacy_request(self, ctx, owner, req, &ps).await {
            return r;
        }
        match ps {
            PubSub::Publish {
                publish,
                publish_options,
            } => {
                need(req, IqType::Set)?;
                owner_only(req)?;
                let node = node_name(&publish.node.0)?.to_string();
                let mut items = publish.items.into_iter();
                let (Some(item), None) = (items.next(), items.next()) else {
                    return Err(pubsub_error(
                        Cond::BadRequest,
                        "item-required",
                        None,
                        Some("publish one item"),
                    ));
                };
                let Some(payload) = item.payload.clone() else {
                    return Err(pubsub_error(
                        Cond::BadRequest,
                        "payload-required",
                        None,
                        Some("a PEP item has a payload"),
                    ));
                };
                let id = match &item.id {
                    Some(i) if i.0.len() > MAX_NAME => {
                        return Err(bad_request(&format!(
                            "an item id has at most {MAX_NAME} bytes"
                        )))
                    }
                    Some(i) if !i.0.is_empty() => i.0.clone(),
                    _ => crate::stanza::random_id(12),
                };
                let form = publish_options.and_then(|o| o.form).map(Element::from);
                let options = config::PublishOptions::parse(form.as_ref(), config::ceiling(&node))?;
                let stored = PepItem {
                    id: id.clone(),
                    xml: writer::to_string(&payload),
                    publisher: req.from.to_string(),
                    published: chrono::Utc::now().timestamp_millis(),
                };
                let base = bookmarks::default_for(&node);
                self.publish_item(ctx, owner, &node, &options, base, stored)
                    .await?;
                bookmarks::after_change(self, ctx, owner, &node).await;
                let mut p = Element::bare("pubsub", NS_PUBSUB);
                let mut pu = element("publish", NS_PUBSUB, &[("node", &node)]);
                pu.append_child(element("item", NS_PUBSUB, &[("id", &id)]));
                p.append_child(pu);
                Ok(Some(p))
            }
            PubSub::Retract(r) => {
                need(req, IqType::Set)?;
                owner_only(req)?;
                let node = node_name(&r.node.0)?.to_string();
                if r.items.is_empty() {
                    return Err(pubsub_error(
                        Cond::BadRequest,
                        "item-required",
                        None,
                        Some("name the items to retract"),
                    ));
                }
                let ids: Vec<String> = r
                    .items
                    .iter()
                    .filter_map(|i| i.id.as_ref().map(|i| i.0.clone()))
                    .collect();
                if ids.len() != r.items.len() {
                    return Err(pubsub_error(
                        Cond::BadRequest,
                        "item-required",
                        None,
                        Some("each item to retract has an id"),
                    ));
                }
                if !self
                    .retract_items(ctx, owner, &node, &ids, r.notify)
                    .await?
                {
                    return Err(simple_error(Cond::ItemNotFound, Some("no such item")));
                }
                bookmarks::after_change(self, ctx, owner, &node).await;
                Ok(None)
            }
            PubSub::Items(it) => {
                need(req, IqType::Get)?;
                let node = node_name(&it.node.0)?.to_string();
                let c = ctx
                    .stores
                    .pep
                    .node(owner, &node)
                    .await
                    .map_err(|e| store_failed("PEP read", e))?
                    .ok_or_else(no_node)?;
                may_read(ctx, owner, &req.from.to_bare(), &c).await?;
                let stored = if it.items.is_empty() {
                    let max = it.max_items.map(|m| m as usize);
                    ctx.stores.pep.items(owner, &node, max).await
                } else {
                    let ids: Vec<String> = it
                        .items
                        .iter()
                        .filter_map(|i| i.id.as_ref().map(|i| i.0.clone()))
                        .collect();
                    ctx.stores.pep.items_by_id(owner, &node, &ids).await
                }
                .map_err(|e| store_failed("PEP read", e))?;
                let mut items = element("items", NS_PUBSUB, &[("node", &node)]);
                // Newest first, as Prosody and ejabberd answer; items
                // asked for by id in the order asked.
                let by_id = !it.items.is_empty();
                let ordered: Box<dyn Iterator<Item = &PepItem>> = if by_id {
                    Box::new(stored.iter())
                } else {
                    Box::new(stored.iter().rev())
                };
                for i in ordered {
                    items.append_child(item_element(NS_PUBSUB, i, false));
                }
                let mut p = Element::bare("pubsub", NS_PUBSUB);
                p.append_child(items);
                Ok(Some(p))
            }
            PubSub::Create { create, configure } => {
                need(req, IqType::Set)?;
                owner_only(req)?;
                let node = match &create.node {
                    Some(n) => node_name(&n.0)?.to_string(),
                    None => return Err(nodeid_required()),
                };
                let mut c = bookmarks::default_for(&node);
                if let Some(form) = configure.and_then(|c| c.form) {
                    c = config::apply_config(&c, &Element::from(form), config::ceiling(&node))?;
                }
                may_add_node(ctx, owner, &node).await?;
                let created = ctx
                    .stores
                    .pep
                    .create_node(owner, &node, c)
                    .await
                    .map_err(|e| store_failed("PEP write", e))?;
                if !created {
                    return Err(simple_error(Cond::Conflict, Some("the node exists")));
                }
                Ok(None)
            }
            PubSub::Subscriptions(_) => {
                need(req, IqType::Get)?;
                let mut p = Element::bare("pubsub", NS_PUBSUB);
                p.append_child(Element::bare("subscriptions", NS_PUBSUB));
                Ok(Some(p))
            }
            PubSub::Affiliations(a) => {
                need(req, IqType::Get)?;
                let mut affs = Element::bare("affiliations", NS_PUBSUB);
                if req.is_self() {
                    let nodes = ctx
                        .stores
                        .pep
                        .nodes(owner)
                        .await
                        .map_err(|e| store_failed("PEP read", e))?;
                    for (n, _) in nodes {
                        if a.node.as_ref().is_none_or(|want| want.0 == n) {
                            affs.append_child(element(
                                "affiliation",
                                NS_PUBSUB,
                                &[("node", &n), ("affiliation", "owner")],
                            ));
                        }
                    }
                }
                let mut p = Element::bare("pubsub", NS_PUBSUB);
                p.append_child(affs);
                Ok(Some(p))
            }
            PubSub::Subscribe { .. } | PubSub::Unsubscribe(_) | PubSub::Subscription(_) => {
                Err(unsupported("subscribe"))
            }
            PubSub::Default(_) => Err(unsupported("retrieve-default-sub")),
        }
    }

    async fn owner(&self, ctx: &Arc<Ctx>, owner: &BareJid, req: &IqRequest) -> IqResult {
        owner_only(req)?;
        let o = Owner::try_from(req.payload.clone())
            .map_err(|e| bad_request(&format!("unreadable pubsub#owner request: {e}")))?;
        let read = |node: String| async move {
            if node == LEGACY_BOOKMARKS {
                return Ok(bookmarks::legacy_config());
            }
            ctx.stores
                .pep
                .node(owner, &node)
                .await
                .map_err(|e| store_failed("PEP read", e))?
                .ok_or_else(no_node)
        };
        // storage:bookmarks is a view of the native bookmarks: deleting
        // or purging it removes them; its configuration is fixed.
        let legacy = match &o.payload {
            OwnerPayload::Delete { node, .. } | OwnerPayload::Purge { node } => {
                node.0 == LEGACY_BOOKMARKS
            }
            _ => false,
        };
        if legacy {
            need(req, IqType::Set)?;
            bookmarks::clear(self, ctx, owner).await?;
            return Ok(None);
        }
        let wrap = |inner: Element| {
            let mut p = Element::bare("pubsub", NS_OWNER);
            p.append_child(inner);
            Some(p)
        };
        match o.payload {
            OwnerPayload::Configure { node, form } => {
                let node = match &node {
                    Some(n) => node_name(&n.0)?.to_string(),
                    None => return Err(nodeid_required()),
                };
                let c = read(node.clone()).await?;
                match req.typ {
                    IqType::Get => {
                        let mut conf = element("configure", NS_OWNER, &[("node", &node)]);
                        conf.append_child(config::config_form(&c, "form", config::ceiling(&node)));
                        Ok(wrap(conf))
                    }
                    IqType::Set => {
                        let Some(form) = form else {
                            return Err(bad_request("a configuration needs a form"));
                        };
                        let new =
                            config::apply_config(&c, &Element::from(form), config::ceiling(&node))?;
                        if new != c && node == LEGACY_BOOKMARKS {
                            return Err(simple_error(
                                Cond::NotAcceptable,
                                Some("storage:bookmarks shows urn:xmpp:bookmarks:1: its configuration is fixed"),
                            ));
                        }
                        if new != c {
                            ctx.stores
                                .pep
                                .configure_node(owner, &node, new)
                                .await
                                .map_err(|e| store_failed("PEP write", e))?
                                .ok_or_else(no_node)?;
                        }
                        Ok(None)
                    }
                }
            }
            OwnerPayload::Default { .. } => {
                need(req, IqType::Get)?;
                let mut d = Element::bare("default", NS_OWNER);
                d.append_child(config::config_form(
                    &config::default_config(),
                    "form",
                    MAX_ITEMS,
                ));
                Ok(wrap(d))
            }
            OwnerPayload::Delete { ref node, .. } | OwnerPayload::Purge { ref node } => {
                need(req, IqType::Set)?;
                let delete = matches!(o.payload, OwnerPayload::Delete { .. });
                let node = node_name(&node.0)?.to_string();
                let c = read(node.clone()).await?;
                let pep = &ctx.stores.pep;
                let (done, tell, change) = if delete {
                    (
                        pep.delete_node(owner, &node).await,
                        c.notify_delete,
                        Change::Deleted,
                    )
                } else {
                    (
                        pep.purge(owner, &node).await,
                        c.notify_retract,
                        Change::Purged,
                    )
                };
                done.map_err(|e| store_failed("PEP write", e))?;
                if tell {
                    self.notify(ctx, owner, &node, &c, change).await;
                }
                Ok(None)
            }
            OwnerPayload::Affiliations { node, .. } => {
                let node = node_name(&node.0)?.to_string();
                read(node.clone()).await?;
                match req.typ {
                    IqType::Get => {
                        let mut a = element("affiliations", NS_OWNER, &[("node", &node)]);
                        a.append_child(element(
                            "affiliation",
                            NS_OWNER,
                            &[("jid", owner.as_str()), ("affiliation", "owner")],
                        ));
                        Ok(wrap(a))
                    }
                    IqType::Set => Err(unsupported("modify-affiliations")),
                }
            }
            OwnerPayload::Subscriptions { node, .. } => {
                let node = node_name(&node.0)?.to_string();
                read(node.clone()).await?;
                match req.typ {
                    IqType::Get => Ok(wrap(element("subscriptions", NS_OWNER, &[("node", &node)]))),
                    IqType::Set => Err(unsupported("manage-subscriptions")),
                }
            }
        }
    }

    /// A resource's notification wishes are known (it became available or
    /// changed capabilities): the last item of each node it wants, of its
    /// own account and of the contacts whose presence it sees.
    async fn last_items(ctx: Arc<Ctx>, caps: Arc<caps::Caps>, full: FullJid) {
        let Some(notify) = caps.notify(&full) else {
            return;
        };
        let nodes: Vec<String> = notify.nodes().map(str::to_string).collect();
        if nodes.is_empty() {
            return;
        }
        let user = full.to_bare();
        let mut owners = vec![user.clone()];
        for item in roster::contacts(&ctx, &user, |i| i.subscription.has_to()).await {
            if let Ok(c) = BareJid::new(&item.jid) {
                if ctx.is_account_address(true, c.domain().as_str()) {
                    owners.push(c);
                }
            }
        }
        for owner in &owners {
            for node in &nodes {
                let Ok(Some(c)) = ctx.stores.pep.node(owner, node).await else {
                    continue;
                };
                if c.send_last_published_item != SendLast::OnSubAndPresence
                    || may_read(&ctx, owner, &user, &c).await.is_err()
                {
                    continue;
                }
                let Ok(last) = ctx.stores.pep.items(owner, node, Some(1)).await else {
                    continue;
                };
                if last.is_empty() {
                    continue;
                }
                // The time it was published (an item from before items
                // had one: now).
                let stamp = last
                    .first()
                    .and_then(|i| chrono::DateTime::from_timestamp_millis(i.published))
                    .filter(|t| t.timestamp() > 0)
                    .unwrap_or_else(chrono::Utc::now);
                send_event(
                    &ctx,
                    owner,
                    &full,
                    event(node, &Change::Published(&last)),
                    Some(stamp),
                )
                .await;
            }
            tokio::task::yield_now().await;
        }
    }

    fn start_last_items(&self, ctx: &Arc<Ctx>, full: FullJid) {
        let (ctx, caps) = (ctx.clone(), self.caps.clone());
        tokio::spawn(Self::last_items(ctx, caps, full));
    }
}

impl IqHandler for Pep {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let Target::Account(owner) = req.target.clone() else {
                return Err(simple_error(Cond::ServiceUnavailable, None));
            };
            if req.payload.is("pubsub", NS_PUBSUB) {
                self.pubsub(ctx, &owner, &req).await
            } else if req.payload.is("pubsub", NS_OWNER) {
                self.owner(ctx, &owner, &req).await
            } else {
                Err(bad_request("a pubsub request is a <pubsub/> element"))
            }
        })
    }
}

impl Listener for Pep {
    fn on_event<'a>(&'a self, ctx: &'a Arc<Ctx>, ev: &'a Event<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match ev {
                Event::Presence {
                    full,
                    available: true,
                    el,
                } => match self.caps.presence(full, el, &ctx.domain) {
                    caps::Seen::Same => {}
                    caps::Seen::Ready => self.start_last_items(ctx, (*full).clone()),
                    caps::Seen::Ask(iq) => {
                        router::deliver_to_session(ctx, full, iq);
                    }
                },
                Event::Presence {
                    full,
                    available: false,
                    ..
                }
                | Event::SessionClosed { full } => self.caps.forget(full),
                _ => {}
            }
        })
    }
}

impl IqResponses for Pep {
    fn response<'a>(&'a self, ctx: &'a Arc<Ctx>, el: Element) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (ready, ask) = self.caps.answer(&el, &ctx.domain);
            for full in ready {
                self.start_last_items(ctx, full);
            }
            if let Some((full, iq)) = ask {
                router::deliver_to_session(ctx, &full, iq);
            }
        })
    }
}

impl PersonalEvents for Pep {
    fn publish<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        node: &'a str,
        config: &'a PepNodeConfig,
        id: &'a str,
        payload: Element,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            self.put_server(ctx, owner, node, config, id, &payload)
                .await?;
            bookmarks::after_change(self, ctx, owner, node).await;
            Ok(())
        })
    }

    fn retract<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        node: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            match self
                .retract_items(ctx, owner, node, &[id.to_string()], true)
                .await
            {
                Ok(true) => bookmarks::after_change(self, ctx, owner, node).await,
                Ok(false) => {}
                Err(_) => {
                    return Err(crate::store::StoreError(format!(
                        "PEP retract of {node} for {owner} failed"
                    )))
                }
            }
            Ok(())
        })
    }
}

impl AccountDisco for Pep {
    fn items<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        from: &'a Jid,
    ) -> BoxFuture<'a, Vec<Element>> {
        Box::pin(async move {
            let Ok(nodes) = ctx.stores.pep.nodes(owner).await else {
                return Vec::new();
            };
            let viewer = from.to_bare();
            let mut out = Vec::new();
            for (n, c) in nodes {
                if may_read(ctx, owner, &viewer, &c).await.is_ok() {
                    let mut it = element(
                        "item",
                        ns::DISCO_ITEMS,
                        &[("jid", owner.as_str()), ("node", &n)],
                    );
                    if !c.title.is_empty() {
                        crate::stanza::set_attr(&mut it, "name", c.title.as_str());
                    }
                    out.push(it);
                }
            }
            out
        })
    }

    fn node_info<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        owner: &'a BareJid,
        from: &'a Jid,
        node: &'a str,
    ) -> BoxFuture<'a, Option<IqResult>> {
        Box::pin(async move {
            let c = match ctx.stores.pep.node(owner, node).await {
                Ok(Some(c)) => c,
                Ok(None) => return None,
                Err(e) => return Some(Err(store_failed("PEP read", e))),
            };
            if may_read(ctx, owner, &from.to_bare(), &c).await.is_err() {
                return Some(Err(no_node()));
            }
            let mut q = element("query", ns::DISCO_INFO, &[("node", node)]);
            q.append_child(element(
                "identity",
                ns::DISCO_INFO,
                &[("category", "pubsub"), ("type", "leaf")],
            ));
            q.append_child(element("feature", ns::DISCO_INFO, &[("var", NS_PUBSUB)]));
            let mut x = config::config_form(&c, "result", config::ceiling(node));
            // The meta-data form (XEP-0060 §5.4) shares its fields.
            for f in x.children_mut() {
                if f.attr("var") == Some("FORM_TYPE") {
                    for v in f.children_mut() {
                        *v = {
                            let mut nv = Element::bare("value", ns::DATA_FORMS);
                            nv.append_text(NS_META);
                            nv
                        };
                    }
                }
            }
            q.append_child(x);
            Some(Ok(Some(q)))
        })
    }
}

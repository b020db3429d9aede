// Stanza errors are the answer to one IQ, built once per request.
#![allow(clippy::result_large_err)]

//! PEP node configuration (XEP-0060 §8.2, XEP-0163 §4.4) and publish
//! options (XEP-0223): the defaults, the `pubsub#node_config` form, and
//! the preconditions of a publish.

use minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use super::{pubsub_error, MAX_BOOKMARKS, MAX_ITEMS};
use crate::modules::mam::form_field as field;
use crate::stanza::{element, set_attr, simple_error};
use crate::store::{AccessModel, PepNodeConfig, SendLast};
use crate::xml::ns;

pub const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The configuration of a node created without options: as Prosody and
/// ejabberd do, one item, seen by contacts with a presence subscription.
pub fn default_config() -> PepNodeConfig {
    PepNodeConfig {
        access_model: AccessModel::Presence,
        max_items: 1,
        persist_items: true,
        send_last_published_item: SendLast::OnSubAndPresence,
        notify_retract: true,
        notify_delete: true,
        roster_groups_allowed: Vec::new(),
        title: String::new(),
        payload_type: String::new(),
    }
}

fn access_name(a: AccessModel) -> &'static str {
    match a {
        AccessModel::Open => "open",
        AccessModel::Presence => "presence",
        AccessModel::Roster => "roster",
        AccessModel::Whitelist => "whitelist",
    }
}

fn send_last_name(s: SendLast) -> &'static str {
    match s {
        SendLast::Never => "never",
        SendLast::OnSub => "on_sub",
        SendLast::OnSubAndPresence => "on_sub_and_presence",
    }
}

fn bool_value(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The most items a node may keep, what `max_items=max` means for it:
/// 256 (as Prosody's `pep_max_items`), and more for the bookmarks node,
/// which holds one item per room of its owner.
pub fn ceiling(node: &str) -> u32 {
    if node == super::BOOKMARKS {
        MAX_BOOKMARKS
    } else {
        MAX_ITEMS
    }
}

fn parse_max(v: &str, ceiling: u32) -> Option<u32> {
    let v = v.trim();
    if v == "max" {
        return Some(ceiling);
    }
    v.parse::<u32>().ok().map(|n| n.clamp(1, ceiling))
}

fn options(f: Element, opts: &[&str]) -> Element {
    let mut f = f;
    for o in opts {
        let mut opt = element("option", ns::DATA_FORMS, &[]);
        let mut v = Element::bare("value", ns::DATA_FORMS);
        v.append_text(*o);
        opt.append_child(v);
        f.append_child(opt);
    }
    f
}

fn labelled(mut f: Element, label: &str) -> Element {
    set_attr(&mut f, "label", label);
    f
}

/// The `pubsub#node_config` form of a node (`typ` `form` for the owner to
/// fill in, `result` where it only informs).
pub fn config_form(c: &PepNodeConfig, typ: &str, ceiling: u32) -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", typ)]);
    x.append_child(field("FORM_TYPE", "hidden", Some(NODE_CONFIG)));
    x.append_child(labelled(
        field("pubsub#title", "text-single", Some(&c.title)),
        "A short name for the node",
    ));
    x.append_child(labelled(
        field("pubsub#type", "text-single", Some(&c.payload_type)),
        "The namespace of the payloads",
    ));
    x.append_child(labelled(
        field(
            "pubsub#max_items",
            "text-single",
            Some(&c.max_items.to_string()),
        ),
        &format!("Items to keep (at most {ceiling}, or 'max')"),
    ));
    x.append_child(labelled(
        field(
            "pubsub#persist_items",
            "boolean",
            Some(bool_value(c.persist_items)),
        ),
        "Keep items on disk",
    ));
    x.append_child(labelled(
        options(
            field(
                "pubsub#access_model",
                "list-single",
                Some(access_name(c.access_model)),
            ),
            &["open", "presence", "roster", "whitelist"],
        ),
        "Who may see the items",
    ));
    let mut groups = field("pubsub#roster_groups_allowed", "list-multi", None);
    for g in &c.roster_groups_allowed {
        let mut v = Element::bare("value", ns::DATA_FORMS);
        v.append_text(g);
        groups.append_child(v);
    }
    x.append_child(labelled(
        groups,
        "Roster groups allowed (access model 'roster')",
    ));
    x.append_child(labelled(
        options(
            field(
                "pubsub#send_last_published_item",
                "list-single",
                Some(send_last_name(c.send_last_published_item)),
            ),
            &["never", "on_sub", "on_sub_and_presence"],
        ),
        "When to send the last item",
    ));
    x.append_child(field(
        "pubsub#notify_retract",
        "boolean",
        Some(bool_value(c.notify_retract)),
    ));
    x.append_child(field(
        "pubsub#notify_delete",
        "boolean",
        Some(bool_value(c.notify_delete)),
    ));
    x.append_child(field("pubsub#deliver_notifications", "boolean", Some("1")));
    x.append_child(field("pubsub#deliver_payloads", "boolean", Some("1")));
    x.append_child(options(
        field("pubsub#publish_model", "list-single", Some("publishers")),
        &["publishers"],
    ));
    x.append_child(options(
        field("pubsub#notification_type", "list-single", Some("headline")),
        &["headline"],
    ));
    x
}

fn values(f: &Element) -> Vec<String> {
    f.children()
        .filter(|c| c.is("value", ns::DATA_FORMS))
        .map(|c| c.text())
        .collect()
}

fn not_acceptable(text: &str) -> StanzaError {
    simple_error(Cond::NotAcceptable, Some(text))
}

/// One field of a configuration, applied to `c`: `Err` for a value Confab
/// does not offer.
fn apply_field(
    c: &mut PepNodeConfig,
    var: &str,
    vals: &[String],
    ceiling: u32,
) -> Result<(), StanzaError> {
    let one = vals.first().map(String::as_str).unwrap_or("").trim();
    let bad = |what: &str| not_acceptable(&format!("{var}: {what}"));
    match var {
        "pubsub#title" => c.title = one.chars().take(200).collect(),
        "pubsub#type" => c.payload_type = one.chars().take(200).collect(),
        "pubsub#max_items" => {
            c.max_items =
                parse_max(one, ceiling).ok_or_else(|| bad("a number of items, or 'max'"))?;
        }
        "pubsub#persist_items" => {
            c.persist_items = parse_bool(one).ok_or_else(|| bad("a boolean"))?;
        }
        "pubsub#access_model" => {
            c.access_model = match one {
                "open" => AccessModel::Open,
                "presence" => AccessModel::Presence,
                "roster" => AccessModel::Roster,
                "whitelist" => AccessModel::Whitelist,
                _ => return Err(bad("open, presence, roster or whitelist")),
            }
        }
        "pubsub#roster_groups_allowed" => {
            c.roster_groups_allowed = vals
                .iter()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .take(100)
                .collect();
        }
        "pubsub#send_last_published_item" => {
            c.send_last_published_item = match one {
                "never" => SendLast::Never,
                "on_sub" => SendLast::OnSub,
                "on_sub_and_presence" => SendLast::OnSubAndPresence,
                _ => return Err(bad("never, on_sub or on_sub_and_presence")),
            }
        }
        "pubsub#notify_retract" => {
            c.notify_retract = parse_bool(one).ok_or_else(|| bad("a boolean"))?;
        }
        "pubsub#notify_delete" => {
            c.notify_delete = parse_bool(one).ok_or_else(|| bad("a boolean"))?;
        }
        // What every PEP node does, and may be asked for.
        "pubsub#deliver_notifications"
        | "pubsub#deliver_payloads"
        | "pubsub#presence_based_delivery"
            if parse_bool(one) == Some(false) =>
        {
            return Err(bad("notifications with payloads are always delivered"));
        }
        "pubsub#publish_model" if !one.is_empty() && one != "publishers" => {
            return Err(bad("only the owner publishes to a PEP node"));
        }
        "pubsub#notification_type" if !one.is_empty() && one != "headline" => {
            return Err(bad("notifications are headline messages"));
        }
        // Fields Confab does not keep are ignored (XEP-0004 §3.4 leaves it
        // to the service).
        _ => {}
    }
    Ok(())
}

fn form_fields(x: &Element) -> impl Iterator<Item = &Element> {
    x.children().filter(|c| c.is("field", ns::DATA_FORMS))
}

fn form_type(x: &Element) -> Option<String> {
    form_fields(x)
        .find(|f| f.attr("var") == Some("FORM_TYPE"))
        .map(|f| {
            values(f)
                .first()
                .cloned()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
}

/// A submitted `pubsub#node_config` form applied to `base`.
pub fn apply_config(
    base: &PepNodeConfig,
    x: &Element,
    ceiling: u32,
) -> Result<PepNodeConfig, StanzaError> {
    if !x.is("x", ns::DATA_FORMS) {
        return Err(crate::modules::bad_request(
            "a configuration is a data form",
        ));
    }
    if x.attr("type") == Some("cancel") {
        return Ok(base.clone());
    }
    if let Some(t) = form_type(x) {
        if t != NODE_CONFIG {
            return Err(crate::modules::bad_request(&format!(
                "FORM_TYPE is {NODE_CONFIG}"
            )));
        }
    }
    let mut c = base.clone();
    for f in form_fields(x) {
        let Some(var) = f.attr("var") else {
            return Err(crate::modules::bad_request("a submitted field has a 'var'"));
        };
        if var != "FORM_TYPE" {
            apply_field(&mut c, var, &values(f), ceiling)?;
        }
    }
    Ok(c)
}

/// Publish options (XEP-0223): the configuration a node created by this
/// publish gets, and a check that an existing node's configuration meets
/// them (`conflict` with `precondition-not-met` otherwise: the client may
/// then reconfigure the node and publish again).
pub struct PublishOptions {
    fields: Vec<(String, Vec<String>)>,
    /// The node's `max`.
    ceiling: u32,
}

impl PublishOptions {
    pub fn parse(x: Option<&Element>, ceiling: u32) -> Result<Self, StanzaError> {
        let Some(x) = x else {
            return Ok(PublishOptions {
                fields: Vec::new(),
                ceiling,
            });
        };
        if form_type(x).as_deref() != Some(PUBLISH_OPTIONS) {
            return Err(crate::modules::bad_request(&format!(
                "publish options are a form of FORM_TYPE {PUBLISH_OPTIONS}"
            )));
        }
        let mut out = Vec::new();
        for f in form_fields(x) {
            let Some(var) = f.attr("var") else {
                return Err(crate::modules::bad_request("a submitted field has a 'var'"));
            };
            if var != "FORM_TYPE" {
                out.push((var.to_string(), values(f)));
            }
        }
        Ok(PublishOptions {
            fields: out,
            ceiling,
        })
    }

    /// The configuration of a node created by the publish.
    pub fn new_node(&self, base: PepNodeConfig) -> Result<PepNodeConfig, StanzaError> {
        let mut c = base;
        for (var, vals) in &self.fields {
            apply_field(&mut c, var, vals, self.ceiling).map_err(|_| precondition(var))?;
        }
        Ok(c)
    }

    /// Whether an existing node meets the options.
    pub fn check(&self, existing: &PepNodeConfig) -> Result<(), StanzaError> {
        for (var, vals) in &self.fields {
            let mut want = existing.clone();
            apply_field(&mut want, var, vals, self.ceiling).map_err(|_| precondition(var))?;
            if want != *existing {
                return Err(precondition(var));
            }
        }
        Ok(())
    }
}

fn precondition(var: &str) -> StanzaError {
    pubsub_error(
        Cond::Conflict,
        "precondition-not-met",
        None,
        Some(&format!(
            "the node's {var} differs from the publish options: reconfigure it first"
        )),
    )
}

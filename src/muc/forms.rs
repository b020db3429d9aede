// Stanza errors are the answer to one IQ, built once per request.
#![allow(clippy::result_large_err)]

//! The room's data forms (XEP-0004): the configuration form of
//! `muc#owner`, limited to what members may change, the `muc#roominfo`
//! form of disco#info, and `muc#admin` items.

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use crate::modules::mam::form_field as field;
use crate::stanza::{element, simple_error};
use crate::store::RoomRecord;
use crate::xml::ns;

pub const CONFIG_FORM: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const INFO_FORM: &str = "http://jabber.org/protocol/muc#roominfo";
/// Longest room name and description.
pub const MAX_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 2000;

/// The features of every room (disco#info).
pub const ROOM_FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    super::NS_MUC,
    "muc_persistent",
    "muc_membersonly",
    "muc_nonanonymous",
    "muc_unmoderated",
    "muc_unsecured",
    "muc_hidden",
    ns::MAM,
    ns::MAM_EXTENDED,
    ns::SID,
    super::NS_OCCUPANT_ID,
    ns::PING,
    "http://jabber.org/protocol/muc#stable_id",
    "http://jabber.org/protocol/muc#self-ping-optimization",
    crate::modules::history::NS,
];

fn bad(text: &str) -> StanzaError {
    crate::modules::bad_request(text)
}

fn labelled(mut f: Element, label: &str) -> Element {
    crate::stanza::set_attr(&mut f, "label", label);
    f
}

/// The configuration form: the fields a member may change.
pub fn config_form(rec: &RoomRecord) -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", "form")]);
    let mut title = Element::bare("title", ns::DATA_FORMS);
    title.append_text("Room settings");
    x.append_child(title);
    let mut text = Element::bare("instructions", ns::DATA_FORMS);
    text.append_text(
        "Every member may change the name and the description. The room is \
         persistent, members-only and non-anonymous, and every member is equal.",
    );
    x.append_child(text);
    x.append_child(field("FORM_TYPE", "hidden", Some(CONFIG_FORM)));
    x.append_child(labelled(
        field("muc#roomconfig_roomname", "text-single", Some(&rec.name)),
        "Name",
    ));
    x.append_child(labelled(
        field(
            "muc#roomconfig_roomdesc",
            "text-single",
            Some(&rec.description),
        ),
        "Description",
    ));
    let mut q = Element::bare("query", super::NS_OWNER);
    q.append_child(x);
    q
}

/// What a submitted configuration changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    pub name: Option<String>,
    pub description: Option<String>,
}

fn values(f: &Element) -> Vec<String> {
    f.children()
        .filter(|c| c.is("value", ns::DATA_FORMS))
        .map(|c| c.text())
        .collect()
}

fn as_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The settings no member can change, as muc#roomconfig fields: a
/// submitted form that asks for another value is refused rather than
/// silently ignored.
fn fixed(var: &str, vals: &[String], max_members: usize) -> Result<(), StanzaError> {
    let one = vals.first().map(String::as_str).unwrap_or("").trim();
    let want_bool = |want: bool| -> bool { as_bool(one).is_none_or(|b| b == want) };
    let ok = match var {
        "muc#roomconfig_persistentroom"
        | "muc#roomconfig_membersonly"
        | "muc#roomconfig_changesubject"
        | "muc#roomconfig_allowinvites"
        | "muc#roomconfig_enablelogging"
        | "muc#roomconfig_enablearchiving"
        | "muc#roomconfig_mam"
        | "mam" => want_bool(true),
        "muc#roomconfig_publicroom"
        | "muc#roomconfig_moderatedroom"
        | "muc#roomconfig_passwordprotectedroom"
        | "muc#roomconfig_members_by_default" => want_bool(false),
        "muc#roomconfig_whois" => one.is_empty() || one == "anyone",
        "muc#roomconfig_maxusers" => {
            one.is_empty()
                || one
                    .parse::<usize>()
                    .is_ok_and(|n| n == 0 || n >= max_members)
        }
        "muc#roomconfig_roomowners" | "muc#roomconfig_roomadmins" => {
            vals.iter().all(|v| v.trim().is_empty())
        }
        "muc#roomconfig_roomsecret" => one.is_empty(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(simple_error(
            Cond::NotAcceptable,
            Some(&format!(
                "{var} cannot change here: every room is persistent, members-only, \
                 non-anonymous and unmoderated, of at most {max_members} equal members; \
                 members change only the name and the description"
            )),
        ))
    }
}

/// Read a submitted configuration form (`<x type='submit'/>`); an empty
/// one (an instant room) changes nothing.
pub fn parse_config(x: &Element, max_members: usize) -> Result<ConfigChange, StanzaError> {
    let mut change = ConfigChange::default();
    for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
        let Some(var) = f.attr("var") else {
            return Err(bad("a submitted field has a 'var'"));
        };
        let vals = values(f);
        let one = vals.first().cloned().unwrap_or_default();
        match var {
            "FORM_TYPE" => {
                if one.trim() != CONFIG_FORM {
                    return Err(bad(&format!("FORM_TYPE is {CONFIG_FORM}")));
                }
            }
            "muc#roomconfig_roomname" => {
                let n = one.trim().to_string();
                if n.chars().count() > MAX_NAME {
                    return Err(simple_error(
                        Cond::NotAcceptable,
                        Some(&format!("a room name has at most {MAX_NAME} characters")),
                    ));
                }
                change.name = Some(n);
            }
            "muc#roomconfig_roomdesc" => {
                let d = one.trim().to_string();
                if d.chars().count() > MAX_DESCRIPTION {
                    return Err(simple_error(
                        Cond::NotAcceptable,
                        Some(&format!(
                            "a description has at most {MAX_DESCRIPTION} characters"
                        )),
                    ));
                }
                change.description = Some(d);
            }
            other => fixed(other, &vals, max_members)?,
        }
    }
    Ok(change)
}

/// The room's disco#info: identity, features and the muc#roominfo form.
pub fn room_info(rec: &RoomRecord, occupants: usize) -> Element {
    let mut q = Element::bare("query", ns::DISCO_INFO);
    let name = if rec.name.is_empty() {
        rec.jid.split('@').next().unwrap_or("")
    } else {
        rec.name.as_str()
    };
    q.append_child(element(
        "identity",
        ns::DISCO_INFO,
        &[("category", "conference"), ("type", "text"), ("name", name)],
    ));
    for f in ROOM_FEATURES {
        q.append_child(element("feature", ns::DISCO_INFO, &[("var", f)]));
    }
    let mut x = element("x", ns::DATA_FORMS, &[("type", "result")]);
    x.append_child(field("FORM_TYPE", "hidden", Some(INFO_FORM)));
    let rows: [(&str, &str, &str, String); 9] = [
        (
            "muc#roomconfig_roomname",
            "text-single",
            "Name",
            rec.name.clone(),
        ),
        (
            "muc#roominfo_description",
            "text-single",
            "Description",
            rec.description.clone(),
        ),
        (
            "muc#roominfo_subject",
            "text-single",
            "Subject",
            rec.subject.clone(),
        ),
        (
            "muc#roominfo_occupants",
            "text-single",
            "Occupants",
            occupants.to_string(),
        ),
        (
            "muc#roominfo_members",
            "text-single",
            "Members",
            rec.members.len().to_string(),
        ),
        (
            "muc#roominfo_subjectmod",
            "boolean",
            "Members may change the subject",
            "1".into(),
        ),
        (
            "muc#roomconfig_changesubject",
            "boolean",
            "Members may change the subject",
            "1".into(),
        ),
        (
            "muc#roomconfig_allowinvites",
            "boolean",
            "Members may invite",
            "1".into(),
        ),
        (
            "muc#maxhistoryfetch",
            "text-single",
            "Most messages of history on join",
            super::room::MAX_HISTORY.to_string(),
        ),
    ];
    for (var, typ, label, value) in rows {
        x.append_child(labelled(field(var, typ, Some(&value)), label));
    }
    q.append_child(x);
    q
}

/// An affiliation a muc#admin item may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affiliation {
    Member,
    None,
}

/// Who a muc#admin item names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Jid(BareJid),
    Nick(String),
}

pub const EQUAL: &str = "every member of a room is equal: members are added (affiliation \
                         'member') or removed ('none'); no owners, admins, bans, roles or voice";

/// The changes a muc#admin set asks for, every item checked before any
/// is applied.
pub fn parse_admin_set(q: &Element) -> Result<Vec<(Who, Affiliation)>, StanzaError> {
    let items: Vec<&Element> = q
        .children()
        .filter(|c| c.is("item", super::NS_ADMIN))
        .collect();
    if items.is_empty() {
        return Err(bad("a muc#admin set holds at least one item"));
    }
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        if it.attr("role").is_some() {
            return Err(simple_error(Cond::NotAllowed, Some(EQUAL)));
        }
        let aff = match it.attr("affiliation") {
            Some("member") => Affiliation::Member,
            Some("none") => Affiliation::None,
            Some("owner" | "admin" | "outcast") => {
                return Err(simple_error(Cond::NotAllowed, Some(EQUAL)))
            }
            Some(other) => {
                return Err(bad(&format!(
                    "unknown affiliation '{other}' (member or none)"
                )))
            }
            None => return Err(bad("an item names an affiliation (member or none)")),
        };
        let who = match (it.attr("jid"), it.attr("nick")) {
            (Some(j), _) => Who::Jid(
                Jid::new(j.trim())
                    .map_err(|_| simple_error(Cond::JidMalformed, Some("'jid' is not a JID")))?
                    .to_bare(),
            ),
            (None, Some(n)) => Who::Nick(n.to_string()),
            (None, None) => return Err(bad("an item names a 'jid' or a 'nick'")),
        };
        out.push((who, aff));
    }
    Ok(out)
}

/// What a muc#admin get asks for: members (by affiliation), or occupants
/// (by role).
pub enum AdminList {
    Members,
    Nobody,
    Occupants,
}

pub fn parse_admin_get(q: &Element) -> Result<AdminList, StanzaError> {
    let Some(it) = q.get_child("item", super::NS_ADMIN) else {
        return Err(bad(
            "a muc#admin get holds an item with an affiliation or a role",
        ));
    };
    match (it.attr("affiliation"), it.attr("role")) {
        (Some("member"), _) => Ok(AdminList::Members),
        (Some("owner" | "admin" | "outcast" | "none"), _) => Ok(AdminList::Nobody),
        (Some(other), _) => Err(bad(&format!("unknown affiliation '{other}'"))),
        (None, Some("participant")) => Ok(AdminList::Occupants),
        (None, Some("moderator" | "visitor" | "none")) => Ok(AdminList::Nobody),
        (None, Some(other)) => Err(bad(&format!("unknown role '{other}'"))),
        (None, None) => Err(bad("the item names an affiliation or a role")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(fields: &[(&str, &str)]) -> Element {
        let mut x = element("x", ns::DATA_FORMS, &[("type", "submit")]);
        for (var, v) in fields {
            x.append_child(field(var, "text-single", Some(v)));
        }
        x
    }

    #[test]
    fn config_submissions() {
        let c = parse_config(
            &x(&[
                ("FORM_TYPE", CONFIG_FORM),
                ("muc#roomconfig_roomname", " Team "),
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_membersonly", "true"),
                ("muc#roomconfig_whois", "anyone"),
                ("muc#roomconfig_publicroom", "0"),
                ("x-unknown", "whatever"),
            ]),
            30,
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("Team"));
        assert_eq!(c.description, None);
        assert_eq!(parse_config(&x(&[]), 30).unwrap(), ConfigChange::default());
        for refused in [
            ("muc#roomconfig_membersonly", "0"),
            ("muc#roomconfig_moderatedroom", "1"),
            ("muc#roomconfig_whois", "moderators"),
            ("muc#roomconfig_maxusers", "10"),
            ("muc#roomconfig_roomowners", "x@y"),
        ] {
            let e = parse_config(&x(&[refused]), 30).unwrap_err();
            assert_eq!(e.defined_condition, Cond::NotAcceptable, "{refused:?}");
        }
        let e = parse_config(&x(&[("FORM_TYPE", "urn:other")]), 30).unwrap_err();
        assert_eq!(e.defined_condition, Cond::BadRequest);
    }

    #[test]
    fn admin_items() {
        let q = |items: &str| {
            crate::xml::parse(&format!(
                "<query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query>"
            ))
            .unwrap()
        };
        let ok = parse_admin_set(&q(
            "<item affiliation='member' jid='a@x'/><item affiliation='none' nick='b'/>",
        ))
        .unwrap();
        assert_eq!(ok.len(), 2);
        for (items, cond) in [
            ("<item affiliation='outcast' jid='a@x'/>", Cond::NotAllowed),
            ("<item affiliation='owner' jid='a@x'/>", Cond::NotAllowed),
            ("<item role='moderator' nick='a'/>", Cond::NotAllowed),
            ("<item role='none' nick='a'/>", Cond::NotAllowed),
            ("<item affiliation='boss' jid='a@x'/>", Cond::BadRequest),
            ("<item affiliation='member'/>", Cond::BadRequest),
            ("", Cond::BadRequest),
        ] {
            let e = parse_admin_set(&q(items)).unwrap_err();
            assert_eq!(e.defined_condition, cond, "{items}");
        }
    }
}

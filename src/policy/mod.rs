//! Administration policy (PRODUCT.md §2, §8, §9, §11): the rights an
//! admin grants to accounts or to groups of accounts, and those groups.
//! [`has_right`] is the one place that decides whether an account holds a
//! right; the SMS gateway and call signalling ask it. Changes go through
//! `admin::execute` (CLI and ad-hoc commands alike). See
//! `xeps/confab-rights.md`.

use serde::{Deserialize, Serialize};
use xmpp_parsers::jid::BareJid;

pub mod levels;

pub use levels::Levels;

use crate::store::{Grantee, StoreResult, Stores};

/// A right an admin grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Send SMS through `sms.DOMAIN`.
    Sms,
    /// Audio and video calls.
    Av,
    /// Share one's screen, and ask others to share theirs.
    ScreenShare,
}

impl Right {
    pub const ALL: [Right; 3] = [Right::Sms, Right::Av, Right::ScreenShare];

    pub fn name(self) -> &'static str {
        match self {
            Right::Sms => "sms",
            Right::Av => "av",
            Right::ScreenShare => "screen_share",
        }
    }

    /// A right by name, or an error that lists the valid ones.
    pub fn parse(s: &str) -> Result<Right, String> {
        Right::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown right {s:?}; the rights are {}", Right::names()))
    }

    pub fn names() -> String {
        Right::ALL.map(Right::name).join(", ")
    }
}

/// Whether `jid` holds `right`: granted to the account itself or to a
/// group it is a member of.
pub async fn has_right(stores: &Stores, jid: &BareJid, right: Right) -> StoreResult<bool> {
    let r = right.name();
    if stores
        .policy
        .granted(&Grantee::User(jid.to_string()), r)
        .await?
    {
        return Ok(true);
    }
    for g in stores.policy.groups_of(jid.as_str()).await? {
        if stores.policy.granted(&Grantee::Group(g), r).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A group name: 1 to 64 of `a-z 0-9 . _ -`.
pub fn check_group_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a group name (1 to 64 of a-z, 0-9, '.', '_', '-')"
        ))
    }
}

/// `@NAME` is a group, anything else an account JID (checked by `account`).
pub fn grantee(
    who: &str,
    account: impl Fn(&str) -> Result<BareJid, String>,
) -> Result<Grantee, String> {
    match who.strip_prefix('@') {
        Some(g) => {
            check_group_name(g)?;
            Ok(Grantee::Group(g.to_string()))
        }
        None => Ok(Grantee::User(account(who)?.to_string())),
    }
}

/// How a grantee is written (CLI, forms): `@NAME` for a group.
pub fn grantee_name(g: &Grantee) -> String {
    match g {
        Grantee::User(j) => j.clone(),
        Grantee::Group(n) => format!("@{n}"),
    }
}

/// The authorization level a user grants another (PRODUCT.md §2), lowest
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Blocked,
    Public,
    Business,
    Team,
    Private,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Blocked,
        Level::Public,
        Level::Business,
        Level::Team,
        Level::Private,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Blocked => "blocked",
            Level::Public => "public",
            Level::Business => "business",
            Level::Team => "team",
            Level::Private => "private",
        }
    }

    /// A level by name, or an error that lists the valid ones.
    pub fn parse(s: &str) -> Result<Level, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown level {s:?}; the levels are {}", Level::names()))
    }

    pub fn names() -> String {
        Level::ALL.map(Level::name).join(", ")
    }
}

/// Where an effective level comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    /// A policy: members of `from` grant members of `to` the level (the
    /// highest of the policies that apply).
    Group { from: String, to: String },
    /// The owner's own override for this contact (a `blocked` override
    /// is the contact's bare JID on the XEP-0191 block list).
    Override,
    /// A XEP-0191 block list item that covers the contact but is not its
    /// bare JID (its domain, or one of its full JIDs).
    Blocklist { item: String },
    /// `[authz] default_local`: the contact is an account of this server.
    DefaultLocal,
    /// `[authz] default_remote`: the contact is on another server.
    DefaultRemote,
}

//! Administration shared by the command line and the running server.
//!
//! sled allows one process per database, so while the server runs, the
//! `confab user …` commands talk to it over a Unix socket in the data
//! directory (`confab.sock`, mode 0600 inside a 0700 directory: only the
//! server's own OS user may use it); when no server runs they open the
//! store directly. Both paths
//! run the same `execute`.
//!
//! Protocol: one JSON request per line, one JSON response per line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stream_error::DefinedCondition as SC;

use crate::modules::Event;
use crate::server::Ctx;
use crate::store::{Grantee, Stores};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    UserAdd {
        jid: String,
        password: String,
    },
    UserDel {
        jid: String,
    },
    UserPasswd {
        jid: String,
        password: String,
    },
    UserList {
        domain: Option<String>,
    },
    /// Disable (`true`: it cannot log in, its sessions end) or re-enable
    /// an account.
    UserDisable {
        jid: String,
        disabled: bool,
    },
    /// The server-to-server streams now open (running server only).
    S2sList,
    /// Grant (`on`) or revoke a right to an account (`JID`) or a group
    /// (`@NAME`).
    RightSet {
        who: String,
        right: String,
        on: bool,
    },
    /// The grants: all, or those an account holds (directly or through its
    /// groups), or a group's.
    RightList {
        who: Option<String>,
    },
    /// Create (`on`) or delete a group.
    GroupSet {
        name: String,
        on: bool,
    },
    /// The groups and their members.
    GroupList,
    /// Add (`on`) or remove a member of a group.
    GroupMember {
        group: String,
        jid: String,
        on: bool,
    },
    /// Members of group `from` grant members of group `to` `level`
    /// (`None`: the policy goes).
    PolicySet {
        from: String,
        to: String,
        level: Option<String>,
    },
    /// The group policies.
    PolicyList,
    /// The level `owner` grants `contact`, and where it comes from. A
    /// running server uses its own `[authz]` defaults; without one, those
    /// given here (the CLI's configuration).
    LevelOf {
        owner: String,
        contact: String,
        #[serde(default)]
        authz: Option<crate::config::Authz>,
    },
}

/// A group policy (`confab policy list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    pub from: String,
    pub to: String,
    pub level: String,
}

/// One right someone holds (`confab rights list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRow {
    /// A JID, or `@NAME` for a group.
    pub who: String,
    pub right: String,
    /// For an account's rights: `@NAME` when it holds the right through
    /// that group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A group and its members (`confab group list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    pub name: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<crate::s2s::StreamRow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantRow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupRow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRow>,
    /// The answer to `LevelOf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<(crate::policy::Level, crate::policy::Source)>,
}

impl Response {
    fn ok() -> Self {
        Response {
            ok: true,
            error: None,
            users: Vec::new(),
            streams: Vec::new(),
            grants: Vec::new(),
            groups: Vec::new(),
            policies: Vec::new(),
            level: None,
        }
    }
    fn err(e: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(e.into()),
            ..Response::ok()
        }
    }
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("confab.sock")
}

pub fn remove_socket(data_dir: &Path) {
    let _ = std::fs::remove_file(socket_path(data_dir));
}

/// A JID of this server's domain with a user part.
fn account(jid: &str, domain: &str) -> Result<BareJid, String> {
    let j = BareJid::new(jid).map_err(|e| format!("{jid:?} is not a valid JID: {e}"))?;
    let Some(node) = j.node() else {
        return Err(format!("{jid:?} has no user part (expected user@{domain})"));
    };
    if j.domain().as_str() != domain {
        return Err(format!("{jid:?} is not in this server's domain {domain}"));
    }
    crate::auth::account_jid(node.as_str(), domain)
        .ok_or_else(|| format!("{jid:?} is not a valid account name"))
}

/// The account `j`, which must exist.
async fn existing(stores: &Stores, j: &BareJid) -> Result<crate::store::Account, String> {
    stores
        .accounts
        .get(j)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{j} does not exist"))
}

fn check_password(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("the password is empty".into());
    }
    if p.len() > 1024 {
        return Err("the password is longer than 1024 bytes".into());
    }
    Ok(())
}

/// Run one admin request. `ctx` is the running server, if any (to end
/// the sessions of a deleted account).
pub async fn execute(
    stores: &Stores,
    domain: &str,
    ctx: Option<&Arc<Ctx>>,
    req: Request,
) -> Response {
    let r: Result<Response, String> = async {
        match req {
            Request::UserAdd { jid, password } => {
                let j = account(&jid, domain)?;
                check_password(&password)?;
                let jj = j.clone();
                let acc = crate::auth::blocking(move || crate::auth::new_account(&jj, &password))
                    .await
                    .ok_or("the server is shutting down")?
                    .map_err(|_| {
                        "the password contains characters SASLprep does not allow".to_string()
                    })?;
                if !stores
                    .accounts
                    .create(acc)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("{j} already exists"));
                }
                tracing::info!(jid = %j, "account created");
                Ok(Response::ok())
            }
            Request::UserDel { jid } => {
                let j = account(&jid, domain)?;
                if !stores
                    .accounts
                    .delete(&j)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("{j} does not exist"));
                }
                // Sessions end after the account is gone: a login that
                // binds from now on finds no account (c2s::negotiate
                // checks after binding), one bound before is closed here.
                stores
                    .policy
                    .forget_user(j.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(ctx) = ctx {
                    for r in ctx.sessions.resources(&j) {
                        r.mailbox.close(SC::NotAuthorized, "account deleted");
                    }
                    ctx.levels.forget(&j);
                    ctx.levels.groups_changed();
                    ctx.registry.emit(ctx, Event::UserDeleted { jid: &j }).await;
                }
                tracing::info!(jid = %j, "account deleted");
                Ok(Response::ok())
            }
            Request::UserPasswd { jid, password } => {
                let j = account(&jid, domain)?;
                check_password(&password)?;
                let mut acc = existing(stores, &j).await?;
                let acc = crate::auth::blocking(move || {
                    crate::auth::set_password(&mut acc, &password).map(|()| acc)
                })
                .await
                .ok_or("the server is shutting down")?
                .map_err(|_| {
                    "the password contains characters SASLprep does not allow".to_string()
                })?;
                stores
                    .accounts
                    .update(acc)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(jid = %j, "password changed");
                Ok(Response::ok())
            }
            Request::UserDisable { jid, disabled } => {
                let j = account(&jid, domain)?;
                let mut acc = existing(stores, &j).await?;
                acc.disabled = disabled;
                stores
                    .accounts
                    .update(acc)
                    .await
                    .map_err(|e| e.to_string())?;
                // Like a deletion: a login that binds from now on finds
                // the account disabled, one bound before is closed here.
                if disabled {
                    if let Some(ctx) = ctx {
                        for r in ctx.sessions.resources(&j) {
                            r.mailbox.close(SC::NotAuthorized, "account disabled");
                        }
                    }
                }
                tracing::info!(jid = %j, disabled, "account disabled or re-enabled");
                Ok(Response::ok())
            }
            Request::RightSet { who, right, on } => {
                let right = crate::policy::Right::parse(&right)?;
                let g = grantee(stores, domain, &who).await?;
                let changed = stores
                    .policy
                    .set_right(&g, right.name(), on)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(who = %who, right = right.name(), granted = on, changed, "right granted or revoked");
                Ok(Response::ok())
            }
            Request::RightList { who } => {
                let grants = rights(stores, domain, who.as_deref()).await?;
                Ok(Response {
                    grants,
                    ..Response::ok()
                })
            }
            Request::GroupSet { name, on } => {
                crate::policy::check_group_name(&name)?;
                // Whose levels a deletion may change.
                let members = stores
                    .policy
                    .members(&name)
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                let changed = stores
                    .policy
                    .set_group(&name, on)
                    .await
                    .map_err(|e| e.to_string())?;
                if !changed {
                    return Err(if on {
                        format!("the group {name} exists already")
                    } else {
                        no_group(stores, &name).await
                    });
                }
                tracing::info!(group = %name, created = on, "group created or deleted");
                if let Some(ctx) = ctx {
                    ctx.levels.groups_changed();
                    for m in members.iter().filter_map(|m| BareJid::new(m).ok()) {
                        crate::modules::authz::member_changed(ctx, &m).await;
                    }
                }
                Ok(Response::ok())
            }
            Request::GroupList => {
                let mut groups = Vec::new();
                for name in stores.policy.groups().await.map_err(|e| e.to_string())? {
                    let members = stores
                        .policy
                        .members(&name)
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or_default();
                    groups.push(GroupRow { name, members });
                }
                Ok(Response {
                    groups,
                    ..Response::ok()
                })
            }
            Request::GroupMember { group, jid, on } => {
                crate::policy::check_group_name(&group)?;
                let j = account(&jid, domain)?;
                if on {
                    existing(stores, &j).await?;
                }
                match stores
                    .policy
                    .set_member(&group, j.as_str(), on)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    None => return Err(no_group(stores, &group).await),
                    Some(false) if on => return Err(format!("{j} is in {group} already")),
                    Some(false) => return Err(format!("{j} is not in {group}")),
                    Some(true) => {}
                }
                tracing::info!(%group, jid = %j, member = on, "group member added or removed");
                if let Some(ctx) = ctx {
                    crate::modules::authz::member_changed(ctx, &j).await;
                }
                Ok(Response::ok())
            }
            Request::PolicySet { from, to, level } => {
                let level = level.as_deref().map(crate::policy::Level::parse).transpose()?;
                for g in [&from, &to] {
                    crate::policy::check_group_name(g)?;
                    if stores
                        .policy
                        .members(g)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_none()
                    {
                        return Err(no_group(stores, g).await);
                    }
                }
                let changed = stores
                    .policy
                    .set_policy(&from, &to, level.map(crate::policy::Level::name))
                    .await
                    .map_err(|e| e.to_string())?;
                if level.is_none() && !changed {
                    return Err(format!("there is no policy from {from} to {to}"));
                }
                tracing::info!(%from, %to, level = level.map(crate::policy::Level::name).unwrap_or("none"), "group policy set");
                if let Some(ctx) = ctx {
                    let owners: Vec<BareJid> = members_of(stores, &from)
                        .await
                        .iter()
                        .filter_map(|m| BareJid::new(m).ok())
                        .collect();
                    let contacts = members_of(stores, &to).await;
                    crate::modules::authz::groups_changed(ctx, &owners, Some(&contacts)).await;
                }
                Ok(Response::ok())
            }
            Request::PolicyList => {
                let policies = stores
                    .policy
                    .policies()
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|(from, to, level)| PolicyRow { from, to, level })
                    .collect();
                Ok(Response {
                    policies,
                    ..Response::ok()
                })
            }
            Request::LevelOf {
                owner,
                contact,
                authz,
            } => {
                let o = account(&owner, domain)?;
                existing(stores, &o).await?;
                let c = BareJid::new(&contact)
                    .map_err(|e| format!("{contact:?} is not a valid JID: {e}"))?;
                let authz = ctx
                    .map(|c| c.config.authz.clone())
                    .or(authz)
                    .unwrap_or_default();
                // The running server's cache, else a fresh one.
                let fresh = crate::policy::Levels::default();
                let levels = ctx.map_or(&fresh, |c| &c.levels);
                let person = c.node().is_some()
                    && ctx.is_none_or(|x| x.registry.component_for(c.domain().as_str()).is_none());
                let l = levels
                    .level(stores, domain, &authz, &o, &Jid::from(c.clone()), person)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{c} is not a user: only the block list applies, and it does not cover it"))?;
                Ok(Response {
                    level: Some(l),
                    ..Response::ok()
                })
            }
            Request::S2sList => {
                // Without a running server there are no streams.
                let streams = ctx
                    .and_then(|c| c.s2s.as_ref())
                    .map(|s| s.list())
                    .unwrap_or_default();
                Ok(Response {
                    streams,
                    ..Response::ok()
                })
            }
            Request::UserList { domain: d } => {
                let users = stores
                    .accounts
                    .list(d.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Response {
                    users,
                    ..Response::ok()
                })
            }
        }
    }
    .await;
    r.unwrap_or_else(Response::err)
}

/// `@NAME` (an existing group) or an existing account of `domain`.
async fn grantee(stores: &Stores, domain: &str, who: &str) -> Result<Grantee, String> {
    let g = crate::policy::grantee(who, |j| account(j, domain))?;
    match &g {
        Grantee::Group(name) => {
            if stores
                .policy
                .members(name)
                .await
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Err(no_group(stores, name).await);
            }
        }
        Grantee::User(j) => {
            let j = BareJid::new(j).map_err(|e| e.to_string())?;
            existing(stores, &j).await?;
        }
    }
    Ok(g)
}

/// A group's members (none when it is gone or cannot be read).
async fn members_of(stores: &Stores, group: &str) -> Vec<String> {
    stores
        .policy
        .members(group)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// "No such group", with the list of those there are.
pub async fn no_group(stores: &Stores, name: &str) -> String {
    let groups = stores.policy.groups().await.unwrap_or_default();
    if groups.is_empty() {
        format!("there is no group {name:?} (there are no groups)")
    } else {
        format!(
            "there is no group {name:?}; the groups are {}",
            groups.join(", ")
        )
    }
}

/// The grants `who` holds (an account: directly and through its groups),
/// or every grant.
async fn rights(stores: &Stores, domain: &str, who: Option<&str>) -> Result<Vec<GrantRow>, String> {
    let all = stores.policy.grants().await.map_err(|e| e.to_string())?;
    let row = |g: &Grantee, right: &str, via: Option<String>| GrantRow {
        who: crate::policy::grantee_name(g),
        right: right.to_string(),
        via,
    };
    let Some(who) = who else {
        return Ok(all.iter().map(|(g, r)| row(g, r, None)).collect());
    };
    let g = grantee(stores, domain, who).await?;
    let mut out: Vec<GrantRow> = all
        .iter()
        .filter(|(x, _)| *x == g)
        .map(|(x, r)| row(x, r, None))
        .collect();
    if let Grantee::User(j) = &g {
        for group in stores
            .policy
            .groups_of(j)
            .await
            .map_err(|e| e.to_string())?
        {
            let via = Grantee::Group(group);
            for (_, r) in all.iter().filter(|(x, _)| *x == via) {
                out.push(row(&g, r, Some(crate::policy::grantee_name(&via))));
            }
        }
    }
    Ok(out)
}

/// Serve the admin socket of a running server.
pub async fn serve(ctx: Arc<Ctx>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(&ctx.config.data_dir);
    // A socket left by a server that did not stop cleanly: nobody listens
    // on it (the store lock guarantees no other server runs here).
    let _ = std::fs::remove_file(&path);
    // Never reachable by another user, not even for an instant: it is
    // created inside the data directory, which is 0700, by a process whose
    // umask is 077 (`datadir::prepare`), so it is born 0600. The chmod only
    // restates that.
    let listener = tokio::net::UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r.take(64 * 1024)).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let resp = match serde_json::from_str::<Request>(&line) {
                        Ok(req) => execute(&ctx.stores, &ctx.domain, Some(&ctx), req).await,
                        Err(e) => Response::err(format!("bad request: {e}")),
                    };
                    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                    out.push(b'\n');
                    if w.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    }))
}

use tokio::io::AsyncReadExt;

/// Send a request to a running server. `Ok(None)` when no server listens.
pub async fn send(data_dir: &Path, req: &Request) -> std::io::Result<Option<Response>> {
    let path = socket_path(data_dir);
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut lines = BufReader::new(r).lines();
    match lines.next_line().await? {
        Some(l) => serde_json::from_str(&l)
            .map(Some)
            .map_err(std::io::Error::other),
        None => Err(std::io::Error::other(
            "the server closed the admin connection",
        )),
    }
}

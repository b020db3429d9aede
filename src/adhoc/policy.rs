//! Confab's administration commands for rights and groups
//! (`urn:confab:cmd:rights:*`, `urn:confab:cmd:group:*`), for the accounts
//! in `admins`. They run the same `admin::execute` requests as `confab
//! rights …` and `confab group …`. See `xeps/confab-rights.md`.

// Errors here are the stanza errors the IQ answers with, as in
// `modules::IqResult`.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType, Option_};
use xmpp_parsers::jid::Jid;

use super::admin::{
    account_request, ask, confab_command, existing_accounts, field, names, required, values,
    Action, FormFn,
};
use super::{bad_field, CmdResult, Command, Done};
use crate::admin::{no_group, Request};
use crate::policy::{Level, Right};
use crate::server::Ctx;
use crate::store::BoxFuture;

pub const FORM_TYPE: &str = "urn:confab:cmd:0";

pub fn commands(out: &mut Vec<Arc<dyn Command>>) {
    use Action::{Flag, Run};
    let cmds: [(&'static str, &'static str, Option<FormFn>, Action); 11] = [
        (
            "urn:confab:cmd:policy:set",
            "Set a group policy (authorization level)",
            Some(policy_form),
            Flag(set_policy, true),
        ),
        (
            "urn:confab:cmd:policy:unset",
            "Remove a group policy",
            Some(policy_form),
            Flag(set_policy, false),
        ),
        (
            "urn:confab:cmd:policy:list",
            "List group policies",
            None,
            Run(policy_list),
        ),
        (
            "urn:confab:cmd:rights:grant",
            "Grant a right",
            Some(right_form),
            Flag(set_right, true),
        ),
        (
            "urn:confab:cmd:rights:revoke",
            "Revoke a right",
            Some(right_form),
            Flag(set_right, false),
        ),
        (
            "urn:confab:cmd:rights:list",
            "List rights",
            Some(who_form),
            Run(list_rights),
        ),
        (
            "urn:confab:cmd:group:add",
            "Create a group",
            Some(group_form),
            Flag(set_group, true),
        ),
        (
            "urn:confab:cmd:group:delete",
            "Delete a group",
            Some(group_form),
            Flag(set_group, false),
        ),
        (
            "urn:confab:cmd:group:list",
            "List groups",
            None,
            Run(group_list),
        ),
        (
            "urn:confab:cmd:group:member-add",
            "Add members to a group",
            Some(member_form),
            Flag(set_members, true),
        ),
        (
            "urn:confab:cmd:group:member-remove",
            "Remove members from a group",
            Some(member_form),
            Flag(set_members, false),
        ),
    ];
    for (node, name, form, run) in cmds {
        out.push(confab_command(node, name, form, run));
    }
    out.push(Arc::new(PolicyEdit));
}

/// `urn:confab:cmd:policy:edit`, in two stages: pick the two groups, then
/// the level, shown with the one the policy has now (`none`: no policy).
struct PolicyEdit;

const NO_POLICY: &str = "none";

impl PolicyEdit {
    /// The groups of the first form, both existing.
    async fn groups(ctx: &Arc<Ctx>, first: Option<&DataForm>) -> CmdResult<(String, String)> {
        let from = required(first, "from")?.trim().to_string();
        let to = required(first, "to")?.trim().to_string();
        let groups = ctx
            .stores
            .policy
            .groups()
            .await
            .map_err(|e| crate::modules::store_failed("group list", e))?;
        for (var, g) in [("from", &from), ("to", &to)] {
            if !groups.contains(g) {
                return Err(bad_field(var, &no_group(&ctx.stores, g).await));
            }
        }
        Ok((from, to))
    }

    async fn current(ctx: &Arc<Ctx>, from: &str, to: &str) -> CmdResult<Option<String>> {
        let all = ctx
            .stores
            .policy
            .policies()
            .await
            .map_err(|e| crate::modules::store_failed("group policies", e))?;
        Ok(all
            .into_iter()
            .find(|(f, t, _)| f == from && t == to)
            .map(|(_, _, l)| l))
    }
}

impl Command for PolicyEdit {
    fn node(&self) -> &str {
        "urn:confab:cmd:policy:edit"
    }
    fn name(&self) -> &'static str {
        "Edit a group policy"
    }
    fn access(&self) -> super::Access {
        super::Access::Admin
    }
    fn stages(&self) -> usize {
        2
    }
    fn form<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        stage: usize,
        earlier: &'a [DataForm],
    ) -> BoxFuture<'a, CmdResult<DataForm>> {
        Box::pin(async move {
            let (title, fields) = if stage == 0 {
                (
                    "Edit a group policy: the groups".to_string(),
                    vec![
                        group_choice(ctx, "from", "Members of this group grant").await?,
                        group_choice(ctx, "to", "members of this group").await?,
                    ],
                )
            } else {
                let (from, to) = Self::groups(ctx, earlier.first()).await?;
                let now = Self::current(ctx, &from, &to).await?;
                let mut level = field(
                    "level",
                    FieldType::ListSingle,
                    "The level (none: no policy)",
                    true,
                );
                level.values = vec![now.unwrap_or_else(|| NO_POLICY.to_string())];
                for v in Level::ALL.map(Level::name).into_iter().chain([NO_POLICY]) {
                    level.options.push(Option_ {
                        label: None,
                        value: v.to_string(),
                    });
                }
                (
                    format!("The level members of {from} grant members of {to}"),
                    vec![level],
                )
            };
            let mut form = DataForm::new(DataFormType::Form, FORM_TYPE, fields);
            form.title = Some(title);
            Ok(form)
        })
    }
    fn run<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        by: &'a Jid,
        forms: &'a [DataForm],
    ) -> BoxFuture<'a, CmdResult<Done>> {
        Box::pin(async move {
            let (from, to) = Self::groups(ctx, forms.first()).await?;
            let choice = required(forms.get(1), "level")?.trim();
            let level = if choice == NO_POLICY {
                None
            } else {
                Some(
                    Level::parse(choice)
                        .map_err(|e| bad_field("level", &format!("{e}, or {NO_POLICY}")))?
                        .name()
                        .to_string(),
                )
            };
            if level.is_none() && Self::current(ctx, &from, &to).await?.is_none() {
                return Ok(Done::note(format!(
                    "there is no policy from {from} to {to}: nothing changed"
                )));
            }
            apply_policy(ctx, by, "level", from, to, level).await
        })
    }
}

fn who_field(required: bool) -> Field {
    field(
        "who",
        FieldType::TextSingle,
        "An account (user@domain), or a group (@name)",
        required,
    )
}

fn right_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        let mut right = field("right", FieldType::ListSingle, "The right", true);
        for r in Right::ALL {
            right.options.push(Option_ {
                label: Some(r.name().to_string()),
                value: r.name().to_string(),
            });
        }
        Ok(vec![who_field(true), right])
    })
}

fn who_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async { Ok(vec![who_field(false)]) })
}

fn group_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        Ok(vec![field(
            "group",
            FieldType::TextSingle,
            "The group's name (a-z, 0-9, '.', '_', '-')",
            true,
        )])
    })
}

/// A list-single field offering the groups.
async fn group_choice(ctx: &Arc<Ctx>, var: &str, label: &str) -> CmdResult<Field> {
    let mut group = field(var, FieldType::ListSingle, label, true);
    let groups = ctx
        .stores
        .policy
        .groups()
        .await
        .map_err(|e| crate::modules::store_failed("group list", e))?;
    for g in groups {
        group.options.push(Option_ {
            label: None,
            value: g,
        });
    }
    Ok(group)
}

fn policy_form(ctx: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async move {
        let mut level = field("level", FieldType::ListSingle, "The level (for set)", false);
        for l in Level::ALL {
            level.options.push(Option_ {
                label: None,
                value: l.name().to_string(),
            });
        }
        Ok(vec![
            group_choice(ctx, "from", "Members of this group grant").await?,
            group_choice(ctx, "to", "members of this group").await?,
            level,
        ])
    })
}

fn set_policy<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
    on: bool,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let from = required(form, "from")?.trim().to_string();
        let to = required(form, "to")?.trim().to_string();
        let level = if on {
            let l = Level::parse(required(form, "level")?).map_err(|e| bad_field("level", &e))?;
            Some(l.name().to_string())
        } else {
            None
        };
        apply_policy(ctx, by, "from", from, to, level).await
    })
}

/// Set (or with `None` remove) the policy from `from` to `to`, as the
/// CLI does; an error names the field `var`.
async fn apply_policy(
    ctx: &Arc<Ctx>,
    by: &Jid,
    var: &str,
    from: String,
    to: String,
    level: Option<String>,
) -> CmdResult<Done> {
    account_request(
        ctx,
        var,
        Request::PolicySet {
            from: from.clone(),
            to: to.clone(),
            level: level.clone(),
        },
    )
    .await?;
    tracing::info!(admin = %by, %from, %to, level = level.as_deref().unwrap_or("none"), "admin command: group policy set");
    Ok(Done::note(match level {
        Some(l) => format!("members of {from} grant members of {to} {l}"),
        None => format!("the policy from {from} to {to} is removed"),
    }))
}

fn policy_list<'a>(
    ctx: &'a Arc<Ctx>,
    _: &'a Jid,
    _: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let r = ask(ctx, "from", Request::PolicyList).await?;
        let rows = r
            .policies
            .into_iter()
            .map(|p| format!("{} -> {}: {}", p.from, p.to, p.level))
            .collect();
        Ok(lines("policies", "Group policies", rows))
    })
}

fn member_form(ctx: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async move {
        let group = group_choice(ctx, "group", "The group").await?;
        Ok(vec![
            group,
            field("accountjids", FieldType::JidMulti, "The accounts", true),
        ])
    })
}

fn set_right<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
    on: bool,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let right = Right::parse(required(form, "right")?).map_err(|e| bad_field("right", &e))?;
        let who = required(form, "who")?.trim().to_string();
        account_request(
            ctx,
            "who",
            Request::RightSet {
                who: who.clone(),
                right: right.name().to_string(),
                on,
            },
        )
        .await?;
        tracing::info!(admin = %by, %who, right = right.name(), granted = on, "admin command: right granted or revoked");
        let what = if on { "granted to" } else { "revoked from" };
        Ok(Done::note(format!("{} {what} {who}", right.name())))
    })
}

/// A result form with one text-multi field of `lines`.
fn lines(var: &str, label: &str, lines: Vec<String>) -> Done {
    let mut f = Field::new(var, FieldType::TextMulti);
    f.label = Some(label.to_string());
    f.values = lines;
    Done::form(DataForm::new(DataFormType::Result_, FORM_TYPE, vec![f]))
}

fn list_rights<'a>(
    ctx: &'a Arc<Ctx>,
    _: &'a Jid,
    form: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let who = values(form, "who")
            .first()
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty());
        let r = ask(ctx, "who", Request::RightList { who }).await?;
        let rows = r
            .grants
            .into_iter()
            .map(|g| match g.via {
                Some(v) => format!("{} {} (through {v})", g.who, g.right),
                None => format!("{} {}", g.who, g.right),
            })
            .collect();
        Ok(lines("grants", "Who holds which right", rows))
    })
}

fn set_group<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
    on: bool,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let name = required(form, "group")?.trim().to_string();
        account_request(
            ctx,
            "group",
            Request::GroupSet {
                name: name.clone(),
                on,
            },
        )
        .await?;
        tracing::info!(admin = %by, group = %name, created = on, "admin command: group created or deleted");
        let what = if on { "created" } else { "deleted" };
        Ok(Done::note(format!("group {name} {what}")))
    })
}

fn group_list<'a>(
    ctx: &'a Arc<Ctx>,
    _: &'a Jid,
    _: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let r = ask(ctx, "group", Request::GroupList).await?;
        let rows = r
            .groups
            .into_iter()
            .map(|g| format!("{}: {}", g.name, g.members.join(" ")))
            .collect();
        Ok(lines("groups", "The groups and their members", rows))
    })
}

fn set_members<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
    on: bool,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let group = required(form, "group")?.trim().to_string();
        crate::policy::check_group_name(&group).map_err(|e| bad_field("group", &e))?;
        let known = ctx
            .stores
            .policy
            .members(&group)
            .await
            .map_err(|e| crate::modules::store_failed("group members", e))?;
        let Some(members) = known else {
            return Err(bad_field("group", &no_group(&ctx.stores, &group).await));
        };
        // Every account checked before anything changes.
        let jids = existing_accounts(ctx, form, "accountjids").await?;
        for j in &jids {
            if members.iter().any(|m| m == j.as_str()) == on {
                let what = if on { "is in" } else { "is not in" };
                return Err(bad_field("accountjids", &format!("{j} {what} {group}")));
            }
        }
        for j in &jids {
            account_request(
                ctx,
                "accountjids",
                Request::GroupMember {
                    group: group.clone(),
                    jid: j.to_string(),
                    on,
                },
            )
            .await?;
        }
        tracing::info!(admin = %by, %group, members = %names(&jids), added = on, "admin command: group members added or removed");
        let what = if on { "added to" } else { "removed from" };
        Ok(Done::note(format!("{} {what} {group}", names(&jids))))
    })
}

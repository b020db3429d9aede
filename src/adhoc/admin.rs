//! Service administration (XEP-0133) as ad-hoc commands for the accounts
//! in `admins`. Account changes go through [`crate::admin::execute`], the
//! same code the CLI uses, so both change the same state under the same
//! rules. See `xeps/xep-0133.md`.

// Errors here are the stanza errors the IQ answers with, as in
// `modules::IqResult`; they are built once per request, never hot.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType, Option_};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{bad_field, Access, CmdResult, Command, Done};
use crate::admin::{execute, Request};
use crate::server::Ctx;
use crate::stanza::{element, random_id, simple_error};
use crate::store::BoxFuture;
use crate::xml::ns;

pub const FORM_TYPE: &str = "http://jabber.org/protocol/admin";
const PREFIX: &str = "http://jabber.org/protocol/admin#";
/// Where the message of the day is kept: a document of the server's
/// domain in the per-owner document store.
const MOTD_KEY: &str = "admin:motd";
/// Most bytes of an announcement or message of the day.
const MAX_TEXT: usize = 16 * 1024;

pub(super) type FormFn = for<'a> fn(&'a Arc<Ctx>) -> BoxFuture<'a, CmdResult<Vec<Field>>>;
pub(super) type RunFn =
    for<'a> fn(&'a Arc<Ctx>, &'a Jid, Option<&'a DataForm>) -> BoxFuture<'a, CmdResult<Done>>;

/// A command's action with a switch (grant or revoke, add or remove).
pub(super) type FlagFn =
    for<'a> fn(&'a Arc<Ctx>, &'a Jid, Option<&'a DataForm>, bool) -> BoxFuture<'a, CmdResult<Done>>;

/// What a command does once its form is in.
#[derive(Clone, Copy)]
pub(super) enum Action {
    Run(RunFn),
    /// One action for two commands, told apart by the flag.
    Flag(FlagFn, bool),
    /// A count of accounts: completes at once.
    Count(Who),
    /// A list of accounts, up to the form's `max_items`.
    List(Who),
}

/// A XEP-0133 command: one form (or none), then its action.
struct Admin {
    node: String,
    name: &'static str,
    /// The `FORM_TYPE` of its forms.
    form_type: &'static str,
    listed: bool,
    form: Option<FormFn>,
    run: Action,
}

impl Command for Admin {
    fn node(&self) -> &str {
        &self.node
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn access(&self) -> Access {
        Access::Admin
    }
    fn listed(&self) -> bool {
        self.listed
    }
    fn stages(&self) -> usize {
        usize::from(self.form.is_some())
    }
    fn form<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        _stage: usize,
        _earlier: &'a [DataForm],
    ) -> BoxFuture<'a, CmdResult<DataForm>> {
        Box::pin(async move {
            let fields = match self.form {
                Some(f) => f(ctx).await?,
                None => Vec::new(),
            };
            let mut form = DataForm::new(DataFormType::Form, self.form_type, fields);
            form.title = Some(self.name.to_string());
            Ok(form)
        })
    }
    fn run<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        by: &'a Jid,
        forms: &'a [DataForm],
    ) -> BoxFuture<'a, CmdResult<Done>> {
        match self.run {
            Action::Run(f) => f(ctx, by, forms.first()),
            Action::Count(who) => count(ctx, who),
            Action::List(who) => list(ctx, forms.first(), who),
            Action::Flag(f, on) => f(ctx, by, forms.first(), on),
        }
    }
}

pub fn commands(out: &mut Vec<Arc<dyn Command>>) {
    use Action::{Count, Flag, List, Run};
    let cmds: [(&'static str, &'static str, Option<FormFn>, Action); 17] = [
        ("add-user", "Add a user", Some(add_user_form), Run(add_user)),
        (
            "delete-user",
            "Delete users",
            Some(account_jids_form),
            Run(delete_users),
        ),
        (
            "disable-user",
            "Disable users",
            Some(account_jids_form),
            Flag(set_disabled, true),
        ),
        (
            "reenable-user",
            "Re-enable users",
            Some(account_jids_form),
            Flag(set_disabled, false),
        ),
        (
            "change-user-password",
            "Change a user's password",
            Some(password_form),
            Run(change_password),
        ),
        (
            "get-registered-users-num",
            "Number of registered users",
            None,
            Count(Who::Registered),
        ),
        (
            "get-disabled-users-num",
            "Number of disabled users",
            None,
            Count(Who::Disabled),
        ),
        (
            "get-online-users-num",
            "Number of online users",
            None,
            Count(Who::Online),
        ),
        (
            "get-registered-users-list",
            "List registered users",
            Some(max_items_form),
            List(Who::Registered),
        ),
        (
            "get-disabled-users-list",
            "List disabled users",
            Some(max_items_form),
            List(Who::Disabled),
        ),
        (
            "get-online-users-list",
            "List online users",
            Some(max_items_form),
            List(Who::Online),
        ),
        (
            "end-user-session",
            "End user sessions",
            Some(account_jids_form),
            Run(end_sessions),
        ),
        (
            "announce",
            "Send an announcement to all online users",
            Some(announce_form),
            Run(announce),
        ),
        (
            "set-motd",
            "Set the message of the day",
            Some(motd_form),
            Run(set_motd),
        ),
        (
            "edit-motd",
            "Edit the message of the day",
            Some(edit_motd_form),
            Run(set_motd),
        ),
        (
            "delete-motd",
            "Delete the message of the day",
            None,
            Run(delete_motd),
        ),
        // Retracted from XEP-0133 and impossible here: only SCRAM keys
        // are stored. Kept to say so, never listed.
        (
            "get-user-password",
            "Get a user's password",
            None,
            Run(get_password),
        ),
    ];
    for (node, name, form, run) in cmds {
        out.push(Arc::new(Admin {
            node: format!("{PREFIX}{node}"),
            name,
            form_type: FORM_TYPE,
            listed: node != "get-user-password",
            form,
            run,
        }));
    }
}

/// An admin command of Confab's own (`urn:confab:cmd:…`): one form (or
/// none), then `run`.
pub(super) fn confab_command(
    node: &'static str,
    name: &'static str,
    form: Option<FormFn>,
    run: Action,
) -> Arc<dyn Command> {
    Arc::new(Admin {
        node: node.to_string(),
        name,
        form_type: super::policy::FORM_TYPE,
        listed: true,
        form,
        run,
    })
}

// --- Forms -------------------------------------------------------------

pub(super) fn field(var: &str, typ: FieldType, label: &str, required: bool) -> Field {
    let mut f = Field::new(var, typ);
    f.label = Some(label.to_string());
    f.required = required;
    f
}

fn add_user_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        Ok(vec![
            field(
                "accountjid",
                FieldType::JidSingle,
                "The Jabber ID for the account to be added",
                true,
            ),
            field("password", FieldType::TextPrivate, "The password", true),
            field(
                "password-verify",
                FieldType::TextPrivate,
                "The password again",
                true,
            ),
        ])
    })
}

fn account_jids_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        Ok(vec![field(
            "accountjids",
            FieldType::JidMulti,
            "The Jabber IDs of the accounts",
            true,
        )])
    })
}

fn password_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        Ok(vec![
            field(
                "accountjid",
                FieldType::JidSingle,
                "The Jabber ID of the account",
                true,
            ),
            field("password", FieldType::TextPrivate, "The new password", true),
        ])
    })
}

fn max_items_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        let mut f = field(
            "max_items",
            FieldType::ListSingle,
            "Maximum number of items to show",
            false,
        );
        for v in ["25", "50", "75", "100", "150", "200", "none"] {
            f.options.push(Option_ {
                label: Some(if v == "none" { "all" } else { v }.to_string()),
                value: v.to_string(),
            });
        }
        Ok(vec![f.with_value("100")])
    })
}

fn announce_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        Ok(vec![
            field("subject", FieldType::TextSingle, "Subject", false),
            field(
                "announcement",
                FieldType::TextMulti,
                "The announcement",
                true,
            ),
        ])
    })
}

fn motd_form(_: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async {
        Ok(vec![field(
            "motd",
            FieldType::TextMulti,
            "The message of the day",
            true,
        )])
    })
}

fn edit_motd_form(ctx: &Arc<Ctx>) -> BoxFuture<'_, CmdResult<Vec<Field>>> {
    Box::pin(async move {
        let mut f = field("motd", FieldType::TextMulti, "The message of the day", true);
        f.values = motd(ctx)
            .await?
            .map(|m| m.lines().map(str::to_string).collect())
            .unwrap_or_default();
        Ok(vec![f])
    })
}

/// The values of `var` in a submitted form.
pub(super) fn values<'a>(form: Option<&'a DataForm>, var: &str) -> &'a [String] {
    form.and_then(|f| f.fields.iter().find(|x| x.var.as_deref() == Some(var)))
        .map(|f| f.values.as_slice())
        .unwrap_or(&[])
}

/// The one value of a required single-value field.
pub(super) fn required<'a>(form: Option<&'a DataForm>, var: &str) -> CmdResult<&'a str> {
    match values(form, var) {
        [v] if !v.trim().is_empty() => Ok(v.as_str()),
        [] => Err(bad_field(var, "missing")),
        [_] => Err(bad_field(var, "empty")),
        _ => Err(bad_field(var, "takes one value")),
    }
}

/// A text-multi field's lines, joined; required.
pub(super) fn text(form: Option<&DataForm>, var: &str) -> CmdResult<String> {
    let t = values(form, var).join("\n");
    if t.trim().is_empty() {
        return Err(bad_field(var, "missing"));
    }
    if t.len() > MAX_TEXT {
        return Err(bad_field(var, &format!("longer than {MAX_TEXT} bytes")));
    }
    Ok(t)
}

/// Accounts of this server named by `var` (bare JIDs), each existing:
/// all checked before anything is done.
pub(super) async fn existing_accounts(
    ctx: &Arc<Ctx>,
    form: Option<&DataForm>,
    var: &str,
) -> CmdResult<Vec<BareJid>> {
    let vals = values(form, var);
    if vals.iter().all(|v| v.trim().is_empty()) {
        return Err(bad_field(var, "missing"));
    }
    let mut out = Vec::new();
    for v in vals.iter().filter(|v| !v.trim().is_empty()) {
        let j = account_of(ctx, var, v.trim())?;
        let exists = ctx
            .stores
            .accounts
            .get(&j)
            .await
            .map_err(|e| crate::modules::store_failed("account lookup", e))?
            .is_some();
        if !exists {
            return Err(bad_field(var, &format!("{j} does not exist")));
        }
        if !out.contains(&j) {
            out.push(j);
        }
    }
    Ok(out)
}

/// An account JID of this server in field `var`.
fn account_of(ctx: &Ctx, var: &str, v: &str) -> CmdResult<BareJid> {
    let j = BareJid::new(v).map_err(|_| bad_field(var, &format!("{v:?} is not a JID")))?;
    if j.node().is_none() || j.domain().as_str() != ctx.domain {
        return Err(bad_field(
            var,
            &format!("{v} is not an account of {}", ctx.domain),
        ));
    }
    Ok(j)
}

/// Run an account request as the CLI does; its error names `var`.
pub(super) async fn account_request(ctx: &Arc<Ctx>, var: &str, req: Request) -> CmdResult<()> {
    ask(ctx, var, req).await.map(|_| ())
}

/// Run an admin request as the CLI does: its answer, or its error naming
/// `var`.
pub(super) async fn ask(
    ctx: &Arc<Ctx>,
    var: &str,
    req: Request,
) -> CmdResult<crate::admin::Response> {
    let r = execute(&ctx.stores, &ctx.domain, Some(ctx), req).await;
    if r.ok {
        return Ok(r);
    }
    Err(bad_field(var, r.error.as_deref().unwrap_or("refused")))
}

fn result_form(fields: Vec<Field>) -> DataForm {
    DataForm::new(DataFormType::Result_, FORM_TYPE, fields)
}

fn count_field(var: &str, label: &str, n: usize) -> Field {
    let mut f = Field::text_single(var, &n.to_string());
    f.label = Some(label.to_string());
    f
}

fn list_field(var: &str, label: &str, jids: Vec<String>, form: Option<&DataForm>) -> Field {
    let max = values(form, "max_items")
        .first()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let mut f = Field::new(var, FieldType::JidMulti);
    f.label = Some(label.to_string());
    f.values = jids.into_iter().take(max).collect();
    f
}

// --- Actions -----------------------------------------------------------

fn add_user<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let jid = account_of(ctx, "accountjid", required(form, "accountjid")?)?;
        let password = required(form, "password")?;
        if required(form, "password-verify")? != password {
            return Err(bad_field("password-verify", "the two passwords differ"));
        }
        account_request(
            ctx,
            "accountjid",
            Request::UserAdd {
                jid: jid.to_string(),
                password: password.to_string(),
            },
        )
        .await?;
        tracing::info!(admin = %by, %jid, "admin command: user added");
        Ok(Done::note(format!("{jid} added")))
    })
}

fn delete_users<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let jids = existing_accounts(ctx, form, "accountjids").await?;
        for j in &jids {
            account_request(ctx, "accountjids", Request::UserDel { jid: j.to_string() }).await?;
            tracing::info!(admin = %by, jid = %j, "admin command: user deleted");
        }
        Ok(Done::note(format!("{} deleted", names(&jids))))
    })
}

fn set_disabled<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
    disabled: bool,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let jids = existing_accounts(ctx, form, "accountjids").await?;
        for j in &jids {
            account_request(
                ctx,
                "accountjids",
                Request::UserDisable {
                    jid: j.to_string(),
                    disabled,
                },
            )
            .await?;
            tracing::info!(admin = %by, jid = %j, disabled, "admin command: user disabled or re-enabled");
        }
        let what = if disabled { "disabled" } else { "re-enabled" };
        Ok(Done::note(format!("{} {what}", names(&jids))))
    })
}

fn change_password<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let jid = account_of(ctx, "accountjid", required(form, "accountjid")?)?;
        let password = required(form, "password")?;
        account_request(
            ctx,
            "accountjid",
            Request::UserPasswd {
                jid: jid.to_string(),
                password: password.to_string(),
            },
        )
        .await?;
        tracing::info!(admin = %by, %jid, "admin command: password changed");
        Ok(Done::note(format!("the password of {jid} was changed")))
    })
}

pub(super) fn names(jids: &[BareJid]) -> String {
    jids.iter()
        .map(|j| j.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn registered(ctx: &Arc<Ctx>) -> CmdResult<Vec<String>> {
    ctx.stores
        .accounts
        .list(Some(&ctx.domain))
        .await
        .map_err(|e| crate::modules::store_failed("account list", e))
}

async fn disabled(ctx: &Arc<Ctx>) -> CmdResult<Vec<String>> {
    let mut out = Vec::new();
    for j in registered(ctx).await? {
        let Ok(b) = BareJid::new(&j) else {
            continue;
        };
        let acc = ctx
            .stores
            .accounts
            .get(&b)
            .await
            .map_err(|e| crate::modules::store_failed("account lookup", e))?;
        if acc.is_some_and(|a| a.disabled) {
            out.push(j);
        }
    }
    Ok(out)
}

/// Accounts with at least one session, sorted.
fn online(ctx: &Ctx) -> Vec<String> {
    let mut users: Vec<String> = ctx
        .sessions
        .all()
        .into_iter()
        .map(|r| r.full.to_bare().to_string())
        .collect();
    users.sort();
    users.dedup();
    users
}

/// Whose accounts a count or list command is about.
#[derive(Clone, Copy)]
pub(super) enum Who {
    Registered,
    Disabled,
    Online,
}

impl Who {
    /// The result field of the count, of the list, and their labels.
    fn vars(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Who::Registered => (
                "registeredusersnum",
                "The number of registered users",
                "registereduserjids",
                "The list of all users",
            ),
            Who::Disabled => (
                "disabledusersnum",
                "The number of disabled users",
                "disableduserjids",
                "The list of all disabled users",
            ),
            Who::Online => (
                "onlineusersnum",
                "The number of online users",
                "onlineuserjids",
                "The list of all online users",
            ),
        }
    }

    async fn users(self, ctx: &Arc<Ctx>) -> CmdResult<Vec<String>> {
        match self {
            Who::Registered => registered(ctx).await,
            Who::Disabled => disabled(ctx).await,
            Who::Online => Ok(online(ctx)),
        }
    }
}

fn count(ctx: &Arc<Ctx>, who: Who) -> BoxFuture<'_, CmdResult<Done>> {
    Box::pin(async move {
        let (var, label, _, _) = who.vars();
        let n = who.users(ctx).await?.len();
        Ok(Done::form(result_form(vec![count_field(var, label, n)])))
    })
}

fn list<'a>(
    ctx: &'a Arc<Ctx>,
    form: Option<&'a DataForm>,
    who: Who,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let (_, _, var, label) = who.vars();
        let users = who.users(ctx).await?;
        Ok(Done::form(result_form(vec![list_field(
            var, label, users, form,
        )])))
    })
}

fn end_sessions<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let var = "accountjids";
        let vals: Vec<&String> = values(form, var)
            .iter()
            .filter(|v| !v.trim().is_empty())
            .collect();
        if vals.is_empty() {
            return Err(bad_field(var, "missing"));
        }
        // Check every JID first: nothing is done unless all are good.
        let mut targets = Vec::new();
        for v in vals {
            let j =
                Jid::new(v.trim()).map_err(|_| bad_field(var, &format!("{v:?} is not a JID")))?;
            account_of(ctx, var, j.to_bare().as_str())?;
            targets.push(j);
        }
        let mut ended = 0;
        for j in &targets {
            for r in ctx.sessions.resources(&j.to_bare()) {
                if j.resource().is_none_or(|res| r.full.resource() == res) {
                    r.mailbox.close(
                        xmpp_parsers::stream_error::DefinedCondition::PolicyViolation,
                        "your session was ended by an administrator",
                    );
                    ended += 1;
                }
            }
            tracing::info!(admin = %by, jid = %j, "admin command: sessions ended");
        }
        Ok(Done::note(format!("{ended} session(s) ended")))
    })
}

fn announce<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let body = text(form, "announcement")?;
        let subject = values(form, "subject").join(" ");
        let mut n = 0;
        for r in ctx.sessions.all() {
            let m = server_message(ctx, &r.full.to_string(), "headline", &subject, &body);
            if crate::router::deliver_to_session(ctx, &r.full, m) {
                n += 1;
            }
        }
        tracing::info!(admin = %by, sessions = n, "admin command: announcement sent");
        Ok(Done::note(format!("sent to {n} session(s)")))
    })
}

/// A message from the server's domain.
fn server_message(ctx: &Ctx, to: &str, typ: &str, subject: &str, body: &str) -> Element {
    let mut m = element(
        "message",
        ns::CLIENT,
        &[
            ("from", &ctx.domain),
            ("to", to),
            ("type", typ),
            ("id", &random_id(8)),
        ],
    );
    if !subject.trim().is_empty() {
        let mut s = Element::bare("subject", ns::CLIENT);
        s.append_text(subject.trim());
        m.append_child(s);
    }
    let mut b = Element::bare("body", ns::CLIENT);
    b.append_text(body);
    m.append_child(b);
    m
}

fn domain_owner(ctx: &Ctx) -> CmdResult<BareJid> {
    BareJid::new(&ctx.domain).map_err(|_| simple_error(Cond::InternalServerError, None))
}

/// The message of the day, if one is set.
pub async fn motd(ctx: &Ctx) -> CmdResult<Option<String>> {
    let owner = domain_owner(ctx)?;
    ctx.stores
        .userdata
        .get(&owner, MOTD_KEY)
        .await
        .map_err(|e| crate::modules::store_failed("message of the day", e))
}

async fn put_motd(ctx: &Ctx, v: Option<String>) -> CmdResult<()> {
    let owner = domain_owner(ctx)?;
    ctx.stores
        .userdata
        .put(&owner, MOTD_KEY, v)
        .await
        .map_err(|e| crate::modules::store_failed("message of the day", e))
}

fn set_motd<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    form: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        let m = text(form, "motd")?;
        put_motd(ctx, Some(m)).await?;
        tracing::info!(admin = %by, "admin command: message of the day set");
        Ok(Done::note(
            "the message of the day is set; users get it when they log in",
        ))
    })
}

fn delete_motd<'a>(
    ctx: &'a Arc<Ctx>,
    by: &'a Jid,
    _: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async move {
        put_motd(ctx, None).await?;
        tracing::info!(admin = %by, "admin command: message of the day deleted");
        Ok(Done::note("the message of the day is deleted"))
    })
}

fn get_password<'a>(
    _: &'a Arc<Ctx>,
    _: &'a Jid,
    _: Option<&'a DataForm>,
) -> BoxFuture<'a, CmdResult<Done>> {
    Box::pin(async {
        Err(simple_error(
            Cond::NotAllowed,
            Some("passwords are never stored (only salted SCRAM keys): set a new one with change-user-password"),
        ))
    })
}

/// The message of the day to a session that just became available.
pub struct Motd;

impl crate::modules::Listener for Motd {
    fn on_event<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        ev: &'a crate::modules::Event<'a>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let crate::modules::Event::InitialPresence { full, .. } = ev else {
                return;
            };
            let Ok(Some(m)) = motd(ctx).await else {
                return;
            };
            let msg = server_message(ctx, full.as_str(), "normal", "Message of the day", &m);
            crate::router::deliver_to_session(ctx, full, msg);
        })
    }
}

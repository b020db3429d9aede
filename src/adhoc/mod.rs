//! Ad-hoc commands (XEP-0050) at the server's domain, with data forms
//! (XEP-0004): the protocol, the sessions of multi-stage commands, and
//! their discovery. The commands themselves are [`Command`]s registered
//! here (`admin.rs`: XEP-0133). See `xeps/xep-0050.md`.
//!
//! - A command is a fixed number of forms ([`Command::stages`]) followed
//!   by [`Command::run`] with every form submitted; zero forms means it
//!   completes at once. `next`, `prev`, `complete` and `cancel` move a
//!   session through its stages.
//! - Who may see and run a command is one rule, [`Command::access`] with
//!   [`may_use`]; a command is listed only to those allowed to run it.
//! - Sessions live in this process, bound to the full JID that started
//!   them, and expire after [`SESSION_IDLE`] without a request.

// Errors here are the stanza errors the IQ answers with, as in
// `modules::IqResult`; they are built once per request, never hot.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use crate::modules::{IqHandler, IqRequest, IqResult, IqType, Registry, ServerNodes, Target};
use crate::server::Ctx;
use crate::stanza::{element, random_id, simple_error};
use crate::store::BoxFuture;
use crate::xml::ns;

pub mod admin;
pub mod policy;

pub const NS: &str = "http://jabber.org/protocol/commands";

/// How long a session waits for its next request.
pub const SESSION_IDLE: Duration = Duration::from_secs(600);
/// Sessions open at once, per full JID and in all.
const MAX_SESSIONS_PER_JID: usize = 16;
const MAX_SESSIONS: usize = 10_000;

/// Who may see and run a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The accounts in `admins`.
    Admin,
}

/// Whether `who` may use commands of `access`: the one place that decides.
pub fn may_use(ctx: &Ctx, who: &Jid, access: Access) -> bool {
    match access {
        Access::Admin => is_admin(ctx, &who.to_bare()),
    }
}

/// Whether `jid` is one of the server's administrators (`admins` in the
/// configuration; local accounts only).
pub fn is_admin(ctx: &Ctx, jid: &BareJid) -> bool {
    jid.domain().as_str() == ctx.domain
        && jid.node().is_some()
        && ctx.config.admins.iter().any(|a| a == jid.as_str())
}

/// A note for the user (XEP-0050 §3.4 `<note/>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteType {
    Info,
    Warn,
    Error,
}

/// What a command's run produced.
pub struct Done {
    pub notes: Vec<(NoteType, String)>,
    /// A result form (counts, lists).
    pub form: Option<DataForm>,
}

impl Done {
    pub fn note(text: impl Into<String>) -> Done {
        Done {
            notes: vec![(NoteType::Info, text.into())],
            form: None,
        }
    }

    pub fn form(form: DataForm) -> Done {
        Done {
            notes: Vec::new(),
            form: Some(form),
        }
    }
}

pub type CmdResult<T> = Result<T, StanzaError>;

pub trait Command: Send + Sync {
    fn node(&self) -> &str;
    fn name(&self) -> &'static str;
    fn access(&self) -> Access;
    /// Whether disco lists it (a command kept only to refuse it is not).
    fn listed(&self) -> bool {
        true
    }
    /// How many forms the user fills in before it runs.
    fn stages(&self) -> usize;
    /// The form of `stage` (from 0), given the forms submitted before it.
    fn form<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        stage: usize,
        earlier: &'a [DataForm],
    ) -> BoxFuture<'a, CmdResult<DataForm>>;
    /// Run with one submitted form per stage. `by` is who runs it. All or
    /// nothing: an error changes nothing.
    fn run<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        by: &'a Jid,
        forms: &'a [DataForm],
    ) -> BoxFuture<'a, CmdResult<Done>>;
}

/// An error with a XEP-0050 condition (§4.6) as the application-specific
/// one.
pub fn command_error(cond: Cond, specific: &str, text: &str) -> StanzaError {
    let mut e = simple_error(cond, Some(text));
    e.other = Some(element(specific, NS, &[]));
    e
}

/// `bad-request` naming what is wrong with the form (XEP-0050
/// `bad-payload`).
pub fn bad_field(var: &str, what: &str) -> StanzaError {
    command_error(
        Cond::BadRequest,
        "bad-payload",
        &format!("field '{var}': {what}"),
    )
}

/// `<command/>` of session `id` on `node` with `status`.
fn status(node: &str, id: &str, status: &str) -> Element {
    element(
        "command",
        NS,
        &[("node", node), ("sessionid", id), ("status", status)],
    )
}

struct Session {
    node: String,
    owner: Jid,
    stage: usize,
    forms: Vec<DataForm>,
    last: Instant,
}

pub struct Commands {
    commands: Vec<Arc<dyn Command>>,
    sessions: Mutex<HashMap<String, Session>>,
}

pub fn register(r: &mut Registry) {
    let mut commands: Vec<Arc<dyn Command>> = Vec::new();
    admin::commands(&mut commands);
    policy::commands(&mut commands);
    let c = Arc::new(Commands {
        commands,
        sessions: Mutex::default(),
    });
    r.server_feature(NS);
    r.iq(NS, true, false, c.clone());
    r.server_nodes(c);
    r.listener(Arc::new(admin::Motd));
}

impl Commands {
    fn find(&self, node: &str) -> Option<&Arc<dyn Command>> {
        self.commands.iter().find(|c| c.node() == node)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `owner` may open one more session.
    fn admit(&self, owner: &Jid) -> CmdResult<()> {
        let mut m = self.sessions();
        m.retain(|_, s| s.last.elapsed() < SESSION_IDLE);
        let mine = m.values().filter(|s| s.owner == *owner).count();
        if mine >= MAX_SESSIONS_PER_JID || m.len() >= MAX_SESSIONS {
            return Err(simple_error(
                Cond::ResourceConstraint,
                Some("too many command sessions open; complete or cancel one"),
            ));
        }
        Ok(())
    }

    /// The session `id` of `owner` on `node`, taken out (put back with
    /// [`Commands::keep`] while it goes on).
    fn take(&self, id: &str, owner: &Jid, node: &str) -> CmdResult<Session> {
        let mut m = self.sessions();
        let ok = m.get(id).is_some_and(|s| {
            s.owner == *owner && s.node == node && s.last.elapsed() < SESSION_IDLE
        });
        if !ok {
            return Err(command_error(
                Cond::BadRequest,
                "bad-sessionid",
                "no such command session (unknown, expired, or not yours)",
            ));
        }
        m.remove(id)
            .ok_or_else(|| command_error(Cond::BadRequest, "bad-sessionid", "no such session"))
    }

    fn keep(&self, id: String, mut s: Session) {
        s.last = Instant::now();
        self.sessions().insert(id, s);
    }

    /// `<command/>` showing stage `stage`'s form.
    async fn show(
        &self,
        ctx: &Arc<Ctx>,
        cmd: &Arc<dyn Command>,
        id: &str,
        s: &Session,
    ) -> CmdResult<Element> {
        let form = cmd.form(ctx, s.stage, &s.forms).await?;
        let mut c = status(cmd.node(), id, "executing");
        let last = s.stage + 1 == cmd.stages();
        let mut actions = element(
            "actions",
            NS,
            &[("execute", if last { "complete" } else { "next" })],
        );
        if s.stage > 0 {
            actions.append_child(element("prev", NS, &[]));
        }
        actions.append_child(element(if last { "complete" } else { "next" }, NS, &[]));
        c.append_child(actions);
        c.append_child(Element::from(form));
        Ok(c)
    }

    async fn complete(
        &self,
        ctx: &Arc<Ctx>,
        cmd: &Arc<dyn Command>,
        by: &Jid,
        id: &str,
        forms: &[DataForm],
    ) -> CmdResult<Element> {
        let done = cmd.run(ctx, by, forms).await?;
        tracing::info!(admin = %by, command = cmd.node(), "ad-hoc command completed");
        let mut c = status(cmd.node(), id, "completed");
        for (t, text) in done.notes {
            let t = match t {
                NoteType::Info => "info",
                NoteType::Warn => "warn",
                NoteType::Error => "error",
            };
            let mut n = element("note", NS, &[("type", t)]);
            n.append_text(text);
            c.append_child(n);
        }
        if let Some(f) = done.form {
            c.append_child(Element::from(f));
        }
        Ok(c)
    }

    async fn request(&self, ctx: &Arc<Ctx>, req: &IqRequest) -> IqResult {
        if req.typ != IqType::Set {
            return Err(simple_error(
                Cond::BadRequest,
                Some("commands are run with IQ set"),
            ));
        }
        let p = &req.payload;
        let node = p.attr("node").unwrap_or_default();
        let Some(cmd) = self.find(node).cloned() else {
            return Err(simple_error(Cond::ItemNotFound, Some("no such command")));
        };
        if !may_use(ctx, &req.from, cmd.access()) {
            return Err(simple_error(
                Cond::Forbidden,
                Some("this command is for administrators"),
            ));
        }
        let action = p.attr("action").unwrap_or("execute");
        if !matches!(action, "execute" | "next" | "prev" | "complete" | "cancel") {
            return Err(command_error(
                Cond::BadRequest,
                "malformed-action",
                "the action is one of execute, next, prev, complete, cancel",
            ));
        }
        let submitted = p
            .children()
            .find(|c| c.is("x", ns::DATA_FORMS))
            .map(|x| DataForm::try_from(x.clone()))
            .transpose()
            .map_err(|_| {
                command_error(Cond::BadRequest, "bad-payload", "the data form is invalid")
            })?;
        let Some(id) = p.attr("sessionid").map(str::to_string) else {
            // A new session.
            if action != "execute" {
                return Err(command_error(
                    Cond::BadRequest,
                    "bad-action",
                    "a command starts with execute",
                ));
            }
            let id = random_id(12);
            if cmd.stages() == 0 {
                return self
                    .complete(ctx, &cmd, &req.from, &id, &[])
                    .await
                    .map(Some);
            }
            self.admit(&req.from)?;
            let s = Session {
                node: cmd.node().to_string(),
                owner: req.from.clone(),
                stage: 0,
                forms: Vec::new(),
                last: Instant::now(),
            };
            let shown = self.show(ctx, &cmd, &id, &s).await;
            if shown.is_ok() {
                self.keep(id, s);
            }
            return shown.map(Some);
        };
        let mut s = self.take(&id, &req.from, cmd.node())?;
        match action {
            "cancel" => {
                let c = status(cmd.node(), &id, "canceled");
                Ok(Some(c))
            }
            "prev" => {
                if s.stage == 0 {
                    self.keep(id, s);
                    return Err(command_error(
                        Cond::BadRequest,
                        "bad-action",
                        "this is the first stage",
                    ));
                }
                s.stage -= 1;
                s.forms.truncate(s.stage);
                let shown = self.show(ctx, &cmd, &id, &s).await;
                self.keep(id, s);
                shown.map(Some)
            }
            _ => {
                let last = s.stage + 1 == cmd.stages();
                if action == "complete" && !last {
                    self.keep(id, s);
                    return Err(command_error(
                        Cond::BadRequest,
                        "bad-action",
                        "complete is for the last stage; use next",
                    ));
                }
                if action == "next" && last {
                    self.keep(id, s);
                    return Err(command_error(
                        Cond::BadRequest,
                        "bad-action",
                        "this is the last stage; use complete",
                    ));
                }
                let form = match submitted {
                    Some(f) if f.type_ == DataFormType::Submit => f,
                    Some(f) if f.type_ == DataFormType::Cancel => {
                        let c = status(cmd.node(), &id, "canceled");
                        return Ok(Some(c));
                    }
                    _ => {
                        self.keep(id, s);
                        return Err(command_error(
                            Cond::BadRequest,
                            "bad-payload",
                            "submit the form (a jabber:x:data form of type submit)",
                        ));
                    }
                };
                s.forms.push(form);
                if last {
                    let r = self.complete(ctx, &cmd, &req.from, &id, &s.forms).await;
                    if r.is_err() {
                        // Nothing was applied: the form may be mended and
                        // sent again.
                        s.forms.pop();
                        self.keep(id, s);
                    }
                    return r.map(Some);
                }
                s.stage += 1;
                let shown = self.show(ctx, &cmd, &id, &s).await;
                if shown.is_err() {
                    s.stage -= 1;
                    s.forms.pop();
                }
                self.keep(id, s);
                shown.map(Some)
            }
        }
    }
}

impl IqHandler for Commands {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if req.target != Target::Server || !req.payload.is("command", NS) {
                return Err(simple_error(Cond::ServiceUnavailable, None));
            }
            self.request(ctx, &req).await
        })
    }
}

impl ServerNodes for Commands {
    fn items<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        from: &'a Jid,
        node: &'a str,
    ) -> Option<Vec<Element>> {
        if node != NS {
            return None;
        }
        Some(
            self.commands
                .iter()
                .filter(|c| c.listed() && may_use(ctx, from, c.access()))
                .map(|c| {
                    element(
                        "item",
                        ns::DISCO_ITEMS,
                        &[("jid", &ctx.domain), ("node", c.node()), ("name", c.name())],
                    )
                })
                .collect(),
        )
    }

    fn info<'a>(&'a self, ctx: &'a Arc<Ctx>, from: &'a Jid, node: &'a str) -> Option<IqResult> {
        let identity = |typ: &str, name: &str| {
            element(
                "identity",
                ns::DISCO_INFO,
                &[("category", "automation"), ("type", typ), ("name", name)],
            )
        };
        let mut q = element("query", ns::DISCO_INFO, &[("node", node)]);
        if node == NS {
            q.append_child(identity("command-list", "Commands"));
            return Some(Ok(Some(q)));
        }
        let cmd = self.find(node)?;
        if !may_use(ctx, from, cmd.access()) {
            return Some(Err(simple_error(
                Cond::Forbidden,
                Some("this command is for administrators"),
            )));
        }
        q.append_child(identity("command-node", cmd.name()));
        for f in [NS, ns::DATA_FORMS] {
            q.append_child(element("feature", ns::DISCO_INFO, &[("var", f)]));
        }
        Some(Ok(Some(q)))
    }
}

#!/usr/bin/python3
"""adhoc_scenario.py - slixmpp's XEP-0050 code drives Confab's XEP-0133 admin commands.

A client nobody here wrote runs the server's administration commands
(XEP-0133 over XEP-0050 ad-hoc commands at the server's domain) with its
own command workflow (xep_0050's start_command / complete_command and
session callbacks). --admin must be listed in the server's `admins`
(run.sh writes it into confab.toml), --user must not be. Steps, each
with a timeout:

  1. the admin and the user log in; the admin's get_commands on the
     domain lists add-user, announce and get-registered-users-num; the
     user's listing is empty, and its execute of add-user is refused
     with an IQ error forbidden
  2. the admin runs get-registered-users-num (completes at once with
     registeredusersnum), then add-user: a form with accountjid, password
     and password-verify, answered status='executing' with a sessionid
     and <actions execute='complete'><complete/></actions>; completed
     with a note. A fresh user with a random name is created, and a new
     client logs in as that user
  3. the admin runs announce (subject, announcement as text-multi): the
     user, online, receives a headline from the domain with that subject
     and body
  4. get-registered-users-num again: one more than in step 2, counting
     the new user

Prints one JSON object (the steps passed, or where it stopped) and exits
0 when every step passed, 1 otherwise. Run it with /usr/bin/python3
(Debian's python3-slixmpp).
"""
import asyncio
import uuid

from c2s_scenario import STEP_TIMEOUT, Client, cli, disconnect_all

NS_CMD = "http://jabber.org/protocol/commands"
ADMIN = "http://jabber.org/protocol/admin#"
ADD_USER = ADMIN + "add-user"
ANNOUNCE = ADMIN + "announce"
USERS_NUM = ADMIN + "get-registered-users-num"


async def login(args, jid, password):
    """A Client (c2s_scenario's) with xep_0050 loaded, logged in over STARTTLS."""
    c = Client(jid, password, args.cafile)
    c.register_plugin("xep_0050")
    c.connect(address=(args.server, args.port), force_starttls=True)
    try:
        await asyncio.wait_for(c.started, STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise RuntimeError("%s: not logged in within %.0f s" % (jid, STEP_TIMEOUT))
    return c


async def command_nodes(c, domain):
    """The command nodes c's get_commands lists at the domain."""
    items = await c.plugin["xep_0050"].get_commands(jid=domain, timeout=STEP_TIMEOUT)
    found = []
    for jid, node, _name in items["disco_items"]["items"]:
        if str(jid) != domain:
            raise RuntimeError("command %s listed at %s, not at %s" % (node, jid, domain))
        found.append(node)
    return found


def error_text(iq):
    return "%s %s" % (iq["error"]["condition"], iq["error"]["text"] or "")


def check_stage(iq, node):
    """A form stage as XEP-0050 shows it: executing, with a session and
    <actions execute='complete'><complete/></actions>; its form."""
    cmd = iq["command"]
    if cmd["node"] != node or not cmd["sessionid"]:
        raise RuntimeError("%s: stage without node or sessionid: %s" % (node, iq))
    actions = cmd.xml.find("{%s}actions" % NS_CMD)
    if (actions is None or actions.get("execute") != "complete"
            or cmd["actions"] != {"complete"}):
        raise RuntimeError("%s: stage without <actions execute='complete'><complete/>"
                           "</actions>: %s" % (node, iq))
    form = cmd["form"]
    if form["type"] != "form":
        raise RuntimeError("%s: stage without a form to fill in: %s" % (node, iq))
    return form


def submit(c, node, form, values):
    """A submit form for this stage's form with these values; every
    required field must be given and every given field must exist."""
    fields = form.get_fields()
    missing = [v for v, f in fields.items() if f["required"] and v not in values]
    unknown = [v for v in values if v not in fields]
    if missing or unknown:
        raise RuntimeError("%s: the form's fields are %s (missing here %s, unknown there %s)"
                           % (node, list(fields), missing, unknown))
    out = c.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in values.items():
        out.add_field(var=var, ftype=fields[var]["type"], value=value)
    return out


async def run_command(c, domain, node, values=None):
    """Run `node` at the domain with xep_0050's session workflow:
    start_command, then, at the one form stage, complete_command with
    `values` filled in. The completed result IQ; an error IQ raises
    CommandError."""
    done = asyncio.get_event_loop().create_future()
    adhoc = c.plugin["xep_0050"]

    def settle(fn, *a):
        if not done.done():
            fn(*a)

    def on_next(iq, session):
        try:
            status = iq["command"]["status"]
            if status == "completed":
                settle(done.set_result, iq)
            elif status == "executing":
                if session.get("submitted"):
                    raise RuntimeError("%s: still executing after complete: %s" % (node, iq))
                if values is None:
                    raise RuntimeError("%s: asked for a form, expected to complete at once: %s"
                                       % (node, iq))
                form = check_stage(iq, node)
                session["payload"] = submit(c, node, form, values)
                session["submitted"] = True
                adhoc.complete_command(session)
            else:
                raise RuntimeError("%s: status %r: %s" % (node, status, iq))
        except Exception as e:
            settle(done.set_exception, e)

    def on_error(iq, session):
        settle(done.set_exception, CommandError(node, iq))
        adhoc.terminate_command(session)

    adhoc.start_command(domain, node, {"next": on_next, "error": on_error})
    try:
        return await asyncio.wait_for(done, STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise RuntimeError("%s: command %s not completed within %.0f s"
                           % (c.boundjid, node, STEP_TIMEOUT))


class CommandError(RuntimeError):
    def __init__(self, node, iq):
        self.condition = iq["error"]["condition"]
        super().__init__("%s: IQ error %s" % (node, error_text(iq)))


async def registered_num(c, domain):
    res = await run_command(c, domain, USERS_NUM)
    form = res["command"]["form"]
    value = form.get_values().get("registeredusersnum")
    if form["type"] != "result" or not isinstance(value, str) or not value.isdigit():
        raise RuntimeError("%s: no result form with a number registeredusersnum: %s"
                           % (USERS_NUM, res))
    return int(value)


def announcement(domain, subject, body):
    def pred(st):
        return (st.name == "message" and st["type"] == "headline"
                and str(st["from"]) == domain and st["body"] == body
                and st["subject"] == subject)
    return pred


async def scenario(args, steps):
    d = args.domain
    run = uuid.uuid4().hex[:8]
    clients = []

    # 1 -------------------------------------------------------------------
    admin = await login(args, "%s@%s" % (args.admin, d), args.password)
    clients.append(admin)
    user = await login(args, "%s@%s" % (args.user, d), args.password)
    clients.append(user)
    nodes = await command_nodes(admin, d)
    missing = [n for n in (ADD_USER, ANNOUNCE, USERS_NUM) if n not in nodes]
    if missing:
        raise RuntimeError("the admin's command list %s lacks %s" % (nodes, missing))
    theirs = await command_nodes(user, d)
    if theirs:
        raise RuntimeError("a non-admin's command list is not empty: %s" % theirs)
    try:
        res = await run_command(user, d, ADD_USER, {})
    except CommandError as e:
        if e.condition != "forbidden":
            raise RuntimeError("a non-admin's add-user: %s, expected forbidden" % e)
    else:
        raise RuntimeError("a non-admin's add-user was not refused: %s" % res)
    steps.append("1 %s lists %d commands, among them add-user, announce and "
                 "get-registered-users-num; %s lists none and its add-user is forbidden"
                 % (admin.boundjid, len(nodes), user.boundjid))

    # 2 -------------------------------------------------------------------
    before = await registered_num(admin, d)
    new_bare = "adhoc-new-%s@%s" % (run, d)
    new_pw = "pw-%s" % uuid.uuid4().hex
    res = await run_command(admin, d, ADD_USER, {
        "accountjid": new_bare, "password": new_pw, "password-verify": new_pw})
    notes = res["command"]["notes"]
    if not notes:
        raise RuntimeError("add-user completed without a note: %s" % res)
    new = await login(args, new_bare, new_pw)
    clients.append(new)
    steps.append("2 %d registered; add-user created %s (note %r); it logged in as %s"
                 % (before, new_bare, notes[0][1], new.boundjid))

    # 3 -------------------------------------------------------------------
    subject = "adhoc %s" % run
    lines = ["announcement %s" % run, "second line"]
    res = await run_command(admin, d, ANNOUNCE, {"subject": subject, "announcement": lines})
    got = await user.expect("the announcement", announcement(d, subject, "\n".join(lines)))
    await new.expect("the announcement", announcement(d, subject, "\n".join(lines)))
    steps.append("3 announce completed (%s); %s and %s got the headline from %s"
                 % ([t for _, t in res["command"]["notes"]], got["to"], new.boundjid, d))

    # 4 -------------------------------------------------------------------
    after = await registered_num(admin, d)
    if after != before + 1:
        raise RuntimeError("get-registered-users-num: %d after add-user, %d before"
                           % (after, before))
    steps.append("4 get-registered-users-num: %d, one more than before add-user" % after)

    await disconnect_all(clients)


def users(p):
    p.add_argument("--admin", default="adhoc-boss", help="an account listed in admins")
    p.add_argument("--user", default="adhoc-pleb", help="an account not listed in admins")


if __name__ == "__main__":
    cli(__doc__, scenario, users)

//! Ad-hoc commands (XEP-0050) and service administration (XEP-0133)
//! through real client sessions.

use crate::common::*;
use minidom::Element;

const CMDS: &str = "http://jabber.org/protocol/commands";
const ADMIN: &str = "http://jabber.org/protocol/admin#";
const DATA: &str = "jabber:x:data";
pub(crate) const PW: &str = "pw-adhoc-1";

async fn server() -> TestServer {
    let s = TestServer::start_with(|c| c.admins = vec![format!("boss@{DOMAIN}")]).await;
    for u in ["boss", "alice", "bob"] {
        s.add_user(u, PW).await;
    }
    s
}

/// A submitted form: FORM_TYPE plus (var, values).
pub(crate) fn submit(fields: &[(&str, &[&str])]) -> String {
    let mut x = format!(
        "<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/admin</value></field>"
    );
    for (var, vals) in fields {
        x.push_str(&format!("<field var='{var}'>"));
        for v in *vals {
            x.push_str(&format!("<value>{v}</value>"));
        }
        x.push_str("</field>");
    }
    x.push_str("</x>");
    x
}

pub(crate) fn command(iq: &Element) -> &Element {
    iq.get_child("command", CMDS)
        .unwrap_or_else(|| panic!("no <command/>: {}", String::from(iq)))
}

pub(crate) async fn execute(c: &mut Client, node: &str) -> Element {
    c.iq(
        "set",
        Some(DOMAIN),
        &format!("<command xmlns='{CMDS}' node='{ADMIN}{node}' action='execute'/>"),
    )
    .await
}

pub(crate) async fn act(
    c: &mut Client,
    node: &str,
    sid: &str,
    action: &str,
    form: &str,
) -> Element {
    c.iq(
        "set",
        Some(DOMAIN),
        &format!(
            "<command xmlns='{CMDS}' node='{ADMIN}{node}' sessionid='{sid}' action='{action}'>{form}</command>"
        ),
    )
    .await
}

/// Execute `node`, then complete its one form with `fields`.
pub(crate) async fn run(c: &mut Client, node: &str, fields: &[(&str, &[&str])]) -> Element {
    run_node(c, &format!("{ADMIN}{node}"), fields).await
}

/// The same for a command's full node name.
pub(crate) async fn run_node(c: &mut Client, node: &str, fields: &[(&str, &[&str])]) -> Element {
    let r = c
        .iq(
            "set",
            Some(DOMAIN),
            &format!("<command xmlns='{CMDS}' node='{node}' action='execute'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let cmd = command(&r);
    assert_eq!(cmd.attr("status"), Some("executing"));
    let sid = cmd.attr("sessionid").unwrap_or_default().to_string();
    c.iq(
        "set",
        Some(DOMAIN),
        &format!(
            "<command xmlns='{CMDS}' node='{node}' sessionid='{sid}' action='complete'>{}</command>",
            submit(fields)
        ),
    )
    .await
}

pub(crate) fn completed(r: &Element) -> &Element {
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(r));
    let cmd = command(r);
    assert_eq!(cmd.attr("status"), Some("completed"), "{}", String::from(r));
    cmd
}

pub(crate) fn result_values(cmd: &Element, var: &str) -> Vec<String> {
    cmd.get_child("x", DATA)
        .and_then(|x| {
            x.children()
                .find(|f| f.name() == "field" && f.attr("var") == Some(var))
        })
        .map(|f| {
            f.children()
                .filter(|v| v.name() == "value")
                .map(|v| v.text())
                .collect()
        })
        .unwrap_or_default()
}

async fn login_result(s: &TestServer, user: &str, password: &str) -> Result<(), String> {
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    c.starttls().await;
    c.start_stream().await;
    c.auth_scram(user, password, Hash::Sha256, false).await
}

#[tokio::test]
async fn commands_are_listed_only_to_admins_and_refused_to_others() {
    let s = server().await;
    let mut boss = s.online("boss", PW, "adm").await;
    let mut alice = s.online("alice", PW, "a").await;

    let info = boss
        .iq(
            "get",
            Some(DOMAIN),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .is_some_and(|q| q.children().any(|f| f.attr("var") == Some(CMDS))));

    let items = format!("<query xmlns='http://jabber.org/protocol/disco#items' node='{CMDS}'/>");
    let r = boss.iq("get", Some(DOMAIN), &items).await;
    let nodes: Vec<String> = r
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .map(|q| {
            q.children()
                .filter_map(|i| i.attr("node"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for n in [
        "add-user",
        "delete-user",
        "disable-user",
        "reenable-user",
        "announce",
        "set-motd",
    ] {
        assert!(
            nodes.contains(&format!("{ADMIN}{n}")),
            "{n} not in {nodes:?}"
        );
    }
    assert!(!nodes.contains(&format!("{ADMIN}get-user-password")));

    // A command node's disco#info.
    let r = boss
        .iq(
            "get",
            Some(DOMAIN),
            &format!(
                "<query xmlns='http://jabber.org/protocol/disco#info' node='{ADMIN}add-user'/>"
            ),
        )
        .await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(q
        .children()
        .any(|c| c.name() == "identity" && c.attr("type") == Some("command-node")));

    // alice is no admin: nothing listed, forbidden to run.
    let r = alice.iq("get", Some(DOMAIN), &items).await;
    assert_eq!(r.attr("type"), Some("result"));
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap();
    assert_eq!(q.children().count(), 0, "{}", String::from(&r));
    let r = execute(&mut alice, "add-user").await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    let r = execute(&mut alice, "get-online-users-num").await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn user_accounts_from_a_client() {
    let s = server().await;
    let mut boss = s.online("boss", PW, "adm").await;

    // add-user: a new account that can log in.
    let carol = format!("carol@{DOMAIN}");
    let r = run(
        &mut boss,
        "add-user",
        &[
            ("accountjid", &[&carol]),
            ("password", &["c-pw-1"]),
            ("password-verify", &["c-pw-1"]),
        ],
    )
    .await;
    completed(&r);
    assert_eq!(login_result(&s, "carol", "c-pw-1").await, Ok(()));

    // Mismatched passwords and a missing field: bad-request naming the
    // field, nothing created.
    let r = run(
        &mut boss,
        "add-user",
        &[
            ("accountjid", &[&format!("dan@{DOMAIN}")]),
            ("password", &["x"]),
            ("password-verify", &["y"]),
        ],
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(
        String::from(&r).contains("password-verify"),
        "{}",
        String::from(&r)
    );
    let r = run(
        &mut boss,
        "add-user",
        &[("password", &["x"]), ("password-verify", &["x"])],
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(
        String::from(&r).contains("accountjid"),
        "{}",
        String::from(&r)
    );
    assert!(login_result(&s, "dan", "x").await.is_err());

    // change-user-password.
    let r = run(
        &mut boss,
        "change-user-password",
        &[("accountjid", &[&carol]), ("password", &["c-pw-2"])],
    )
    .await;
    completed(&r);
    assert!(login_result(&s, "carol", "c-pw-1").await.is_err());
    assert_eq!(login_result(&s, "carol", "c-pw-2").await, Ok(()));

    // disable-user ends carol's session and stops her login; re-enable.
    let mut c = s.online("carol", "c-pw-2", "phone").await;
    let r = run(&mut boss, "disable-user", &[("accountjids", &[&carol])]).await;
    completed(&r);
    assert_eq!(c.stream_error().await.as_deref(), Some("not-authorized"));
    assert_eq!(
        login_result(&s, "carol", "c-pw-2").await,
        Err("account-disabled".into())
    );
    let r = execute(&mut boss, "get-disabled-users-num").await;
    assert_eq!(result_values(completed(&r), "disabledusersnum"), ["1"]);
    let r = run(
        &mut boss,
        "get-disabled-users-list",
        &[("max_items", &["25"])],
    )
    .await;
    assert_eq!(
        result_values(completed(&r), "disableduserjids"),
        [carol.as_str()]
    );
    let r = run(&mut boss, "reenable-user", &[("accountjids", &[&carol])]).await;
    completed(&r);
    assert_eq!(login_result(&s, "carol", "c-pw-2").await, Ok(()));

    // Counts and lists.
    let r = execute(&mut boss, "get-registered-users-num").await;
    assert_eq!(result_values(completed(&r), "registeredusersnum"), ["4"]);
    let r = run(
        &mut boss,
        "get-registered-users-list",
        &[("max_items", &["none"])],
    )
    .await;
    let users = result_values(completed(&r), "registereduserjids");
    assert_eq!(users.len(), 4, "{users:?}");
    assert!(users.contains(&carol));
    let _alice = s.online("alice", PW, "a").await;
    let r = execute(&mut boss, "get-online-users-num").await;
    assert_eq!(result_values(completed(&r), "onlineusersnum"), ["2"]);
    let r = run(
        &mut boss,
        "get-online-users-list",
        &[("max_items", &["25"])],
    )
    .await;
    assert_eq!(
        result_values(completed(&r), "onlineuserjids"),
        [format!("alice@{DOMAIN}"), format!("boss@{DOMAIN}")]
    );

    // delete-user is all or nothing: with one unknown JID nobody goes.
    let r = run(
        &mut boss,
        "delete-user",
        &[("accountjids", &[&carol, &format!("nobody@{DOMAIN}")])],
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(String::from(&r).contains("nobody@"), "{}", String::from(&r));
    assert_eq!(login_result(&s, "carol", "c-pw-2").await, Ok(()));
    let r = run(&mut boss, "delete-user", &[("accountjids", &[&carol])]).await;
    completed(&r);
    assert!(login_result(&s, "carol", "c-pw-2").await.is_err());

    // get-user-password is refused: passwords are never stored.
    let r = execute(&mut boss, "get-user-password").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
}

#[tokio::test]
async fn sessions_announcements_and_the_message_of_the_day() {
    let s = server().await;
    let mut boss = s.online("boss", PW, "adm").await;
    let mut alice = s.online("alice", PW, "a").await;
    let mut bob = s.online("bob", PW, "b").await;

    let r = run(
        &mut boss,
        "announce",
        &[
            ("subject", &["Maintenance"]),
            ("announcement", &["Down at 18:00"]),
        ],
    )
    .await;
    completed(&r);
    for c in [&mut alice, &mut bob] {
        let m = c
            .expect_where(|e| e.name() == "message" && e.attr("from") == Some(DOMAIN))
            .await;
        assert_eq!(body(&m).as_deref(), Some("Down at 18:00"));
    }

    // end-user-session with a full JID ends that session only.
    let mut bob2 = s.online("bob", PW, "b2").await;
    let r = run(
        &mut boss,
        "end-user-session",
        &[("accountjids", &[&format!("bob@{DOMAIN}/b2")])],
    )
    .await;
    completed(&r);
    assert!(bob2.stream_error().await.is_some());
    bob.send_raw("<iq type='get' id='still'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    bob.expect_where(|e| e.attr("id") == Some("still")).await;

    // The message of the day reaches each login; edit shows it; delete
    // stops it.
    let r = run(
        &mut boss,
        "set-motd",
        &[("motd", &["Welcome", "to Confab"])],
    )
    .await;
    completed(&r);
    let mut a2 = s.online("alice", PW, "a2").await;
    let m = a2
        .expect_where(|e| e.name() == "message" && e.attr("from") == Some(DOMAIN))
        .await;
    assert_eq!(body(&m).as_deref(), Some("Welcome\nto Confab"));
    let r = execute(&mut boss, "edit-motd").await;
    let form = command(&r).get_child("x", DATA).unwrap();
    let shown: Vec<String> = form
        .children()
        .find(|f| f.attr("var") == Some("motd"))
        .map(|f| {
            f.children()
                .filter(|v| v.name() == "value")
                .map(|v| v.text())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(shown, ["Welcome", "to Confab"]);
    let r = execute(&mut boss, "delete-motd").await;
    completed(&r);
    let mut a3 = s.online("alice", PW, "a3").await;
    a3.expect_none_within(std::time::Duration::from_millis(500), |e| {
        e.name() == "message" && e.attr("from") == Some(DOMAIN)
    })
    .await;
}

#[tokio::test]
async fn command_sessions_prev_cancel_and_bad_session_ids() {
    let s = server().await;
    let mut boss = s.online("boss", PW, "adm").await;
    let r = execute(&mut boss, "add-user").await;
    let cmd = command(&r);
    let sid = cmd.attr("sessionid").unwrap().to_string();
    let actions = cmd.get_child("actions", CMDS).unwrap();
    assert_eq!(actions.attr("execute"), Some("complete"));
    assert!(actions.has_child("complete", CMDS));

    // prev on the first stage: bad-action; the session goes on.
    let r = act(&mut boss, "add-user", &sid, "prev", "").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(r
        .get_child("error", CLIENT)
        .unwrap()
        .has_child("bad-action", CMDS));
    // complete without a form: bad-request; the session goes on.
    let r = act(&mut boss, "add-user", &sid, "complete", "").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    // cancel ends it; its id is then unknown.
    let r = act(&mut boss, "add-user", &sid, "cancel", "").await;
    assert_eq!(command(&r).attr("status"), Some("canceled"));
    let r = act(&mut boss, "add-user", &sid, "complete", &submit(&[])).await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(r
        .get_child("error", CLIENT)
        .unwrap()
        .has_child("bad-sessionid", CMDS));
    // Another user's (or resource's) session id is not usable either.
    let r = execute(&mut boss, "add-user").await;
    let sid = command(&r).attr("sessionid").unwrap().to_string();
    let mut boss2 = s.online("boss", PW, "adm2").await;
    let r = act(&mut boss2, "add-user", &sid, "cancel", "").await;
    assert!(r
        .get_child("error", CLIENT)
        .unwrap()
        .has_child("bad-sessionid", CMDS));
    // An unknown node.
    let r = execute(&mut boss, "no-such-command").await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
}

/// A command of several forms: `next` and `prev` walk its stages, each
/// form built from the earlier ones, and the last one completes it.
#[tokio::test]
async fn a_multi_stage_command_goes_next_and_back() {
    use confab::admin::{execute, Request};
    const NODE: &str = "urn:confab:cmd:policy:edit";
    let s = server().await;
    let ctx = s.handle().ctx.clone();
    for g in ["staff", "guests", "board"] {
        let r = execute(
            &ctx.stores,
            &ctx.domain,
            Some(&ctx),
            Request::GroupSet {
                name: g.into(),
                on: true,
            },
        )
        .await;
        assert!(r.ok);
    }
    let r = execute(
        &ctx.stores,
        &ctx.domain,
        Some(&ctx),
        Request::PolicySet {
            from: "staff".into(),
            to: "board".into(),
            level: Some("private".into()),
        },
    )
    .await;
    assert!(r.ok);
    let mut boss = s.online("boss", PW, "adm").await;
    let step = |sid: &str, action: &str, form: String| {
        format!("<command xmlns='{CMDS}' node='{NODE}' sessionid='{sid}' action='{action}'>{form}</command>")
    };
    let field_of = |cmd: &Element, var: &str| -> Vec<String> {
        cmd.get_child("x", DATA)
            .unwrap()
            .children()
            .find(|f| f.attr("var") == Some(var))
            .map(|f| {
                f.children()
                    .filter(|v| v.name() == "value")
                    .map(|v| v.text())
                    .collect()
            })
            .unwrap_or_else(|| panic!("no field {var}"))
    };
    let r = boss
        .iq(
            "set",
            Some(DOMAIN),
            &format!("<command xmlns='{CMDS}' node='{NODE}' action='execute'/>"),
        )
        .await;
    let cmd = command(&r);
    let sid = cmd.attr("sessionid").unwrap().to_string();
    // Stage 1 of 2: next, no prev, no complete.
    let actions = cmd.get_child("actions", CMDS).unwrap();
    assert_eq!(actions.attr("execute"), Some("next"));
    assert!(actions.has_child("next", CMDS));
    assert!(!actions.has_child("prev", CMDS) && !actions.has_child("complete", CMDS));
    field_of(cmd, "from");
    // complete is for the last stage.
    let groups = |from: &str, to: &str| submit(&[("from", &[from]), ("to", &[to])]);
    let r = boss
        .iq(
            "set",
            Some(DOMAIN),
            &step(&sid, "complete", groups("staff", "guests")),
        )
        .await;
    assert!(r
        .get_child("error", CLIENT)
        .unwrap()
        .has_child("bad-action", CMDS));
    // A group that does not exist: bad-request naming the field; still
    // at the first stage.
    let r = boss
        .iq(
            "set",
            Some(DOMAIN),
            &step(&sid, "next", groups("nobody", "guests")),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(
        String::from(&r).contains("field 'from'"),
        "{}",
        String::from(&r)
    );
    // next: the second form shows the level the policy has now (none).
    let r = boss
        .iq(
            "set",
            Some(DOMAIN),
            &step(&sid, "next", groups("staff", "guests")),
        )
        .await;
    let cmd = command(&r);
    assert_eq!(cmd.attr("status"), Some("executing"));
    let actions = cmd.get_child("actions", CMDS).unwrap();
    assert_eq!(actions.attr("execute"), Some("complete"));
    assert!(actions.has_child("prev", CMDS) && actions.has_child("complete", CMDS));
    assert_eq!(field_of(cmd, "level"), ["none"]);
    // prev: back to the groups; next with others: their policy's level.
    let r = boss
        .iq("set", Some(DOMAIN), &step(&sid, "prev", String::new()))
        .await;
    let cmd = command(&r);
    field_of(cmd, "from");
    assert!(!cmd
        .get_child("actions", CMDS)
        .unwrap()
        .has_child("prev", CMDS));
    let r = boss
        .iq(
            "set",
            Some(DOMAIN),
            &step(&sid, "next", groups("staff", "board")),
        )
        .await;
    assert_eq!(field_of(command(&r), "level"), ["private"]);
    // complete: the policy changes.
    let r = boss
        .iq(
            "set",
            Some(DOMAIN),
            &step(&sid, "complete", submit(&[("level", &["business"])])),
        )
        .await;
    let cmd = completed(&r);
    assert!(String::from(cmd).contains("members of staff grant members of board business"));
    let r = execute(&ctx.stores, &ctx.domain, None, Request::PolicyList).await;
    let p: Vec<_> = r
        .policies
        .iter()
        .map(|p| (p.from.as_str(), p.to.as_str(), p.level.as_str()))
        .collect();
    assert_eq!(p, [("staff", "board", "business")]);
    // The session is over.
    let r = boss
        .iq("set", Some(DOMAIN), &step(&sid, "prev", String::new()))
        .await;
    assert!(r
        .get_child("error", CLIENT)
        .unwrap()
        .has_child("bad-sessionid", CMDS));
}

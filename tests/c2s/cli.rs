//! The `confab` command as a user runs it: `user add` works with and
//! without a running server, and `check-config` reports errors by key.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;

fn confab(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

/// `confab` on a blocking thread (the in-process server keeps running).
async fn confab_async(
    config: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        confab(&config, &args, stdin.as_deref())
    })
    .await
    .unwrap()
}

fn write_config(dir: &std::path::Path, data: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("confab.toml");
    std::fs::write(
        &p,
        format!(
            "domain = \"localhost\"\ndata_dir = \"{}\"\n[listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\ns2s = []\n",
            data.display()
        ),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_with_and_without_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = write_config(dir.path(), &data);

    // No server: the store is used directly; the password comes from stdin.
    let out = confab_async(
        &cfg,
        &["user", "add", "carol@localhost"],
        Some("pw-from-stdin\n"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = confab_async(&cfg, &["user", "add", "carol@localhost", "again"], None).await;
    assert!(!out.status.success(), "a duplicate is refused");

    // With the server running on the same data dir: through the admin socket.
    let s = TestServer::start_with(|c| {
        c.data_dir = data.clone();
    })
    .await;
    let out = confab_async(&cfg, &["user", "add", "dave@localhost", "davepw"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = confab_async(&cfg, &["user", "list"], None).await;
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("carol@localhost") && listed.contains("dave@localhost"),
        "{listed}"
    );

    // Both can log in.
    s.login("carol", "pw-from-stdin", "x").await;
    let mut d = s.login("dave", "davepw", "x").await;

    // Password change and deletion while online: the session ends.
    let out = confab_async(&cfg, &["user", "del", "dave@localhost"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.stream_error().await.is_some());
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    c.starttls().await;
    c.start_stream().await;
    assert_eq!(
        c.auth_scram("dave", "davepw", Hash::Sha256, false).await,
        Err("not-authorized".into())
    );
    let out = confab_async(&cfg, &["user", "passwd", "carol@localhost", "newpw"], None).await;
    assert!(out.status.success());
    let mut online = s.login("carol", "newpw", "y").await;

    // Disabled while online: the session ends and logins are refused;
    // enabled again, carol gets in.
    let out = confab_async(&cfg, &["user", "disable", "carol@localhost"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        online.stream_error().await.as_deref(),
        Some("not-authorized")
    );
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    c.starttls().await;
    c.start_stream().await;
    assert_eq!(
        c.auth_scram("carol", "newpw", Hash::Sha256, false).await,
        Err("account-disabled".into())
    );
    let out = confab_async(&cfg, &["user", "enable", "carol@localhost"], None).await;
    assert!(out.status.success());
    s.login("carol", "newpw", "z").await;
    let out = confab_async(&cfg, &["user", "disable", "nobody@localhost"], None).await;
    assert!(!out.status.success(), "an unknown account is refused");
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "domain = \"localhost\"\n[limits]\nmax_stanza_bytes = \"big\"\nbogus = 1\n",
    )
    .unwrap();
    let out = confab(&p, &["check-config"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits"), "{err}");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "domain = \"example.com\"\n").unwrap();
    let out = confab(&good, &["check-config"], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("example.com"));
}

/// A server on `dir`/data with boss as its admin, alice and bob, and the
/// CLI's configuration for the same data dir.
async fn admin_server(dir: &std::path::Path) -> (TestServer, std::path::PathBuf) {
    let data = dir.join("data");
    let cfg = write_config(dir, &data);
    let s = TestServer::start_with(|c| {
        c.data_dir = data.clone();
        c.admins = vec!["boss@localhost".into()];
    })
    .await;
    for u in ["boss", "alice", "bob"] {
        s.add_user(u, crate::adhoc::PW).await;
    }
    (s, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_and_groups_are_one_state_for_the_cli_and_ad_hoc_commands() {
    use crate::adhoc::{completed, result_values, run_node, PW};
    let dir = tempfile::tempdir().unwrap();
    let (s, cfg) = admin_server(dir.path()).await;
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let stores = &s.handle().ctx.stores;
    let has = |jid: &str, r: confab::policy::Right| {
        let jid = xmpp_parsers::jid::BareJid::new(jid).unwrap();
        async move { confab::policy::has_right(stores, &jid, r).await.unwrap() }
    };
    use confab::policy::Right::{Av, ScreenShare, Sms};

    // The CLI: a group with alice, av granted to the group.
    ok(&confab_async(&cfg, &["group", "add", "sales"], None).await);
    ok(&confab_async(
        &cfg,
        &["group", "member", "add", "sales", "alice@localhost"],
        None,
    )
    .await);
    ok(&confab_async(&cfg, &["rights", "grant", "@sales", "av"], None).await);
    assert!(has("alice@localhost", Av).await);
    assert!(!has("bob@localhost", Av).await);

    // An ad-hoc command sees it and grants sms to bob; the CLI sees that.
    let mut boss = s.online("boss", PW, "adm").await;
    let grant = "urn:confab:cmd:rights:grant";
    let r = run_node(
        &mut boss,
        grant,
        &[("who", &["bob@localhost"]), ("right", &["sms"])],
    )
    .await;
    completed(&r);
    assert!(has("bob@localhost", Sms).await);
    let listed = ok(&confab_async(&cfg, &["rights", "list", "bob@localhost"], None).await);
    assert!(
        listed.contains("bob@localhost") && listed.contains("sms"),
        "{listed}"
    );
    let r = run_node(
        &mut boss,
        "urn:confab:cmd:rights:list",
        &[("who", &["alice@localhost"])],
    )
    .await;
    assert_eq!(
        result_values(completed(&r), "grants"),
        ["alice@localhost av (through @sales)"]
    );

    // Unknown rights and groups are refused with the valid ones listed.
    let r = run_node(
        &mut boss,
        grant,
        &[("who", &["bob@localhost"]), ("right", &["fax"])],
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(
        String::from(&r).contains("sms, av, screen_share"),
        "{}",
        String::from(&r)
    );
    let out = confab_async(&cfg, &["rights", "grant", "@nope", "av"], None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sales"));
    let out = confab_async(
        &cfg,
        &["rights", "grant", "bob@localhost", "teleport"],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("screen_share"));

    // Removing alice from the group (ad hoc) takes the group's right away;
    // revoking by CLI takes bob's.
    let r = run_node(
        &mut boss,
        "urn:confab:cmd:group:member-remove",
        &[("group", &["sales"]), ("accountjids", &["alice@localhost"])],
    )
    .await;
    completed(&r);
    assert!(!has("alice@localhost", Av).await);
    ok(&confab_async(&cfg, &["rights", "revoke", "bob@localhost", "sms"], None).await);
    assert!(!has("bob@localhost", Sms).await);
    assert!(!has("bob@localhost", ScreenShare).await);
    let groups = ok(&confab_async(&cfg, &["group", "list"], None).await);
    assert!(groups.contains("sales"), "{groups}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_policies_beat_the_defaults_and_the_highest_applies() {
    use crate::adhoc::{completed, run_node, PW};
    let dir = tempfile::tempdir().unwrap();
    let (s, cfg) = admin_server(dir.path()).await;
    let run = |args: &'static [&'static str]| confab_async(&cfg, args, None);
    let out_of = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };

    // The defaults: team for local contacts, public for remote ones.
    let shown = out_of(run(&["policy", "show", "alice@localhost", "bob@localhost"]).await);
    assert!(
        shown.contains("grants bob@localhost team (authz.default_local)"),
        "{shown}"
    );
    let shown = out_of(run(&["policy", "show", "alice@localhost", "carol@partner.example"]).await);
    assert!(shown.contains("public (authz.default_remote)"), "{shown}");

    // A group policy beats the default; of two, the higher applies.
    for a in [
        &["group", "add", "sales"][..],
        &["group", "add", "staff"],
        &["group", "add", "vendors"],
        &["group", "member", "add", "sales", "alice@localhost"],
        &["group", "member", "add", "vendors", "bob@localhost"],
        &["group", "member", "add", "staff", "bob@localhost"],
        &["policy", "set", "sales", "vendors", "business"],
    ] {
        out_of(confab_async(&cfg, a, None).await);
    }
    let shown = out_of(run(&["policy", "show", "alice@localhost", "bob@localhost"]).await);
    assert!(
        shown.contains("business (group policy sales -> vendors)"),
        "{shown}"
    );
    // The other way round nothing applies: bob's groups grant alice's none.
    let shown = out_of(run(&["policy", "show", "bob@localhost", "alice@localhost"]).await);
    assert!(shown.contains("team (authz.default_local)"), "{shown}");

    // An ad-hoc command adds sales -> staff private: the higher one wins.
    let mut boss = s.online("boss", PW, "adm").await;
    let r = run_node(
        &mut boss,
        "urn:confab:cmd:policy:set",
        &[
            ("from", &["sales"]),
            ("to", &["staff"]),
            ("level", &["private"]),
        ],
    )
    .await;
    completed(&r);
    let shown = out_of(run(&["policy", "show", "alice@localhost", "bob@localhost"]).await);
    assert!(
        shown.contains("private (group policy sales -> staff)"),
        "{shown}"
    );
    let listed = out_of(run(&["policy", "list"]).await);
    assert!(
        listed.contains("vendors") && listed.contains("private"),
        "{listed}"
    );

    // Unset; unknown levels and groups are refused with the valid ones.
    out_of(run(&["policy", "unset", "sales", "staff"]).await);
    let shown = out_of(run(&["policy", "show", "alice@localhost", "bob@localhost"]).await);
    assert!(shown.contains("business"), "{shown}");
    let o = run(&["policy", "set", "sales", "staff", "friends"]).await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("blocked, public, business, team, private"));
    let o = run(&["policy", "set", "sales", "nobody", "team"]).await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("staff"));
    let r = run_node(
        &mut boss,
        "urn:confab:cmd:policy:set",
        &[
            ("from", &["sales"]),
            ("to", &["staff"]),
            ("level", &["friends"]),
        ],
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    assert!(String::from(&r).contains("level"), "{}", String::from(&r));
}

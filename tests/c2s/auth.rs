//! Stream negotiation and authentication (RFC 6120 §5–§7, XEP-0368,
//! RFC 9266).

use crate::common::*;

const PW: &str = "s3cret pässword";

async fn server_with_alice() -> TestServer {
    let s = TestServer::start().await;
    s.add_user("alice", PW).await;
    s
}

/// Connect, STARTTLS, and open the authenticated-stream-to-be.
async fn tls_client(s: &TestServer) -> Client {
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    c.starttls().await;
    c.start_stream().await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_required_and_offered_first() {
    let s = server_with_alice().await;
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    let st = c
        .feature("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .expect("STARTTLS offered");
    assert!(st.has_child("required", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(c.mechanisms().is_empty(), "no SASL before TLS");
    // XEP-0478: the stanza size limit is advertised; before
    // authentication it is the smaller pre-authentication limit.
    let limits = c
        .feature("limits", "urn:xmpp:stream-limits:0")
        .expect("limits advertised");
    assert_eq!(
        limits
            .get_child("max-bytes", "urn:xmpp:stream-limits:0")
            .unwrap()
            .text(),
        "16384"
    );
    // Trying to authenticate in the clear ends the stream.
    let plain = base64_plain("alice", PW);
    c.send_raw(&format!(
        "<auth xmlns='{SASL}' mechanism='PLAIN'>{plain}</auth>"
    ))
    .await;
    assert_eq!(c.stream_error().await.as_deref(), Some("policy-violation"));
}

fn base64_plain(user: &str, pw: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pw}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mechanisms_after_tls() {
    let s = server_with_alice().await;
    let c = tls_client(&s).await;
    let m = c.mechanisms();
    for want in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(m.iter().any(|x| x == want), "{want} missing from {m:?}");
    }
    // XEP-0440: tls-exporter is advertised.
    let cb = c
        .feature("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
        .expect("channel-binding types advertised");
    assert!(cb
        .children()
        .any(|t| t.attr("type") == Some("tls-exporter")));
}

async fn login_with(mech: &str) {
    let s = server_with_alice().await;
    let mut c = tls_client(&s).await;
    let r = match mech {
        "PLAIN" => c.auth_plain("alice", PW).await,
        "SCRAM-SHA-1" => c.auth_scram("alice", PW, Hash::Sha1, false).await,
        "SCRAM-SHA-256" => c.auth_scram("alice", PW, Hash::Sha256, false).await,
        "SCRAM-SHA-1-PLUS" => c.auth_scram("alice", PW, Hash::Sha1, true).await,
        "SCRAM-SHA-256-PLUS" => c.auth_scram("alice", PW, Hash::Sha256, true).await,
        _ => unreachable!(),
    };
    assert_eq!(r, Ok(()), "{mech}");
    c.start_stream().await;
    assert!(c
        .feature("bind", "urn:ietf:params:xml:ns:xmpp-bind")
        .is_some());
    // Once authenticated, the full stanza limit applies and is announced.
    let max = c
        .feature("limits", "urn:xmpp:stream-limits:0")
        .and_then(|l| l.get_child("max-bytes", "urn:xmpp:stream-limits:0"))
        .map(|m| m.text());
    assert_eq!(max.as_deref(), Some("262144"));
    let jid = c.bind(Some("desk")).await;
    assert_eq!(jid, "alice@localhost/desk");
    let pong = c
        .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_scram_sha_1() {
    login_with("SCRAM-SHA-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_scram_sha_256() {
    login_with("SCRAM-SHA-256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_scram_sha_1_plus() {
    login_with("SCRAM-SHA-1-PLUS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_scram_sha_256_plus() {
    login_with("SCRAM-SHA-256-PLUS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_plain() {
    login_with("PLAIN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_unknown_users_fail() {
    let s = server_with_alice().await;
    let mut c = tls_client(&s).await;
    assert_eq!(
        c.auth_scram("alice", "wrong", Hash::Sha256, false).await,
        Err("not-authorized".into())
    );
    // Failures do not end the stream: the client may try again.
    assert_eq!(
        c.auth_scram("alice", "wrong", Hash::Sha1, false).await,
        Err("not-authorized".into())
    );
    assert_eq!(
        c.auth_plain("alice", "wrong").await,
        Err("not-authorized".into())
    );
    assert_eq!(
        c.auth_scram("nobody", PW, Hash::Sha256, false).await,
        Err("not-authorized".into())
    );
    // A handful of typos never locks the owner out.
    assert_eq!(c.auth_scram("alice", PW, Hash::Sha256, false).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_mismatch_fails() {
    let s = server_with_alice().await;
    let mut c = tls_client(&s).await;
    // Data from another TLS connection (a man in the middle) does not match.
    let r = c
        .auth_scram_cb("alice", PW, Hash::Sha256, true, Some(vec![7u8; 32]))
        .await;
    assert_eq!(r, Err("not-authorized".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn() {
    let s = server_with_alice().await;
    let (mut c, alpn) = Client::connect_direct_tls(s.tls_addr(), s.cert_path()).await;
    assert_eq!(alpn.as_deref(), Some(&b"xmpp-client"[..]));
    c.start_stream().await;
    assert!(c
        .feature("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .is_none());
    assert_eq!(c.auth_scram("alice", PW, Hash::Sha256, true).await, Ok(()));
    c.start_stream().await;
    c.bind(None).await;
    assert!(c.jid.starts_with("alice@localhost/"), "{}", c.jid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_chosen_resource_and_several_resources() {
    let s = server_with_alice().await;
    let mut a = tls_client(&s).await;
    a.auth_scram("alice", PW, Hash::Sha256, false)
        .await
        .unwrap();
    a.start_stream().await;
    let j1 = a.bind(None).await;
    let mut b = tls_client(&s).await;
    b.auth_scram("alice", PW, Hash::Sha256, false)
        .await
        .unwrap();
    b.start_stream().await;
    let j2 = b.bind(None).await;
    assert_ne!(j1, j2);
    // Both sessions are alive.
    for c in [&mut a, &mut b] {
        let r = c
            .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
            .await;
        assert_eq!(r.attr("type"), Some("result"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_resource_replaces_old_session_with_conflict() {
    let s = server_with_alice().await;
    let mut old = s.login("alice", PW, "phone").await;
    let mut new = s.login("alice", PW, "phone").await;
    assert_eq!(old.stream_error().await.as_deref(), Some("conflict"));
    old.expect_closed().await;
    let r = new
        .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_before_auth_are_refused() {
    let s = server_with_alice().await;
    let mut c = tls_client(&s).await;
    c.send_raw("<message to='alice@localhost'><body>x</body></message>")
        .await;
    assert_eq!(c.stream_error().await.as_deref(), Some("not-authorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_injection_after_starttls_is_refused() {
    // Bytes sent after <starttls/> but before the TLS handshake would be
    // read as if they came over TLS (CVE-2011-0411): refused.
    let s = server_with_alice().await;
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    c.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq type='get' id='x'/>")
        .await;
    let f = c.element().await;
    assert_eq!(f.name(), "failure");
}

//! The hostile corpus on the server-to-server port: each bad stream, from
//! a "peer" that never authenticates or lies about who it is, gets the
//! right stream error on its own connection while a bystander pair of
//! local users keeps chatting.

use std::time::Duration;

use super::{blast, ProcServer, SERIAL};
use crate::common::*;

fn header(from: &str, to: &str, default_ns: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{default_ns}' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         from='{from}' to='{to}' version='1.0'>"
    )
}

/// A connection to the s2s port with our header sent and the server's
/// header and features read.
async fn peer(s: &ProcServer) -> Client {
    let mut c = Client::connect(s.s2s_addr, s.cert()).await;
    c.send_raw(&header("peer.test", "localhost", "jabber:server"))
        .await;
    assert!(matches!(c.frame().await, confab::xml::Frame::Header(_)));
    let f = c.element().await;
    assert_eq!(f.name(), "features", "{}", String::from(&f));
    c
}

async fn expect(c: &mut Client, cond: &str, what: &str) {
    let e = c.stream_error().await;
    assert_eq!(e.as_deref(), Some(cond), "{what}");
}

#[tokio::test]
async fn s2s_corpus_with_a_bystander() {
    let _serial = SERIAL.lock().await;
    init_logging();
    let s = ProcServer::start();
    for u in ["alice", "bob"] {
        s.add_user(u, "pw");
    }
    let by = super::Bystander::start(&s).await;

    // Not well-formed after the header.
    let mut c = peer(&s).await;
    c.send_raw("<message><body>x</message>").await;
    expect(&mut c, "not-well-formed", "bad nesting").await;

    // A client stream on the server port.
    let mut c = Client::connect(s.s2s_addr, s.cert()).await;
    c.send_raw(&header("peer.test", "localhost", "jabber:client"))
        .await;
    expect(&mut c, "invalid-namespace", "jabber:client on s2s").await;

    // A domain this server does not serve.
    let mut c = Client::connect(s.s2s_addr, s.cert()).await;
    c.send_raw(&header("peer.test", "elsewhere.test", "jabber:server"))
        .await;
    expect(&mut c, "host-unknown", "unknown 'to'").await;

    // A 'from' that is not a domain.
    let mut c = Client::connect(s.s2s_addr, s.cert()).await;
    c.send_raw(&header("user@peer.test", "localhost", "jabber:server"))
        .await;
    expect(&mut c, "invalid-from", "a user as the stream's from").await;

    // A stanza before authenticating, claiming a local user.
    let mut c = peer(&s).await;
    c.send_raw("<message from='alice@localhost' to='bob@localhost'><body>forged</body></message>")
        .await;
    expect(&mut c, "not-authorized", "stanza before auth").await;

    // Dialback without TLS, which the server requires.
    let mut c = peer(&s).await;
    c.send_raw("<db:result from='peer.test' to='localhost'>abcdef</db:result>")
        .await;
    expect(&mut c, "policy-violation", "dialback before TLS").await;

    // A bidirectional stream (XEP-0288) asked for before TLS.
    let mut c = peer(&s).await;
    c.send_raw("<bidi xmlns='urn:xmpp:bidi'/>").await;
    expect(&mut c, "policy-violation", "bidi before TLS").await;

    // A db:verify with a key this server never gave: invalid, and the
    // stream goes on.
    let mut c = peer(&s).await;
    c.send_raw("<db:verify from='peer.test' to='localhost' id='x1'>00ff</db:verify>")
        .await;
    let v = c.element().await;
    assert_eq!(v.name(), "verify", "{}", String::from(&v));
    assert_eq!(v.attr("type"), Some("invalid"));
    assert_eq!(v.attr("id"), Some("x1"));

    // Something that is neither a stanza nor s2s negotiation.
    c.send_raw("<iq-not-really xmlns='jabber:server'/>").await;
    expect(&mut c, "unsupported-stanza-type", "unknown element").await;

    // Entities and DOCTYPEs are refused.
    let mut c = peer(&s).await;
    c.send_raw("<message><body>&lol;</body></message>").await;
    expect(&mut c, "restricted-xml", "entity reference").await;

    // Deep nesting and an oversized element before authentication.
    let mut c = peer(&s).await;
    blast(&mut c, "<a>".repeat(20_000).into_bytes()).await;
    expect(&mut c, "policy-violation", "deep nesting").await;
    let mut c = peer(&s).await;
    let big = format!(
        "<db:result from='peer.test' to='localhost'>{}</db:result>",
        "k".repeat(64 * 1024)
    );
    blast(&mut c, big.into_bytes()).await;
    expect(&mut c, "policy-violation", "oversized before auth").await;

    // Silence after the header: the negotiation bound ends it.
    let mut c = peer(&s).await;
    let e = tokio::time::timeout(Duration::from_secs(20), c.stream_error())
        .await
        .expect("the silent peer was never cut");
    assert_eq!(e.as_deref(), Some("connection-timeout"));

    // Many half-open streams at once, then gone.
    let mut many = Vec::new();
    for _ in 0..50 {
        many.push(peer(&s).await);
    }
    drop(many);

    by.finish().await;
}

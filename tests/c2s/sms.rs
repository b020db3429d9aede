//! The SMS gateway (PRODUCT.md §8) against an SMS centre on loopback that
//! speaks SMPP 3.4 (a small one here, on the server's PDU codec; the
//! interop run uses one nobody here wrote).

use crate::common::*;
use confab::sms::smpp::{self, Pdu, Sm};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const GW: &str = "sms.localhost";
const NUMBER: &str = "+4915112345678";

/// An SMS centre: binds anyone, acknowledges each submit_sm with id
/// `X<n>`, records them, and sends what the test pushes.
#[derive(Clone, Default)]
struct Smsc {
    submits: Arc<Mutex<Vec<Sm>>>,
    binds: Arc<Mutex<usize>>,
    push: Arc<Mutex<Option<mpsc::UnboundedSender<Pdu>>>>,
}

impl Smsc {
    async fn serve(&self, listener: TcpListener, drop_after_acks: Option<usize>) {
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.connection(sock, drop_after_acks).await });
            }
        });
    }

    async fn connection(&self, sock: tokio::net::TcpStream, drop_after_acks: Option<usize>) {
        let (mut rd, mut wr) = sock.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Pdu>();
        *self.push.lock().unwrap() = Some(tx);
        let mut buf = Vec::new();
        let mut acks = 0;
        loop {
            let mut chunk = [0u8; 4096];
            tokio::select! {
                n = rd.read(&mut chunk) => {
                    let Ok(n) = n else { return };
                    if n == 0 { return; }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some((p, used)) = Pdu::decode(&buf).unwrap() {
                        buf.drain(..used);
                        let reply = match p.command {
                            smpp::BIND_TRANSCEIVER => {
                                *self.binds.lock().unwrap() += 1;
                                Some(p.response(0, smpp::id_body("test-smsc")))
                            }
                            smpp::SUBMIT_SM => {
                                let sm = smpp::parse_sm(&p.body).unwrap();
                                let n = {
                                    let mut s = self.submits.lock().unwrap();
                                    s.push(sm);
                                    s.len()
                                };
                                acks += 1;
                                Some(p.response(0, smpp::id_body(&format!("X{n}"))))
                            }
                            smpp::ENQUIRE_LINK | smpp::UNBIND => Some(p.response(0, Vec::new())),
                            _ => None,
                        };
                        if let Some(r) = reply {
                            if wr.write_all(&r.encode()).await.is_err() { return; }
                        }
                        if drop_after_acks == Some(acks) {
                            // An outage right after acknowledging.
                            return;
                        }
                    }
                }
                Some(p) = rx.recv() => {
                    if wr.write_all(&p.encode()).await.is_err() { return; }
                }
            }
        }
    }

    fn submits(&self) -> Vec<Sm> {
        self.submits.lock().unwrap().clone()
    }

    async fn wait_submits(&self, n: usize) -> Vec<Sm> {
        for _ in 0..200 {
            if self.submits.lock().unwrap().len() >= n {
                return self.submits();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} submit_sm expected, got {}", self.submits().len());
    }

    /// Send a deliver_sm (a report or an SMS) on the bound session.
    async fn deliver(&self, sm: Sm) {
        self.deliver_body(smpp::submit_body(&sm)).await
    }

    /// Send a deliver_sm with this body.
    async fn deliver_body(&self, body: Vec<u8>) {
        for _ in 0..200 {
            if let Some(tx) = self.push.lock().unwrap().as_ref() {
                tx.send(Pdu::new(smpp::DELIVER_SM, 9000, body)).unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no session to deliver on");
    }
}

fn receipt(smsc_id: &str, stat: &str) -> Sm {
    Sm {
        source: NUMBER.into(),
        destination: String::new(),
        esm_class: smpp::ESM_RECEIPT,
        registered_delivery: 0,
        data_coding: 0,
        short_message: format!("id:{smsc_id} sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:{stat} err:000 text:x").into_bytes(),
        receipted_id: None,
        state: None,
        concat: None,
    }
}

fn sms_from(number: &str, text: &str) -> Sm {
    Sm {
        source: number.into(),
        destination: "12345".into(),
        esm_class: 0,
        registered_delivery: 0,
        data_coding: 0,
        short_message: text.as_bytes().to_vec(),
        receipted_id: None,
        state: None,
        concat: None,
    }
}

async fn server_with_smsc(port: u16, f: impl FnOnce(&mut confab::config::Config)) -> TestServer {
    let s = TestServer::start_with(|c| {
        c.sms.backend = Some("smpp".into());
        c.sms.max_parts = 3;
        c.sms.default_recipient = Some("bob@localhost".into());
        c.sms.smpp = Some(confab::config::Smpp {
            host: "127.0.0.1".into(),
            port,
            system_id: "confab".into(),
            password: "pw".into(),
            system_type: String::new(),
            source_addr: String::new(),
            window: 4,
            enquire_link_s: 30,
        });
        c.links.country_code = "49".into();
        f(c)
    })
    .await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw-sms").await;
    }
    s
}

async fn grant_sms(s: &TestServer, who: &str) {
    grant_right(s, who, "sms", true).await
}

fn sms(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{body}</body><request xmlns='urn:xmpp:receipts'/></message>")
}

/// A port nothing listens on (yet).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_is_checked_first_and_bad_sms_are_refused() {
    // No SMS centre listens: the right is still checked at once.
    let s = server_with_smsc(closed_port(), |_| {}).await;
    let mut a = s.online("alice", "pw-sms", "a").await;
    a.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m1", "hi"))
        .await;
    let e = a.expect_where(|e| e.attr("id") == Some("m1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"));
    assert!(String::from(&e).contains("right sms"));
    grant_sms(&s, "alice@localhost").await;
    a.send_raw(&sms(&format!("not-a-number@{GW}"), "m2", "hi"))
        .await;
    let e = a.expect_where(|e| e.attr("id") == Some("m2")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("jid-malformed"));
    // Three parts at most: 153 * 3 + 1 characters are refused.
    a.send_raw(&sms(
        &format!("{NUMBER}@{GW}"),
        "m3",
        &"a".repeat(153 * 3 + 1),
    ))
    .await;
    let e = a.expect_where(|e| e.attr("id") == Some("m3")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));
    assert!(
        String::from(&e).contains("4 SMS parts"),
        "{}",
        String::from(&e)
    );
    // Without a backend the gateway is off, whoever writes.
    let off = TestServer::start().await;
    off.add_user("carol", "pw-sms").await;
    let mut c = off.online("carol", "pw-sms", "c").await;
    c.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m4", "hi"))
        .await;
    let e = c.expect_where(|e| e.attr("id") == Some("m4")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    // The gateway says what it is.
    let r = a
        .iq(
            "get",
            Some(GW),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(
        String::from(&r).contains("category=\"gateway\"")
            || String::from(&r).contains("category='gateway'")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_goes_out_its_report_comes_back_and_answers_reach_the_writer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let smsc = Smsc::default();
    smsc.serve(listener, None).await;
    let s = server_with_smsc(port, |_| {}).await;
    grant_sms(&s, "alice@localhost").await;
    let mut a = s.online("alice", "pw-sms", "a").await;
    let mut b = s.online("bob", "pw-sms", "b").await;

    // A national number is made international by [links].
    a.send_raw(&sms(
        &format!("015112345678@{GW}"),
        "m1",
        "Grüße aus dem Büro",
    ))
    .await;
    let sent = smsc.wait_submits(1).await;
    assert_eq!(sent[0].destination, NUMBER);
    assert_eq!(sent[0].registered_delivery, 1);
    assert_eq!(
        confab::sms::text::decode(sent[0].data_coding, &sent[0].short_message),
        "Grüße aus dem Büro"
    );
    // A long text goes in concatenated parts.
    a.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m2", &"b".repeat(200)))
        .await;
    let sent = smsc.wait_submits(3).await;
    assert_eq!(sent[1].esm_class & smpp::ESM_UDHI, smpp::ESM_UDHI);
    let (p1, p2) = (&sent[1].short_message, &sent[2].short_message);
    assert_eq!((&p1[..3], &p2[..3]), (&[5u8, 0, 3][..], &[5u8, 0, 3][..]));
    assert_eq!(p1[3], p2[3], "one reference for both parts");
    assert_eq!((p1[4], p1[5], p2[4], p2[5]), (2, 1, 2, 2));

    // The delivery report is a receipt for the message's id.
    smsc.deliver(receipt("X1", "DELIVRD")).await;
    let r = a
        .expect_where(|e| e.has_child("received", "urn:xmpp:receipts"))
        .await;
    assert_eq!(r.attr("from"), Some(&*format!("{NUMBER}@{GW}")));
    assert_eq!(
        r.get_child("received", "urn:xmpp:receipts")
            .unwrap()
            .attr("id"),
        Some("m1")
    );
    // A failure is an error for it.
    smsc.deliver(receipt("X3", "UNDELIV")).await;
    let e = a.expect_where(|e| e.attr("id") == Some("m2")).await;
    assert_eq!(e.attr("type"), Some("error"));

    // An answer from the number goes to alice, who wrote to it last, and
    // is archived.
    smsc.deliver(sms_from(NUMBER, "Danke!")).await;
    let m = a.expect_where(|e| is_msg_from(e, NUMBER)).await;
    assert_eq!(body(&m).as_deref(), Some("Danke!"));
    // Both sides are in her archive: what she sent, as sent.
    let archived = a.mam("").await.bodies();
    assert!(archived.contains(&"Danke!".to_string()), "{archived:?}");
    assert!(
        archived.contains(&"Grüße aus dem Büro".to_string()),
        "{archived:?}"
    );
    // The centre may give the number nationally: the same number.
    smsc.deliver(sms_from("015112345678", "Bis morgen")).await;
    let m = a.expect_where(|e| is_msg_from(e, NUMBER)).await;
    assert_eq!(body(&m).as_deref(), Some("Bis morgen"));
    // A number nobody wrote to: the default recipient.
    smsc.deliver(sms_from("+4930999", "Wer ist da?")).await;
    let m = b.expect_where(|e| is_msg_from(e, "+4930999")).await;
    assert_eq!(body(&m).as_deref(), Some("Wer ist da?"));

    // A long SMS in parts with a user data header (8-bit reference),
    // the second first: one message once both are here.
    let part = |reference: u8, seq: u8, text: &str| {
        let mut sm = sms_from(NUMBER, "");
        sm.esm_class = smpp::ESM_UDHI;
        sm.short_message = vec![5, 0, 3, reference, 2, seq];
        sm.short_message.extend_from_slice(text.as_bytes());
        sm
    };
    smsc.deliver(part(7, 2, "zweiter Teil.")).await;
    smsc.deliver(part(7, 1, "Erster Teil, ")).await;
    let m = a.expect_where(|e| is_msg_from(e, NUMBER)).await;
    assert_eq!(body(&m).as_deref(), Some("Erster Teil, zweiter Teil."));
    // The same in three parts with SAR parameters instead (16-bit
    // reference), as SMS centres also send them.
    for (seq, text) in [(1u8, "eins "), (3, "drei"), (2, "zwei ")] {
        let mut body = smpp::submit_body(&sms_from(NUMBER, text));
        body.extend_from_slice(&[0x02, 0x0C, 0, 2, 0x12, 0x34]);
        body.extend_from_slice(&[0x02, 0x0E, 0, 1, 3]);
        body.extend_from_slice(&[0x02, 0x0F, 0, 1, seq]);
        smsc.deliver_body(body).await;
    }
    let m = a.expect_where(|e| is_msg_from(e, NUMBER)).await;
    assert_eq!(body(&m).as_deref(), Some("eins zwei drei"));
    // Nothing else came of the parts.
    a.send_raw("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let next = a
        .expect_where(|e| is_msg_from(e, NUMBER) || e.attr("id") == Some("sync"))
        .await;
    assert_eq!(next.attr("id"), Some("sync"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_an_sms_and_it_arrives_once() {
    let port = closed_port();
    let mut s = server_with_smsc(port, |_| {}).await;
    grant_sms(&s, "alice@localhost").await;
    let mut a = s.online("alice", "pw-sms", "a").await;
    a.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m1", "während der Störung"))
        .await;
    // Nothing listens yet: the SMS waits on disk, through a restart too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(a);
    s.restart().await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let smsc = Smsc::default();
    // The centre goes away right after acknowledging it.
    smsc.serve(listener, Some(1)).await;
    let sent = smsc.wait_submits(1).await;
    assert_eq!(
        confab::sms::text::decode(sent[0].data_coding, &sent[0].short_message),
        "während der Störung"
    );
    // The gateway binds again, and sends it no second time.
    for _ in 0..200 {
        if *smsc.binds.lock().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(*smsc.binds.lock().unwrap() >= 2, "no second bind");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smsc.submits().len(), 1);
    s.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(smsc.submits().len(), 1);
}

/// An HTTP SMS service: records each POST (its Authorization header and
/// JSON document) and answers with the next status the test queued
/// (200 with `{"id": "svc-N"}` when none is).
/// A POST the service received: its Authorization header and document.
type Post = (Option<String>, serde_json::Value);

#[derive(Clone, Default)]
struct HttpService {
    posts: Arc<Mutex<Vec<Post>>>,
    answers: Arc<Mutex<std::collections::VecDeque<u16>>>,
}

impl HttpService {
    async fn serve(&self) -> String {
        use http_body_util::BodyExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/send", listener.local_addr().unwrap());
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move {
                                let auth = req
                                    .headers()
                                    .get("authorization")
                                    .map(|v| v.to_str().unwrap().to_string());
                                assert_eq!(req.uri().path(), "/send");
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let doc = serde_json::from_slice(&body).unwrap();
                                let n = {
                                    let mut p = me.posts.lock().unwrap();
                                    p.push((auth, doc));
                                    p.len()
                                };
                                let status = me.answers.lock().unwrap().pop_front().unwrap_or(200);
                                let answer = format!("{{\"id\": \"svc-{n}\"}}");
                                let mut r = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(answer),
                                ));
                                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        url
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    async fn wait_posts(&self, n: usize) -> Vec<Post> {
        for _ in 0..200 {
            if self.posts.lock().unwrap().len() >= n {
                return self.posts();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} POSTs expected, got {}", self.posts().len());
    }
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
async fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_backend_posts_retries_and_takes_callbacks() {
    let svc = HttpService::default();
    let url = svc.serve().await;
    // The service is down at first: 503, then it takes the SMS.
    svc.answers.lock().unwrap().push_back(503);
    let s = TestServer::start_with(|c| {
        c.listen.http = vec!["127.0.0.1:0".into()];
        c.sms.backend = Some("http".into());
        c.sms.max_parts = 3;
        c.sms.default_recipient = Some("bob@localhost".into());
        c.sms.http = Some(confab::config::SmsHttp {
            url,
            token: "tok-out".into(),
            callback_token: Some("tok-in".into()),
            ca_file: None,
            timeout_s: 5,
        });
    })
    .await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw-sms").await;
    }
    let web = s.handle().http_addrs[0];
    // Rights first, as with SMPP.
    let mut a = s.online("alice", "pw-sms", "a").await;
    a.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m0", "hi"))
        .await;
    let e = a.expect_where(|e| e.attr("id") == Some("m0")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"));
    grant_sms(&s, "alice@localhost").await;

    a.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m1", "Grüße per HTTP"))
        .await;
    let posts = svc.wait_posts(2).await;
    for (auth, doc) in &posts {
        assert_eq!(auth.as_deref(), Some("Bearer tok-out"));
        assert_eq!(doc["to"], NUMBER);
        assert_eq!(doc["text"], "Grüße per HTTP");
        assert_eq!(doc["parts"], 1);
    }
    assert_eq!(
        posts[0].1["id"], posts[1].1["id"],
        "a retry names the same SMS"
    );
    // Taken once: never posted again, not after a while either.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(svc.posts().len(), 2);

    // The delivery report for the service's id is a receipt for m1.
    let report = r#"{"id": "svc-2", "status": "delivered"}"#;
    assert_eq!(
        http_call(web, "POST", "/sms/report", Some("tok-in"), report)
            .await
            .0,
        204
    );
    let r = a
        .expect_where(|e| e.has_child("received", "urn:xmpp:receipts"))
        .await;
    assert_eq!(
        r.get_child("received", "urn:xmpp:receipts")
            .unwrap()
            .attr("id"),
        Some("m1")
    );
    // Callbacks need the callback token and a well-formed request.
    for (method, path, token, body, want) in [
        ("POST", "/sms/report", Some("tok-out"), report, 401),
        ("POST", "/sms/report", None, report, 401),
        ("GET", "/sms/report", Some("tok-in"), "", 405),
        ("POST", "/sms/report", Some("tok-in"), "{not json", 400),
        (
            "POST",
            "/sms/report",
            Some("tok-in"),
            r#"{"status": "delivered"}"#,
            400,
        ),
        (
            "POST",
            "/sms/incoming",
            Some("tok-in"),
            r#"{"from": "abc", "text": "x"}"#,
            400,
        ),
        ("POST", "/sms/other", Some("tok-in"), report, 404),
        ("POST", "/elsewhere", Some("tok-in"), report, 404),
    ] {
        let (status, _) = http_call(web, method, path, token, body).await;
        assert_eq!(status, want, "{method} {path} {token:?} {body}");
    }
    let huge = format!(
        r#"{{"from": "{NUMBER}", "text": "{}"}}"#,
        "x".repeat(20_000)
    );
    assert_eq!(
        http_call(web, "POST", "/sms/incoming", Some("tok-in"), &huge)
            .await
            .0,
        413
    );

    // An incoming SMS reaches alice, who wrote to the number last.
    let incoming = format!(r#"{{"from": "{NUMBER}", "text": "Antwort per HTTP"}}"#);
    assert_eq!(
        http_call(web, "POST", "/sms/incoming", Some("tok-in"), &incoming)
            .await
            .0,
        204
    );
    let m = a.expect_where(|e| is_msg_from(e, NUMBER)).await;
    assert_eq!(body(&m).as_deref(), Some("Antwort per HTTP"));

    // A long text is one POST (the service splits it), counted in parts.
    a.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m2", &"b".repeat(200)))
        .await;
    let posts = svc.wait_posts(3).await;
    assert_eq!(posts[2].1["parts"], 2);
    assert_eq!(posts[2].1["text"].as_str().map(str::len), Some(200));
    // A failed report is an error for its message.
    let failed = r#"{"id": "svc-3", "status": "failed"}"#;
    assert_eq!(
        http_call(web, "POST", "/sms/report", Some("tok-in"), failed)
            .await
            .0,
        204
    );
    let e = a.expect_where(|e| e.attr("id") == Some("m2")).await;
    assert_eq!(e.attr("type"), Some("error"));
    // The service refuses one for good (4xx): the sender hears of it, and
    // it is not tried again.
    svc.answers.lock().unwrap().push_back(422);
    a.send_raw(&sms(&format!("{NUMBER}@{GW}"), "m3", "refused"))
        .await;
    let e = a.expect_where(|e| e.attr("id") == Some("m3")).await;
    assert_eq!(e.attr("type"), Some("error"));
    assert!(
        String::from(&e).contains("HTTP 422"),
        "{}",
        String::from(&e)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(svc.posts().len(), 4);
}

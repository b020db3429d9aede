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
        for _ in 0..200 {
            if let Some(tx) = self.push.lock().unwrap().as_ref() {
                tx.send(Pdu::new(smpp::DELIVER_SM, 9000, smpp::submit_body(&sm)))
                    .unwrap();
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
    assert!(a.mam("").await.bodies().contains(&"Danke!".to_string()));
    // The centre may give the number nationally: the same number.
    smsc.deliver(sms_from("015112345678", "Bis morgen")).await;
    let m = a.expect_where(|e| is_msg_from(e, NUMBER)).await;
    assert_eq!(body(&m).as_deref(), Some("Bis morgen"));
    // A number nobody wrote to: the default recipient.
    smsc.deliver(sms_from("+4930999", "Wer ist da?")).await;
    let m = b.expect_where(|e| is_msg_from(e, "+4930999")).await;
    assert_eq!(body(&m).as_deref(), Some("Wer ist da?"));
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

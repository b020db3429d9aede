//! The link recogniser (`confab::links`) on its own, one core: 1 KiB
//! bodies of chat text with the seed's kinds of links, and bodies of
//! almost-links (a million dots, nested brackets, digits without end),
//! whose time must grow linearly with their length.

use std::time::{Duration, Instant};

use confab::links::{find, Settings};

fn settings() -> Settings {
    Settings::example()
}

/// About 1 KiB of chat: sentences, numbers, addresses and links.
fn chat_body(i: usize) -> String {
    let parts = [
        "Hi, could you call me back at +49 123 456 - 12 or on my mobile 0171 2345678?",
        "The minutes are on \\\\fileserver\\projects\\minutes.docx and at https://intranet.example.com/wiki/Minutes_(2026).",
        "Send the invoice to billing@example.com, thanks; the meeting is at 10:30 on 2026-12-03.",
        "See www.example.org/pricing for the 12% discount, or ext. 34.",
        "Nothing to see here, just a sentence of ordinary words that goes on for a while.",
        "<\\\\nas\\shared docs\\Q4 plan.xlsx> has the numbers; ask Bob (bob.smith@example.com).",
    ];
    let mut s = String::new();
    let mut k = i;
    while s.len() < 1024 {
        s.push_str(parts[k % parts.len()]);
        s.push(' ');
        k += 1;
    }
    s.truncate(1024);
    while !s.is_char_boundary(s.len()) {
        s.pop();
    }
    s
}

/// Bodies per second and MiB per second of `find` over `bodies` for
/// about `secs` seconds, and the links found per body.
fn measure(bodies: &[String], secs: f64) -> (f64, f64, f64) {
    let s = settings();
    let start = Instant::now();
    let (mut n, mut bytes, mut found) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs_f64(secs) {
        for b in bodies {
            found += find(b, &s).len() as u64;
            bytes += b.len() as u64;
            n += 1;
        }
    }
    let t = start.elapsed().as_secs_f64();
    (
        n as f64 / t,
        bytes as f64 / t / (1024.0 * 1024.0),
        found as f64 / n.max(1) as f64,
    )
}

pub fn run() -> serde_json::Value {
    let bodies: Vec<String> = (0..64).map(chat_body).collect();
    let (per_s, mib_s, per_body) = measure(&bodies, 3.0);
    println!("links: 1 KiB chat bodies: {per_s:.0} bodies/s, {mib_s:.1} MiB/s per core, {per_body:.1} links per body");
    let mut almost = Vec::new();
    for (name, unit) in [
        ("dots", "."),
        ("brackets", "<"),
        ("nested (www.x", "(www.x"),
        ("digits and spaces", "1 "),
        ("at signs", "a@"),
        ("backslashes", "\\"),
        ("closing parens after a scheme", ")"),
    ] {
        let mut row = serde_json::json!({ "input": name });
        for len in [100_000usize, 1_000_000] {
            let mut b = if name.starts_with("closing") {
                "http://".to_string()
            } else {
                String::new()
            };
            b.push_str(&unit.repeat(len / unit.len()));
            let s = settings();
            let t = Instant::now();
            let found = find(&b, &s).len();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            println!("links: {name}, {len} bytes: {ms:.1} ms ({found} links)");
            row[format!("ms_{len}")] = serde_json::json!(ms);
        }
        almost.push(row);
    }
    serde_json::json!({
        "chat_bodies_per_s": per_s,
        "chat_mib_per_s": mib_s,
        "links_per_body": per_body,
        "almost_links": almost,
    })
}

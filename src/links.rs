//! The link recogniser (PRODUCT.md §10): phone numbers, e-mail addresses,
//! web links, UNC paths, and any of them written inside `<` `>` with
//! spaces, found in a message body as XEP-0372 ranges (code point
//! offsets, `begin` inclusive, `end` exclusive) with the URI each one
//! stands for. Pure and linear in the body's length whatever it holds:
//! the server's `links` module, the fuzz target and the benchmark call
//! [`find`]. See `xeps/xep-0372.md`.

use serde::{Deserialize, Serialize};

/// `[links]`: whether bodies are annotated, and where numbers are
/// dialled from: how a number written nationally or as an extension
/// becomes a global `tel:` URI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Annotate message bodies (a message can opt out with a hint).
    pub enabled: bool,
    /// Country calling code, digits only ("49").
    pub country_code: String,
    /// Area code without the trunk prefix ("123"; empty: none).
    pub area_code: String,
    /// The location's own number in that area, to which extensions are
    /// dialled ("456"; empty: extensions get a `phone-context`).
    pub base_number: String,
    /// A number of exactly this many digits, alone, is an extension
    /// (0: extensions are not recognised).
    pub extension_digits: usize,
    /// What precedes a national number ("0").
    pub trunk_prefix: String,
    /// What precedes an international number instead of `+` ("00").
    pub international_prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            country_code: String::new(),
            area_code: String::new(),
            base_number: String::new(),
            extension_digits: 0,
            trunk_prefix: "0".into(),
            international_prefix: "00".into(),
        }
    }
}

impl Settings {
    /// The location of the documentation's examples (country 49, area
    /// 123, base number 456, two-digit extensions), where every kind of
    /// number is recognised: for tests, fuzzing and the benchmark.
    pub fn example() -> Settings {
        Settings {
            country_code: "49".into(),
            area_code: "123".into(),
            base_number: "456".into(),
            extension_digits: 2,
            ..Settings::default()
        }
    }
}

/// One link: code points `begin..end` of the body stand for `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub begin: usize,
    pub end: usize,
    pub uri: String,
}

/// Longest `<…>` content looked at, in code points.
const MAX_BRACKETED: usize = 2048;
/// Most links reported for one body.
pub const MAX_LINKS: usize = 256;

const SCHEMES: [&str; 12] = [
    "http://",
    "https://",
    "ftp://",
    "file:",
    "gopher://",
    "ntp://",
    "prospero://",
    "telnet://",
    "news:",
    "wais://",
    "mailto:",
    "xmpp:",
];

/// Every link in `body`, in order, not overlapping.
pub fn find(body: &str, loc: &Settings) -> Vec<Link> {
    let t: Vec<char> = body.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // The next '>' at or after some position, found once per position
    // range so that many '<' cost one scan.
    let mut next_gt: Option<usize> = None;
    let mut searched_to = 0;
    while i < t.len() && out.len() < MAX_LINKS {
        let c = t[i];
        if c == '<' {
            if next_gt.is_none_or(|g| g <= i) && searched_to <= i {
                next_gt = t[i + 1..].iter().position(|&x| x == '>').map(|p| p + i + 1);
                searched_to = next_gt.unwrap_or(t.len());
            }
            if let Some(g) = next_gt.filter(|&g| g > i + 1 && g - i - 1 <= MAX_BRACKETED) {
                let inner = &t[i + 1..g];
                if !inner.contains(&'\n') {
                    if let Some(uri) = whole_link(inner, loc) {
                        out.push(Link {
                            begin: i + 1,
                            end: g,
                            uri,
                        });
                        i = g + 1;
                        continue;
                    }
                }
            }
            i += 1;
            continue;
        }
        if c.is_whitespace() || c == '>' {
            i += 1;
            continue;
        }
        // A run of non-space characters: web links, UNC paths and e-mail
        // addresses live inside one; phone numbers may span several.
        let run_end = t[i..]
            .iter()
            .position(|c| c.is_whitespace() || *c == '<' || *c == '>')
            .map_or(t.len(), |p| p + i);
        // Each step moves on by at least one character.
        i = scan_run(&t, i, run_end, loc, &mut out).max(i + 1);
    }
    out.truncate(MAX_LINKS);
    out
}

/// Links within `t[start..end]` (no space in it) and phone numbers that
/// begin in it: the position to go on from.
fn scan_run(t: &[char], start: usize, end: usize, loc: &Settings, out: &mut Vec<Link>) -> usize {
    let mut i = start;
    while i < end {
        if !starts_word(t, i) {
            i += 1;
            continue;
        }
        if let Some((e, uri)) = scheme_link(t, i, end) {
            out.push(Link {
                begin: i,
                end: e,
                uri,
            });
            return end.max(e);
        }
        if let Some((e, uri)) = unc_link(t, i, end) {
            out.push(Link {
                begin: i,
                end: e,
                uri,
            });
            return end.max(e);
        }
        if let Some((b, e, uri)) = email(t, i, end) {
            out.push(Link {
                begin: b,
                end: e,
                uri,
            });
            i = e;
            continue;
        }
        match phone(t, i, loc) {
            Ok((e, uri)) => {
                out.push(Link {
                    begin: i,
                    end: e,
                    uri,
                });
                if e > end {
                    // It ran past this run's end.
                    return e;
                }
                i = e;
                continue;
            }
            // Nothing inside a number that is not one starts another.
            Err(e) if e > end => return e,
            Err(e) if e > i => {
                i = e;
                continue;
            }
            Err(_) => {}
        }
        // Nothing starts here: skip the rest of this word.
        let word = t[i].is_alphanumeric();
        i += 1;
        while word && i < end && t[i].is_alphanumeric() {
            i += 1;
        }
    }
    end
}

/// Whether a link may start at `i`: at the start, or after a character
/// that does not join words.
fn starts_word(t: &[char], i: usize) -> bool {
    i == 0 || !(t[i - 1].is_alphanumeric() || "@._-+/\\%$€£#&=".contains(t[i - 1]))
}

fn starts_with_ci(t: &[char], i: usize, s: &str) -> bool {
    let n = s.chars().count();
    i + n <= t.len()
        && t[i..i + n]
            .iter()
            .zip(s.chars())
            .all(|(a, b)| a.to_ascii_lowercase() == b)
}

/// Trailing punctuation is the sentence's, not the link's; a closing
/// bracket is the link's only if it opened one.
fn trim_end(t: &[char], begin: usize, mut end: usize) -> usize {
    const PAIRS: [(char, char); 3] = [('(', ')'), ('[', ']'), ('{', '}')];
    // Opened minus closed, per kind of bracket, counted once.
    let mut balance: Option<[i64; 3]> = None;
    while end > begin {
        let c = t[end - 1];
        if ".,;:!?'\"".contains(c) {
            end -= 1;
            continue;
        }
        let Some(k) = PAIRS.iter().position(|p| p.1 == c) else {
            return end;
        };
        let b = balance.get_or_insert_with(|| {
            let mut b = [0i64; 3];
            for &x in &t[begin..end] {
                for (n, p) in PAIRS.iter().enumerate() {
                    if x == p.0 {
                        b[n] += 1;
                    } else if x == p.1 {
                        b[n] -= 1;
                    }
                }
            }
            b
        });
        if b[k] < 0 {
            // More closed than opened: this one is not the link's.
            b[k] += 1;
            end -= 1;
        } else {
            return end;
        }
    }
    end
}

/// Percent-encode what a URI may not hold (spaces, quotes, controls,
/// non-ASCII as UTF-8).
fn encode(s: impl Iterator<Item = char>) -> String {
    let mut out = String::new();
    for c in s {
        if c.is_ascii_graphic() && !"\"<>\\^`{|}".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// A web link (a scheme, `www.` or `www2.`) starting at `i`, ending in
/// this run: its end and URI.
fn scheme_link(t: &[char], i: usize, end: usize) -> Option<(usize, String)> {
    let (prefix, add) = if let Some(s) = SCHEMES.iter().find(|s| starts_with_ci(t, i, s)) {
        (s.chars().count(), "")
    } else if starts_with_ci(t, i, "www.") {
        (4, "http://")
    } else if starts_with_ci(t, i, "www2.") {
        (5, "http://")
    } else {
        return None;
    };
    let e = trim_end(t, i, end);
    // Something after the scheme, and for www. a host with a dot after it.
    let rest = t.get(i + prefix..e)?;
    if rest.is_empty() || !rest[0].is_alphanumeric() && !matches!(rest[0], '/' | '\\') {
        return None;
    }
    if !add.is_empty() && !rest.iter().take_while(|c| **c != '/').any(|c| *c == '.') {
        return None;
    }
    Some((e, format!("{add}{}", encode(t[i..e].iter().copied()))))
}

/// A UNC path `\\server\share…` starting at `i`, as a `file:` URI.
fn unc_link(t: &[char], i: usize, end: usize) -> Option<(usize, String)> {
    if !(t.get(i) == Some(&'\\') && t.get(i + 1) == Some(&'\\')) {
        return None;
    }
    let e = trim_end(t, i, end);
    let path = t.get(i + 2..e)?;
    // A server name, then a backslash and something more.
    let server = path.iter().take_while(|c| **c != '\\').count();
    if server == 0 || server + 1 >= path.len() || !path[0].is_alphanumeric() {
        return None;
    }
    let slashed = path.iter().map(|&c| if c == '\\' { '/' } else { c });
    Some((e, format!("file://{}", encode(slashed))))
}

fn local_char(c: char) -> bool {
    c.is_alphanumeric() || "._%+-".contains(c)
}

fn domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '.'
}

/// An e-mail address whose local part starts at `i`, within this run:
/// its range and `mailto:` URI.
fn email(t: &[char], i: usize, end: usize) -> Option<(usize, usize, String)> {
    let mut at = i;
    while at < end && local_char(t[at]) {
        at += 1;
    }
    if at == i || at >= end || t[at] != '@' {
        return None;
    }
    let mut e = at + 1;
    while e < end && domain_char(t[e]) {
        e += 1;
    }
    // The domain ends with a label of letters, after a dot.
    while e > at + 1 && matches!(t[e - 1], '.' | '-') {
        e -= 1;
    }
    let domain = &t[at + 1..e];
    let last_dot = domain.iter().rposition(|c| *c == '.')?;
    let tld = &domain[last_dot + 1..];
    if last_dot == 0 || tld.len() < 2 || !tld.iter().all(|c| c.is_alphabetic()) {
        return None;
    }
    if t[i] == '.' || t[at - 1] == '.' {
        return None;
    }
    let addr: String = t[i..e].iter().collect();
    Some((i, e, format!("mailto:{}", encode(addr.chars()))))
}

/// A phone number starting at `i` (a digit, `+`, or `phone:`/`tel:`
/// before one): its end and `tel:` URI; or where what looked like one
/// ended (`i` when nothing did).
fn phone(t: &[char], i: usize, loc: &Settings) -> Result<(usize, String), usize> {
    let mut j = i;
    for p in ["phone:", "tel:", "callto:"] {
        if starts_with_ci(t, i, p) {
            j = i + p.len();
            break;
        }
    }
    let plus = t.get(j) == Some(&'+');
    if plus {
        j += 1;
    }
    if !t.get(j).is_some_and(char::is_ascii_digit) {
        return Err(i);
    }
    // Digit groups joined by a short run of separators: spaces, and one
    // '-' or '/' (as in "+49 123 456 - 12"); "(0)" after the country code
    // is the trunk prefix written in, not dialled.
    let mut digits = String::new();
    let mut groups: Vec<usize> = Vec::new();
    let mut tight_sep: Option<char> = None;
    let mut end;
    loop {
        let g0 = digits.len();
        while let Some(c) = t.get(j).filter(|c| c.is_ascii_digit()) {
            digits.push(*c);
            j += 1;
        }
        groups.push(digits.len() - g0);
        end = j;
        if digits.len() > 20 {
            return Err(end);
        }
        let mut k = j;
        while t.get(k) == Some(&' ') && k - j < 3 {
            k += 1;
        }
        if plus && groups.len() == 1 && t.get(k..k + 3) == Some(&['(', '0', ')'][..]) {
            k += 3;
            while t.get(k) == Some(&' ') && k - j < 9 {
                k += 1;
            }
            if !t.get(k).is_some_and(char::is_ascii_digit) {
                break;
            }
            tight_sep = None;
            j = k;
            continue;
        }
        let mut k = j;
        let mut marks = 0;
        let mut spaces = 0;
        while k < t.len() && k - j < 4 {
            match t[k] {
                ' ' => spaces += 1,
                '-' | '/' => {
                    marks += 1;
                    tight_sep = tight_sep.or(Some(t[k]));
                }
                '(' | ')' => {}
                _ => break,
            }
            k += 1;
        }
        if k == j || marks > 1 || !t.get(k).is_some_and(char::is_ascii_digit) {
            break;
        }
        if spaces > 0 {
            tight_sep = None;
        }
        j = k;
    }
    // It must end where a word ends, and not be part of a decimal, a
    // time, an amount or a date.
    // (Then all of it is skipped: "10:30" holds no number "30".)
    let skip = |mut e: usize| {
        while t
            .get(e)
            .is_some_and(|c| c.is_alphanumeric() || ".,:/-%°€$£".contains(*c))
        {
            e += 1;
        }
        e
    };
    match t.get(end) {
        Some(c) if c.is_alphanumeric() || "%°€$£".contains(*c) => return Err(skip(end)),
        Some(c) if ".,:/-".contains(*c) && t.get(end + 1).is_some_and(char::is_ascii_digit) => {
            return Err(skip(end))
        }
        _ => {}
    }
    if tight_sep.is_some() && looks_like_date(&groups) {
        return Err(end);
    }
    let uri = normalise(&digits, plus, loc).ok_or(end)?;
    Ok((end, uri))
}

/// Three groups as dates are written (2026-12-03, 03/12/2026).
fn looks_like_date(groups: &[usize]) -> bool {
    matches!(groups, [4, 1 | 2, 1 | 2] | [1 | 2, 1 | 2, 2 | 4])
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// The `tel:` URI of a number written with these digits.
fn normalise(d: &str, plus: bool, loc: &Settings) -> Option<String> {
    let global = |n: &str| (7..=15).contains(&n.len()).then(|| format!("tel:+{n}"));
    if plus {
        return global(d);
    }
    let ip = &loc.international_prefix;
    if !ip.is_empty() && all_digits(ip) && d.len() > ip.len() && d.starts_with(ip.as_str()) {
        return global(&d[ip.len()..]);
    }
    let cc = &loc.country_code;
    if cc.is_empty() || !all_digits(cc) {
        return None;
    }
    let tp = &loc.trunk_prefix;
    if !tp.is_empty() && all_digits(tp) && d.starts_with(tp.as_str()) {
        let national = &d[tp.len()..];
        if national.len() < 5 {
            return None;
        }
        return global(&format!("{cc}{national}"));
    }
    if loc.extension_digits > 0 && d.len() == loc.extension_digits {
        let area = &loc.area_code;
        if !all_digits(area) || !all_digits(&loc.base_number) {
            return None;
        }
        if !loc.base_number.is_empty() {
            return global(&format!("{cc}{area}{}{d}", loc.base_number));
        }
        return Some(format!("tel:{d};phone-context=+{cc}{area}"));
    }
    None
}

/// A phone number written any way the recogniser knows (`+49 123 456 -
/// 12`, `0123 45612`, an extension) as E.164 (`+4912345612`), by the
/// same rules: `None` when it is no number, or has no global form here.
pub fn e164(number: &str, settings: &Settings) -> Option<String> {
    let t: Vec<char> = number.trim().chars().collect();
    match phone(&t, 0, settings) {
        Ok((end, uri)) if end == t.len() => uri.strip_prefix("tel:+").map(|d| format!("+{d}")),
        _ => None,
    }
}

/// `inner` (the content of `<…>`) when it is one link as a whole.
fn whole_link(inner: &[char], loc: &Settings) -> Option<String> {
    let n = inner.len();
    let start = inner.iter().position(|c| !c.is_whitespace())?;
    if start != 0 || inner[n - 1].is_whitespace() {
        return None;
    }
    let scheme = |i: usize| {
        let e = n;
        let (prefix, add) = if let Some(s) = SCHEMES.iter().find(|s| starts_with_ci(inner, i, s)) {
            (s.chars().count(), "")
        } else if starts_with_ci(inner, i, "www.") || starts_with_ci(inner, i, "www2.") {
            (0, "http://")
        } else {
            return None;
        };
        (e > prefix).then(|| format!("{add}{}", encode(inner.iter().copied())))
    };
    if let Some(u) = scheme(0) {
        return Some(u);
    }
    if let Some((e, u)) = unc_link_spaced(inner) {
        return (e == n).then_some(u);
    }
    if let Some((b, e, u)) = email(inner, 0, n) {
        return (b == 0 && e == n).then_some(u);
    }
    if let Ok((e, u)) = phone(inner, 0, loc) {
        return (e == n).then_some(u);
    }
    None
}

/// A UNC path taking all of `inner`, spaces allowed.
fn unc_link_spaced(inner: &[char]) -> Option<(usize, String)> {
    unc_link(inner, 0, inner.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Settings {
        Settings::example()
    }

    fn uris(body: &str) -> Vec<(String, String)> {
        let chars: Vec<char> = body.chars().collect();
        find(body, &loc())
            .into_iter()
            .map(|l| (chars[l.begin..l.end].iter().collect(), l.uri))
            .collect()
    }

    fn one(body: &str) -> (String, String) {
        let u = uris(body);
        assert_eq!(u.len(), 1, "{body:?}: {u:?}");
        u[0].clone()
    }

    #[test]
    fn the_seeds_phone_numbers() {
        let want = "tel:+4912345612";
        assert_eq!(
            one("call +49 123 456 - 12 now"),
            ("+49 123 456 - 12".into(), want.into())
        );
        assert_eq!(one("or 0123 45612."), ("0123 45612".into(), want.into()));
        assert_eq!(one("ext. 12 please"), ("12".into(), want.into()));
        assert_eq!(
            one("phone:+4912345612"),
            ("phone:+4912345612".into(), want.into())
        );
        assert_eq!(one("0049 123 45612").1, want);
        assert_eq!(one("+49 (0) 123 45612").1, want);
        assert_eq!(one("089/1234567").1, "tel:+49891234567");
        // Without a base number an extension is local to the area.
        let l = Settings {
            base_number: String::new(),
            ..loc()
        };
        assert_eq!(find("dial 12", &l)[0].uri, "tel:12;phone-context=+49123");
    }

    #[test]
    fn numbers_as_e164() {
        for n in [
            "+49 123 456 - 12",
            "0123 45612",
            "12",
            "+4912345612",
            "0049 123 45612",
        ] {
            assert_eq!(e164(n, &loc()).as_deref(), Some("+4912345612"), "{n}");
        }
        for n in ["12a", "hello", "+12", "", "0123 45612 x"] {
            assert_eq!(e164(n, &loc()), None, "{n}");
        }
    }

    #[test]
    fn numbers_that_are_not_phone_numbers() {
        for body in [
            "at 10:30",
            "2026-12-03",
            "03/12/2026",
            "1.5 hours",
            "cost 12€",
            "12%",
            "room 123",
            "v12",
            "x-12",
            "+12",
            "3 12",
            "abc12",
            "$12",
        ] {
            assert!(uris(body).is_empty(), "{body:?}: {:?}", uris(body));
        }
    }

    #[test]
    fn web_links_email_and_unc() {
        assert_eq!(
            one("see https://example.com/a?b=c."),
            (
                "https://example.com/a?b=c".into(),
                "https://example.com/a?b=c".into()
            )
        );
        assert_eq!(one("(www.example.com)").1, "http://www.example.com");
        assert_eq!(one("www2.example.org/x").1, "http://www2.example.org/x");
        for s in [
            "http://a.b",
            "ftp://a.b/f",
            "file:///etc/hosts",
            "gopher://g.example",
            "ntp://time.example",
            "prospero://p.example/x",
            "telnet://t.example",
            "news:comp.lang.rust",
            "wais://w.example/db",
        ] {
            assert_eq!(one(&format!("go {s} now")).1, s, "{s}");
        }
        assert_eq!(
            one("mail bob.smith+x@mail.example.com, thanks"),
            (
                "bob.smith+x@mail.example.com".into(),
                "mailto:bob.smith+x@mail.example.com".into()
            )
        );
        assert_eq!(
            one(r"open \\server\directory\file now"),
            (
                r"\\server\directory\file".into(),
                "file://server/directory/file".into()
            )
        );
        assert_eq!(
            one("https://en.wikipedia.org/wiki/Rust_(programming_language)").1,
            "https://en.wikipedia.org/wiki/Rust_(programming_language)"
        );
        assert!(uris("www. or http:// or a@b or \\\\ or www.x").is_empty());
        // Two in a row, with code point offsets after non-ASCII text.
        let body = "héllo ünd a@b.de und 0123 45612";
        let links = find(body, &loc());
        assert_eq!(links[0].begin, 10);
        assert_eq!(links[0].end, 16);
        assert_eq!(links[1].uri, "tel:+4912345612");
    }

    #[test]
    fn bracketed_links_may_hold_spaces() {
        assert_eq!(
            one(r"see <\\server\my dir\the file.txt> ok"),
            (
                r"\\server\my dir\the file.txt".into(),
                "file://server/my%20dir/the%20file.txt".into()
            )
        );
        assert_eq!(
            one("<http://example.com/a b>").1,
            "http://example.com/a%20b"
        );
        // Brackets around what is no link change nothing.
        assert!(uris("<Link with space(s)>").is_empty());
        assert_eq!(one("<see www.example.com>").1, "http://www.example.com");
    }

    #[test]
    fn almost_links_are_no_links() {
        // The benchmark (bench/) times these; here, what they yield.
        let n = 100_000;
        let bodies = [
            ".".repeat(n),
            "<".repeat(n),
            "<a".repeat(n / 2) + ">",
            "1 ".repeat(n / 2),
            "a@".repeat(n / 2),
            "\\\\".repeat(n / 2),
            "+0".repeat(n / 2),
            "http://".to_string() + &".".repeat(n),
            "http://".to_string() + &")".repeat(n),
            "(".repeat(n) + &")".repeat(n),
        ];
        for b in &bodies {
            assert!(find(b, &loc()).is_empty(), "{:?}…", &b[..10]);
        }
        // Links among them are still found, and their number is bounded.
        let many = "www.a.de ".repeat(n / 9);
        assert_eq!(find(&many, &loc()).len(), MAX_LINKS);
        let nested = "(www.x".repeat(n / 6);
        assert_eq!(find(&nested, &loc()).len(), 1);
    }
}

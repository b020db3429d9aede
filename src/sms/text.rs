//! SMS text: the GSM 03.38 default alphabet (7-bit, with its extension
//! table) when the text fits it, else UCS-2 (UTF-16 big-endian), and the
//! split into concatenated parts (3GPP TS 23.040 §9.2.3.24.1: a 6-octet
//! user data header with an 8-bit reference, the part count and the
//! part's number).

/// The basic GSM 7-bit alphabet, by code.
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: characters written as ESC + code.
const EXTENSION: [(char, u8); 10] = [
    ('\u{c}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

const ESC: u8 = 0x1B;

/// How a text is coded: SMPP `data_coding` 0 (the GSM default alphabet,
/// one septet per octet) or 8 (UCS-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gsm7,
    Ucs2,
}

impl Coding {
    pub fn data_coding(self) -> u8 {
        match self {
            Coding::Gsm7 => 0x00,
            Coding::Ucs2 => 0x08,
        }
    }
}

/// The septets of `c` in the GSM alphabet (one, or ESC and one).
fn gsm(c: char) -> Option<&'static [u8]> {
    // Both tables are small; a linear look-up is as fast as a map here.
    static CODES: [u8; 128] = {
        let mut a = [0u8; 128];
        let mut i = 0;
        while i < 128 {
            a[i] = i as u8;
            i += 1;
        }
        a
    };
    static EXT: [[u8; 2]; 10] = [
        [ESC, 0x0A],
        [ESC, 0x14],
        [ESC, 0x28],
        [ESC, 0x29],
        [ESC, 0x2F],
        [ESC, 0x3C],
        [ESC, 0x3D],
        [ESC, 0x3E],
        [ESC, 0x40],
        [ESC, 0x65],
    ];
    if c == '\u{1b}' {
        return None;
    }
    if let Some(i) = BASIC.iter().position(|&b| b == c) {
        return Some(std::slice::from_ref(&CODES[i]));
    }
    EXTENSION
        .iter()
        .position(|&(e, _)| e == c)
        .map(|i| &EXT[i][..])
}

/// The coding `text` needs.
pub fn coding_of(text: &str) -> Coding {
    if text.chars().all(|c| gsm(c).is_some()) {
        Coding::Gsm7
    } else {
        Coding::Ucs2
    }
}

/// The text of a short message with `data_coding` (0: GSM default
/// alphabet, one septet per octet; 3: Latin-1; 8: UCS-2), as a receiver
/// reads it; what does not decode becomes U+FFFD.
pub fn decode(data_coding: u8, bytes: &[u8]) -> String {
    match data_coding {
        0x08 => {
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        0x03 => bytes.iter().map(|&b| b as char).collect(),
        _ => {
            let mut out = String::new();
            let mut it = bytes.iter();
            while let Some(&b) = it.next() {
                if b == ESC {
                    if let Some(&n) = it.next() {
                        match EXTENSION.iter().find(|&&(_, code)| code == n) {
                            Some(&(c, _)) => out.push(c),
                            None => out.push('\u{fffd}'),
                        }
                    }
                } else {
                    out.push(BASIC.get(b as usize).copied().unwrap_or('\u{fffd}'));
                }
            }
            out
        }
    }
}

/// One coded unit of text, kept whole within a part: a character's
/// septets, or its UTF-16 code units.
fn units(text: &str, coding: Coding) -> Vec<Vec<u8>> {
    text.chars()
        .map(|c| match coding {
            Coding::Gsm7 => gsm(c).map(<[u8]>::to_vec).unwrap_or_else(|| vec![0x3F]),
            Coding::Ucs2 => {
                let mut buf = [0u16; 2];
                c.encode_utf16(&mut buf)
                    .iter()
                    .flat_map(|u| u.to_be_bytes())
                    .collect()
            }
        })
        .collect()
}

/// A text coded and split for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coded {
    pub coding: Coding,
    /// Each part's `short_message`, the user data header included when
    /// there are several.
    pub parts: Vec<Vec<u8>>,
}

/// The text needs more than `max_parts` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub parts: usize,
}

/// Code `text` and split it into at most `max_parts` parts; `reference`
/// tells the receiving phone which parts belong together.
pub fn split(text: &str, max_parts: usize, reference: u8) -> Result<Coded, TooLong> {
    let coding = coding_of(text);
    // Octets per part: 160 septets or 140 octets of UCS-2 alone; with a
    // 6-octet header, 153 septets or 134 octets (67 characters).
    let (single, multi) = match coding {
        Coding::Gsm7 => (160, 153),
        Coding::Ucs2 => (140, 134),
    };
    let units = units(text, coding);
    let total: usize = units.iter().map(Vec::len).sum();
    if total <= single {
        return Ok(Coded {
            coding,
            parts: vec![units.concat()],
        });
    }
    let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
    for u in units {
        if bodies.last().is_some_and(|b| b.len() + u.len() > multi) {
            bodies.push(Vec::new());
        }
        if let Some(b) = bodies.last_mut() {
            b.extend_from_slice(&u);
        }
    }
    let n = bodies.len();
    if n > max_parts || n > 255 {
        return Err(TooLong { parts: n });
    }
    let parts = bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let mut p = vec![0x05, 0x00, 0x03, reference, n as u8, (i + 1) as u8];
            p.extend(b);
            p
        })
        .collect();
    Ok(Coded { coding, parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_texts_use_septets_and_others_ucs2() {
        assert_eq!(coding_of("Hello, Zoë? No: Zoe! @£$ äöü ß"), Coding::Ucs2);
        assert_eq!(coding_of("Hello @£$ äöü ß [€]"), Coding::Gsm7);
        assert_eq!(coding_of("Привет"), Coding::Ucs2);
        let c = split("A€[", 6, 1).unwrap();
        assert_eq!(c.parts, vec![vec![0x41, ESC, 0x65, ESC, 0x3C]]);
        assert_eq!(decode(0, &c.parts[0]), "A€[");
        let c = split("Привет 👋", 6, 1).unwrap();
        assert_eq!(decode(8, &c.parts[0]), "Привет 👋");
    }

    #[test]
    fn long_texts_are_split_with_a_header() {
        // 160 septets fit one part; 161 need two of at most 153.
        assert_eq!(split(&"a".repeat(160), 6, 9).unwrap().parts.len(), 1);
        let c = split(&"a".repeat(161), 6, 9).unwrap();
        assert_eq!(c.parts.len(), 2);
        assert_eq!(&c.parts[0][..6], &[5, 0, 3, 9, 2, 1]);
        assert_eq!(&c.parts[1][..6], &[5, 0, 3, 9, 2, 2]);
        assert_eq!(c.parts[0].len(), 6 + 153);
        // An escape sequence is never cut between parts.
        let text = "a".repeat(152) + "€" + &"b".repeat(10);
        let c = split(&text, 6, 1).unwrap();
        assert_eq!(c.parts[0].len(), 6 + 152);
        assert_eq!(decode(0, &c.parts[1][6..]), "€bbbbbbbbbb");
        // UCS-2: 70 characters in one, 67 per part after that; a
        // surrogate pair stays whole.
        assert_eq!(split(&"ж".repeat(70), 6, 1).unwrap().parts.len(), 1);
        assert_eq!(split(&"ж".repeat(71), 6, 1).unwrap().parts.len(), 2);
        let text = "ж".repeat(66) + "👋" + &"ж".repeat(5);
        let c = split(&text, 6, 1).unwrap();
        assert_eq!(c.parts[0].len(), 6 + 132);
        assert_eq!(decode(8, &c.parts[1][6..]), "👋жжжжж");
        // Beyond max_parts: refused with the count.
        assert_eq!(
            split(&"a".repeat(153 * 6 + 1), 6, 1),
            Err(TooLong { parts: 7 })
        );
        assert_eq!(split(&"a".repeat(153 * 6), 6, 1).unwrap().parts.len(), 6);
    }
}

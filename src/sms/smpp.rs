//! SMPP 3.4 PDUs (the protocol of SMS centres): the header, the bodies
//! the gateway sends and reads (bind_transceiver, submit_sm, deliver_sm,
//! enquire_link, unbind and their responses, generic_nack) and delivery
//! receipts. Reading is incremental and bounded: a PDU is taken only
//! when whole, and a length outside 16..=`MAX_PDU` is a protocol error.

pub const GENERIC_NACK: u32 = 0x8000_0000;
pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
pub const SUBMIT_SM: u32 = 0x0000_0004;
pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
pub const DELIVER_SM: u32 = 0x0000_0005;
pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
pub const UNBIND: u32 = 0x0000_0006;
pub const UNBIND_RESP: u32 = 0x8000_0006;
pub const ENQUIRE_LINK: u32 = 0x0000_0015;
pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;

/// `command_status` values the gateway sends or tells apart.
pub const ESME_ROK: u32 = 0x0000_0000;
pub const ESME_RINVCMDID: u32 = 0x0000_0003;
/// The SMSC's queue is full: try again later.
pub const ESME_RMSGQFUL: u32 = 0x0000_0014;
pub const ESME_RTHROTTLED: u32 = 0x0000_0058;

/// Longest PDU read (a short message is at most 254 octets; TLVs add a
/// few more).
pub const MAX_PDU: usize = 4096;

/// esm_class bits.
pub const ESM_UDHI: u8 = 0x40;
pub const ESM_RECEIPT: u8 = 0x04;

const TLV_RECEIPTED_MESSAGE_ID: u16 = 0x001E;
const TLV_MESSAGE_STATE: u16 = 0x0427;
const TLV_MESSAGE_PAYLOAD: u16 = 0x0424;
const TLV_SAR_MSG_REF_NUM: u16 = 0x020C;
const TLV_SAR_TOTAL_SEGMENTS: u16 = 0x020E;
const TLV_SAR_SEGMENT_SEQNUM: u16 = 0x020F;

/// Where one part of a concatenated SMS belongs: its set's reference, how
/// many parts the set has, and its own number (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub command: u32,
    pub status: u32,
    pub seq: u32,
    pub body: Vec<u8>,
}

/// A PDU that breaks the protocol (the session is closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad(pub &'static str);

impl Pdu {
    pub fn new(command: u32, seq: u32, body: Vec<u8>) -> Pdu {
        Pdu {
            command,
            status: ESME_ROK,
            seq,
            body,
        }
    }

    /// The response to this request, with `status` and `body`.
    pub fn response(&self, status: u32, body: Vec<u8>) -> Pdu {
        Pdu {
            command: self.command | 0x8000_0000,
            status,
            seq: self.seq,
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = 16 + self.body.len();
        let mut out = Vec::with_capacity(len);
        out.extend((len as u32).to_be_bytes());
        out.extend(self.command.to_be_bytes());
        out.extend(self.status.to_be_bytes());
        out.extend(self.seq.to_be_bytes());
        out.extend(&self.body);
        out
    }

    /// The first PDU of `buf` and its length, `None` while it is not all
    /// there.
    pub fn decode(buf: &[u8]) -> Result<Option<(Pdu, usize)>, Bad> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if !(16..=MAX_PDU).contains(&len) {
            return Err(Bad("a command_length outside 16 to 4096"));
        }
        if buf.len() < len {
            return Ok(None);
        }
        let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        Ok(Some((
            Pdu {
                command: word(4),
                status: word(8),
                seq: word(12),
                body: buf[16..len].to_vec(),
            },
            len,
        )))
    }
}

/// A C-Octet String: the bytes, then NUL.
fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// Reads a body field by field.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Bad> {
        let v = *self.b.get(self.at).ok_or(Bad("a body cut short"))?;
        self.at += 1;
        Ok(v)
    }
    fn cstr(&mut self, max: usize) -> Result<String, Bad> {
        let rest = self.b.get(self.at..).ok_or(Bad("a body cut short"))?;
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Bad("a string without its NUL"))?;
        if n > max {
            return Err(Bad("a string longer than SMPP allows"));
        }
        self.at += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        let v = self
            .b
            .get(self.at..self.at + n)
            .ok_or(Bad("a body cut short"))?;
        self.at += n;
        Ok(v)
    }
    fn rest(&self) -> &'a [u8] {
        self.b.get(self.at..).unwrap_or(&[])
    }
}

/// bind_transceiver's body (SMPP 3.4 §4.1.5).
pub fn bind_body(system_id: &str, password: &str, system_type: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, system_id);
    cstr(&mut b, password);
    cstr(&mut b, system_type);
    b.push(0x34); // interface_version 3.4
    b.push(0); // addr_ton
    b.push(0); // addr_npi
    cstr(&mut b, ""); // address_range
    b
}

/// The fields of submit_sm and deliver_sm the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sm {
    pub source: String,
    pub destination: String,
    pub esm_class: u8,
    pub registered_delivery: u8,
    pub data_coding: u8,
    pub short_message: Vec<u8>,
    /// Of a delivery receipt: the id of the message it is about, and its
    /// state (TLVs, or the receipt text of SMPP 3.4 Appendix B).
    pub receipted_id: Option<String>,
    pub state: Option<String>,
    /// Of one part of a longer SMS: the SAR parameters (§5.3.2.22-24) or
    /// the user data header's concatenation element (3GPP TS 23.040
    /// §9.2.3.24.1, 8- or 16-bit reference).
    pub concat: Option<Concat>,
}

/// A short message's octets without its user data header (when `udhi`).
pub fn user_data(udhi: bool, short_message: &[u8]) -> &[u8] {
    if !udhi {
        return short_message;
    }
    let h = short_message.first().map_or(0, |&n| n as usize + 1);
    short_message.get(h..).unwrap_or(&[])
}

impl Sm {
    /// The text's octets: the short message without its user data header.
    pub fn user_data(&self) -> &[u8] {
        user_data(self.esm_class & ESM_UDHI != 0, &self.short_message)
    }

    /// The concatenation element of the user data header, if any.
    fn udh_concat(&self) -> Option<Concat> {
        if self.esm_class & ESM_UDHI == 0 {
            return None;
        }
        let len = *self.short_message.first()? as usize;
        let mut ies = self.short_message.get(1..1 + len)?;
        while ies.len() >= 2 {
            let (iei, l) = (ies[0], ies[1] as usize);
            let v = ies.get(2..2 + l)?;
            match (iei, v) {
                (0x00, &[r, total, seq]) => {
                    return Some(Concat {
                        reference: r as u16,
                        total,
                        seq,
                    })
                }
                (0x08, &[r1, r2, total, seq]) => {
                    return Some(Concat {
                        reference: u16::from_be_bytes([r1, r2]),
                        total,
                        seq,
                    })
                }
                _ => {}
            }
            ies = &ies[2 + l..];
        }
        None
    }
}

/// TON/NPI of an address: international ISDN for `+` numbers (sent
/// without the `+`), unknown otherwise.
fn address(out: &mut Vec<u8>, a: &str) {
    match a.strip_prefix('+') {
        Some(d) => {
            out.push(1);
            out.push(1);
            cstr(out, d);
        }
        None => {
            out.push(0);
            out.push(0);
            cstr(out, a);
        }
    }
}

/// submit_sm's body (§4.4.1): from `source` (may be empty: the SMSC's
/// default) to `destination`, asking for a delivery receipt.
pub fn submit_body(sm: &Sm) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, ""); // service_type
    address(&mut b, &sm.source);
    address(&mut b, &sm.destination);
    b.push(sm.esm_class);
    b.push(0); // protocol_id
    b.push(0); // priority_flag
    cstr(&mut b, ""); // schedule_delivery_time
    cstr(&mut b, ""); // validity_period
    b.push(sm.registered_delivery);
    b.push(0); // replace_if_present_flag
    b.push(sm.data_coding);
    b.push(0); // sm_default_msg_id
    let n = sm.short_message.len().min(254);
    b.push(n as u8);
    b.extend(&sm.short_message[..n]);
    b
}

/// A submit_sm or deliver_sm body.
pub fn parse_sm(body: &[u8]) -> Result<Sm, Bad> {
    let mut r = Reader { b: body, at: 0 };
    r.cstr(5)?; // service_type
    let (ston, _snpi) = (r.byte()?, r.byte()?);
    let source = r.cstr(64)?;
    let (dton, _dnpi) = (r.byte()?, r.byte()?);
    let destination = r.cstr(64)?;
    let esm_class = r.byte()?;
    r.byte()?; // protocol_id
    r.byte()?; // priority_flag
    r.cstr(16)?;
    r.cstr(16)?;
    let registered_delivery = r.byte()?;
    r.byte()?;
    let data_coding = r.byte()?;
    r.byte()?;
    let n = r.byte()? as usize;
    let mut short_message = r.bytes(n)?.to_vec();
    let plus = |ton: u8, a: String| {
        if ton == 1 && !a.is_empty() && !a.starts_with('+') {
            format!("+{a}")
        } else {
            a
        }
    };
    let mut sm = Sm {
        source: plus(ston, source),
        destination: plus(dton, destination),
        esm_class,
        registered_delivery,
        data_coding,
        short_message: Vec::new(),
        receipted_id: None,
        state: None,
        concat: None,
    };
    let (mut sar_ref, mut sar_total, mut sar_seq) = (None, None, None);
    // Optional parameters (§5.3).
    let mut tlvs = r.rest();
    while tlvs.len() >= 4 {
        let tag = u16::from_be_bytes([tlvs[0], tlvs[1]]);
        let len = u16::from_be_bytes([tlvs[2], tlvs[3]]) as usize;
        let Some(v) = tlvs.get(4..4 + len) else {
            return Err(Bad("an optional parameter cut short"));
        };
        let text = || {
            String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string()
        };
        match tag {
            TLV_RECEIPTED_MESSAGE_ID => sm.receipted_id = Some(text()),
            TLV_MESSAGE_STATE => {
                sm.state = v.first().map(|s| state_name(*s).to_string());
            }
            TLV_MESSAGE_PAYLOAD if short_message.is_empty() => short_message = v.to_vec(),
            TLV_SAR_MSG_REF_NUM => {
                sar_ref = <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes);
            }
            TLV_SAR_TOTAL_SEGMENTS => sar_total = v.first().copied(),
            TLV_SAR_SEGMENT_SEQNUM => sar_seq = v.first().copied(),
            _ => {}
        }
        tlvs = &tlvs[4 + len..];
    }
    if esm_class & ESM_RECEIPT != 0 {
        // SMPP 3.4 Appendix B: "id:… sub:… dlvrd:… … stat:DELIVRD err:…".
        let text = String::from_utf8_lossy(&short_message).into_owned();
        for word in text.split_whitespace() {
            if let Some(id) = word.strip_prefix("id:") {
                sm.receipted_id.get_or_insert_with(|| id.to_string());
            }
            if let Some(st) = word.strip_prefix("stat:") {
                sm.state.get_or_insert_with(|| st.to_string());
            }
        }
    }
    sm.short_message = short_message;
    sm.concat = match (sar_ref, sar_total, sar_seq) {
        (Some(reference), Some(total), Some(seq)) => Some(Concat {
            reference,
            total,
            seq,
        }),
        _ => sm.udh_concat(),
    }
    .filter(|c| c.total > 1 && (1..=c.total).contains(&c.seq));
    Ok(sm)
}

/// The message_state values of §5.2.28 by their receipt names.
fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        8 => "REJECTD",
        _ => "UNKNOWN",
    }
}

/// Whether a receipt's state is final, and if so whether it was
/// delivered.
pub fn final_state(state: &str) -> Option<bool> {
    match state {
        "DELIVRD" => Some(true),
        "EXPIRED" | "DELETED" | "UNDELIV" | "REJECTD" | "UNKNOWN" => Some(false),
        _ => None,
    }
}

/// The message_id of a submit_sm_resp (or the system_id of a bind
/// response).
pub fn resp_id(body: &[u8]) -> String {
    let mut r = Reader { b: body, at: 0 };
    r.cstr(65).unwrap_or_default()
}

/// A response body holding one C-Octet String.
pub fn id_body(id: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, id);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdus_round_trip_and_are_read_whole() {
        let sm = Sm {
            source: String::new(),
            destination: "+4912345612".into(),
            esm_class: ESM_UDHI,
            registered_delivery: 1,
            data_coding: 8,
            short_message: vec![5, 0, 3, 1, 2, 1, 0, 0x41],
            receipted_id: None,
            state: None,
            // Read from the user data header.
            concat: Some(Concat {
                reference: 1,
                total: 2,
                seq: 1,
            }),
        };
        let p = Pdu::new(SUBMIT_SM, 7, submit_body(&sm));
        let bytes = p.encode();
        assert_eq!(&bytes[..4], &(bytes.len() as u32).to_be_bytes());
        // Incomplete: wait; whole: taken.
        assert_eq!(Pdu::decode(&bytes[..10]), Ok(None));
        let (q, n) = Pdu::decode(&bytes).unwrap().unwrap();
        assert_eq!((q.clone(), n), (p, bytes.len()));
        assert_eq!(parse_sm(&q.body).unwrap(), sm);
        assert_eq!(sm.user_data(), &[0, 0x41]);
        // Lengths outside the protocol's are refused.
        assert!(Pdu::decode(&[0, 0, 0, 5, 0, 0, 0, 0]).is_err());
        assert!(Pdu::decode(&[0, 1, 0, 0]).is_err());
        // A body cut short is an error, not a panic.
        assert!(parse_sm(&q.body[..5]).is_err());
        let r = q.response(ESME_ROK, id_body("abc"));
        assert_eq!(r.command, SUBMIT_SM_RESP);
        assert_eq!(resp_id(&r.body), "abc");
    }

    #[test]
    fn delivery_receipts_by_text_and_by_tlv() {
        let mut sm = Sm {
            source: "+4912345612".into(),
            destination: "".into(),
            esm_class: ESM_RECEIPT,
            registered_delivery: 0,
            data_coding: 0,
            short_message: b"id:m42 sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:DELIVRD err:000 text:hi".to_vec(),
            receipted_id: None,
            state: None,
            concat: None,
        };
        let got = parse_sm(&submit_body(&sm)).unwrap();
        assert_eq!(got.receipted_id.as_deref(), Some("m42"));
        assert_eq!(got.state.as_deref(), Some("DELIVRD"));
        assert_eq!(final_state("DELIVRD"), Some(true));
        assert_eq!(final_state("UNDELIV"), Some(false));
        assert_eq!(final_state("ENROUTE"), None);
        // The TLVs win over the text.
        sm.short_message = b"stat:UNDELIV".to_vec();
        let mut body = submit_body(&sm);
        body.extend([0x00, 0x1E, 0, 4, b'm', b'4', b'3', 0]);
        body.extend([0x04, 0x27, 0, 1, 2]);
        let got = parse_sm(&body).unwrap();
        assert_eq!(got.receipted_id.as_deref(), Some("m43"));
        assert_eq!(got.state.as_deref(), Some("DELIVRD"));
        // A TLV whose length runs past the body.
        body.extend([0x04, 0x24, 0, 9, 1]);
        assert!(parse_sm(&body).is_err());
    }

    #[test]
    fn parts_of_long_sms_by_header_and_by_sar() {
        let base = Sm {
            source: "+491511".into(),
            destination: String::new(),
            esm_class: ESM_UDHI,
            registered_delivery: 0,
            data_coding: 0,
            short_message: Vec::new(),
            receipted_id: None,
            state: None,
            concat: None,
        };
        let read = |short_message: Vec<u8>, esm_class: u8, tlvs: &[u8]| {
            let mut body = submit_body(&Sm {
                short_message,
                esm_class,
                ..base.clone()
            });
            body.extend_from_slice(tlvs);
            parse_sm(&body).unwrap()
        };
        // 16-bit reference, after another element of the header.
        let sm = read(
            vec![8, 0x70, 0, 0x08, 4, 0x12, 0x34, 3, 2, b'h', b'i'],
            ESM_UDHI,
            &[],
        );
        let c = Concat {
            reference: 0x1234,
            total: 3,
            seq: 2,
        };
        assert_eq!((sm.concat, sm.user_data()), (Some(c), &b"hi"[..]));
        // SAR parameters, no header.
        let sar = [
            0x02, 0x0C, 0, 2, 0x12, 0x34, 0x02, 0x0E, 0, 1, 3, 0x02, 0x0F, 0, 1, 2,
        ];
        let sm = read(b"hi".to_vec(), 0, &sar);
        assert_eq!((sm.concat, sm.user_data()), (Some(c), &b"hi"[..]));
        // Not parts: one part in all, part 0, beyond the total, a header
        // cut short, no header flag.
        for (data, esm) in [
            (vec![5, 0, 3, 9, 1, 1, b'x'], ESM_UDHI),
            (vec![5, 0, 3, 9, 2, 0, b'x'], ESM_UDHI),
            (vec![5, 0, 3, 9, 2, 3, b'x'], ESM_UDHI),
            (vec![5, 0, 3, 9], ESM_UDHI),
            (vec![5, 0, 3, 9, 2, 1, b'x'], 0),
        ] {
            assert_eq!(read(data, esm, &[]).concat, None);
        }
    }
}

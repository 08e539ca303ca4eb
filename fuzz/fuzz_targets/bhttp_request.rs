//! Binary HTTP messages (RFC 9292), what the enclave reads once a request is decapsulated (and what a
//! client reads once a response is opened), fed to Veil's `parse_request` and `parse_response` and to the
//! `bhttp` crate, an independent reader (the one veil-protocol's own tests use).
//!
//! When Veil accepts a message, `bhttp` reads the same bytes to the same control data (method, scheme,
//! authority and path; or status), the same header fields in order, and the same content, and whatever
//! follows what it read is zero padding. Two differences are `bhttp`'s, not Veil's, and are allowed for:
//! it folds a section's repeated `cookie` lines into one, joined by "; " (RFC 9113 §8.2.3), and it refuses
//! an indeterminate-length message truncated where a section would start (no header section, or no trailer
//! section), which RFC 9292 §3.2 and §3.8 allow: there the message must read the same to both with its
//! terminators restored (as zero padding, which Veil must read the same way).
//!
//! When `bhttp` accepts a message that Veil refuses, the refusal must be one of Veil's deliberate
//! strictnesses, visible in what `bhttp` read: padding that is not all zeros (refused as `Padding`), or
//! (refused as `Malformed`) a method that is not 1 to 16 upper-case letters, a path that does not start
//! with '/', is not printable ASCII or is over 4096 bytes, a field name that is not an HTTP token, a field
//! value with a control character, or a section of more than 64 fields. Veil never calls such a message
//! truncated, nor a request a response.
//!
//! And what Veil read re-encodes: a request with `encode_request` (plain and padded to its Padmé bucket),
//! a response with `ResponseWriter`; both readers read the re-encoding to the same message, and the
//! re-encoding is canonical (encoding what was read from it gives it back).
#![no_main]

use std::io::Cursor;

use bhttp::{ControlData, FieldSection, Message};
use libfuzzer_sys::fuzz_target;
use veil_protocol::ohttp::bhttp::{
    self as vb, BhttpError, Field, MAX_FIELDS, MAX_METHOD, MAX_PATH, Request, Response, ResponseWriter,
};
use veil_protocol::pad;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Veil's field lines as `bhttp` reports them: repeated `cookie` lines folded into the first.
fn folded(fields: &[Field<'_>]) -> Fields {
    let mut out: Fields = Vec::new();
    let mut cookie: Option<usize> = None;
    for f in fields {
        if f.name == b"cookie" {
            if let Some(i) = cookie {
                let v: &mut Vec<u8> = &mut out[i].1;
                v.extend_from_slice(b"; ");
                v.extend_from_slice(f.value);
                continue;
            }
            cookie = Some(out.len());
        }
        out.push((f.name.to_vec(), f.value.to_vec()));
    }
    out
}

fn theirs_fields(s: &FieldSection) -> Fields {
    s.iter().map(|f| (f.name().to_vec(), f.value().to_vec())).collect()
}

fn raw_fields(fields: &[Field<'_>]) -> Fields {
    fields.iter().map(|f| (f.name.to_vec(), f.value.to_vec())).collect()
}

/// `bhttp`'s reading of `data`, and how many bytes it read.
fn read_theirs(data: &[u8]) -> Result<(Message, usize), bhttp::Error> {
    let mut cursor = Cursor::new(data);
    let m = Message::read_bhttp(&mut cursor)?;
    Ok((m, usize::try_from(cursor.position()).expect("a position within the input")))
}

/// The framing indicator, if the input starts with one.
fn framing(data: &[u8]) -> Option<u64> {
    let first = *data.first()?;
    let len = 1usize << (first >> 6);
    let bytes = data.get(..len)?;
    Some(bytes[1..].iter().fold(u64::from(first & 0x3f), |v, &b| (v << 8) | u64::from(b)))
}

/// `bhttp`'s reading of a message Veil accepted: of `data` itself, or (an indeterminate-length message
/// truncated where `bhttp` wants a terminator) of `data` with its terminators restored as zero padding,
/// which is returned too, for Veil to read the same.
fn theirs_of_accepted(data: &[u8]) -> (Message, usize, Option<Vec<u8>>) {
    match read_theirs(data) {
        Ok((m, n)) => (m, n, None),
        Err(bhttp::Error::Truncated) if matches!(framing(data), Some(2 | 3)) => {
            let mut padded = data.to_vec();
            padded.extend_from_slice(&[0; 3]);
            let (m, n) = read_theirs(&padded)
                .unwrap_or_else(|e| panic!("bhttp refuses a message Veil accepts, even with its terminators: {e}"));
            (m, n, Some(padded))
        }
        Err(e) => panic!("Veil accepted a message bhttp refuses: {e}"),
    }
}

fn zeros(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

// ---------------------------------------------------------------------------------------------------
// What Veil refuses on purpose, judged on what bhttp read.

fn token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn clean_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// A section Veil refuses: a bad name or value, or (counting the lines bhttp folded into a `cookie` field
/// generously) more than 64 lines.
fn strict_section(s: &FieldSection) -> bool {
    let folded_lines: usize =
        s.iter().filter(|f| f.name() == b"cookie").map(|f| f.value().windows(2).filter(|w| w == b"; ").count()).sum();
    s.len() + folded_lines > MAX_FIELDS || s.iter().any(|f| !token(f.name()) || !clean_value(f.value()))
}

fn strict_request_control(c: &ControlData) -> bool {
    let ControlData::Request { method, path, .. } = c else { return false };
    let method_ok = !method.is_empty() && method.len() <= MAX_METHOD && method.iter().all(u8::is_ascii_uppercase);
    let path_ok = path.len() <= MAX_PATH && path.first() == Some(&b'/') && path.iter().all(u8::is_ascii_graphic);
    !(method_ok && path_ok)
}

/// Veil refused what bhttp read as `m` (`read` bytes of `data`): the refusal must be a deliberate one.
fn check_refusal(e: &BhttpError, m: &Message, data: &[u8], read: usize, what: &str) {
    match e {
        BhttpError::Padding => {
            assert!(!zeros(&data[read..]), "{what}: refused as padding, but bhttp read zeros after it")
        }
        BhttpError::Malformed(why) => {
            let strict = strict_request_control(m.control())
                || strict_section(m.header())
                || strict_section(m.trailer())
                || m.informational().iter().any(|i| strict_section(i.fields()));
            assert!(strict, "{what}: Veil refuses what bhttp reads, for no deliberate reason: {why}");
        }
        other => panic!("{what}: Veil refuses what bhttp reads: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Requests.

fn same_request(a: &Request<'_>, b: &Request<'_>) {
    assert_eq!((a.method, a.scheme, a.authority, a.path), (b.method, b.scheme, b.authority, b.path));
    assert_eq!(raw_fields(&a.headers), raw_fields(&b.headers));
    assert_eq!(a.content.as_slice(), b.content.as_slice());
}

fn agree_on_request(ours: &Request<'_>, theirs: &Message, rest: &[u8]) {
    let ControlData::Request { method, scheme, authority, path } = theirs.control() else {
        panic!("Veil read a request that bhttp reads as a response");
    };
    assert_eq!(method.as_slice(), ours.method.as_bytes(), "method");
    assert_eq!(scheme.as_slice(), ours.scheme, "scheme");
    assert_eq!(authority.as_slice(), ours.authority, "authority");
    assert_eq!(path.as_slice(), ours.path.as_bytes(), "path");
    assert_eq!(theirs_fields(theirs.header()), folded(&ours.headers), "header fields");
    assert_eq!(theirs.content(), ours.content.as_slice(), "content");
    assert!(zeros(rest), "Veil accepted a request followed by other bytes than zeros");
}

fn request(data: &[u8]) {
    match vb::parse_request(data) {
        Ok(ours) => {
            let (theirs, read, padded) = theirs_of_accepted(data);
            match &padded {
                Some(p) => {
                    same_request(&ours, &vb::parse_request(p).expect("Veil refuses its terminators as padding"));
                    agree_on_request(&ours, &theirs, &p[read..]);
                }
                None => agree_on_request(&ours, &theirs, &data[read..]),
            }
            reencode_request(&ours);
        }
        Err(e) => {
            if let Ok((m, read)) = read_theirs(data)
                && m.control().is_request()
            {
                check_refusal(&e, &m, data, read, "request");
            }
        }
    }
}

fn reencode_request(ours: &Request<'_>) {
    let (Ok(scheme), Ok(authority)) = (std::str::from_utf8(ours.scheme), std::str::from_utf8(ours.authority)) else {
        return; // encode_request takes text; Veil reads any bytes there (and uses neither)
    };
    let names: Vec<&str> =
        ours.headers.iter().map(|f| std::str::from_utf8(f.name).expect("a token is ASCII")).collect();
    let headers: Vec<(&str, &[u8])> = names.iter().copied().zip(ours.headers.iter().map(|f| f.value)).collect();
    let content = ours.content.as_slice();
    let plain = vb::encode_request(ours.method, scheme, authority, ours.path, &headers, content, false);
    let padded = vb::encode_request(ours.method, scheme, authority, ours.path, &headers, content, true);
    assert_eq!(padded.len(), pad::bucket(plain.len()), "padded to another size than the bucket");
    assert!(padded.starts_with(&plain) && zeros(&padded[plain.len()..]));
    for enc in [&plain, &padded] {
        let again = vb::parse_request(enc).expect("Veil refuses its own encoding of what it read");
        same_request(ours, &again);
        let (theirs, read) = read_theirs(enc).expect("bhttp refuses Veil's encoding");
        agree_on_request(ours, &theirs, &enc[read..]);
        let renames: Vec<&str> = again.headers.iter().map(|f| std::str::from_utf8(f.name).unwrap_or("")).collect();
        let reheaders: Vec<(&str, &[u8])> =
            renames.iter().copied().zip(again.headers.iter().map(|f| f.value)).collect();
        let re = vb::encode_request(
            again.method,
            scheme,
            authority,
            again.path,
            &reheaders,
            again.content.as_slice(),
            false,
        );
        assert_eq!(re, plain, "the encoding is not canonical");
    }
}

// ---------------------------------------------------------------------------------------------------
// Responses.

fn same_response(a: &Response<'_>, b: &Response<'_>) {
    assert_eq!(a.status, b.status);
    assert_eq!(raw_fields(&a.headers), raw_fields(&b.headers));
    assert_eq!(a.content.as_slice(), b.content.as_slice());
}

fn agree_on_response(ours: &Response<'_>, theirs: &Message, rest: &[u8]) {
    let ControlData::Response(status) = theirs.control() else {
        panic!("Veil read a response that bhttp reads as a request");
    };
    assert_eq!(status.code(), ours.status, "status");
    assert_eq!(theirs_fields(theirs.header()), folded(&ours.headers), "header fields");
    assert_eq!(theirs.content(), ours.content.as_slice(), "content");
    assert!(zeros(rest), "Veil accepted a response followed by other bytes than zeros");
}

fn response(data: &[u8]) {
    match vb::parse_response(data) {
        Ok(ours) => {
            let (theirs, read, padded) = theirs_of_accepted(data);
            match &padded {
                Some(p) => {
                    same_response(&ours, &vb::parse_response(p).expect("Veil refuses its terminators as padding"));
                    agree_on_response(&ours, &theirs, &p[read..]);
                }
                None => agree_on_response(&ours, &theirs, &data[read..]),
            }
            rewrite_response(&ours);
        }
        Err(e) => {
            if let Ok((m, read)) = read_theirs(data)
                && !m.control().is_request()
            {
                check_refusal(&e, &m, data, read, "response");
            }
        }
    }
}

fn rewrite_response(ours: &Response<'_>) {
    let names: Vec<&str> =
        ours.headers.iter().map(|f| std::str::from_utf8(f.name).expect("a token is ASCII")).collect();
    let headers: Vec<(&str, &[u8])> = names.iter().copied().zip(ours.headers.iter().map(|f| f.value)).collect();
    let room = 32;
    let mut w = ResponseWriter::new(room, ours.status, &headers, ours.content.as_slice().len());
    w.content().extend_from_slice(ours.content.as_slice());
    assert_eq!(w.written(), ours.content.as_slice());
    let buf = w.finish().expect("a response under 1 GiB");
    assert!(zeros(&buf[..room]), "the room for the nonce was written to");
    let msg = &buf[room..];
    assert_eq!(msg.len(), pad::bucket(msg.len()), "a response not padded to its bucket");
    let again = vb::parse_response(msg).expect("Veil refuses the response it wrote");
    same_response(ours, &again);
    let (theirs, read) = read_theirs(msg).expect("bhttp refuses Veil's response");
    agree_on_response(ours, &theirs, &msg[read..]);
}

fuzz_target!(|data: &[u8]| {
    request(data);
    response(data);
});

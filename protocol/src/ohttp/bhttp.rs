//! Binary HTTP (RFC 9292): the messages inside OHTTP's encapsulation.
//!
//! The enclave parses requests without copying: a [`Request`] borrows its method, path, fields and content
//! from the decrypted buffer, which is wiped when it drops (the `bhttp` crate would copy the content into
//! buffers of its own that are not wiped). Responses are written straight into the buffer they are sealed
//! and sent from ([`ResponseWriter`]), with the content length patched in once the model has written the
//! content, and padded with RFC 9292 §3.8's zero bytes to the same Padmé buckets as the KMS envelope
//! ([`crate::pad::bucket`]), so the parent learns a size bucket, not a size. The `bhttp` crate serves as an
//! independent reader and writer in the tests, which check that both agree.
//!
//! Both framings are read (known-length, and indeterminate-length with chunked content); responses are
//! written known-length. Truncated messages (RFC 9292 §3.8: absent trailing sections) are read as empty
//! sections; padding must be all zeros.

/// Most field lines in one section.
pub const MAX_FIELDS: usize = 64;
/// Longest request path.
pub const MAX_PATH: usize = 4096;
/// Longest method.
pub const MAX_METHOD: usize = 16;

/// Why a Binary HTTP message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BhttpError {
    #[error("binary HTTP message truncated in {0}")]
    Truncated(&'static str),
    #[error("binary HTTP framing indicator {0} is not a request (0: known length, 2: indeterminate length)")]
    NotARequest(u64),
    #[error("binary HTTP framing indicator {0} is not a response (1 or 3)")]
    NotAResponse(u64),
    #[error("binary HTTP {0}")]
    Malformed(String),
    #[error("binary HTTP padding is not all zeros")]
    Padding,
}

fn malformed(why: impl Into<String>) -> BhttpError {
    BhttpError::Malformed(why.into())
}

/// A QUIC variable-length integer (RFC 9000 §16), appended in its shortest form.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

fn varint_len(v: u64) -> usize {
    match v {
        0..0x40 => 1,
        0x40..0x4000 => 2,
        0x4000..0x4000_0000 => 4,
        _ => 8,
    }
}

/// A cursor over a message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, BhttpError> {
        let first = *self.buf.get(self.pos).ok_or(BhttpError::Truncated(what))?;
        let len = 1usize << (first >> 6);
        let bytes = self.buf.get(self.pos..self.pos + len).ok_or(BhttpError::Truncated(what))?;
        let mut v = u64::from(first & 0x3f);
        for &b in &bytes[1..] {
            v = (v << 8) | u64::from(b);
        }
        self.pos += len;
        Ok(v)
    }

    fn bytes(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], BhttpError> {
        let n = usize::try_from(n).map_err(|_| BhttpError::Truncated(what))?;
        let end = self.pos.checked_add(n).ok_or(BhttpError::Truncated(what))?;
        let out = self.buf.get(self.pos..end).ok_or(BhttpError::Truncated(what))?;
        self.pos = end;
        Ok(out)
    }

    fn vec(&mut self, what: &'static str) -> Result<&'a [u8], BhttpError> {
        let n = self.varint(what)?;
        self.bytes(n, what)
    }

    /// A field section; `None` when the input ends where it would start (a truncated message).
    fn fields(&mut self, indeterminate: bool, what: &'static str) -> Result<Vec<Field<'a>>, BhttpError> {
        let mut out = Vec::new();
        if self.at_end() {
            return Ok(out);
        }
        let push = |out: &mut Vec<Field<'a>>, name: &'a [u8], value: &'a [u8]| {
            if out.len() == MAX_FIELDS {
                return Err(malformed(format!("{what} has more than {MAX_FIELDS} fields")));
            }
            check_field(name, value, what)?;
            out.push(Field { name, value });
            Ok(())
        };
        if indeterminate {
            loop {
                let n = self.varint(what)?;
                if n == 0 {
                    break;
                }
                let name = self.bytes(n, what)?;
                let value = self.vec(what)?;
                push(&mut out, name, value)?;
            }
        } else {
            let section = self.vec(what)?;
            let mut r = Reader { buf: section, pos: 0 };
            while !r.at_end() {
                let name = r.vec(what)?;
                if name.is_empty() {
                    return Err(malformed(format!("{what} has an empty field name")));
                }
                let value = r.vec(what)?;
                push(&mut out, name, value)?;
            }
        }
        Ok(out)
    }

    /// The content: borrowed when in one piece, gathered (and wiped on drop) when chunked.
    fn content(&mut self, indeterminate: bool) -> Result<Content<'a>, BhttpError> {
        // Empty content is an empty slice of the message itself (never a static one), so that callers may
        // locate the content inside the buffer they parsed.
        let here = self.buf.len().min(self.pos);
        if self.at_end() {
            return Ok(Content::Borrowed(&self.buf[here..here]));
        }
        if !indeterminate {
            return Ok(Content::Borrowed(self.vec("content")?));
        }
        let mut chunks: Vec<&'a [u8]> = Vec::new();
        loop {
            let n = self.varint("content")?;
            if n == 0 {
                break;
            }
            chunks.push(self.bytes(n, "content")?);
        }
        Ok(match chunks.as_slice() {
            [] => Content::Borrowed(&self.buf[here..here]),
            [one] => Content::Borrowed(one),
            many => Content::Gathered(zeroize::Zeroizing::new(many.concat())),
        })
    }

    /// What follows the message must be zero padding.
    fn padding(&self) -> Result<(), BhttpError> {
        if self.buf.get(self.pos..).unwrap_or(&[]).iter().all(|&b| b == 0) { Ok(()) } else { Err(BhttpError::Padding) }
    }
}

fn check_field(name: &[u8], value: &[u8], what: &str) -> Result<(), BhttpError> {
    // RFC 9110 tokens for names, no control characters other than tab in values.
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.iter().all(|&b| token(b)) {
        return Err(malformed(format!("{what}: a field name is not an HTTP token")));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(malformed(format!("{what}: field {:?} has a control character", String::from_utf8_lossy(name))));
    }
    Ok(())
}

/// One field line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// A message's content.
#[derive(Debug)]
pub enum Content<'a> {
    Borrowed(&'a [u8]),
    Gathered(zeroize::Zeroizing<Vec<u8>>),
}

impl Content<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Content::Borrowed(b) => b,
            Content::Gathered(v) => v,
        }
    }
}

fn find<'a>(fields: &[Field<'a>], name: &str) -> Option<&'a [u8]> {
    fields.iter().find(|f| f.name.eq_ignore_ascii_case(name.as_bytes())).map(|f| f.value)
}

/// A request, borrowed from its decrypted buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub scheme: &'a [u8],
    pub authority: &'a [u8],
    pub path: &'a str,
    pub headers: Vec<Field<'a>>,
    pub content: Content<'a>,
}

impl<'a> Request<'a> {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        find(&self.headers, name)
    }
}

/// Parses a request (either framing), checking structure, bounds and zero padding.
pub fn parse_request(buf: &[u8]) -> Result<Request<'_>, BhttpError> {
    let mut r = Reader { buf, pos: 0 };
    let framing = r.varint("framing indicator")?;
    let indeterminate = match framing {
        0 => false,
        2 => true,
        other => return Err(BhttpError::NotARequest(other)),
    };
    let method = r.vec("method")?;
    let scheme = r.vec("scheme")?;
    let authority = r.vec("authority")?;
    let path = r.vec("path")?;
    if method.is_empty() || method.len() > MAX_METHOD || !method.iter().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed("method must be 1 to 16 upper-case letters"));
    }
    if path.len() > MAX_PATH {
        return Err(malformed(format!("path longer than {MAX_PATH} bytes")));
    }
    let path = std::str::from_utf8(path).map_err(|_| malformed("path is not ASCII"))?;
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed("path must start with / and be printable ASCII"));
    }
    let method = std::str::from_utf8(method).map_err(|_| malformed("method is not ASCII"))?;
    let headers = r.fields(indeterminate, "header section")?;
    let content = r.content(indeterminate)?;
    let _trailers = r.fields(indeterminate, "trailer section")?;
    r.padding()?;
    Ok(Request { method, scheme, authority, path, headers, content })
}

/// A response as a client reads it: the final status, its header fields, content and trailer fields
/// (informational responses skipped).
#[derive(Debug)]
pub struct Response<'a> {
    pub status: u16,
    pub headers: Vec<Field<'a>>,
    pub content: Content<'a>,
    pub trailers: Vec<Field<'a>>,
}

impl<'a> Response<'a> {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        find(&self.headers, name)
    }

    /// The first trailer field named `name` (ASCII case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&'a [u8]> {
        find(&self.trailers, name)
    }
}

/// Parses a response (either framing).
pub fn parse_response(buf: &[u8]) -> Result<Response<'_>, BhttpError> {
    let mut r = Reader { buf, pos: 0 };
    let framing = r.varint("framing indicator")?;
    let indeterminate = match framing {
        1 => false,
        3 => true,
        other => return Err(BhttpError::NotAResponse(other)),
    };
    let status = loop {
        let status = r.varint("status")?;
        match status {
            100..=199 => {
                r.fields(indeterminate, "informational response")?;
            }
            200..=599 => break status as u16,
            other => return Err(malformed(format!("status {other} is not 100 to 599"))),
        }
    };
    let headers = r.fields(indeterminate, "header section")?;
    let content = r.content(indeterminate)?;
    let trailers = r.fields(indeterminate, "trailer section")?;
    r.padding()?;
    Ok(Response { status, headers, content, trailers })
}

/// Appends a known-length field section.
fn put_fields(out: &mut Vec<u8>, fields: &[(&str, &[u8])]) {
    let len: usize =
        fields.iter().map(|(n, v)| varint_len(n.len() as u64) + n.len() + varint_len(v.len() as u64) + v.len()).sum();
    put_varint(out, len as u64);
    for (n, v) in fields {
        put_varint(out, n.len() as u64);
        out.extend_from_slice(n.as_bytes());
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// Appends zeros so that the message written from `start` fills its Padmé bucket (`pad = true`).
fn pad_from(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    crate::pad::zero_extend(out, start + crate::pad::bucket(len));
}

/// Encodes a known-length request (lower-case header names, as RFC 9292 asks), padded to its bucket
/// when `pad` is set.
pub fn encode_request(
    method: &str,
    scheme: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    content: &[u8],
    pad: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + path.len() + content.len() + 64 * headers.len());
    put_varint(&mut out, 0);
    for part in [method, scheme, authority, path] {
        put_varint(&mut out, part.len() as u64);
        out.extend_from_slice(part.as_bytes());
    }
    put_fields(&mut out, headers);
    put_varint(&mut out, content.len() as u64);
    out.extend_from_slice(content);
    put_varint(&mut out, 0);
    if pad {
        pad_from(&mut out, 0);
    }
    out
}

/// Room a [`ResponseWriter`] keeps after the content for its trailer section (a receipt, base64, and its
/// salt: under 1 KiB), so that writing the trailers never moves the content to a larger allocation and
/// leaves the old one unwiped.
pub const TRAILER_ROOM: usize = 1536;

/// Room a [`ResponseWriter`] keeps for the content length: the four-byte varint, enough for 1 GiB.
const CONTENT_LENGTH_ROOM: usize = 4;
/// Largest content a response may carry.
pub const MAX_RESPONSE_CONTENT: usize = (1 << 30) - 1;

/// Writes a known-length response into a buffer that starts with `room` bytes reserved (the OHTTP
/// response nonce): status and header fields first, then the content (appended by the caller through
/// [`ResponseWriter::content`]), then [`ResponseWriter::finish`] fills in the content length and pads.
#[derive(Debug)]
pub struct ResponseWriter {
    buf: Vec<u8>,
    room: usize,
    content_start: usize,
}

impl ResponseWriter {
    /// A response with `status` and `headers`, after `room` reserved bytes, expecting `capacity` bytes of
    /// content.
    pub fn new(room: usize, status: u16, headers: &[(&str, &[u8])], capacity: usize) -> ResponseWriter {
        let mut buf = Vec::with_capacity(room + 64 + 64 * headers.len() + capacity + TRAILER_ROOM);
        buf.resize(room, 0);
        put_varint(&mut buf, 1);
        put_varint(&mut buf, u64::from(status));
        put_fields(&mut buf, headers);
        buf.resize(buf.len() + CONTENT_LENGTH_ROOM, 0);
        let content_start = buf.len();
        ResponseWriter { buf, room, content_start }
    }

    /// The buffer to append the content to.
    pub fn content(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The content written so far.
    pub fn written(&self) -> &[u8] {
        &self.buf[self.content_start..]
    }

    /// Wipes the content written so far (a response that will not be sent).
    pub fn clear_content(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf[self.content_start..]);
        self.buf.truncate(self.content_start);
    }

    /// Fills in the content length (shortest form: content under 16 KiB moves left by up to three
    /// bytes), appends the empty trailer section and the padding. Returns the buffer: `room` bytes, then
    /// the padded response.
    pub fn finish(self) -> Result<Vec<u8>, BhttpError> {
        self.finish_with_trailers(&[])
    }

    /// [`ResponseWriter::finish`] with a trailer section: fields computed from the content (a receipt).
    pub fn finish_with_trailers(mut self, trailers: &[(&str, &[u8])]) -> Result<Vec<u8>, BhttpError> {
        let content_len = self.buf.len() - self.content_start;
        if content_len > MAX_RESPONSE_CONTENT {
            return Err(malformed(format!("response content of {content_len} bytes is over 1 GiB")));
        }
        let mut length = Vec::with_capacity(CONTENT_LENGTH_ROOM);
        put_varint(&mut length, content_len as u64);
        let length_at = self.content_start - CONTENT_LENGTH_ROOM;
        let shift = CONTENT_LENGTH_ROOM - length.len();
        if shift > 0 {
            self.buf.copy_within(self.content_start.., self.content_start - shift);
            self.buf.truncate(self.buf.len() - shift);
        }
        self.buf[length_at..length_at + length.len()].copy_from_slice(&length);
        put_fields(&mut self.buf, trailers);
        pad_from(&mut self.buf, self.room);
        Ok(std::mem::take(&mut self.buf))
    }
}

impl Drop for ResponseWriter {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_boundary() {
        for v in [0u64, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, (1 << 62) - 1] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            let mut r = Reader { buf: &out, pos: 0 };
            assert_eq!(r.varint("x").unwrap(), v);
            assert!(r.at_end());
        }
    }

    #[test]
    fn a_request_round_trips_and_its_padding_must_be_zero() {
        let body = br#"{"inputs":[]}"#;
        let enc = encode_request(
            "POST",
            "https",
            "veil",
            "/v2/models/iris/infer",
            &[("content-type", b"application/json")],
            body,
            true,
        );
        assert_eq!(enc.len(), 1024);
        let r = parse_request(&enc).unwrap();
        assert_eq!((r.method, r.path), ("POST", "/v2/models/iris/infer"));
        assert_eq!(r.header("Content-Type"), Some(&b"application/json"[..]));
        assert_eq!(r.content.as_slice(), body);
        let mut bad = enc.clone();
        *bad.last_mut().unwrap() = 1;
        assert_eq!(parse_request(&bad).err(), Some(BhttpError::Padding));
    }

    #[test]
    fn responses_are_written_in_place_with_the_shortest_content_length() {
        for size in [0usize, 5, 63, 64, 16383, 16384, 100_000] {
            let mut w = ResponseWriter::new(32, 200, &[("content-type", b"application/json")], size);
            w.content().extend(std::iter::repeat_n(b'x', size));
            let buf = w.finish().unwrap();
            let msg = &buf[32..];
            assert_eq!(msg.len(), crate::pad::bucket(msg.len()), "size {size}");
            let r = parse_response(msg).unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.content.as_slice().len(), size);
            assert!(r.content.as_slice().iter().all(|&b| b == b'x'));
        }
    }

    #[test]
    fn the_largest_receipts_trailers_fit_the_room_kept_for_them() {
        // Finding of review: trailers are written after the content, in its buffer; outgrowing the room
        // kept would move the buffer and leave a freed copy of the answer's plaintext behind.
        use base64::Engine;
        let r = crate::envelope::tests::largest_receipt();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&r.receipt);
        let salt = hex::encode(r.salt.as_ref());
        let trailers: [(&str, &[u8]); 2] = [
            (crate::ohttp::RECEIPT_TRAILER, encoded.as_bytes()),
            (crate::ohttp::RECEIPT_SALT_TRAILER, salt.as_bytes()),
        ];
        let mut w = ResponseWriter::new(32, 200, &[("content-type", b"application/json")], 70_000);
        w.content().extend(std::iter::repeat_n(b'x', 70_000));
        let before = (w.buf.as_ptr(), w.buf.capacity());
        put_fields(&mut w.buf, &trailers);
        assert_eq!((w.buf.as_ptr(), w.buf.capacity()), before, "the trailers moved the answer's buffer");
    }

    #[test]
    fn truncated_and_malformed_requests_are_named() {
        assert_eq!(parse_request(&[]).err(), Some(BhttpError::Truncated("framing indicator")));
        assert_eq!(parse_request(&[1]).err(), Some(BhttpError::NotARequest(1)));
        let enc = encode_request("GET", "https", "x", "/v2/health/ready", &[], b"", false);
        let control = 1 + (1 + 3) + (1 + 5) + (1 + 1) + (1 + 16);
        assert_eq!(enc.len(), control + 3);
        for cut in 1..enc.len() {
            // A cut inside the control data is truncation; after it, absent sections read as empty.
            let got = parse_request(&enc[..cut]);
            assert_eq!(got.is_ok(), cut >= control, "cut at {cut}: {got:?}");
        }
        let lower = encode_request("get", "https", "x", "/", &[], b"", false);
        assert!(matches!(parse_request(&lower), Err(BhttpError::Malformed(_))));
        let nopath = encode_request("GET", "https", "x", "v2", &[], b"", false);
        assert!(matches!(parse_request(&nopath), Err(BhttpError::Malformed(_))));
        let ctl = encode_request("GET", "https", "x", "/", &[("x-a", b"a\nb")], b"", false);
        assert!(matches!(parse_request(&ctl), Err(BhttpError::Malformed(_))));
    }

    #[test]
    fn rfc9458_example_request_is_a_truncated_known_length_get() {
        let req = hex::decode("00034745540568747470730b6578616d706c652e636f6d012f").unwrap();
        let r = parse_request(&req).unwrap();
        assert_eq!((r.method, r.authority, r.path), ("GET", &b"example.com"[..], "/"));
        assert!(r.headers.is_empty() && r.content.as_slice().is_empty());
        let bytes = hex::decode("0140c8").unwrap();
        assert_eq!(parse_response(&bytes).unwrap().status, 200);
    }
}

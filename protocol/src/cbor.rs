//! A small, strict, zero-copy CBOR (RFC 8949) reader, and the writer of the canonical encodings Veil makes.
//!
//! Why not a general CBOR crate: every byte here is hostile, and a general decoder builds a tree whose
//! shape the attacker chooses. This reader never allocates, never recurses deeper than
//! [`MAX_DEPTH`], borrows byte and text strings from the input, and reports the offset of the first
//! problem. Definite and indefinite-length arrays and maps are accepted (real Nitro documents use
//! indefinite-length payload maps); indefinite-length byte and text strings are not (no NSM emits them,
//! and they would force a copy). Floats and undefined are rejected outright: no field can hold one.
//!
//! Invariant: `pos <= data.len()` at all times; every read checks the remaining length first.

/// Deepest nesting [`Reader::skip`] follows. Attestation documents nest three levels at most.
pub const MAX_DEPTH: usize = 8;

/// What went wrong, and where (byte offset into the buffer being read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CborError {
    pub offset: usize,
    pub reason: &'static str,
}

/// The length of an array or map: a count, or "until the break byte".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    Definite(u64),
    Indefinite,
}

/// One data item's head, as [`Reader::item`] returns it: scalars and strings whole (strings borrowed from the
/// input), containers and tags as their head only, with their contents still to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    Uint(u64),
    /// The negative integer `-1 - n`, as `n`.
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    /// An array of this many items (or up to a break), which follow.
    Array(Len),
    /// A map of this many key-value pairs (or up to a break), which follow.
    Map(Len),
    /// A tag, whose one item follows.
    Tag(u64),
    Bool(bool),
    Null,
}

/// The head of one data item, with its argument decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Uint(u64),
    Nint(u64),
    Bytes(u64),
    Text(u64),
    Array(Len),
    Map(Len),
    Tag(u64),
    False,
    True,
    Null,
}

#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

const BREAK: u8 = 0xff;

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub fn offset(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn err(&self, reason: &'static str) -> CborError {
        CborError { offset: self.pos, reason }
    }

    fn peek_byte(&self) -> Result<u8, CborError> {
        self.data.get(self.pos).copied().ok_or_else(|| self.err("unexpected end of data"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CborError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.err("length overflows"))?;
        let slice = self.data.get(self.pos..end).ok_or_else(|| self.err("length runs past the end of the data"))?;
        self.pos = end;
        Ok(slice)
    }

    fn head(&mut self) -> Result<Head, CborError> {
        let start = self.pos;
        let initial = self.peek_byte()?;
        self.pos += 1;
        let major = initial >> 5;
        let info = initial & 0x1f;
        let at = |reason| CborError { offset: start, reason };
        // Major type 7 first: its "argument" is not a length.
        if major == 7 {
            return match info {
                20 => Ok(Head::False),
                21 => Ok(Head::True),
                22 => Ok(Head::Null),
                23 => Err(at("undefined is not allowed")),
                25..=27 => Err(at("floating-point values are not allowed")),
                31 => Err(at("unexpected break")),
                _ => Err(at("unsupported simple value")),
            };
        }
        let arg: Option<u64> = match info {
            0..=23 => Some(u64::from(info)),
            24 => Some(u64::from(self.take(1)?[0])),
            25 => Some(u64::from(u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| at("short"))?))),
            26 => Some(u64::from(u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| at("short"))?))),
            27 => Some(u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| at("short"))?)),
            31 => None,
            _ => return Err(at("reserved additional information value")),
        };
        match (major, arg) {
            (0, Some(v)) => Ok(Head::Uint(v)),
            (1, Some(v)) => Ok(Head::Nint(v)),
            (2, Some(v)) => Ok(Head::Bytes(v)),
            (3, Some(v)) => Ok(Head::Text(v)),
            (4, Some(v)) => Ok(Head::Array(Len::Definite(v))),
            (4, None) => Ok(Head::Array(Len::Indefinite)),
            (5, Some(v)) => Ok(Head::Map(Len::Definite(v))),
            (5, None) => Ok(Head::Map(Len::Indefinite)),
            (6, Some(v)) => Ok(Head::Tag(v)),
            (2 | 3, None) => Err(at("indefinite-length strings are not allowed")),
            _ => Err(at("indefinite length not allowed for this type")),
        }
    }

    /// The `len` bytes of a string's body.
    fn body(&mut self, len: u64) -> Result<&'a [u8], CborError> {
        let n = usize::try_from(len).map_err(|_| self.err("length does not fit in memory"))?;
        self.take(n)
    }

    /// The body of the text string whose head starts at `start`.
    fn text_body(&mut self, len: u64, start: usize) -> Result<&'a str, CborError> {
        let raw = self.body(len)?;
        std::str::from_utf8(raw).map_err(|_| CborError { offset: start, reason: "text is not valid UTF-8" })
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Reads the next item, whatever its type: for readers of formats whose shape is not fixed in advance.
    /// Same checks as the typed reads (lengths bounded by the data, UTF-8, no floats or undefined).
    pub fn item(&mut self) -> Result<Item<'a>, CborError> {
        let start = self.pos;
        Ok(match self.head()? {
            Head::Uint(v) => Item::Uint(v),
            Head::Nint(v) => Item::Nint(v),
            Head::Bytes(len) => Item::Bytes(self.body(len)?),
            Head::Text(len) => Item::Text(self.text_body(len, start)?),
            Head::Array(len) => Item::Array(len),
            Head::Map(len) => Item::Map(len),
            Head::Tag(t) => Item::Tag(t),
            Head::False => Item::Bool(false),
            Head::True => Item::Bool(true),
            Head::Null => Item::Null,
        })
    }

    /// Peeks at the next item: true when it is `null` (without consuming it).
    pub fn next_is_null(&self) -> bool {
        self.data.get(self.pos) == Some(&0xf6)
    }

    /// Peeks: true when the next item is a tag (major type 6).
    pub fn next_is_tag(&self) -> bool {
        self.data.get(self.pos).is_some_and(|b| b >> 5 == 6)
    }

    pub fn null(&mut self) -> Result<(), CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Null => Ok(()),
            _ => Err(CborError { offset: start, reason: "expected null" }),
        }
    }

    pub fn uint(&mut self) -> Result<u64, CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Uint(v) => Ok(v),
            _ => Err(CborError { offset: start, reason: "expected an unsigned integer" }),
        }
    }

    /// An integer, either sign, as i128 so that every CBOR integer fits.
    pub fn int(&mut self) -> Result<i128, CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Uint(v) => Ok(i128::from(v)),
            Head::Nint(v) => Ok(-1 - i128::from(v)),
            _ => Err(CborError { offset: start, reason: "expected an integer" }),
        }
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Bytes(len) => self.body(len),
            _ => Err(CborError { offset: start, reason: "expected a byte string" }),
        }
    }

    pub fn text(&mut self) -> Result<&'a str, CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Text(len) => self.text_body(len, start),
            _ => Err(CborError { offset: start, reason: "expected a text string" }),
        }
    }

    pub fn tag(&mut self) -> Result<u64, CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Tag(t) => Ok(t),
            _ => Err(CborError { offset: start, reason: "expected a tag" }),
        }
    }

    pub fn array(&mut self) -> Result<Len, CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Array(len) => Ok(len),
            _ => Err(CborError { offset: start, reason: "expected an array" }),
        }
    }

    pub fn map(&mut self) -> Result<Len, CborError> {
        let start = self.pos;
        match self.head()? {
            Head::Map(len) => Ok(len),
            _ => Err(CborError { offset: start, reason: "expected a map" }),
        }
    }

    /// For an indefinite-length container: consumes the break byte and returns true if it is next.
    pub fn at_break(&mut self) -> Result<bool, CborError> {
        if self.peek_byte()? == BREAK {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Skips one complete data item of any supported type, nested at most `MAX_DEPTH` deep.
    pub fn skip(&mut self) -> Result<(), CborError> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Result<(), CborError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.head()? {
            Head::Uint(_) | Head::Nint(_) | Head::False | Head::True | Head::Null => Ok(()),
            Head::Bytes(len) | Head::Text(len) => self.body(len).map(|_| ()),
            Head::Tag(_) => self.skip_at(depth + 1),
            Head::Array(len) => self.skip_items(len, 1, depth),
            Head::Map(len) => self.skip_items(len, 2, depth),
        }
    }

    fn skip_items(&mut self, len: Len, per_entry: u64, depth: usize) -> Result<(), CborError> {
        match len {
            Len::Definite(n) => {
                // Each item takes at least one byte, so a count beyond the remaining input is a lie:
                // fail before looping over it.
                let items = n.checked_mul(per_entry).ok_or_else(|| self.err("count overflows"))?;
                if items > (self.data.len() - self.pos) as u64 {
                    return Err(self.err("count exceeds the remaining data"));
                }
                for _ in 0..items {
                    self.skip_at(depth + 1)?;
                }
                Ok(())
            }
            Len::Indefinite => loop {
                if self.at_break()? {
                    return Ok(());
                }
                for _ in 0..per_entry {
                    self.skip_at(depth + 1)?;
                }
            },
        }
    }
}

/// Appends a CBOR head (major type and argument, shortest form) to `out`.
pub fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if let Ok(v) = u8::try_from(arg) {
        out.extend_from_slice(&[m | 24, v]);
    } else if let Ok(v) = u16::try_from(arg) {
        out.push(m | 25);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(arg) {
        out.push(m | 26);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn write_text(out: &mut Vec<u8>, s: &str) {
    write_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn write_null(out: &mut Vec<u8>) {
    out.push(0xf6);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rejects_lengths_past_the_end() {
        let mut r = Reader::new(&[0x5a, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.bytes().unwrap_err().reason, "length runs past the end of the data");
        let mut r = Reader::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.skip().unwrap_err().reason, "count exceeds the remaining data");
    }

    #[test]
    fn bounds_nesting() {
        let deep = vec![0x81u8; 64];
        assert_eq!(Reader::new(&deep).skip().unwrap_err().reason, "nested too deeply");
    }

    #[test]
    fn indefinite_map_and_heads_round_trip() {
        let mut r = Reader::new(&[0xbf, 0x61, b'a', 0x01, 0xff]);
        assert_eq!(r.map().unwrap(), Len::Indefinite);
        assert!(!r.at_break().unwrap());
        assert_eq!(r.text().unwrap(), "a");
        assert_eq!(r.uint().unwrap(), 1);
        assert!(r.at_break().unwrap());
        assert!(r.is_empty());
        for v in [0u64, 23, 24, 255, 256, 65535, 65536, u32::MAX as u64 + 1] {
            let mut out = Vec::new();
            write_head(&mut out, 0, v);
            assert_eq!(Reader::new(&out).uint().unwrap(), v);
        }
    }

    #[test]
    fn item_reads_any_item_with_the_same_checks() {
        let mut out = Vec::new();
        write_head(&mut out, 4, 7);
        write_head(&mut out, 0, 500);
        write_head(&mut out, 1, 34);
        write_bytes(&mut out, b"ab");
        write_text(&mut out, "cd");
        write_head(&mut out, 6, 18);
        write_null(&mut out);
        out.extend_from_slice(&[0xf5, 0xbf]);
        let mut r = Reader::new(&out);
        let items: Vec<Item<'_>> = std::iter::from_fn(|| (!r.is_empty()).then(|| r.item().unwrap())).collect();
        assert_eq!(
            items,
            [
                Item::Array(Len::Definite(7)),
                Item::Uint(500),
                Item::Nint(34),
                Item::Bytes(b"ab"),
                Item::Text("cd"),
                Item::Tag(18),
                Item::Null,
                Item::Bool(true),
                Item::Map(Len::Indefinite),
            ]
        );
        assert_eq!(Reader::new(&[0xff]).item().unwrap_err().reason, "unexpected break");
        assert_eq!(Reader::new(&[0x61, 0xff]).item().unwrap_err().reason, "text is not valid UTF-8");
        assert_eq!(Reader::new(&[0x42, 0x00]).item().unwrap_err().reason, "length runs past the end of the data");
        assert_eq!(Reader::new(&[0xf9, 0, 0]).item().unwrap_err().reason, "floating-point values are not allowed");
        let mut r = Reader::new(&[0x01, 0x02]);
        r.item().unwrap();
        assert_eq!(r.remaining(), 1);
    }

    #[test]
    fn rejects_floats_undefined_and_indefinite_strings() {
        assert_eq!(Reader::new(&[0xf7]).skip().unwrap_err().reason, "undefined is not allowed");
        assert_eq!(
            Reader::new(&[0xfb, 0, 0, 0, 0, 0, 0, 0, 0]).skip().unwrap_err().reason,
            "floating-point values are not allowed"
        );
        assert_eq!(
            Reader::new(&[0x5f, 0x41, 0, 0xff]).skip().unwrap_err().reason,
            "indefinite-length strings are not allowed"
        );
        assert_eq!(Reader::new(&[0x61, 0xff]).text().unwrap_err().reason, "text is not valid UTF-8");
    }
}

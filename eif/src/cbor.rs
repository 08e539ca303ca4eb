//! The small subset of CBOR (RFC 8949) that EIF signature sections use, as a tree of values.
//!
//! nitro-cli writes the signature section with `serde_cbor`: an array of maps with text keys,
//! whose `Vec<u8>` fields come out as *arrays of small integers* (serde's default for `Vec<u8>`),
//! not byte strings; the COSE_Sign1 inside uses byte strings. Maps are looked up by key in whatever
//! order serde_cbor wrote them, so this module builds a [`Value`] tree, which Veil's own formats never
//! need. The bytes are read by `veil_protocol::cbor::Reader`, the bounded reader every Veil format
//! shares (lengths checked against the data, UTF-8 checked, floats and undefined refused); on top of
//! it this module refuses indefinite lengths (serde_cbor writes none) and nesting deeper than
//! [`MAX_DEPTH`], and checks every declared element count against the bytes that remain before
//! allocating for it, so a hostile length costs nothing. The writer is `veil_protocol::cbor`'s too,
//! with the serde_cbor shapes named in [`enc`].

use veil_protocol::cbor::{CborError, Item, Len, Reader};

/// Nesting limit: the real structures are at most four deep.
const MAX_DEPTH: usize = 16;

/// A decoded CBOR item borrowing from the input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Uint(u64),
    /// A negative integer `-1 - n`, stored as `n`.
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Tag(u64, Box<Value<'a>>),
    Bool(bool),
    Null,
}

impl<'a> Value<'a> {
    /// Looks up a text key in a map.
    pub(crate) fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(entries) => {
                entries.iter().find(|(k, _)| matches!(k, Value::Text(t) if *t == key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Reads a byte field the way serde_cbor may have written it: a byte string, or an array of
    /// integers 0..=255.
    pub(crate) fn as_byte_vec(&self) -> Result<Vec<u8>, String> {
        match self {
            Value::Bytes(b) => Ok(b.to_vec()),
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::Uint(n) => u8::try_from(*n).map_err(|_| format!("array element {n} is not a byte")),
                    other => Err(format!("array element {} is not a byte", other.kind())),
                })
                .collect(),
            other => Err(format!("expected bytes, found {}", other.kind())),
        }
    }

    /// Short description of the item's type, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Uint(_) => "an unsigned integer",
            Value::Nint(_) => "a negative integer",
            Value::Bytes(_) => "a byte string",
            Value::Text(_) => "a text string",
            Value::Array(_) => "an array",
            Value::Map(_) => "a map",
            Value::Tag(..) => "a tagged item",
            Value::Bool(_) => "a boolean",
            Value::Null => "null",
        }
    }
}

/// Decodes exactly one item that must span all of `input`.
pub(crate) fn decode(input: &[u8]) -> Result<Value<'_>, String> {
    let mut r = Reader::new(input);
    let v = value(&mut r, 0)?;
    if !r.is_empty() {
        return Err(format!("{} bytes of trailing data after the CBOR item at offset {}", r.remaining(), r.offset()));
    }
    Ok(v)
}

fn at(e: CborError) -> String {
    format!("CBOR at offset {}: {}", e.offset, e.reason)
}

fn value<'a>(r: &mut Reader<'a>, depth: usize) -> Result<Value<'a>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("CBOR nested deeper than {MAX_DEPTH} levels"));
    }
    let start = r.offset();
    Ok(match r.item().map_err(at)? {
        Item::Uint(n) => Value::Uint(n),
        Item::Nint(n) => Value::Nint(n),
        Item::Bytes(b) => Value::Bytes(b),
        Item::Text(t) => Value::Text(t),
        Item::Array(len) => {
            let n = count(r, len, 1, start)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value(r, depth + 1)?);
            }
            Value::Array(items)
        }
        Item::Map(len) => {
            let n = count(r, len, 2, start)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let k = value(r, depth + 1)?;
                let v = value(r, depth + 1)?;
                entries.push((k, v));
            }
            Value::Map(entries)
        }
        Item::Tag(tag) => Value::Tag(tag, Box::new(value(r, depth + 1)?)),
        Item::Bool(b) => Value::Bool(b),
        Item::Null => Value::Null,
    })
}

/// Checks a container's declared element count against the remaining input (each element needs at least
/// `min_bytes` bytes) before any allocation sized by it.
fn count(r: &Reader<'_>, len: Len, min_bytes: usize, start: usize) -> Result<usize, String> {
    let Len::Definite(n) = len else {
        return Err(format!("indefinite-length CBOR at offset {start} is not accepted"));
    };
    usize::try_from(n).ok().filter(|n| n.saturating_mul(min_bytes) <= r.remaining()).ok_or_else(|| {
        format!("CBOR container at offset {start} declares {n} elements but only {} bytes remain", r.remaining())
    })
}

/// The definite-length CBOR nitro-cli's serde_cbor writes, in the canonical (shortest) heads of
/// `veil_protocol::cbor::write_head`.
pub(crate) mod enc {
    use veil_protocol::cbor::write_head;
    pub(crate) use veil_protocol::cbor::{write_bytes as bytes, write_text as text};

    pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
        write_head(out, 0, n);
    }
    /// Encodes the negative integer `-1 - n`.
    pub(crate) fn nint(out: &mut Vec<u8>, n: u64) {
        write_head(out, 1, n);
    }
    pub(crate) fn array(out: &mut Vec<u8>, n: usize) {
        write_head(out, 4, n as u64);
    }
    pub(crate) fn map(out: &mut Vec<u8>, n: usize) {
        write_head(out, 5, n as u64);
    }
    /// A `Vec<u8>` the way serde_cbor writes it: an array of unsigned integers.
    pub(crate) fn byte_array(out: &mut Vec<u8>, b: &[u8]) {
        array(out, b.len());
        for &x in b {
            uint(out, u64::from(x));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_shapes_signature_sections_use() {
        let mut out = Vec::new();
        enc::array(&mut out, 1);
        enc::map(&mut out, 2);
        enc::text(&mut out, "signing_certificate");
        enc::byte_array(&mut out, &[0, 23, 24, 255]);
        enc::text(&mut out, "signature");
        enc::bytes(&mut out, &[9; 300]);
        let v = decode(&out).expect("decodes");
        let Value::Array(items) = v else { panic!("not an array") };
        assert_eq!(items[0].get("signing_certificate").map(|v| v.as_byte_vec()), Some(Ok(vec![0, 23, 24, 255])));
        assert_eq!(items[0].get("signature").map(|v| v.as_byte_vec()), Some(Ok(vec![9; 300])));
        // serde_cbor's encoding of [0, 23, 24, 255]: array(4), 0x00, 0x17, 0x18 0x18, 0x18 0xff.
        assert!(out.windows(7).any(|w| w == [0x84, 0x00, 0x17, 0x18, 0x18, 0x18, 0xff]));
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        // An array claiming 2^64-1 elements, a byte string claiming 4 GiB, a map claiming 2^32.
        for (input, expected) in [
            (&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], "declares"),
            (&[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00][..], "length runs past the end of the data"),
            (&[0xba, 0xff, 0xff, 0xff, 0xff][..], "declares"),
        ] {
            let err = decode(input).expect_err("must fail");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn refuses_indefinite_lengths_deep_nesting_and_trailing_bytes() {
        assert!(decode(&[0x9f, 0xff]).expect_err("indefinite").contains("indefinite"));
        let deep = vec![0x81u8; 100];
        assert!(decode(&deep).expect_err("deep").contains("nested"));
        assert!(decode(&[0x01, 0x02]).expect_err("trailing").contains("trailing"));
        assert!(decode(&[0x62, 0xff, 0xfe]).expect_err("utf8").contains("UTF-8"));
        assert!(decode(&[0xbf, 0xff]).expect_err("indefinite map").contains("indefinite"));
        assert!(decode(&[0xfb, 0, 0, 0, 0, 0, 0, 0, 0]).expect_err("float").contains("floating-point"));
    }

    #[test]
    fn byte_arrays_reject_values_over_255() {
        let mut out = Vec::new();
        enc::array(&mut out, 1);
        enc::uint(&mut out, 256);
        assert!(decode(&out).expect("decodes").as_byte_vec().is_err());
    }
}

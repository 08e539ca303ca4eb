//! The small subset of CBOR (RFC 8949) that EIF signature sections use, decoded without trusting
//! a single length field.
//!
//! nitro-cli writes the signature section with `serde_cbor`: an array of maps with text keys,
//! whose `Vec<u8>` fields come out as *arrays of small integers* (serde's default for `Vec<u8>`),
//! not byte strings; the COSE_Sign1 inside uses byte strings. This decoder accepts definite-length
//! items of major types 0-5 and tag 6, plus simple values; it refuses indefinite lengths, floats
//! and nesting deeper than [`MAX_DEPTH`]. Every declared count is checked against the bytes that
//! remain before anything is allocated, so a hostile length costs nothing.

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
    Simple(u8),
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
            Value::Simple(_) => "a simple value",
        }
    }
}

/// Decodes exactly one item that must span all of `input`.
pub(crate) fn decode(input: &[u8]) -> Result<Value<'_>, String> {
    let mut d = Decoder { input, pos: 0 };
    let v = d.item(0)?;
    if d.pos != input.len() {
        return Err(format!("{} bytes of trailing data after the CBOR item at offset {}", input.len() - d.pos, d.pos));
    }
    Ok(v)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.input.get(self.pos).ok_or_else(|| format!("CBOR ends early at offset {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n_usize = usize::try_from(n).ok().filter(|n| *n <= self.remaining()).ok_or_else(|| {
            format!("CBOR item at offset {} declares {n} bytes but only {} remain", self.pos, self.remaining())
        })?;
        let out = &self.input[self.pos..self.pos + n_usize];
        self.pos += n_usize;
        Ok(out)
    }

    fn argument(&mut self, info: u8) -> Result<u64, String> {
        Ok(match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            31 => {
                return Err(format!("indefinite-length CBOR at offset {} is not accepted", self.pos));
            }
            _ => {
                return Err(format!("reserved CBOR additional info {info} at offset {}", self.pos));
            }
        })
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// Checks a declared element count against the remaining input (each element needs at least
    /// `min_bytes` bytes) before any allocation sized by it.
    fn count(&self, n: u64, min_bytes: usize) -> Result<usize, String> {
        usize::try_from(n).ok().filter(|n| n.saturating_mul(min_bytes) <= self.remaining()).ok_or_else(|| {
            format!(
                "CBOR container at offset {} declares {n} elements but only {} bytes remain",
                self.pos,
                self.remaining()
            )
        })
    }

    fn item(&mut self, depth: usize) -> Result<Value<'a>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("CBOR nested deeper than {MAX_DEPTH} levels"));
        }
        let start = self.pos;
        let initial = self.byte()?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        if major == 7 {
            return match info {
                0..=23 => Ok(Value::Simple(info)),
                24 => Ok(Value::Simple(self.byte()?)),
                _ => Err(format!("CBOR floats and breaks are not accepted (offset {start})")),
            };
        }
        let arg = self.argument(info)?;
        match major {
            0 => Ok(Value::Uint(arg)),
            1 => Ok(Value::Nint(arg)),
            2 => Ok(Value::Bytes(self.take(arg)?)),
            3 => {
                let raw = self.take(arg)?;
                std::str::from_utf8(raw)
                    .map(Value::Text)
                    .map_err(|_| format!("CBOR text string at offset {start} is not UTF-8"))
            }
            4 => {
                let n = self.count(arg, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.item(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            5 => {
                let n = self.count(arg, 2)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.item(depth + 1)?;
                    let v = self.item(depth + 1)?;
                    entries.push((k, v));
                }
                Ok(Value::Map(entries))
            }
            6 => Ok(Value::Tag(arg, Box::new(self.item(depth + 1)?))),
            _ => Err(format!("invalid CBOR major type at offset {start}")),
        }
    }
}

/// Minimal definite-length CBOR encoder, producing the canonical (shortest) heads that
/// serde_cbor produces.
pub(crate) mod enc {
    fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        if n < 24 {
            out.push(m | n as u8);
        } else if let Ok(b) = u8::try_from(n) {
            out.extend_from_slice(&[m | 24, b]);
        } else if let Ok(s) = u16::try_from(n) {
            out.push(m | 25);
            out.extend_from_slice(&s.to_be_bytes());
        } else if let Ok(w) = u32::try_from(n) {
            out.push(m | 26);
            out.extend_from_slice(&w.to_be_bytes());
        } else {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }

    pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
        head(out, 0, n);
    }
    /// Encodes the negative integer `-1 - n`.
    pub(crate) fn nint(out: &mut Vec<u8>, n: u64) {
        head(out, 1, n);
    }
    pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        head(out, 2, b.len() as u64);
        out.extend_from_slice(b);
    }
    pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
        head(out, 3, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    pub(crate) fn array(out: &mut Vec<u8>, n: usize) {
        head(out, 4, n as u64);
    }
    pub(crate) fn map(out: &mut Vec<u8>, n: usize) {
        head(out, 5, n as u64);
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
        for input in [
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00][..],
            &[0xba, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            let err = decode(input).expect_err("must fail");
            assert!(err.contains("declares"), "{err}");
        }
    }

    #[test]
    fn refuses_indefinite_lengths_deep_nesting_and_trailing_bytes() {
        assert!(decode(&[0x9f, 0xff]).expect_err("indefinite").contains("indefinite"));
        let deep = vec![0x81u8; 100];
        assert!(decode(&deep).expect_err("deep").contains("nested"));
        assert!(decode(&[0x01, 0x02]).expect_err("trailing").contains("trailing"));
        assert!(decode(&[0x62, 0xff, 0xfe]).expect_err("utf8").contains("UTF-8"));
    }

    #[test]
    fn byte_arrays_reject_values_over_255() {
        let mut out = Vec::new();
        enc::array(&mut out, 1);
        enc::uint(&mut out, 256);
        assert!(decode(&out).expect("decodes").as_byte_vec().is_err());
    }
}

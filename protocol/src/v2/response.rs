//! v2 inference responses, written straight into the buffer they are sealed in.
//!
//! Outputs the request asked for as binary ([`super::Request::binary_output`]) carry
//! `parameters.binary_data_size` and no `data` in the JSON; their raw bytes follow the JSON, in the order
//! the outputs are listed, and [`write`] returns the JSON's length for the `Inference-Header-Content-Length`
//! response header. Other outputs carry `data` as a flat JSON array, as before. Either way the data comes
//! from borrowed slices (ONNX Runtime's own output buffers): nothing is copied into an owned tensor first.
//!
//! Where the answer goes is a [`Sink`]: it learns whether binary data follows (and the JSON's length)
//! before the first byte, so that an HTTP response can put the header and content type first and take the
//! body straight after them. A binary answer's JSON is written aside first (it is small: names, shapes
//! and sizes, plus any outputs sent as JSON), then the raw data straight into the sink.
use half::{bf16, f16};
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::Write;

use super::{BINARY_DATA_SIZE, Datatype, V2Error, err};

/// Borrowed, flat, row-major output data.
#[derive(Debug, Clone, Copy)]
pub enum Elements<'a> {
    Bool(&'a [bool]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bytes(&'a [Vec<u8>]),
}

impl Elements<'_> {
    /// The datatype of these elements.
    pub fn datatype(&self) -> Datatype {
        match self {
            Elements::Bool(_) => Datatype::Bool,
            Elements::U8(_) => Datatype::Uint8,
            Elements::U16(_) => Datatype::Uint16,
            Elements::U32(_) => Datatype::Uint32,
            Elements::U64(_) => Datatype::Uint64,
            Elements::I8(_) => Datatype::Int8,
            Elements::I16(_) => Datatype::Int16,
            Elements::I32(_) => Datatype::Int32,
            Elements::I64(_) => Datatype::Int64,
            Elements::F16(_) => Datatype::Fp16,
            Elements::Bf16(_) => Datatype::Bf16,
            Elements::F32(_) => Datatype::Fp32,
            Elements::F64(_) => Datatype::Fp64,
            Elements::Bytes(_) => Datatype::Bytes,
        }
    }

    /// Bytes of binary data these elements take.
    pub fn binary_size(&self) -> usize {
        match self {
            Elements::Bytes(v) => v.iter().map(|b| 4 + b.len()).sum(),
            Elements::Bool(v) => v.len(),
            Elements::U8(v) => v.len(),
            Elements::I8(v) => v.len(),
            Elements::U16(v) => 2 * v.len(),
            Elements::I16(v) => 2 * v.len(),
            Elements::F16(v) => 2 * v.len(),
            Elements::Bf16(v) => 2 * v.len(),
            Elements::U32(v) => 4 * v.len(),
            Elements::I32(v) => 4 * v.len(),
            Elements::F32(v) => 4 * v.len(),
            Elements::U64(v) => 8 * v.len(),
            Elements::I64(v) => 8 * v.len(),
            Elements::F64(v) => 8 * v.len(),
        }
    }

    /// Appends the binary data: little-endian; `BOOL` one byte each; `BYTES` length-prefixed.
    fn write_binary(&self, out: &mut Vec<u8>) {
        fn le<T: Copy, const N: usize>(out: &mut Vec<u8>, v: &[T], f: impl Fn(T) -> [u8; N]) {
            for &x in v {
                out.extend_from_slice(&f(x));
            }
        }
        out.reserve(self.binary_size());
        match self {
            Elements::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            Elements::U8(v) => out.extend_from_slice(v),
            Elements::I8(v) => le(out, v, i8::to_le_bytes),
            Elements::U16(v) => le(out, v, u16::to_le_bytes),
            Elements::I16(v) => le(out, v, i16::to_le_bytes),
            Elements::F16(v) => le(out, v, f16::to_le_bytes),
            Elements::Bf16(v) => le(out, v, bf16::to_le_bytes),
            Elements::U32(v) => le(out, v, u32::to_le_bytes),
            Elements::I32(v) => le(out, v, i32::to_le_bytes),
            Elements::F32(v) => le(out, v, f32::to_le_bytes),
            Elements::U64(v) => le(out, v, u64::to_le_bytes),
            Elements::I64(v) => le(out, v, i64::to_le_bytes),
            Elements::F64(v) => le(out, v, f64::to_le_bytes),
            Elements::Bytes(v) => {
                for b in *v {
                    // An element over 4 GiB cannot be in a response bounded far below that.
                    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    /// Appends the data as a flat JSON array. `BYTES` elements must be UTF-8 to be JSON strings.
    fn write_json<W: Write>(&self, out: &mut W, name: &str) -> Result<(), V2Error> {
        fn json<W: Write, T: Serialize + ?Sized>(out: &mut W, v: &T) -> Result<(), V2Error> {
            serde_json::to_writer(&mut *out, v).map_err(|e| err(format!("could not encode the response: {e}")))
        }
        fn floats<W: Write, T: Copy>(out: &mut W, v: &[T], f: impl Fn(T) -> f32) -> Result<(), V2Error> {
            put(out, b"[")?;
            for (i, &x) in v.iter().enumerate() {
                if i > 0 {
                    put(out, b",")?;
                }
                json(out, &f(x))?;
            }
            put(out, b"]")?;
            Ok(())
        }
        match self {
            Elements::Bool(v) => json(out, v),
            Elements::U8(v) => json(out, v),
            Elements::U16(v) => json(out, v),
            Elements::U32(v) => json(out, v),
            Elements::U64(v) => json(out, v),
            Elements::I8(v) => json(out, v),
            Elements::I16(v) => json(out, v),
            Elements::I32(v) => json(out, v),
            Elements::I64(v) => json(out, v),
            Elements::F16(v) => floats(out, v, f16::to_f32),
            Elements::Bf16(v) => floats(out, v, bf16::to_f32),
            Elements::F32(v) => json(out, v),
            Elements::F64(v) => json(out, v),
            Elements::Bytes(v) => {
                let mut texts = Vec::with_capacity(v.len());
                for (i, b) in v.iter().enumerate() {
                    texts.push(std::str::from_utf8(b).map_err(|_| {
                        err(format!(
                            "output {name:?}: element {i} is not UTF-8, so it cannot be a JSON string: ask for the \
                             output as binary data (its parameters.binary_data: true)"
                        ))
                    })?);
                }
                json(out, &texts)
            }
        }
    }
}

/// One output of an answer.
#[derive(Debug, Clone)]
pub struct Output<'a> {
    pub name: &'a str,
    pub shape: Vec<u64>,
    pub data: Elements<'a>,
    /// Extra facts about the output (`zipmap_keys`, ...); `binary_data_size` is added when binary.
    pub parameters: Option<&'a Map<String, Value>>,
    /// Whether the output's data travels as binary data after the JSON.
    pub binary: bool,
}

/// An answer to write.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    pub model_name: &'a str,
    pub model_version: Option<&'a str>,
    pub id: Option<&'a str>,
    pub outputs: &'a [Output<'a>],
}

/// Where an answer is written.
pub trait Sink {
    /// Called once, before the answer's first byte, with the JSON's length if binary data follows it
    /// (`Inference-Header-Content-Length`); returns the buffer to append the body to.
    fn start(&mut self, header_length: Option<u64>) -> &mut Vec<u8>;
}

/// A plain buffer: the body is appended to it.
impl Sink for Vec<u8> {
    fn start(&mut self, _: Option<u64>) -> &mut Vec<u8> {
        self
    }
}

/// Writes `answer` to `sink`. Returns the JSON's length when binary data follows it (the answer's
/// `Inference-Header-Content-Length`), or `None` when the answer is JSON alone.
pub fn write(sink: &mut impl Sink, answer: &Answer<'_>) -> Result<Option<u64>, V2Error> {
    if !answer.outputs.iter().any(|o| o.binary) {
        write_json(sink.start(None), answer)?;
        return Ok(None);
    }
    // The JSON's length first (written to a counter: nothing of it is kept), so that the sink can be
    // sized once and no plaintext is left behind in a buffer that grew.
    let mut counter = Counter(0);
    write_json(&mut counter, answer)?;
    let n = counter.0 as u64;
    let out = sink.start(Some(n));
    let start = out.len();
    out.reserve(counter.0 + answer.outputs.iter().filter(|o| o.binary).map(|o| o.data.binary_size()).sum::<usize>());
    write_json(out, answer)?;
    if (out.len() - start) as u64 != n {
        return Err(err("the answer's JSON changed length between two writings"));
    }
    for o in answer.outputs.iter().filter(|o| o.binary) {
        o.data.write_binary(out);
    }
    Ok(Some(n))
}

/// Counts what is written, keeps nothing.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn put<W: Write>(out: &mut W, bytes: &[u8]) -> Result<(), V2Error> {
    out.write_all(bytes).map_err(|e| err(format!("could not encode the response: {e}")))
}

/// The answer's JSON: every output, with `data` for those not sent as binary.
fn write_json<W: Write>(out: &mut W, answer: &Answer<'_>) -> Result<(), V2Error> {
    let text = |out: &mut W, s: &str| {
        serde_json::to_writer(&mut *out, s).map_err(|e| err(format!("could not encode the response: {e}")))
    };
    put(out, b"{\"model_name\":")?;
    text(out, answer.model_name)?;
    if let Some(v) = answer.model_version {
        put(out, b",\"model_version\":")?;
        text(out, v)?;
    }
    if let Some(id) = answer.id {
        put(out, b",\"id\":")?;
        text(out, id)?;
    }
    put(out, b",\"outputs\":[")?;
    for (i, o) in answer.outputs.iter().enumerate() {
        if i > 0 {
            put(out, b",")?;
        }
        put(out, b"{\"name\":")?;
        text(out, o.name)?;
        put(out, b",\"datatype\":\"")?;
        put(out, o.data.datatype().as_str().as_bytes())?;
        put(out, b"\",\"shape\":")?;
        serde_json::to_writer(&mut *out, &o.shape).map_err(|e| err(format!("could not encode the response: {e}")))?;
        let mut parameters = o.parameters.cloned().unwrap_or_default();
        if o.binary {
            parameters.insert(BINARY_DATA_SIZE.into(), Value::from(o.data.binary_size() as u64));
        }
        if !parameters.is_empty() {
            put(out, b",\"parameters\":")?;
            serde_json::to_writer(&mut *out, &parameters)
                .map_err(|e| err(format!("could not encode the response: {e}")))?;
        }
        if !o.binary {
            put(out, b",\"data\":")?;
            o.data.write_json(out, o.name)?;
        }
        put(out, b"}")?;
    }
    put(out, b"]}")?;
    Ok(())
}

/// A response read back: its JSON, and each binary output's raw data by name. For clients and tests; the
/// enclave only writes responses.
#[derive(Debug)]
pub struct ReadResponse<'a> {
    pub json: Value,
    pub binary: Vec<(String, &'a [u8])>,
}

/// Reads a response body with its `Inference-Header-Content-Length` (if the response had one).
pub fn read(body: &[u8], header_length: Option<u64>) -> Result<ReadResponse<'_>, V2Error> {
    let n = match header_length {
        None => body.len(),
        Some(n) => usize::try_from(n).ok().filter(|&n| n <= body.len()).ok_or_else(|| {
            err(format!("Inference-Header-Content-Length {n} is beyond the {}-byte body", body.len()))
        })?,
    };
    let json: Value = serde_json::from_slice(&body[..n]).map_err(|e| err(format!("response is not v2 JSON: {e}")))?;
    let mut binary = Vec::new();
    let mut at = n;
    for o in json.get("outputs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let Some(size) = o.pointer("/parameters/binary_data_size") else { continue };
        let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| err("bad binary_data_size"))?;
        let end =
            at.checked_add(size).filter(|&e| e <= body.len()).ok_or_else(|| err("binary data runs past the body"))?;
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        binary.push((name, &body[at..end]));
        at = end;
    }
    if at != body.len() {
        return Err(err(format!("{} bytes after the outputs' binary data", body.len() - at)));
    }
    Ok(ReadResponse { json, binary })
}

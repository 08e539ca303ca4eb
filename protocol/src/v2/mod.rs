//! Open Inference Protocol (KServe v2) tensors: JSON, and the binary tensor data extension.
//!
//! Requests: `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"?, "parameters"?}],
//! "outputs"?: [{"name", "parameters"?}]}`. `data` is row-major, flat or nested; [`Request::input`]
//! flattens it and checks that every element has the datatype's type and range and that the count equals
//! the product of the shape.
//!
//! The binary tensor data extension (Triton's, which KServe clients such as `tritonclient` use by
//! default): when the HTTP request carries `Inference-Header-Content-Length: n`, the body's first `n`
//! bytes are the JSON header, and after it come the raw data of every input whose
//! `parameters.binary_data_size` is set, one after the other in the order the inputs are listed. Raw data
//! is little-endian and row-major; `BOOL` is one byte per element (0 or 1); `BYTES` elements are each a
//! 4-byte little-endian length and that many bytes. [`parse`] assigns every byte of the tail to exactly one
//! input, or refuses the request. Answers follow the same rules ([`response`]).
//!
//! Pure and panic-free: the bytes come from a client through an untrusted parent. Errors name the input
//! and what was expected, never the values sent.
use std::ops::Range;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod response;

/// Most elements one tensor may hold (64 Mi): bounds memory long before the frame limit would.
pub const MAX_ELEMENTS: usize = 64 * 1024 * 1024;
/// Most dimensions a shape may have.
pub const MAX_RANK: usize = 16;
/// Most inputs or requested outputs one request may name.
pub const MAX_TENSORS: usize = 256;
/// Most elements of one `BYTES` tensor (256 Ki): each becomes its own allocation, here and in ONNX
/// Runtime, so an element costs far more memory than its 4 bytes on the wire.
pub const MAX_BYTES_ELEMENTS: usize = 256 * 1024;
/// Deepest nesting of `data` arrays accepted (a tensor of rank 16 nests 16 deep).
const MAX_DEPTH: usize = MAX_RANK + 1;
/// The HTTP header that says how long the JSON part of a binary request or response is.
pub const HEADER_LENGTH_HEADER: &str = "inference-header-content-length";
/// The parameter naming how many bytes of binary data an input or output has.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";

/// A v2 inference request's JSON (the whole body, or its header when binary data follows).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferenceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
    pub inputs: Vec<RequestInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of a request, before its data is checked. `data` is absent when the input's data is
/// binary (`parameters.binary_data_size`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// An output the client asks for by name (`parameters.binary_data`: whether it comes back binary).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// A checked tensor: name, shape and typed, flat, row-major data whose length matches the shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: Datatype,
    pub data: TensorData,
}

/// The v2 datatypes Veil carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    /// Byte strings (ONNX's `string`, which must be UTF-8 without NUL for ONNX Runtime).
    Bytes,
}

impl Datatype {
    /// Every datatype, for messages that list them.
    pub const ALL: [Datatype; 14] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Bf16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bytes,
    ];

    /// The v2 name (`"FP32"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Bf16 => "BF16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Parses a v2 name.
    pub fn parse(s: &str) -> Option<Datatype> {
        Datatype::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Bytes per element in binary data; `None` for `BYTES`, whose elements carry their own lengths.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => 2,
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }
}

impl std::fmt::Display for Datatype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Datatype {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Flat, typed tensor data.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::U16(v) => v.len(),
            TensorData::U32(v) => v.len(),
            TensorData::U64(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::I16(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::Bf16(v) => v.len(),
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The datatype of these elements.
    pub fn datatype(&self) -> Datatype {
        match self {
            TensorData::Bool(_) => Datatype::Bool,
            TensorData::U8(_) => Datatype::Uint8,
            TensorData::U16(_) => Datatype::Uint16,
            TensorData::U32(_) => Datatype::Uint32,
            TensorData::U64(_) => Datatype::Uint64,
            TensorData::I8(_) => Datatype::Int8,
            TensorData::I16(_) => Datatype::Int16,
            TensorData::I32(_) => Datatype::Int32,
            TensorData::I64(_) => Datatype::Int64,
            TensorData::F16(_) => Datatype::Fp16,
            TensorData::Bf16(_) => Datatype::Bf16,
            TensorData::F32(_) => Datatype::Fp32,
            TensorData::F64(_) => Datatype::Fp64,
            TensorData::Bytes(_) => Datatype::Bytes,
        }
    }

    /// A borrowed view, for [`response::write`].
    pub fn view(&self) -> response::Elements<'_> {
        use response::Elements as E;
        match self {
            TensorData::Bool(v) => E::Bool(v),
            TensorData::U8(v) => E::U8(v),
            TensorData::U16(v) => E::U16(v),
            TensorData::U32(v) => E::U32(v),
            TensorData::U64(v) => E::U64(v),
            TensorData::I8(v) => E::I8(v),
            TensorData::I16(v) => E::I16(v),
            TensorData::I32(v) => E::I32(v),
            TensorData::I64(v) => E::I64(v),
            TensorData::F16(v) => E::F16(v),
            TensorData::Bf16(v) => E::Bf16(v),
            TensorData::F32(v) => E::F32(v),
            TensorData::F64(v) => E::F64(v),
            TensorData::Bytes(v) => E::Bytes(v),
        }
    }
}

/// Why a request was refused. Always the client's fault (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct V2Error(pub String);

fn err(msg: impl Into<String>) -> V2Error {
    V2Error(msg.into())
}

/// A parsed request: its JSON, and each input's binary data (a range of the body), if it has any.
pub struct Request<'a> {
    pub header: InferenceRequest,
    body: &'a [u8],
    binary: Vec<Option<Range<usize>>>,
}

/// Names the inputs only: the body is plaintext.
impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.header.inputs.iter().map(|i| i.name.as_str()).collect();
        f.debug_struct("Request").field("inputs", &names).finish_non_exhaustive()
    }
}

/// Parses a request body. `header_length` is the request's `Inference-Header-Content-Length`, if it has
/// one: then the JSON is the body's first `header_length` bytes and binary input data follows, every
/// byte of it claimed by exactly one input's `binary_data_size`. Unknown fields are ignored, as KServe
/// servers do.
pub fn parse(body: &[u8], header_length: Option<u64>) -> Result<Request<'_>, V2Error> {
    let json_len = match header_length {
        None => body.len(),
        Some(n) => usize::try_from(n).ok().filter(|&n| n <= body.len()).ok_or_else(|| {
            err(format!("Inference-Header-Content-Length is {n}, but the body is only {} bytes", body.len()))
        })?,
    };
    let header = parse_request(&body[..json_len])?;
    let mut binary = Vec::with_capacity(header.inputs.len());
    let mut at = json_len;
    for input in &header.inputs {
        let name = &input.name;
        let size = input.parameters.as_ref().and_then(|p| p.get(BINARY_DATA_SIZE));
        let Some(size) = size else {
            if input.data.is_none() {
                return Err(err(format!(
                    "input {name:?} has no data (send \"data\", or parameters.binary_data_size with the raw bytes \
                     after the JSON header)"
                )));
            }
            binary.push(None);
            continue;
        };
        let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
            err(format!("input {name:?}: parameters.binary_data_size must be a whole number of bytes"))
        })?;
        if input.data.is_some() {
            return Err(err(format!("input {name:?} has both \"data\" and parameters.binary_data_size")));
        }
        if header_length.is_none() {
            return Err(err(format!(
                "input {name:?} has parameters.binary_data_size, but the request has no \
                 Inference-Header-Content-Length header to say where its binary data starts"
            )));
        }
        let end = at.checked_add(size).filter(|&e| e <= body.len()).ok_or_else(|| {
            err(format!(
                "input {name:?}: binary_data_size {size} runs past the end of the body ({} bytes of binary data \
                 remain)",
                body.len() - at
            ))
        })?;
        binary.push(Some(at..end));
        at = end;
    }
    if at != body.len() {
        return Err(err(format!(
            "the body has {} bytes after the JSON header and the inputs' binary data (binary_data_size adds up to \
             {})",
            body.len() - at,
            at - json_len
        )));
    }
    Ok(Request { header, body, binary })
}

/// Parses a request's JSON alone (no binary data). Prefer [`parse`], which also places binary data.
pub fn parse_request(body: &[u8]) -> Result<InferenceRequest, V2Error> {
    let req: InferenceRequest = serde_json::from_slice(body).map_err(|e| {
        // serde_json's messages name the field and position, never the values.
        err(format!("request is not a valid Open Inference Protocol (v2) JSON request: {e}"))
    })?;
    if req.inputs.is_empty() {
        return Err(err("request has no inputs"));
    }
    if req.inputs.len() > MAX_TENSORS {
        return Err(err(format!("request has {} inputs; at most {MAX_TENSORS} are accepted", req.inputs.len())));
    }
    if req.outputs.as_ref().is_some_and(|o| o.len() > MAX_TENSORS) {
        return Err(err(format!("request asks for more than {MAX_TENSORS} outputs")));
    }
    for (i, input) in req.inputs.iter().enumerate() {
        if req.inputs[..i].iter().any(|other| other.name == input.name) {
            return Err(err(format!("input {:?} appears twice", input.name)));
        }
    }
    if let Some(outputs) = &req.outputs {
        for (i, output) in outputs.iter().enumerate() {
            if outputs[..i].iter().any(|other| other.name == output.name) {
                return Err(err(format!("output {:?} is asked for twice", output.name)));
            }
            flag(output.parameters.as_ref(), "binary_data")
                .map_err(|m| err(format!("output {:?}: {m}", output.name)))?;
            unsupported(output.parameters.as_ref()).map_err(|m| err(format!("output {:?}: {m}", output.name)))?;
        }
    }
    flag(req.parameters.as_ref(), "binary_data_output").map_err(|m| err(format!("request: {m}")))?;
    for input in &req.inputs {
        unsupported(input.parameters.as_ref()).map_err(|m| err(format!("input {:?}: {m}", input.name)))?;
    }
    Ok(req)
}

/// Parameters of Triton's other extensions, which Veil does not implement: refused, rather than answered
/// as if they had not been asked for.
fn unsupported(parameters: Option<&serde_json::Map<String, Value>>) -> Result<(), String> {
    const NOT_SERVED: [&str; 4] =
        ["classification", "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"];
    match parameters.and_then(|p| NOT_SERVED.iter().find(|k| p.contains_key(**k))) {
        Some(k) => {
            Err(format!("parameters.{k} is not supported (Veil serves neither classification nor shared memory)"))
        }
        None => Ok(()),
    }
}

/// A boolean parameter: absent, or `true`/`false`.
fn flag(parameters: Option<&serde_json::Map<String, Value>>, key: &str) -> Result<Option<bool>, String> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("parameters.{key} must be true or false")),
    }
}

impl<'a> Request<'a> {
    /// Checks input `index`'s shape and datatype and converts its data (JSON, flattened; or binary) to typed
    /// values.
    pub fn input(&self, index: usize) -> Result<Tensor, V2Error> {
        let input = self.header.inputs.get(index).ok_or_else(|| err(format!("no input {index}")))?;
        let (datatype, shape, count) = check_shape(input)?;
        let name = &input.name;
        let data = match self.binary.get(index).cloned().flatten() {
            Some(range) => {
                let bytes = self.body.get(range).unwrap_or(&[]);
                from_binary(bytes, datatype, count).map_err(|m| err(format!("input {name:?}: {m}")))?
            }
            None => from_json(input, datatype, count)?,
        };
        Ok(Tensor { name: name.clone(), shape, datatype, data })
    }

    /// Whether output `name` is to be answered as binary data: its own `parameters.binary_data` if the
    /// request lists it with one, else the request's `parameters.binary_data_output`, else not.
    pub fn binary_output(&self, name: &str) -> bool {
        let own = self.header.outputs.as_ref().and_then(|o| o.iter().find(|o| o.name == name));
        own.and_then(|o| flag(o.parameters.as_ref(), "binary_data").ok().flatten())
            .or_else(|| flag(self.header.parameters.as_ref(), "binary_data_output").ok().flatten())
            .unwrap_or(false)
    }
}

/// Checks one JSON input (no binary data): see [`Request::input`].
pub fn check_input(input: &RequestInput) -> Result<Tensor, V2Error> {
    let (datatype, shape, count) = check_shape(input)?;
    let data = from_json(input, datatype, count)?;
    Ok(Tensor { name: input.name.clone(), shape, datatype, data })
}

/// The input's datatype, its shape as sizes, and its element count (at most [`MAX_ELEMENTS`]).
fn check_shape(input: &RequestInput) -> Result<(Datatype, Vec<u64>, usize), V2Error> {
    let name = &input.name;
    let datatype = Datatype::parse(&input.datatype).ok_or_else(|| {
        let known: Vec<&str> = Datatype::ALL.iter().map(|d| d.as_str()).collect();
        err(format!(
            "input {name:?}: datatype {:?} is not supported (supported: {})",
            truncate(&input.datatype, 32),
            known.join(", ")
        ))
    })?;
    if input.shape.len() > MAX_RANK {
        return Err(err(format!("input {name:?}: shape has {} dimensions; at most {MAX_RANK}", input.shape.len())));
    }
    let mut count: usize = 1;
    let mut shape = Vec::with_capacity(input.shape.len());
    for &d in &input.shape {
        let d = u64::try_from(d)
            .map_err(|_| err(format!("input {name:?}: shape {:?} has a negative dimension", input.shape)))?;
        // Each dimension on its own too: a zero elsewhere must not let a huge one through to ONNX Runtime.
        let too_many =
            || err(format!("input {name:?}: shape {:?} holds more than {MAX_ELEMENTS} elements", input.shape));
        let dim = usize::try_from(d).ok().filter(|&d| d <= MAX_ELEMENTS).ok_or_else(too_many)?;
        count = count.checked_mul(dim).filter(|&c| c <= MAX_ELEMENTS).ok_or_else(too_many)?;
        shape.push(d);
    }
    if datatype == Datatype::Bytes && count > MAX_BYTES_ELEMENTS {
        return Err(err(format!(
            "input {name:?}: shape {:?} holds more than {MAX_BYTES_ELEMENTS} BYTES elements",
            input.shape
        )));
    }
    Ok((datatype, shape, count))
}

fn from_json(input: &RequestInput, datatype: Datatype, count: usize) -> Result<TensorData, V2Error> {
    let name = &input.name;
    let data = input.data.as_ref().ok_or_else(|| err(format!("input {name:?} has no data")))?;
    let mut flat = Vec::with_capacity(count.min(1 << 16));
    flatten(data, 0, &mut flat, count).map_err(|m| err(format!("input {name:?}: {m}")))?;
    if flat.len() != count {
        return Err(err(format!(
            "input {name:?}: shape {:?} needs {count} elements, data has {}",
            input.shape,
            flat.len()
        )));
    }
    convert(&flat, datatype)
        .map_err(|(index, why)| err(format!("input {name:?}: element {index} is not {datatype}: {why}")))
}

/// Collects the leaves of nested arrays in row-major order, refusing more than `limit` leaves.
fn flatten<'a>(v: &'a Value, depth: usize, out: &mut Vec<&'a Value>, limit: usize) -> Result<(), String> {
    match v {
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(format!("data is nested more than {MAX_DEPTH} deep"));
            }
            for item in items {
                flatten(item, depth + 1, out, limit)?;
            }
            Ok(())
        }
        leaf if depth == 0 => {
            // A bare scalar is allowed only as the data of a scalar tensor (shape []).
            out.push(leaf);
            Ok(())
        }
        leaf => {
            if out.len() >= limit {
                return Err(format!("data has more elements than the shape's {limit}"));
            }
            out.push(leaf);
            Ok(())
        }
    }
}

fn convert(flat: &[&Value], dt: Datatype) -> Result<TensorData, (usize, &'static str)> {
    fn ints<T: TryFrom<i64> + TryFrom<u64>>(flat: &[&Value]) -> Result<Vec<T>, (usize, &'static str)> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Number(n) => {
                    if let Some(x) = n.as_i64() {
                        T::try_from(x).map_err(|_| (i, "out of range"))
                    } else if let Some(x) = n.as_u64() {
                        T::try_from(x).map_err(|_| (i, "out of range"))
                    } else {
                        Err((i, "not an integer"))
                    }
                }
                _ => Err((i, "not a number")),
            })
            .collect()
    }
    /// Numbers converted to the target type (rounding to nearest), refusing those that become infinite:
    /// beyond the type's range (the shortest form of the type's largest value rounds back to it).
    fn floats<T>(
        flat: &[&Value],
        what: &'static str,
        f: impl Fn(f64) -> T,
        infinite: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, (usize, &'static str)> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| {
                let x = match v {
                    Value::Number(n) => n.as_f64().ok_or((i, "not a number"))?,
                    _ => return Err((i, "not a number")),
                };
                let y = f(x);
                if infinite(&y) {
                    return Err((i, what));
                }
                Ok(y)
            })
            .collect()
    }
    Ok(match dt {
        Datatype::Bool => TensorData::Bool(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or((i, "not true or false")))
                .collect::<Result<_, _>>()?,
        ),
        Datatype::Uint8 => TensorData::U8(ints(flat)?),
        Datatype::Uint16 => TensorData::U16(ints(flat)?),
        Datatype::Uint32 => TensorData::U32(ints(flat)?),
        Datatype::Uint64 => TensorData::U64(ints(flat)?),
        Datatype::Int8 => TensorData::I8(ints(flat)?),
        Datatype::Int16 => TensorData::I16(ints(flat)?),
        Datatype::Int32 => TensorData::I32(ints(flat)?),
        Datatype::Int64 => TensorData::I64(ints(flat)?),
        Datatype::Fp16 => TensorData::F16(floats(flat, "out of FP16 range", f16::from_f64, |y| y.is_infinite())?),
        Datatype::Bf16 => TensorData::Bf16(floats(flat, "out of BF16 range", bf16::from_f64, |y| y.is_infinite())?),
        Datatype::Fp32 => TensorData::F32(floats(flat, "out of FP32 range", |x| x as f32, |y| y.is_infinite())?),
        Datatype::Fp64 => TensorData::F64(floats(flat, "out of FP64 range", |x| x, |y| y.is_infinite())?),
        Datatype::Bytes => TensorData::Bytes(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_str().map(|s| s.as_bytes().to_vec()).ok_or((i, "not a string")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Binary data of `count` elements of `dt`: exactly `count` times the element size, little-endian; or for
/// `BYTES`, exactly `count` length-prefixed strings.
fn from_binary(bytes: &[u8], dt: Datatype, count: usize) -> Result<TensorData, String> {
    if let Some(size) = dt.element_size()
        && count.checked_mul(size) != Some(bytes.len())
    {
        return Err(format!("binary_data_size is {} bytes; {count} {dt} elements are {}", bytes.len(), count * size));
    }
    fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
    }
    Ok(match dt {
        Datatype::Bool => TensorData::Bool(
            bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!("BOOL element {i} is not the byte 0 or 1")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Datatype::Uint8 => TensorData::U8(bytes.to_vec()),
        Datatype::Int8 => TensorData::I8(le(bytes, i8::from_le_bytes)),
        Datatype::Uint16 => TensorData::U16(le(bytes, u16::from_le_bytes)),
        Datatype::Int16 => TensorData::I16(le(bytes, i16::from_le_bytes)),
        Datatype::Fp16 => TensorData::F16(le(bytes, f16::from_le_bytes)),
        Datatype::Bf16 => TensorData::Bf16(le(bytes, bf16::from_le_bytes)),
        Datatype::Uint32 => TensorData::U32(le(bytes, u32::from_le_bytes)),
        Datatype::Int32 => TensorData::I32(le(bytes, i32::from_le_bytes)),
        Datatype::Fp32 => TensorData::F32(le(bytes, f32::from_le_bytes)),
        Datatype::Uint64 => TensorData::U64(le(bytes, u64::from_le_bytes)),
        Datatype::Int64 => TensorData::I64(le(bytes, i64::from_le_bytes)),
        Datatype::Fp64 => TensorData::F64(le(bytes, f64::from_le_bytes)),
        Datatype::Bytes => TensorData::Bytes(strings(bytes, count)?),
    })
}

/// Exactly `count` `BYTES` elements, each a 4-byte little-endian length and that many bytes.
fn strings(bytes: &[u8], count: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    let mut rest = bytes;
    for i in 0..count {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("binary data ends before BYTES element {i} of {count}"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(format!("BYTES element {i} runs past the end of the binary data"));
        }
        let (value, tail) = tail.split_at(len);
        out.push(value.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!("binary data has {} bytes after its {count} BYTES elements", rest.len()));
    }
    Ok(out)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// One input or output as model metadata describes it; `-1` marks a dimension of any size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Open Inference Protocol model metadata (`GET /v2/models/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    /// The versions served (Veil serves one model file per name: version "1").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// Extra facts: the model's SHA-384 digest, and how non-tensor outputs are represented.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, Value>,
}

#[cfg(test)]
mod tests;

//! Decoding a v2 request: its JSON (bounded, checked field by field) and, with the binary tensor data
//! extension, the raw data after it, into typed tensors checked against their shapes. Everything here
//! reads bytes a client sent through an untrusted parent: no panics, and errors that name the input and
//! what was expected, never the values.
use std::ops::Range;

use half::{bf16, f16};
use serde_json::Value;

use super::{
    BINARY_DATA_SIZE, Datatype, InferenceRequest, MAX_BYTES_ELEMENTS, MAX_DEPTH, MAX_ELEMENTS, MAX_RANK, MAX_TENSORS,
    RequestInput, Tensor, TensorData, V2Error, err,
};

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

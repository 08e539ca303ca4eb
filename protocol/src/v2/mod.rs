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

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod request;
pub mod response;

pub use request::{Request, check_input, parse, parse_request};

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

pub(crate) fn err(msg: impl Into<String>) -> V2Error {
    V2Error(msg.into())
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

//! Open Inference Protocol (KServe v2) tensors, as JSON.
//!
//! Requests: `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data", "parameters"?}],
//! "outputs"?: [{"name"}]}`. Responses: `{"model_name", "id"?, "outputs": [{"name", "shape", "datatype",
//! "data"}]}`. `data` is row-major, flat or nested; this module flattens it and checks that every element
//! has the datatype's type and range and that the count equals the product of the shape.
//!
//! Pure and panic-free: the JSON comes from a client through an untrusted parent. Errors name the input and
//! what was expected, never the values sent.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most elements one tensor may hold (64 Mi): bounds memory long before the frame limit would.
pub const MAX_ELEMENTS: usize = 64 * 1024 * 1024;
/// Most dimensions a shape may have.
pub const MAX_RANK: usize = 16;
/// Most inputs or requested outputs one request may name.
pub const MAX_TENSORS: usize = 256;
/// Deepest nesting of `data` arrays accepted (a tensor of rank 16 nests 16 deep).
const MAX_DEPTH: usize = MAX_RANK + 1;

/// A v2 inference request as it arrives.
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

/// One input tensor of a request, before its data is checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// An output the client asks for by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// A v2 inference response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}

/// A checked tensor: name, shape and typed, flat, row-major data whose length matches the shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: Datatype,
    pub data: TensorData,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// The v2 datatypes Veil carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Datatype {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    Uint8,
    #[serde(rename = "UINT16")]
    Uint16,
    #[serde(rename = "UINT32")]
    Uint32,
    #[serde(rename = "UINT64")]
    Uint64,
    #[serde(rename = "INT8")]
    Int8,
    #[serde(rename = "INT16")]
    Int16,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
}

impl Datatype {
    /// Every datatype, for messages that list them.
    pub const ALL: [Datatype; 11] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp32,
        Datatype::Fp64,
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
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
        }
    }

    /// Parses a v2 name.
    pub fn parse(s: &str) -> Option<Datatype> {
        Datatype::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl std::fmt::Display for Datatype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, typed tensor data. Serializes as a flat JSON array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
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
    F32(Vec<f32>),
    F64(Vec<f64>),
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
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
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
            TensorData::F32(_) => Datatype::Fp32,
            TensorData::F64(_) => Datatype::Fp64,
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

/// Parses a request body. Unknown top-level fields are ignored, as KServe servers do.
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
    Ok(req)
}

/// Checks one input's shape and datatype and converts its data, flattened, to typed values.
pub fn check_input(input: &RequestInput) -> Result<Tensor, V2Error> {
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
        count = usize::try_from(d).ok().and_then(|d| count.checked_mul(d)).filter(|&c| c <= MAX_ELEMENTS).ok_or_else(
            || err(format!("input {name:?}: shape {:?} holds more than {MAX_ELEMENTS} elements", input.shape)),
        )?;
        shape.push(d);
    }
    let mut flat = Vec::with_capacity(count.min(1 << 16));
    flatten(&input.data, 0, &mut flat, count).map_err(|m| err(format!("input {name:?}: {m}")))?;
    if flat.len() != count {
        return Err(err(format!(
            "input {name:?}: shape {:?} needs {count} elements, data has {}",
            input.shape,
            flat.len()
        )));
    }
    let data = convert(&flat, datatype)
        .map_err(|(index, why)| err(format!("input {name:?}: element {index} is not {datatype}: {why}")))?;
    Ok(Tensor { name: name.clone(), shape, datatype, data, parameters: None })
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
    fn float(i: usize, v: &Value) -> Result<f64, (usize, &'static str)> {
        match v {
            Value::Number(n) => n.as_f64().ok_or((i, "not a number")),
            _ => Err((i, "not a number")),
        }
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
        Datatype::Fp32 => TensorData::F32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    let x = float(i, v)?;
                    if x.is_finite() && x.abs() > f32::MAX as f64 {
                        return Err((i, "out of FP32 range"));
                    }
                    Ok(x as f32)
                })
                .collect::<Result<_, _>>()?,
        ),
        Datatype::Fp64 => TensorData::F64(flat.iter().enumerate().map(|(i, v)| float(i, v)).collect::<Result<_, _>>()?),
    })
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

/// Open Inference Protocol model metadata (`GET /v2/models/{name}` in KServe; `/v1/models/{name}` here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// Extra facts: the model's SHA-384 digest, and how non-tensor outputs are represented.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> RequestInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn flat_and_nested_data_are_the_same_tensor() {
        let flat = check_input(&input(json!({"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}))).unwrap();
        let nested =
            check_input(&input(json!({"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}))).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.data, TensorData::F32(vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(flat.shape, vec![2, 2]);
    }

    #[test]
    fn every_supported_datatype_converts() {
        let cases = [
            ("BOOL", json!([true, false]), TensorData::Bool(vec![true, false])),
            ("INT32", json!([-1, 2]), TensorData::I32(vec![-1, 2])),
            ("INT64", json!([-1, 9007199254740993i64]), TensorData::I64(vec![-1, 9007199254740993])),
            ("FP64", json!([0.1, 2]), TensorData::F64(vec![0.1, 2.0])),
            ("UINT8", json!([0, 255]), TensorData::U8(vec![0, 255])),
            ("UINT64", json!([0, u64::MAX]), TensorData::U64(vec![0, u64::MAX])),
        ];
        for (dt, data, want) in cases {
            let t = check_input(&input(json!({"name":"x","shape":[2],"datatype":dt,"data":data}))).unwrap();
            assert_eq!(t.data, want, "{dt}");
            assert_eq!(t.datatype.as_str(), dt);
        }
    }

    #[test]
    fn bad_tensors_say_what_was_expected() {
        let cases = [
            (json!({"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}), "shape [3] needs 3 elements, data has 2"),
            (json!({"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}), "more elements than the shape's 1"),
            (json!({"name":"x","shape":[2],"datatype":"FP32","data":[1,"a"]}), "element 1 is not FP32: not a number"),
            (json!({"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}), "element 0 is not INT32: not an integer"),
            (json!({"name":"x","shape":[1],"datatype":"INT8","data":[300]}), "element 0 is not INT8: out of range"),
            (json!({"name":"x","shape":[1],"datatype":"BOOL","data":[1]}), "not true or false"),
            (json!({"name":"x","shape":[1],"datatype":"FP32","data":[1e300]}), "out of FP32 range"),
            (json!({"name":"x","shape":[1],"datatype":"STRING","data":["a"]}), "datatype \"STRING\" is not supported"),
            (json!({"name":"x","shape":[-1],"datatype":"FP32","data":[1]}), "negative dimension"),
            (json!({"name":"x","shape":[1u64<<40, 1u64<<40],"datatype":"FP32","data":[]}), "more than"),
        ];
        for (v, want) in cases {
            let e = check_input(&input(v.clone())).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: got {e:?}, want {want:?}");
            assert!(e.starts_with("input \"x\""), "{e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion_trouble() {
        let mut data = json!(1);
        for _ in 0..40 {
            data = json!([data]);
        }
        let e = check_input(&input(json!({"name":"x","shape":[1],"datatype":"FP32","data":data}))).unwrap_err();
        assert!(e.to_string().contains("nested more than"), "{e}");
    }

    #[test]
    fn request_level_checks() {
        assert!(parse_request(b"not json").unwrap_err().to_string().contains("not a valid Open Inference Protocol"));
        assert!(parse_request(br#"{"inputs":[]}"#).unwrap_err().to_string().contains("no inputs"));
        let dup = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]},{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        assert!(parse_request(dup).unwrap_err().to_string().contains("appears twice"));
    }

    #[test]
    fn responses_serialize_as_v2() {
        let r = InferenceResponse {
            model_name: "m".into(),
            model_version: None,
            id: Some("7".into()),
            outputs: vec![Tensor {
                name: "y".into(),
                shape: vec![2],
                datatype: Datatype::Fp32,
                data: TensorData::F32(vec![0.1, 2.0]),
                parameters: None,
            }],
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"model_name":"m","id":"7","outputs":[{"name":"y","shape":[2],"datatype":"FP32","data":[0.1,2.0]}]}"#
        );
    }
}

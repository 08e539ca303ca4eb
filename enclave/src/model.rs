//! Models in ONNX Runtime: loading from bytes, metadata, and checked inference on v2 tensors.
//!
//! Everything that reaches [`Model::infer`] came from outside the enclave. Requests are checked against the
//! model's own metadata (names, datatypes, ranks and fixed dimensions) before ONNX Runtime sees them, so
//! errors say what the model expected rather than surfacing an ONNX Runtime message.
//!
//! Non-tensor outputs: scikit-learn classifiers converted with ZipMap produce a *sequence of maps*
//! (`seq(map(int64, float))`, one map per row, class → probability). The v2 protocol has no such type, so
//! Veil represents it as an FP32 tensor of shape `[rows, classes]` whose column `j` is the class with the
//! `j`-th smallest key; the class keys are listed in the output's `parameters.zipmap_keys`. Maps with string
//! keys, and any other non-tensor output, are not representable: they are left out of a response unless the
//! request asks for them by name, which is then an error that says so.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::EnclaveError;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynMapValueType, DynValue, Tensor as OrtTensor, TensorElementType, ValueType};
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use veil_protocol::v2::response::{self, Answer, Elements, Output};
use veil_protocol::v2::{self, Datatype, ModelMetadata, Tensor, TensorData, TensorMetadata};

/// The one version of each model that Veil serves (a name names one model file, pinned by its digest).
pub const MODEL_VERSION: &str = "1";

/// How an input must look.
#[derive(Debug, Clone)]
struct InputSpec {
    name: String,
    datatype: Datatype,
    /// `-1` for a dimension of any size.
    shape: Vec<i64>,
}

/// How an output is carried in a v2 response.
#[derive(Debug, Clone)]
enum OutputKind {
    Tensor(Datatype),
    /// `seq(map(int64, float))`, carried as an FP32 `[rows, classes]` tensor.
    ZipMap,
    /// Not representable in v2; the string says what it is.
    Unsupported(String),
}

#[derive(Debug, Clone)]
struct OutputSpec {
    name: String,
    kind: OutputKind,
    shape: Vec<i64>,
}

/// A loaded model, ready to serve concurrent requests.
pub struct Model {
    name: String,
    sha384: [u8; 48],
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
    metadata_json: Vec<u8>,
    /// Idle sessions. `permits` counts them, so a request waits (asynchronously) for a free session
    /// before it takes a blocking thread.
    sessions: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("sha384", &hex::encode(self.sha384)).finish()
    }
}

/// How to build sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Threads ONNX Runtime uses inside one inference.
    pub intra_op_threads: usize,
    /// Sessions per model: how many inferences run at once.
    pub sessions: usize,
}

fn datatype_of(ty: TensorElementType) -> Option<Datatype> {
    Some(match ty {
        TensorElementType::Bool => Datatype::Bool,
        TensorElementType::Uint8 => Datatype::Uint8,
        TensorElementType::Uint16 => Datatype::Uint16,
        TensorElementType::Uint32 => Datatype::Uint32,
        TensorElementType::Uint64 => Datatype::Uint64,
        TensorElementType::Int8 => Datatype::Int8,
        TensorElementType::Int16 => Datatype::Int16,
        TensorElementType::Int32 => Datatype::Int32,
        TensorElementType::Int64 => Datatype::Int64,
        TensorElementType::Float32 => Datatype::Fp32,
        TensorElementType::Float64 => Datatype::Fp64,
        TensorElementType::Float16 => Datatype::Fp16,
        TensorElementType::Bfloat16 => Datatype::Bf16,
        TensorElementType::String => Datatype::Bytes,
        _ => return None,
    })
}

fn bad(msg: impl Into<String>) -> EnclaveError {
    EnclaveError::BadRequest(msg.into())
}

fn internal(msg: impl Into<String>) -> EnclaveError {
    EnclaveError::Internal(msg.into())
}

impl Model {
    /// Builds `options.sessions` sessions from the model bytes. `sha384` is the digest of those bytes.
    pub fn load(
        env: &ort::environment::Environment,
        name: &str,
        bytes: &[u8],
        sha384: [u8; 48],
        options: SessionOptions,
    ) -> anyhow::Result<Model> {
        let count = options.sessions.max(1);
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count {
            let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("ONNX Runtime could not load model {name:?}: {e}");
            let builder = Session::builder(env).map_err(|e| fail(&e))?;
            let mut builder = builder.with_intra_threads(options.intra_op_threads.max(1)).map_err(|e| fail(&e))?;
            let session = builder.commit_from_memory(bytes).map_err(|e| fail(&e))?;
            sessions.push(session);
        }
        let first = &sessions[0];
        let mut inputs = Vec::new();
        for outlet in first.inputs() {
            match outlet.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    let datatype = datatype_of(*ty).ok_or_else(|| {
                        anyhow::anyhow!(
                            "model {name:?}: input {:?} has element type {ty:?}, which Veil does not carry",
                            outlet.name()
                        )
                    })?;
                    inputs.push(InputSpec { name: outlet.name().to_owned(), datatype, shape: shape.to_vec() });
                }
                other => anyhow::bail!("model {name:?}: input {:?} is {other:?}, not a tensor", outlet.name()),
            }
        }
        let outputs: Vec<OutputSpec> = first
            .outputs()
            .iter()
            .map(|outlet| {
                let (kind, shape) = match outlet.dtype() {
                    ValueType::Tensor { ty, shape, .. } => match datatype_of(*ty) {
                        Some(dt) => (OutputKind::Tensor(dt), shape.to_vec()),
                        None => (OutputKind::Unsupported(format!("a tensor of {ty:?}")), shape.to_vec()),
                    },
                    ValueType::Sequence(inner) => match inner.as_ref() {
                        ValueType::Map { key: TensorElementType::Int64, value: TensorElementType::Float32 } => {
                            (OutputKind::ZipMap, vec![-1, -1])
                        }
                        other => (OutputKind::Unsupported(format!("a sequence of {other:?}")), vec![]),
                    },
                    other => (OutputKind::Unsupported(format!("{other:?}")), vec![]),
                };
                OutputSpec { name: outlet.name().to_owned(), kind, shape }
            })
            .collect();
        let metadata = ModelMetadata {
            name: name.to_owned(),
            versions: vec![MODEL_VERSION.to_owned()],
            platform: "onnxruntime_onnx".to_owned(),
            inputs: inputs
                .iter()
                .map(|i| TensorMetadata {
                    name: i.name.clone(),
                    datatype: i.datatype.to_string(),
                    shape: i.shape.clone(),
                })
                .collect(),
            outputs: outputs
                .iter()
                .filter_map(|o| match &o.kind {
                    OutputKind::Tensor(dt) => {
                        Some(TensorMetadata { name: o.name.clone(), datatype: dt.to_string(), shape: o.shape.clone() })
                    }
                    OutputKind::ZipMap => {
                        Some(TensorMetadata { name: o.name.clone(), datatype: "FP32".into(), shape: o.shape.clone() })
                    }
                    OutputKind::Unsupported(_) => None,
                })
                .collect(),
            parameters: {
                let mut p = Map::new();
                p.insert("sha384".into(), Value::String(hex::encode(sha384)));
                let zipmaps: Vec<&str> =
                    outputs.iter().filter(|o| matches!(o.kind, OutputKind::ZipMap)).map(|o| o.name.as_str()).collect();
                if !zipmaps.is_empty() {
                    p.insert(
                        "zipmap_outputs".into(),
                        json!({"outputs": zipmaps, "representation": "FP32 [rows, classes], columns in ascending class key order; keys in the output's parameters.zipmap_keys"}),
                    );
                }
                let unsupported: Vec<Value> = outputs
                    .iter()
                    .filter_map(|o| match &o.kind {
                        OutputKind::Unsupported(what) => Some(json!({"name": o.name, "type": what})),
                        _ => None,
                    })
                    .collect();
                if !unsupported.is_empty() {
                    p.insert("unsupported_outputs".into(), Value::Array(unsupported));
                }
                p
            },
        };
        let metadata_json = serde_json::to_vec(&metadata)?;
        Ok(Model {
            name: name.to_owned(),
            sha384,
            inputs,
            outputs,
            metadata_json,
            permits: Arc::new(Semaphore::new(count)),
            sessions: Mutex::new(sessions),
        })
    }

    /// The model's name as served.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-384 of the model file as loaded.
    pub fn sha384(&self) -> &[u8; 48] {
        &self.sha384
    }

    /// v2 model metadata, as JSON.
    pub fn metadata_json(&self) -> &[u8] {
        &self.metadata_json
    }

    /// Waits (asynchronously, holding no thread) until a session is free. Whoever holds the permit may call
    /// [`Model::infer_blocking`] and is sure to find an idle session.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, EnclaveError> {
        Arc::clone(&self.permits).acquire_owned().await.map_err(|_| internal("model is shutting down"))
    }

    /// Runs one v2 request (JSON alone) and returns the v2 response (JSON): for in-process benchmarks and
    /// tests. The enclave's request path calls [`Model::infer_blocking`] itself, writing into the buffer
    /// the sealed answer is sent from.
    ///
    /// Waits for a free session without blocking the runtime, then runs ONNX Runtime on the blocking pool.
    pub async fn infer(self: &Arc<Self>, body: Vec<u8>) -> Result<Vec<u8>, EnclaveError> {
        self.infer_with(body, None).await.map(|(out, _)| out)
    }

    /// [`Model::infer`] for a body with binary data (`header_length`: its
    /// `Inference-Header-Content-Length`): the response, and the response's header length if binary data
    /// follows its JSON.
    pub async fn infer_with(
        self: &Arc<Self>,
        body: Vec<u8>,
        header_length: Option<u64>,
    ) -> Result<(Vec<u8>, Option<u64>), EnclaveError> {
        let permit = self.acquire().await?;
        let model = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || {
            let mut body = body;
            let mut out = Vec::new();
            let result = model.infer_blocking(&body, header_length, &mut out).map(|n| (out, n));
            zeroize::Zeroize::zeroize(&mut body);
            result
        })
        .await
        .map_err(|_| internal("inference task failed"))?;
        drop(permit);
        result
    }

    /// The synchronous core of inference: parse, check, run, convert. The v2 response is appended to
    /// `out`, straight from ONNX Runtime's output buffers; the result is the response's JSON length when
    /// binary output data follows it (for `Inference-Header-Content-Length`), else `None`.
    ///
    /// `header_length` is the request's `Inference-Header-Content-Length`: when present the body is a JSON
    /// header followed by binary input data (the binary tensor data extension).
    pub fn infer_blocking(
        &self,
        body: &[u8],
        header_length: Option<u64>,
        out: &mut impl response::Sink,
    ) -> Result<Option<u64>, EnclaveError> {
        let request = v2::parse(body, header_length).map_err(|e| bad(e.0))?;
        let given = &request.header.inputs;
        let model_inputs = || self.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
        for g in given {
            if !self.inputs.iter().any(|i| i.name == g.name) {
                return Err(bad(format!(
                    "unknown input {:?}; model {:?} takes: {}",
                    truncate(&g.name, 64),
                    self.name,
                    model_inputs()
                )));
            }
        }
        let mut feeds: Vec<(String, SessionInputValue<'static>)> = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let index = given.iter().position(|i| i.name == spec.name).ok_or_else(|| {
                bad(format!("missing input {:?}; model {:?} takes: {}", spec.name, self.name, model_inputs()))
            })?;
            let tensor = request.input(index).map_err(|e| bad(e.0))?;
            if tensor.datatype != spec.datatype {
                return Err(bad(format!(
                    "input {:?}: expected datatype {}, got {}",
                    spec.name, spec.datatype, tensor.datatype
                )));
            }
            let fits = tensor.shape.len() == spec.shape.len()
                && tensor.shape.iter().zip(&spec.shape).all(|(&got, &want)| want < 0 || got == want as u64);
            if !fits {
                return Err(bad(format!(
                    "input {:?}: expected shape {} (-1: any size), got {:?}",
                    spec.name,
                    format_shape(&spec.shape),
                    tensor.shape
                )));
            }
            feeds.push((spec.name.clone(), to_ort(tensor)?));
        }

        let wanted: Vec<&OutputSpec> = match &request.header.outputs {
            Some(list) if !list.is_empty() => {
                let mut out = Vec::with_capacity(list.len());
                for o in list {
                    let spec = self.outputs.iter().find(|s| s.name == o.name).ok_or_else(|| {
                        let names: Vec<&str> = self.outputs.iter().map(|s| s.name.as_str()).collect();
                        bad(format!(
                            "unknown output {:?}; model {:?} has: {}",
                            truncate(&o.name, 64),
                            self.name,
                            names.join(", ")
                        ))
                    })?;
                    if let OutputKind::Unsupported(what) = &spec.kind {
                        return Err(bad(format!(
                            "output {:?} is {what}, which the Open Inference Protocol cannot carry",
                            spec.name
                        )));
                    }
                    out.push(spec);
                }
                out
            }
            _ => self.outputs.iter().filter(|s| !matches!(s.kind, OutputKind::Unsupported(_))).collect(),
        };

        let mut session = self.take_session()?;
        let result = (|| {
            let outputs = session.run(feeds).map_err(|e| {
                // ONNX Runtime's message can name shapes that the checks above could not (e.g. a
                // mismatch between two inputs). It can quote a value (Gather names an index out of
                // range): sealed to the client who sent it, never logged.
                bad(format!("model {:?} rejected the request: {e}", self.name))
            })?;
            let values = wanted
                .iter()
                .map(|spec| {
                    outputs
                        .get(&spec.name)
                        .ok_or_else(|| internal(format!("ONNX Runtime returned no output {:?}", spec.name)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // What ONNX Runtime does not hand out as a slice (ZipMap rows, strings) is converted first;
            // every other output is written from ONNX Runtime's own buffer.
            let owned =
                wanted.iter().zip(&values).map(|(spec, v)| owned_output(spec, v)).collect::<Result<Vec<_>, _>>()?;
            let mut views = Vec::with_capacity(wanted.len());
            for ((spec, value), owned) in wanted.iter().zip(&values).zip(&owned) {
                let (shape, data, parameters) = match owned {
                    Some(o) => (o.shape.clone(), o.data.view(), o.parameters.as_ref()),
                    None => {
                        let (shape, data) = borrowed_output(spec, value)?;
                        (shape, data, None)
                    }
                };
                views.push(Output {
                    name: &spec.name,
                    shape,
                    data,
                    parameters,
                    binary: request.binary_output(&spec.name),
                });
            }
            let answer = Answer {
                model_name: &self.name,
                model_version: None,
                id: request.header.id.as_deref(),
                outputs: &views,
            };
            response::write(out, &answer).map_err(|e| bad(e.0))
        })();
        self.return_session(session);
        result
    }

    fn take_session(&self) -> Result<Session, EnclaveError> {
        // The semaphore guarantees an idle session exists for each holder of a permit; `infer_blocking`
        // called directly (benchmarks, tests) without a permit may find none and says so.
        let mut idle = self.sessions.lock().map_err(|_| internal("session pool poisoned"))?;
        idle.pop().ok_or(EnclaveError::Overloaded("all sessions are busy"))
    }

    fn return_session(&self, session: Session) {
        if let Ok(mut idle) = self.sessions.lock() {
            idle.push(session);
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn format_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn to_ort(t: Tensor) -> Result<SessionInputValue<'static>, EnclaveError> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let name = t.name;
    fn mk<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        shape: Vec<i64>,
        data: Vec<T>,
    ) -> ort::Result<SessionInputValue<'static>> {
        Ok(OrtTensor::from_array((shape, data))?.into())
    }
    let made = match t.data {
        TensorData::Bool(v) => mk(shape, v),
        TensorData::U8(v) => mk(shape, v),
        TensorData::U16(v) => mk(shape, v),
        TensorData::U32(v) => mk(shape, v),
        TensorData::U64(v) => mk(shape, v),
        TensorData::I8(v) => mk(shape, v),
        TensorData::I16(v) => mk(shape, v),
        TensorData::I32(v) => mk(shape, v),
        TensorData::I64(v) => mk(shape, v),
        TensorData::F16(v) => mk(shape, v),
        TensorData::Bf16(v) => mk(shape, v),
        TensorData::F32(v) => mk(shape, v),
        TensorData::F64(v) => mk(shape, v),
        TensorData::Bytes(v) => {
            // ONNX Runtime's string tensors hold C strings of UTF-8.
            let mut texts = Vec::with_capacity(v.len());
            for (i, b) in v.into_iter().enumerate() {
                let text = String::from_utf8(b).map_err(|_| {
                    bad(format!("input {name:?}: BYTES element {i} is not UTF-8, which ONNX Runtime strings must be"))
                })?;
                if text.contains('\0') {
                    return Err(bad(format!("input {name:?}: BYTES element {i} contains a NUL byte")));
                }
                texts.push(text);
            }
            let made = OrtTensor::from_string_array((shape, texts.as_slice())).map(Into::into);
            // ONNX Runtime copied the strings: wipe ours.
            for t in &mut texts {
                zeroize::Zeroize::zeroize(t);
            }
            made
        }
    };
    made.map_err(|e| bad(format!("input {name:?}: {e}")))
}

/// An output converted from what ONNX Runtime returned, for kinds it does not hand out as a slice.
struct OwnedOutput {
    shape: Vec<u64>,
    data: TensorData,
    parameters: Option<Map<String, Value>>,
}

fn ort_shape(shape: &[i64]) -> Vec<u64> {
    shape.iter().map(|&d| d.max(0) as u64).collect()
}

/// ZipMap rows and strings, converted; `None` for tensors that [`borrowed_output`] reads in place.
fn owned_output(spec: &OutputSpec, value: &DynValue) -> Result<Option<OwnedOutput>, EnclaveError> {
    let fail = |e: ort::Error| internal(format!("output {:?}: {e}", spec.name));
    match &spec.kind {
        OutputKind::Tensor(Datatype::Bytes) => {
            let (shape, strings) = value.try_extract_strings().map_err(fail)?;
            let shape = ort_shape(shape);
            let data = TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect());
            Ok(Some(OwnedOutput { shape, data, parameters: None }))
        }
        OutputKind::Tensor(_) => Ok(None),
        OutputKind::ZipMap => {
            let rows = value.try_extract_sequence::<DynMapValueType>().map_err(fail)?;
            let mut keys: Option<Vec<i64>> = None;
            let mut data = Vec::new();
            for (r, row) in rows.iter().enumerate() {
                let mut kv = row.try_extract_key_values::<i64, f32>().map_err(fail)?;
                kv.sort_by_key(|(k, _)| *k);
                let row_keys: Vec<i64> = kv.iter().map(|(k, _)| *k).collect();
                match &keys {
                    None => keys = Some(row_keys),
                    Some(k) if *k != row_keys => {
                        return Err(internal(format!(
                            "output {:?}: row {r} has other class keys than row 0",
                            spec.name
                        )));
                    }
                    Some(_) => {}
                }
                data.extend(kv.into_iter().map(|(_, v)| v));
            }
            let keys = keys.unwrap_or_default();
            let mut params = Map::new();
            params.insert("zipmap_keys".into(), json!(keys));
            Ok(Some(OwnedOutput {
                shape: vec![rows.len() as u64, keys.len() as u64],
                data: TensorData::F32(data),
                parameters: Some(params),
            }))
        }
        OutputKind::Unsupported(what) => Err(bad(format!("output {:?} is {what}, which v2 cannot carry", spec.name))),
    }
}

/// A tensor output read in place: its shape, and ONNX Runtime's buffer as elements.
fn borrowed_output<'v>(spec: &OutputSpec, value: &'v DynValue) -> Result<(Vec<u64>, Elements<'v>), EnclaveError> {
    let fail = |e: ort::Error| internal(format!("output {:?}: {e}", spec.name));
    let OutputKind::Tensor(dt) = &spec.kind else {
        return Err(internal(format!("output {:?} is not a plain tensor", spec.name)));
    };
    macro_rules! take {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(fail)?;
            (ort_shape(shape), Elements::$variant(data))
        }};
    }
    Ok(match dt {
        Datatype::Bool => take!(bool, Bool),
        Datatype::Uint8 => take!(u8, U8),
        Datatype::Uint16 => take!(u16, U16),
        Datatype::Uint32 => take!(u32, U32),
        Datatype::Uint64 => take!(u64, U64),
        Datatype::Int8 => take!(i8, I8),
        Datatype::Int16 => take!(i16, I16),
        Datatype::Int32 => take!(i32, I32),
        Datatype::Int64 => take!(i64, I64),
        Datatype::Fp16 => take!(half::f16, F16),
        Datatype::Bf16 => take!(half::bf16, Bf16),
        Datatype::Fp32 => take!(f32, F32),
        Datatype::Fp64 => take!(f64, F64),
        Datatype::Bytes => {
            return Err(internal(format!("output {:?}: strings are converted, not borrowed", spec.name)));
        }
    })
}

/// Models by name.
pub type Models = HashMap<String, Arc<Model>>;

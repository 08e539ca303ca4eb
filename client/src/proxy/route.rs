//! The KServe v2 REST routes `veil proxy` serves, parsed from the client's method and path, and the path
//! each is forwarded as (rebuilt from what was parsed, never the client's bytes).
use axum::http::{Method, StatusCode};
use veil_protocol::error::clip;

/// A KServe v2 route, as the proxy understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ServerMetadata,
    Live,
    Ready,
    ModelMetadata { model: String },
    ModelReady { model: String },
    Infer { model: String },
}

impl Route {
    /// The route of `method` and `path` (query ignored): the KServe v2 routes, with or without
    /// `/versions/{v}`; otherwise a status and message.
    pub fn of(method: &Method, path: &str) -> Result<(Route, Option<String>), (StatusCode, String)> {
        let mut parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let mut version = None;
        if let ["v2", "models", _, "versions", v, ..] = parts.as_slice() {
            version = Some(percent_decode(v));
            parts.drain(3..5);
        }
        let model = |m: &str| percent_decode(m);
        let (route, allowed) = match parts.as_slice() {
            ["v2"] => (Route::ServerMetadata, Method::GET),
            ["v2", "health", "live"] => (Route::Live, Method::GET),
            ["v2", "health", "ready"] => (Route::Ready, Method::GET),
            ["v2", "models", m] => (Route::ModelMetadata { model: model(m) }, Method::GET),
            ["v2", "models", m, "ready"] => (Route::ModelReady { model: model(m) }, Method::GET),
            ["v2", "models", m, "infer"] => (Route::Infer { model: model(m) }, Method::POST),
            _ => {
                let shown = clip(path, 80);
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("no route {shown:?}: veil proxy serves the KServe v2 REST API under /v2"),
                ));
            }
        };
        if *method != allowed && !(allowed == Method::GET && *method == Method::HEAD) {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {} ({allowed} is)", clip(path, 80)),
            ));
        }
        Ok((route, version))
    }

    /// The route's path as forwarded: built from what was parsed (a decoded, checked model name), never
    /// the client's bytes.
    pub fn path(&self, version: Option<&str>) -> String {
        let model = |m: &str, rest: &str| match version {
            Some(v) => format!("/v2/models/{m}/versions/{v}{rest}"),
            None => format!("/v2/models/{m}{rest}"),
        };
        match self {
            Route::ServerMetadata => "/v2".into(),
            Route::Live => "/v2/health/live".into(),
            Route::Ready => "/v2/health/ready".into(),
            Route::ModelMetadata { model: m } => model(m, ""),
            Route::ModelReady { model: m } => model(m, "/ready"),
            Route::Infer { model: m } => model(m, "/infer"),
        }
    }

    /// The model the route is about.
    pub fn model(&self) -> Option<&str> {
        match self {
            Route::ModelMetadata { model } | Route::ModelReady { model } | Route::Infer { model } => Some(model),
            _ => None,
        }
    }

    pub(super) fn label(&self) -> &'static str {
        match self {
            Route::ServerMetadata => "server_metadata",
            Route::Live => "live",
            Route::Ready => "ready",
            Route::ModelMetadata { .. } => "model_metadata",
            Route::ModelReady { .. } => "model_ready",
            Route::Infer { .. } => "infer",
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_kserve_v2_with_and_without_versions() {
        let get = |p: &str| Route::of(&Method::GET, p).map_err(|(s, _)| s);
        assert_eq!(get("/v2"), Ok((Route::ServerMetadata, None)));
        assert_eq!(get("/v2/health/live"), Ok((Route::Live, None)));
        assert_eq!(get("/v2/health/ready/"), Ok((Route::Ready, None)));
        assert_eq!(get("/v2/models/iris"), Ok((Route::ModelMetadata { model: "iris".into() }, None)));
        assert_eq!(
            get("/v2/models/iris/versions/1/ready"),
            Ok((Route::ModelReady { model: "iris".into() }, Some("1".into())))
        );
        assert_eq!(get("/v2/models/my%20model"), Ok((Route::ModelMetadata { model: "my model".into() }, None)));
        assert_eq!(get("/v2/models/iris/infer"), Err(StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(get("/v2/models/iris/config"), Err(StatusCode::NOT_FOUND));
        assert_eq!(get("/v1/models/iris"), Err(StatusCode::NOT_FOUND));
        let post = Route::of(&Method::POST, "/v2/models/iris/versions/3/infer").unwrap();
        assert_eq!(post, (Route::Infer { model: "iris".into() }, Some("3".into())));
        assert!(Route::of(&Method::HEAD, "/v2/health/ready").is_ok());
    }
}

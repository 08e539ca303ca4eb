//! Kinds of failure, as they cross a link, and the one table that maps them to HTTP statuses.
//!
//! Every side uses this table: the enclave when it labels a failure, the parent when it answers a client,
//! the client when it turns an answer back into an error. A message never carries secrets or request data:
//! it names what was wrong (an input's name, an expected shape), not the values.
use serde::{Deserialize, Serialize};

/// Kinds of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request was malformed or does not fit the model.
    BadRequest,
    /// KMS refused to release a data key (its key policy, typically the attestation conditions).
    Forbidden,
    /// No such model or route.
    NotFound,
    /// The request is too large.
    TooLarge,
    /// Inference or another internal step failed.
    Internal,
    /// The peer spoke a version or message this side does not understand.
    Protocol,
    /// Not ready yet, or overloaded: try again (after `retry_after_secs`, when given).
    Unavailable,
    /// No answer in time.
    Timeout,
    /// The request was well formed but cannot be processed: an OHTTP request for a key this gateway does
    /// not hold, or that does not decrypt under it (RFC 9458 §6.4 suggests 422).
    Unprocessable,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::BadRequest,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::TooLarge,
        ErrorKind::Internal,
        ErrorKind::Protocol,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Unprocessable,
    ];

    /// The HTTP status this kind maps to: the one table.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::Internal => 500,
            ErrorKind::Protocol => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::Unprocessable => 422,
        }
    }

    /// The kind an HTTP status stands for (the reverse of [`ErrorKind::http_status`]; other statuses are
    /// `internal` below 500's neighbours and `bad_request` for the other 4xx).
    pub fn from_http_status(status: u16) -> ErrorKind {
        ErrorKind::ALL.into_iter().find(|k| k.http_status() == status).unwrap_or(if (400..500).contains(&status) {
            ErrorKind::BadRequest
        } else {
            ErrorKind::Internal
        })
    }

    /// A short stable label, for metrics and JSON error bodies.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Internal => "internal",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unprocessable => "unprocessable",
        }
    }

    /// Parses a [`ErrorKind::label`].
    pub fn from_label(label: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.label() == label)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A failure, as it crosses a link: a kind for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
    /// For `unavailable`: seconds after which a retry may succeed (HTTP `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u32>,
}

/// Longest message carried: error messages name things, they do not quote requests.
pub const MAX_ERROR_MESSAGE: usize = 2048;

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { kind, message, retry_after_secs: None }
    }

    /// Adds a `Retry-After` hint.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.label())
    }
}

/// A string from elsewhere (a hostile peer's field, a parent's message) made fit for an error message or a
/// log line: control characters dropped (no terminal escapes, no forged log lines), at most `max_chars`.
pub fn clip(s: &str, max_chars: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_round_trips() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_http_status(k.http_status()), k);
            assert_eq!(ErrorKind::from_label(k.label()), Some(k));
        }
        assert_eq!(ErrorKind::from_http_status(418), ErrorKind::BadRequest);
        assert_eq!(ErrorKind::from_http_status(501), ErrorKind::Internal);
    }

    #[test]
    fn messages_are_bounded() {
        let e = ErrorReply::new(ErrorKind::BadRequest, "é".repeat(5000));
        assert!(e.message.len() <= MAX_ERROR_MESSAGE);
    }

    #[test]
    fn clip_drops_control_characters_and_bounds_the_length() {
        assert_eq!(clip("a\u{1b}[31mb\nc", 100), "a[31mbc");
        assert_eq!(clip("ééééé", 3), "ééé");
    }
}

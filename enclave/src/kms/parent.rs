//! The two host-service requests the KMS client makes of the (untrusted) parent: AWS credentials, and a raw
//! byte relay to the KMS endpoint. Each uses a connection of its own, so a relay never shares a connection
//! with framed traffic.
//!
//! Everything the parent answers is hostile: frames are bounded, answers must be the expected variant, and
//! credentials are checked for shape and size before the SDK sees them. Credential values are never logged
//! or put into error messages.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veil_protocol::error::clip;
use veil_protocol::message::{Body, HostRequest, HostResponse};
use veil_runtime::conn::Connection;
use veil_runtime::transport::{self, Address, Stream};
use zeroize::Zeroizing;

/// Largest frame accepted from the parent on these connections: a credentials answer is a few KiB.
const MAX_FRAME: usize = 64 * 1024;

/// Why a host-service request for KMS failed. Messages never carry credential values.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParentError {
    #[error("cannot reach the parent's host services at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("host services connection failed: {0}")]
    Io(String),
    #[error("the parent refused: {0}")]
    Refused(String),
    #[error("the parent answered {0} where {1} was expected")]
    Unexpected(&'static str, &'static str),
    #[error("the parent sent unusable credentials: {0}")]
    BadCredentials(&'static str),
    #[error("the parent did not answer within {0:?}")]
    Timeout(Duration),
}

/// Credentials as checked; the secret parts are zeroized on drop.
pub(crate) struct ParentCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Zeroizing<String>,
    pub(crate) session_token: Option<Zeroizing<String>>,
    pub(crate) expiration: Option<SystemTime>,
}

async fn exchange(addr: &Address, request: &HostRequest) -> Result<(Stream, HostResponse), ParentError> {
    let stream =
        transport::connect(addr).await.map_err(|source| ParentError::Connect { addr: addr.to_string(), source })?;
    let mut conn = Connection::new(stream, MAX_FRAME);
    // The connection reads exactly one frame and nothing more, so after RelayReady the next byte on the
    // stream is the endpoint's.
    let answer = conn.call::<_, HostResponse>(request, b"").await.map_err(|e| ParentError::Io(e.to_string()))?;
    Ok((conn.into_inner(), answer.body))
}

/// Opens a raw relay to `endpoint` (`host:port`) through the parent, within `timeout`.
pub(crate) async fn open_relay(addr: &Address, endpoint: &str, timeout: Duration) -> Result<Stream, ParentError> {
    let request = HostRequest::KmsRelay { endpoint: endpoint.to_owned() };
    let (stream, answer) =
        tokio::time::timeout(timeout, exchange(addr, &request)).await.map_err(|_| ParentError::Timeout(timeout))??;
    match answer {
        HostResponse::RelayReady => Ok(stream),
        HostResponse::Error(e) => Err(ParentError::Refused(clip(&e.message, 200))),
        other => Err(ParentError::Unexpected(other.name(), "RelayReady")),
    }
}

/// Asks the parent for AWS credentials, within `timeout`, and checks their shape.
pub(crate) async fn fetch_credentials(addr: &Address, timeout: Duration) -> Result<ParentCredentials, ParentError> {
    let (_stream, answer) = tokio::time::timeout(timeout, exchange(addr, &HostRequest::Credentials))
        .await
        .map_err(|_| ParentError::Timeout(timeout))??;
    match answer {
        HostResponse::Credentials { access_key_id, secret_access_key, session_token, expiration } => {
            let secret_access_key = Zeroizing::new(secret_access_key);
            let session_token = session_token.map(Zeroizing::new);
            check_credentials(&access_key_id, &secret_access_key, session_token.as_deref().map(String::as_str))?;
            let expiration = match expiration {
                None => None,
                Some(secs) => {
                    let at = UNIX_EPOCH
                        .checked_add(Duration::from_secs(secs))
                        .ok_or(ParentError::BadCredentials("expiration out of range"))?;
                    if at <= SystemTime::now() {
                        return Err(ParentError::BadCredentials("already expired"));
                    }
                    Some(at)
                }
            };
            Ok(ParentCredentials { access_key_id, secret_access_key, session_token, expiration })
        }
        HostResponse::Error(e) => Err(ParentError::Refused(clip(&e.message, 200))),
        other => Err(ParentError::Unexpected(other.name(), "Credentials")),
    }
}

/// Shape checks (AWS documents access key ids as 16 to 128 characters; secrets and session tokens are
/// base64-ish text). The point is to refuse garbage early and keep sizes bounded, not to validate with AWS.
fn check_credentials(akid: &str, secret: &str, token: Option<&str>) -> Result<(), ParentError> {
    if !(16..=128).contains(&akid.len()) || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ParentError::BadCredentials("access key id is not 16 to 128 letters and digits"));
    }
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if secret.is_empty() || secret.len() > 256 || !printable(secret) {
        return Err(ParentError::BadCredentials("secret access key is empty, too long or not printable"));
    }
    if let Some(t) = token
        && (t.is_empty() || t.len() > 8192 || !printable(t))
    {
        return Err(ParentError::BadCredentials("session token is empty, too long or not printable"));
    }
    Ok(())
}

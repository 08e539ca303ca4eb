//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! Pure: this module sees byte slices only. The reader in `veil_runtime::transport` uses [`check_header`] to
//! refuse an oversized frame *before* allocating its buffer, which is the point of an explicit maximum: a
//! hostile peer that announces 4 GiB gets an error, not an allocation.
//!
//! Invariant: every frame on the wire satisfies `0 < len <= max`, where `max` is configured per connection
//! (both sides should agree; the receiver's limit is the one that counts).

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// Default largest frame payload: 16 MiB (a MiniLM batch of 8 answers in about 8 MiB of JSON).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// The largest maximum a configuration may set: 1 GiB. Larger payloads (model files) travel in chunks.
pub const LIMIT_MAX_FRAME: usize = 1 << 30;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length is larger than this connection accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// A zero-length frame: never sent by a Veil peer, so it means garbage on the wire.
    #[error("empty frame")]
    Empty,
    /// The stream ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, the stream ended after {got}")]
    Truncated { expected: usize, got: usize },
}

/// Checks a frame header and returns the payload length it announces.
pub fn check_header(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Encodes one frame (header and payload) into a new buffer.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    if payload.len() > max || payload.len() > u32::MAX as usize {
        return Err(FrameError::TooLarge { len: payload.len(), max });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more), or the payload and the
/// number of bytes consumed.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let len = check_header(h, max)?;
    match buf.get(HEADER_LEN..HEADER_LEN + len) {
        Some(payload) => Ok(Some((payload, HEADER_LEN + len))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = encode(b"hello", 16).unwrap();
        assert_eq!(&f[..4], &[0, 0, 0, 5]);
        assert_eq!(decode(&f, 16).unwrap(), Some((&b"hello"[..], 9)));
    }

    #[test]
    fn incomplete_frames_ask_for_more() {
        let f = encode(b"hello", 16).unwrap();
        for cut in 0..f.len() {
            assert_eq!(decode(&f[..cut], 16).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_is_refused_from_the_header_alone() {
        let err = decode(&[0xff, 0xff, 0xff, 0xff], 1024).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: u32::MAX as usize, max: 1024 });
        assert_eq!(encode(&[0; 17], 16).unwrap_err(), FrameError::TooLarge { len: 17, max: 16 });
    }

    #[test]
    fn empty_frames_are_garbage() {
        assert_eq!(decode(&[0, 0, 0, 0], 16).unwrap_err(), FrameError::Empty);
        assert_eq!(encode(b"", 16).unwrap_err(), FrameError::Empty);
    }
}

//! Padding of sealed plaintexts, so that what the parent sees of a request or an answer is its size bucket,
//! not its size.
//!
//! Without padding a ciphertext is as long as its plaintext: a BOOL input's `true` and `false` differ by a
//! byte, an integer's digits show its magnitude, and an error is far shorter than an answer. Every sealed
//! plaintext is therefore laid out as
//!
//! ```text
//! padded = u32 body_len ‖ u32 meta_len ‖ body ‖ meta ‖ zero bytes, to exactly bucket(8 + body_len + meta_len)
//! ```
//!
//! inside the AEAD, so the lengths are authenticated with everything else. The buckets are Padmé's
//! (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication with PURBs", PETS
//! 2019), with a floor of [`MIN_BUCKET`] bytes: a length `L` is rounded up to keep only its top
//! `floor(log2(floor(log2 L))) + 1` significant bits, which costs at most 1/16 (6.25%) above the floor, 1/32
//! above 64 KiB and 1/64 above 4 GiB, and leaves an observer `O(log log L)` bits of the length. Below the
//! floor, everything looks the same: every small request, small answer and error is 1 KiB.
//!
//! Opening checks that the lengths fit, that the plaintext is exactly the bucket the lengths imply, and
//! that every padding byte is zero, so a padded plaintext has exactly one form.

/// The smallest bucket: every plaintext of up to 1 KiB (lengths included) pads to this.
pub const MIN_BUCKET: usize = 1024;

/// Bytes of the two length fields.
pub const LENGTHS_LEN: usize = 8;

/// Why a padded plaintext was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PadError {
    #[error("padded plaintext of {0} bytes is shorter than its length fields")]
    Short(usize),
    #[error("padded plaintext lengths ({body} + {meta}) overrun its {len} bytes")]
    Overrun { body: usize, meta: usize, len: usize },
    #[error("padded plaintext of {len} bytes is not the {want}-byte bucket its lengths imply")]
    Bucket { len: usize, want: usize },
    #[error("padding is not all zeros")]
    NonZero,
    #[error("plaintext of {0} bytes is too large to pad")]
    TooLarge(usize),
}

/// The bucket a plaintext of `len` bytes (lengths included) pads to.
pub fn bucket(len: usize) -> usize {
    if len <= MIN_BUCKET {
        return MIN_BUCKET;
    }
    let l = len as u64;
    let e = 63 - u64::from(l.leading_zeros()); // floor(log2 L), at least 10 here
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 E) + 1
    let mask = (1u64 << (e - s)) - 1;
    ((l + mask) & !mask) as usize
}

/// Appends the padding to a buffer laid out as `lengths placeholder (8) ‖ body ‖ meta`, starting at
/// `start`: fills in the lengths and appends zeros up to the bucket.
pub fn finish_in_place(buf: &mut Vec<u8>, start: usize, body_len: usize) -> Result<(), PadError> {
    let content = buf.len().checked_sub(start).ok_or(PadError::Short(0))?;
    let meta_len = content.checked_sub(LENGTHS_LEN + body_len).ok_or(PadError::Short(content))?;
    let (Ok(b), Ok(m)) = (u32::try_from(body_len), u32::try_from(meta_len)) else {
        return Err(PadError::TooLarge(content));
    };
    buf[start..start + 4].copy_from_slice(&b.to_be_bytes());
    buf[start + 4..start + 8].copy_from_slice(&m.to_be_bytes());
    let padded = bucket(content);
    zero_extend(buf, start + padded);
    Ok(())
}

/// Extends `buf` with zeros to `len` bytes. When that needs a larger allocation, the contents move to one
/// of exactly `len` bytes and the old one is wiped before it is freed: padding a plaintext never leaves a
/// copy of it behind in freed memory.
pub fn zero_extend(buf: &mut Vec<u8>, len: usize) {
    if len <= buf.len() {
        return;
    }
    if len > buf.capacity() {
        let mut grown = Vec::with_capacity(len);
        grown.extend_from_slice(buf);
        zeroize::Zeroize::zeroize(buf);
        *buf = grown;
    }
    buf.resize(len, 0);
}

/// Lays out `body` and `meta` padded, in a new buffer (for callers that hold both as slices).
pub fn pad(body: &[u8], meta: &[u8]) -> Result<Vec<u8>, PadError> {
    let content = LENGTHS_LEN + body.len() + meta.len();
    let mut buf = Vec::with_capacity(bucket(content));
    buf.extend_from_slice(&[0u8; LENGTHS_LEN]);
    buf.extend_from_slice(body);
    buf.extend_from_slice(meta);
    finish_in_place(&mut buf, 0, body.len())?;
    Ok(buf)
}

/// Checks a padded plaintext and returns its body and meta.
pub fn unpad(padded: &[u8]) -> Result<(&[u8], &[u8]), PadError> {
    let lengths: &[u8; LENGTHS_LEN] =
        padded.get(..LENGTHS_LEN).and_then(|l| l.try_into().ok()).ok_or(PadError::Short(padded.len()))?;
    let body = u32::from_be_bytes([lengths[0], lengths[1], lengths[2], lengths[3]]) as usize;
    let meta = u32::from_be_bytes([lengths[4], lengths[5], lengths[6], lengths[7]]) as usize;
    let end = LENGTHS_LEN
        .checked_add(body)
        .and_then(|n| n.checked_add(meta))
        .filter(|&end| end <= padded.len())
        .ok_or(PadError::Overrun { body, meta, len: padded.len() })?;
    let want = bucket(end);
    if padded.len() != want {
        return Err(PadError::Bucket { len: padded.len(), want });
    }
    if padded[end..].iter().any(|&b| b != 0) {
        return Err(PadError::NonZero);
    }
    Ok((&padded[LENGTHS_LEN..LENGTHS_LEN + body], &padded[LENGTHS_LEN + body..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_padme_with_a_floor() {
        assert_eq!(bucket(0), 1024);
        assert_eq!(bucket(1024), 1024);
        // 1025: E = 10, S = 4, keep the top 4 bits of 11: round to a multiple of 64.
        assert_eq!(bucket(1025), 1088);
        assert_eq!(bucket(100_000), 100_352);
        for len in [1025usize, 5000, 65_537, 600_000, 1 << 20, (8 << 20) + 3] {
            let b = bucket(len);
            assert!(b >= len, "{len}");
            assert!((b - len) as f64 <= 0.0625 * len as f64, "{len} -> {b}");
            assert_eq!(bucket(b), b, "a bucket is its own bucket");
        }
    }

    #[test]
    fn round_trips_and_hides_small_differences() {
        let a = pad(b"{\"data\":[true]}", b"\xa0").unwrap();
        let b = pad(b"{\"data\":[false]}", b"\xa0").unwrap();
        assert_eq!(a.len(), b.len());
        assert_eq!(unpad(&a).unwrap(), (&b"{\"data\":[true]}"[..], &b"\xa0"[..]));
        let big = vec![7u8; 5000];
        let p = pad(&big, b"").unwrap();
        assert_eq!(p.len(), bucket(5008));
        assert_eq!(unpad(&p).unwrap().0, &big[..]);
    }

    #[test]
    fn zero_extending_past_the_capacity_moves_the_contents_and_keeps_them() {
        let mut buf = Vec::with_capacity(4);
        buf.extend_from_slice(b"abcd");
        zero_extend(&mut buf, 1024);
        assert_eq!(buf.len(), 1024);
        assert_eq!(&buf[..4], b"abcd");
        assert!(buf[4..].iter().all(|&b| b == 0));
        let mut roomy = Vec::with_capacity(2048);
        roomy.extend_from_slice(b"xy");
        let at = roomy.as_ptr();
        zero_extend(&mut roomy, 2000);
        assert_eq!(roomy.as_ptr(), at, "no move when the capacity suffices");
        zero_extend(&mut roomy, 10);
        assert_eq!(roomy.len(), 2000, "never shrinks");
    }

    #[test]
    fn every_other_form_is_refused() {
        let p = pad(b"hello", b"m").unwrap();
        let mut nonzero = p.clone();
        *nonzero.last_mut().unwrap() = 1;
        assert_eq!(unpad(&nonzero).unwrap_err(), PadError::NonZero);
        assert_eq!(unpad(&p[..p.len() - 1]).unwrap_err(), PadError::Bucket { len: 1023, want: 1024 });
        let mut extended = p.clone();
        extended.push(0);
        assert!(matches!(unpad(&extended).unwrap_err(), PadError::Bucket { .. }));
        let mut overrun = p.clone();
        overrun[..4].copy_from_slice(&2000u32.to_be_bytes());
        assert!(matches!(unpad(&overrun).unwrap_err(), PadError::Overrun { .. }));
        let mut huge = p;
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(unpad(&huge).unwrap_err(), PadError::Overrun { .. }));
        assert_eq!(unpad(b"abc").unwrap_err(), PadError::Short(3));
    }
}

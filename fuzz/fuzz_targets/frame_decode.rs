//! Frames: `check_header` and `decode` on hostile bytes, under a maximum the input chooses. Never panics;
//! a decoded frame is within its limits and re-encodes to exactly the bytes it was decoded from; a stream
//! of frames decodes one after another to the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::frame::{DEFAULT_MAX_FRAME, FrameError, HEADER_LEN, check_header, decode, encode};

fn check(buf: &[u8], max: usize) {
    let header = buf.get(..HEADER_LEN).map(|h| {
        let mut a = [0u8; HEADER_LEN];
        a.copy_from_slice(h);
        check_header(a, max)
    });
    match decode(buf, max) {
        Ok(Some((payload, used))) => {
            assert_eq!(header, Some(Ok(payload.len())));
            assert!(!payload.is_empty() && payload.len() <= max);
            assert_eq!(used, HEADER_LEN + payload.len());
            assert_eq!(&buf[HEADER_LEN..used], payload);
            assert_eq!(encode(payload, max).as_deref(), Ok(&buf[..used]));
        }
        // Incomplete: the header is short, or it announces more than the buffer holds.
        Ok(None) => match header {
            None => assert!(buf.len() < HEADER_LEN),
            Some(Ok(len)) => assert!(buf.len() < HEADER_LEN + len),
            Some(Err(e)) => panic!("decode asked for more bytes after a refused header: {e}"),
        },
        Err(e) => {
            assert_eq!(header, Some(Err(e.clone())));
            assert!(matches!(e, FrameError::Empty | FrameError::TooLarge { .. }));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the connection's maximum, so small limits are explored as well as lengths.
    let Some((limit, buf)) = data.split_first_chunk::<2>() else { return };
    let max = usize::from(u16::from_be_bytes(*limit));
    check(buf, max);
    check(buf, DEFAULT_MAX_FRAME);
    // As a stream: frame after frame until one is incomplete or refused; never past the end.
    let mut rest = buf;
    while let Ok(Some((_, used))) = decode(rest, max) {
        assert!(used <= rest.len());
        rest = &rest[used..];
    }
});

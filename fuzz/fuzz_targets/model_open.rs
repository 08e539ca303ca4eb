//! Encrypted model files, opened chunk by chunk with `ModelOpener` as the enclave does with what the
//! parent serves. Mode 0 (first byte even): a real header, then the rest of the input as the chunk bytes.
//! Mode 1: a real file (header and chunks), mutated by the fuzzer's edits. Never panics, and nothing but
//! the real file opens to the end: the key covers every header byte, and each chunk is authenticated with
//! its index and whether it is the last.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_fuzz::{DATA_KEY, apply_edits, model_file, model_plaintext};
use veil_protocol::envelope::EnvelopeError;
use veil_protocol::model_file::{ModelOpener, read_header};

struct Fixture {
    file: Vec<u8>,
    header_end: usize,
    plaintext: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let plaintext = model_plaintext();
        let file = model_file(&plaintext);
        let (_, header_end) = read_header(&file).expect("reads").expect("whole");
        Fixture { file, header_end, plaintext }
    })
}

/// Opens `file` to its end: the plaintext, or the first refusal.
fn open_all(file: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let short = || EnvelopeError::Malformed("short".into());
    let (_, end) = read_header(file)?.ok_or_else(short)?;
    let mut opener = ModelOpener::new(&file[..end], &DATA_KEY)?;
    let mut pos = end;
    let mut plain = Vec::new();
    while let Some(n) = opener.next_chunk_len() {
        let mut chunk = file.get(pos..pos.checked_add(n).ok_or_else(short)?).ok_or_else(short)?.to_vec();
        plain.extend_from_slice(opener.open_chunk(&mut chunk)?);
        pos += n;
    }
    // One more chunk than announced is refused, not a panic.
    assert!(opener.open_chunk(&mut [0u8; 16]).is_err());
    let sha384 = opener.finish()?;
    assert_eq!(sha384.len(), 48);
    if pos != file.len() {
        return Err(EnvelopeError::Malformed("trailing bytes".into()));
    }
    Ok(plain)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let file = if mode % 2 == 0 {
        let mut file = f.file[..f.header_end].to_vec();
        file.extend_from_slice(rest);
        file
    } else {
        let mut file = f.file.clone();
        apply_edits(&mut file, rest);
        file
    };
    if let Ok(plain) = open_all(&file) {
        assert_eq!(file, f.file, "a file that is not the real one opened");
        assert_eq!(plain, f.plaintext);
    }
});

//! The encrypted model file header (`model_file::read_header`), on hostile bytes: the parent serves model
//! files, and the enclave reads the header before it asks KMS for the key. Never panics; a header that
//! reads is within its bounds, its sizes never overflow silently, it re-encodes to a header that reads back
//! the same, and `ModelOpener::new` takes it (with any key) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_fuzz::DATA_KEY;
use veil_protocol::model_file::{MAGIC, MAX_CHUNK, MAX_HEADER, ModelOpener, read_header};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((header, end))) = read_header(data) else {
        let _ = ModelOpener::new(data, &DATA_KEY);
        return;
    };
    assert!(end <= data.len() && end > MAGIC.len() + 4 && end - MAGIC.len() - 4 <= MAX_HEADER as usize);
    assert!(header.chunk_size >= 1 && header.chunk_size <= MAX_CHUNK);
    assert!(header.chunks() >= 1);
    if let Some(len) = header.file_len(end - MAGIC.len() - 4) {
        assert!(len >= header.plaintext_len);
    }

    let mut cbor = Vec::new();
    ciborium::into_writer(&header, &mut cbor).expect("a header encodes");
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&(cbor.len() as u32).to_be_bytes());
    file.extend_from_slice(&cbor);
    let (again, again_end) = read_header(&file).expect("a re-encoded header reads").expect("and is whole");
    assert_eq!(again, header);
    assert_eq!(again_end, file.len());

    let opener = ModelOpener::new(&data[..end], &DATA_KEY).expect("a header that reads opens");
    assert_eq!(opener.header(), &header);
    let _ = opener.next_chunk_len();
});

//! RFC 9162 inclusion proofs as a client checks them (from a parent that may send anything): never panics,
//! and a proof only verifies if it is the one the tree itself gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::evidence::merkle::{Store, leaf_hash, verify_inclusion};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // A tree of 1..=64 leaves made from the input, a leaf index, and a path of the remaining bytes.
    let size = u64::from(data[0] % 64) + 1;
    let index = u64::from(data[1]) % (size + 1);
    // Chunks of 1 to 8 leaves, as the parent keeps them (the leaves of complete chunks from outside).
    let mut store = Store::with_chunks(u32::from(data[1] % 4));
    let all: Vec<[u8; 32]> = (0..size).map(|i| leaf_hash(&[data[2], i as u8])).collect();
    all.iter().for_each(|l| store.push(*l));
    let source = &all;
    let root = store.root(size, source).expect("the store holds size leaves");
    let path: Vec<[u8; 32]> = data[3..].chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
    let leaf = leaf_hash(&[data[2], index as u8]);
    let ok = verify_inclusion(&leaf, index, size, &path, &root).is_ok();
    if ok {
        assert_eq!(
            store.inclusion_path(index, size, source).as_deref(),
            Some(path.as_slice()),
            "a foreign proof verified"
        );
    }
    if index < size {
        let real = store.inclusion_path(index, size, source).expect("in range");
        assert!(verify_inclusion(&leaf, index, size, &real, &root).is_ok());
    }
});

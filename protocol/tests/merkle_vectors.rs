//! RFC 9162's Merkle tree against the Certificate Transparency reference vectors
//! (`vectors/rfc9162-merkle.json`): every root, every published inclusion proof, each from the recursive
//! definition, the parent's store and the enclave's frontier alike. A tree no other implementation agrees
//! with would prove nothing to anyone else.
#![allow(clippy::unwrap_used)]

use veil_protocol::evidence::merkle::{Frontier, Store, leaf_hash, root, verify_inclusion};

fn h(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn the_reference_trees_roots_and_proofs() {
    let v: serde_json::Value = serde_json::from_str(include_str!("vectors/rfc9162-merkle.json")).unwrap();
    let leaves: Vec<[u8; 32]> =
        v["leaves"].as_array().unwrap().iter().map(|l| leaf_hash(&hex::decode(l.as_str().unwrap()).unwrap())).collect();
    let roots: Vec<[u8; 32]> = v["roots"].as_array().unwrap().iter().map(|r| h(r.as_str().unwrap())).collect();
    assert_eq!(roots.len(), leaves.len() + 1);
    let (mut store, mut frontier) = (Store::with_chunks(1), Frontier::new());
    assert_eq!(root(&[]), roots[0]);
    assert_eq!(frontier.root(), roots[0]);
    for (n, leaf) in leaves.iter().enumerate() {
        store.push(*leaf);
        frontier.push(*leaf);
        let want = roots[n + 1];
        assert_eq!(root(&leaves[..=n]), want, "recursive root of {} leaves", n + 1);
        assert_eq!(store.root(n as u64 + 1, &leaves).unwrap(), want, "store root of {} leaves", n + 1);
        assert_eq!(frontier.root(), want, "frontier root of {} leaves", n + 1);
    }
    for p in v["inclusion"].as_array().unwrap() {
        let (index, size) = (p["index"].as_u64().unwrap(), p["size"].as_u64().unwrap());
        let path: Vec<[u8; 32]> = p["path"].as_array().unwrap().iter().map(|x| h(x.as_str().unwrap())).collect();
        assert_eq!(store.inclusion_path(index, size, &leaves).unwrap(), path, "proof of {index} in {size}");
        verify_inclusion(&leaves[index as usize], index, size, &path, &roots[size as usize]).unwrap();
        // The same proof for a neighbouring leaf, or a smaller tree, does not verify.
        let other = (index + 1) % size;
        assert!(verify_inclusion(&leaves[other as usize], index, size, &path, &roots[size as usize]).is_err());
        assert!(verify_inclusion(&leaves[index as usize], index, size, &path, &roots[size as usize - 1]).is_err());
    }
}

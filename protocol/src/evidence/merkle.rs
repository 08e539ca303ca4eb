//! The Merkle tree of RFC 9162 §2.1 (Certificate Transparency 2.0), over SHA-256:
//!
//! ```text
//! MTH({})      = SHA-256()
//! leaf hash    = SHA-256(0x00 ‖ leaf)
//! MTH(D[n])    = SHA-256(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n]))   k: the largest power of two < n
//! ```
//!
//! Three users, three shapes: the enclave keeps a [`Frontier`] (one hash per set bit of the tree size:
//! O(log n) memory, so a long-running enclave never grows) to sign tree heads; the parent keeps a
//! [`Store`] (every level of the tree) to answer inclusion proofs in O(log n); auditors and clients call
//! [`verify_inclusion`] (RFC 9162 §2.1.3.2) and [`root`]. The vectors in `protocol/tests/vectors/` are
//! the Certificate Transparency reference tree's.
use super::Hash;

/// The hash of an empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha256(&[&[]])
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The hash of a leaf: SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The largest power of two strictly less than `n` (`n` >= 2): where RFC 9162 splits a tree of `n` leaves.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of the leaves whose hashes are `leaves`.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion path of leaf `index` in the tree of `leaves` (RFC 9162 §2.1.3.1), for tests and small trees.
pub fn inclusion_path(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n as u64) as usize;
    let (mut path, sibling) = if index < k {
        (inclusion_path(&leaves[..k], index), root(&leaves[k..]))
    } else {
        (inclusion_path(&leaves[k..], index - k), root(&leaves[..k]))
    };
    path.push(sibling);
    path
}

/// Why an inclusion proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has {got} hashes; a leaf at index {index} of a tree of {size} needs {expected}")]
    Length { index: u64, size: u64, got: usize, expected: usize },
    #[error("the proof leads to root {computed}, but the signed tree head says {expected}")]
    Root { computed: String, expected: String },
}

/// Verifies that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], expected: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return Err(ProofError::Length { index, size, got: path.len(), expected: path_len(index, size) });
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::Length { index, size, got: path.len(), expected: path_len(index, size) });
    }
    if &r != expected {
        return Err(ProofError::Root { computed: hex::encode(r), expected: hex::encode(expected) });
    }
    Ok(())
}

/// How many hashes an inclusion proof of `index` in a tree of `size` has.
fn path_len(index: u64, size: u64) -> usize {
    if size <= 1 {
        return 0;
    }
    let k = split(size);
    1 + if index < k { path_len(index, k) } else { path_len(index - k, size - k) }
}

/// The compact form of a growing tree: the roots of its maximal complete subtrees, left to right (one per
/// set bit of the size). What the enclave keeps to sign tree heads without holding every leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first.
    peaks: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        // Merge equal-sized perfect subtrees: one merge per trailing one bit of the old size.
        let mut size = self.size;
        while size & 1 == 1 {
            // The invariant (one peak per set bit) guarantees a peak here.
            let Some(left) = self.peaks.pop() else { break };
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// The tree's root hash (RFC 9162's MTH of all leaves so far).
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else { return empty_root() };
        peaks.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Every level of a tree: the parent's index for inclusion proofs against any tree head. Level 0 holds the
/// leaf hashes, level `h` the roots of the complete subtrees of 2^h leaves; 64 bytes per leaf in all.
#[derive(Debug, Clone, Default)]
pub struct Store {
    levels: Vec<Vec<Hash>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(node);
            if row.len() % 2 == 1 {
                return;
            }
            node = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// MTH of the `len` leaves from `start`, where `start` is a multiple of the largest power of two not
    /// above `len` (always so in RFC 9162's recursion from the left edge).
    fn subtree(&self, start: u64, len: u64) -> Hash {
        if len == 0 {
            return empty_root();
        }
        if len.is_power_of_two() {
            let h = len.trailing_zeros() as usize;
            return self.levels[h][(start >> h) as usize];
        }
        let k = split(len);
        node_hash(&self.subtree(start, k), &self.subtree(start + k, len - k))
    }

    /// The root of the tree of the first `size` leaves, or `None` when `size` is larger than the store.
    pub fn root(&self, size: u64) -> Option<Hash> {
        (size <= self.size()).then(|| self.subtree(0, size))
    }

    /// The inclusion path of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_path(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        let mut path = Vec::new();
        self.path(index, 0, size, &mut path);
        Some(path)
    }

    fn path(&self, index: u64, start: u64, len: u64, out: &mut Vec<Hash>) {
        if len <= 1 {
            return;
        }
        let k = split(len);
        if index < k {
            self.path(index, start, k, out);
            out.push(self.subtree(start + k, len - k));
        } else {
            self.path(index - k, start + k, len - k, out);
            out.push(self.subtree(start, k));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn frontier_store_and_recursion_agree_on_every_size() {
        let all = leaves(70);
        let mut f = Frontier::new();
        let mut s = Store::new();
        assert_eq!(f.root(), empty_root());
        for n in 1..=all.len() {
            f.push(all[n - 1]);
            s.push(all[n - 1]);
            let want = root(&all[..n]);
            assert_eq!(f.root(), want, "frontier at {n}");
            assert_eq!(s.root(n as u64).unwrap(), want, "store at {n}");
            assert_eq!(f.peaks.len(), (n as u64).count_ones() as usize);
        }
        assert_eq!(s.root(71), None);
    }

    #[test]
    fn every_proof_verifies_at_every_size_and_every_corruption_fails() {
        let all = leaves(40);
        let mut s = Store::new();
        all.iter().for_each(|l| s.push(*l));
        for size in 1..=all.len() as u64 {
            let r = s.root(size).unwrap();
            for i in 0..size {
                let path = s.inclusion_path(i, size).unwrap();
                assert_eq!(path, inclusion_path(&all[..size as usize], i as usize));
                assert_eq!(path.len(), path_len(i, size));
                verify_inclusion(&all[i as usize], i, size, &path, &r).unwrap();
                if size > 1 {
                    let other = (i + 1) % size;
                    assert!(verify_inclusion(&all[i as usize], other, size, &path, &r).is_err());
                    assert!(verify_inclusion(&all[other as usize], i, size, &path, &r).is_err());
                    let mut bent = path.clone();
                    bent[0][0] ^= 1;
                    assert!(verify_inclusion(&all[i as usize], i, size, &bent, &r).is_err());
                    let mut longer = path.clone();
                    longer.push(r);
                    assert!(verify_inclusion(&all[i as usize], i, size, &longer, &r).is_err());
                    assert!(verify_inclusion(&all[i as usize], i, size, &path[..path.len() - 1], &r).is_err());
                    assert!(verify_inclusion(&all[i as usize], i, size * 2, &path, &r).is_err());
                }
            }
            assert!(verify_inclusion(&all[0], size, size, &[], &r).is_err());
        }
    }
}

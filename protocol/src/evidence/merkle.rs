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

/// Where a [`Store`] finds the leaf hashes it does not keep (those of complete chunks): the parent keeps
/// them in a file beside its log. `None` when they cannot be read (the proof is then refused).
pub trait LeafSource {
    /// The leaf hashes `start .. start + len`.
    fn leaves(&self, start: u64, len: u64) -> Option<Vec<Hash>>;
}

/// Leaf hashes held in memory: the source of a store that keeps everything ([`Store::new`]), and of tests.
impl LeafSource for Vec<Hash> {
    fn leaves(&self, start: u64, len: u64) -> Option<Vec<Hash>> {
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.get(start..end).map(<[Hash]>::to_vec)
    }
}

/// The parent's index of a growing tree, for inclusion proofs against any tree head. It keeps the roots of
/// complete *chunks* of 2^c leaves and every level above them (64 / 2^c bytes per leaf), and the leaves of
/// the last, incomplete chunk; the leaves of complete chunks come from a [`LeafSource`] when a proof needs
/// them (at most two chunks' worth per proof). With c = 0 ([`Store::new`]) it keeps every leaf.
#[derive(Debug, Clone, Default)]
pub struct Store {
    chunk_log2: u32,
    /// `levels[h]`: the roots of the complete subtrees of 2^(c + h) leaves, left to right.
    levels: Vec<Vec<Hash>>,
    /// The leaves of the incomplete chunk at the end.
    tail: Vec<Hash>,
    size: u64,
}

impl Store {
    /// A store that keeps every leaf (chunks of one).
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that keeps chunk roots of 2^`chunk_log2` leaves (at most 2^16) and the levels above.
    pub fn with_chunks(chunk_log2: u32) -> Self {
        Store { chunk_log2: chunk_log2.min(16), ..Self::default() }
    }

    fn chunk(&self) -> u64 {
        1 << self.chunk_log2
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.size += 1;
        self.tail.push(leaf);
        if (self.tail.len() as u64) < self.chunk() {
            return;
        }
        let mut node = root(&self.tail);
        self.tail.clear();
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

    /// Leaf hashes `start .. start + len`, from the tail or from `source`.
    fn leaves(&self, start: u64, len: u64, source: &dyn LeafSource) -> Option<Vec<Hash>> {
        let tail_start = self.size - self.tail.len() as u64;
        if start >= tail_start {
            let from = usize::try_from(start - tail_start).ok()?;
            return self.tail.get(from..from + usize::try_from(len).ok()?).map(<[Hash]>::to_vec);
        }
        let got = source.leaves(start, len)?;
        (got.len() as u64 == len).then_some(got)
    }

    /// MTH of the `len` leaves from `start`, where `start` is a multiple of the largest power of two not
    /// above `len` (always so in RFC 9162's recursion from the left edge).
    fn subtree(&self, start: u64, len: u64, source: &dyn LeafSource) -> Option<Hash> {
        if len == 0 {
            return Some(empty_root());
        }
        if len.is_power_of_two() && len >= self.chunk() && start.is_multiple_of(len) {
            let h = (len.trailing_zeros() - self.chunk_log2) as usize;
            return self.levels.get(h)?.get((start >> len.trailing_zeros()) as usize).copied();
        }
        if len <= self.chunk() {
            return Some(root(&self.leaves(start, len, source)?));
        }
        let k = split(len);
        Some(node_hash(&self.subtree(start, k, source)?, &self.subtree(start + k, len - k, source)?))
    }

    /// The root of the tree of the first `size` leaves (`None` when `size` is larger than the store, or the
    /// leaves it needs cannot be read).
    pub fn root(&self, size: u64, source: &dyn LeafSource) -> Option<Hash> {
        if size > self.size {
            return None;
        }
        self.subtree(0, size, source)
    }

    /// The inclusion path of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_path(&self, index: u64, size: u64, source: &dyn LeafSource) -> Option<Vec<Hash>> {
        if index >= size || size > self.size {
            return None;
        }
        let mut path = Vec::new();
        self.path(index, 0, size, source, &mut path)?;
        Some(path)
    }

    fn path(&self, index: u64, start: u64, len: u64, source: &dyn LeafSource, out: &mut Vec<Hash>) -> Option<()> {
        if len <= 1 {
            return Some(());
        }
        let k = split(len);
        if index < k {
            self.path(index, start, k, source, out)?;
            out.push(self.subtree(start + k, len - k, source)?);
        } else {
            self.path(index - k, start + k, len - k, source, out)?;
            out.push(self.subtree(start, k, source)?);
        }
        Some(())
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
        let mut stores: Vec<Store> = (0..4).map(Store::with_chunks).collect();
        assert_eq!(f.root(), empty_root());
        for n in 1..=all.len() {
            f.push(all[n - 1]);
            let want = root(&all[..n]);
            assert_eq!(f.root(), want, "frontier at {n}");
            assert_eq!(f.peaks.len(), (n as u64).count_ones() as usize);
            for s in &mut stores {
                s.push(all[n - 1]);
                assert_eq!(s.root(n as u64, &all).unwrap(), want, "store of chunks {} at {n}", s.chunk());
                // Every earlier size too: tree heads of any size are proven against.
                assert_eq!(s.root(n as u64 / 2, &all).unwrap(), root(&all[..n / 2]));
            }
        }
        assert_eq!(stores[0].root(71, &all), None);
        // A chunked store holds a fraction of the leaves.
        assert!(stores[3].tail.len() < 8 && stores[3].levels[0].len() == 70 / 8);
    }

    #[test]
    fn every_proof_verifies_at_every_size_and_every_corruption_fails() {
        let all = leaves(40);
        let mut s = Store::with_chunks(2);
        all.iter().for_each(|l| s.push(*l));
        let source = &all;
        for size in 1..=all.len() as u64 {
            let r = s.root(size, source).unwrap();
            for i in 0..size {
                let path = s.inclusion_path(i, size, source).unwrap();
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

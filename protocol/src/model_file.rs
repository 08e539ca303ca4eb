//! Encrypted model files: a model at rest, outside the enclave image, that only an attested enclave opens.
//!
//! Models can be gigabytes, so the format is a stream of independently authenticated chunks (the STREAM
//! construction): each chunk is AES-256-GCM under a key derived from the file's data key, with the chunk's
//! index as nonce and, in the associated data, the header's digest, the index, and whether it is the last
//! chunk. Reordering, dropping, duplicating or truncating chunks, or swapping a header, fails to decrypt.
//!
//! ```text
//! "VEILMDL2" ‖ u32 header length ‖ header (CBOR) ‖ chunk 0 ‖ chunk 1 ‖ … ‖ chunk n-1
//! header = {"v": 2, "name": tstr, "key_id": tstr, "encrypted_data_key": bstr, "encryption_context": {tstr: tstr},
//!           "file_id": bstr .size 16, "chunk_size": uint, "plaintext_len": uint}
//! key    = HKDF-SHA256(salt = "veil/v1 model", ikm = data key, info = SHA-256(header))
//! chunk i = AES-256-GCM(key, nonce = 0u32 ‖ u64 i, plaintext[i], aad = SHA-256(header) ‖ u64 i ‖ u8 last)
//! ```
//!
//! The header names the model the file holds, and the key covers the header, so a file served under
//! another name does not open: the enclave checks the name against its configuration before asking KMS for
//! the key, and a header edited to pass that check no longer matches the key the chunks were sealed under.
//! Every size computed from a (hostile) header uses checked arithmetic.
//!
//! Pure: [`ModelSealer`] and [`ModelOpener`] work on byte slices handed to them chunk by chunk; the caller
//! does the I/O and asks KMS for the data key.
use std::collections::BTreeMap;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest;
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

use crate::envelope::{DATA_KEY_LEN, EnvelopeError, MAX_ENCRYPTED_DATA_KEY, MAX_KEY_ID};
use crate::message::is_valid_model_name;
use crate::random::{self, RandomSource};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"VEILMDL2";
/// The header format version.
pub const MODEL_FILE_VERSION: u16 = 2;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Largest chunk size accepted (bounds the memory one chunk needs).
pub const MAX_CHUNK: u32 = 16 << 20;
/// Largest header accepted.
pub const MAX_HEADER: u32 = 16 << 10;
const TAG: usize = 16;

/// The clear header of an encrypted model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    pub v: u16,
    /// The model's name: the enclave serves this file only under this name.
    pub name: String,
    pub key_id: String,
    pub encrypted_data_key: ByteBuf,
    pub encryption_context: BTreeMap<String, String>,
    pub file_id: ByteBuf,
    pub chunk_size: u32,
    pub plaintext_len: u64,
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn err(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Malformed(msg.into())
}

impl ModelHeader {
    /// Number of chunks the file holds (an empty model is one empty chunk). `chunk_size` is never zero in a
    /// checked header.
    pub fn chunks(&self) -> u64 {
        self.plaintext_len.div_ceil(u64::from(self.chunk_size.max(1))).max(1)
    }

    /// Size of the whole encrypted file, header included, or `None` when a hostile header's sizes overflow.
    pub fn file_len(&self, header_len: usize) -> Option<u64> {
        let head = u64::try_from(MAGIC.len() + 4).ok()?.checked_add(u64::try_from(header_len).ok()?)?;
        head.checked_add(self.plaintext_len)?.checked_add(self.chunks().checked_mul(TAG as u64)?)
    }

    /// Plaintext bytes in the last chunk (at most `chunk_size`).
    fn last_chunk_len(&self) -> usize {
        let before = (self.chunks() - 1).saturating_mul(u64::from(self.chunk_size));
        self.plaintext_len.saturating_sub(before) as usize
    }

    fn check(&self) -> Result<(), EnvelopeError> {
        if self.v != MODEL_FILE_VERSION {
            return Err(EnvelopeError::Version(u64::from(self.v)));
        }
        if !is_valid_model_name(&self.name) {
            return Err(err("model header: the name is not a valid model name"));
        }
        if self.key_id.is_empty() || self.key_id.len() > MAX_KEY_ID {
            return Err(err("model header: bad key_id length"));
        }
        if self.encrypted_data_key.is_empty() || self.encrypted_data_key.len() > MAX_ENCRYPTED_DATA_KEY {
            return Err(err("model header: bad encrypted_data_key length"));
        }
        if self.file_id.len() != 16 {
            return Err(err("model header: file_id must be 16 bytes"));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK {
            return Err(err(format!("model header: chunk_size must be 1 to {MAX_CHUNK}")));
        }
        Ok(())
    }
}

fn key_for(data_key: &[u8], header_digest: &[u8]) -> Result<LessSafeKey, EnvelopeError> {
    if data_key.len() != DATA_KEY_LEN {
        return Err(err("data key must be 32 bytes"));
    }
    let prk = Salt::new(HKDF_SHA256, b"veil/v1 model").extract(data_key);
    let info = [header_digest];
    let okm = prk.expand(&info, Len32).map_err(|_| EnvelopeError::Decrypt)?;
    let mut k = Zeroizing::new([0u8; 32]);
    okm.fill(&mut k[..]).map_err(|_| EnvelopeError::Decrypt)?;
    Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k[..]).map_err(|_| EnvelopeError::Decrypt)?))
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(header_digest: &[u8], i: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(header_digest.len() + 9);
    a.extend_from_slice(header_digest);
    a.extend_from_slice(&i.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// Writes an encrypted model chunk by chunk.
pub struct ModelSealer {
    key: LessSafeKey,
    digest: Vec<u8>,
    header: ModelHeader,
    next: u64,
}

impl std::fmt::Debug for ModelSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSealer").field("header", &self.header).field("next", &self.next).finish()
    }
}

impl ModelSealer {
    /// Starts a file for a model of `plaintext_len` bytes; returns the sealer and the file's first bytes
    /// (magic, header length, header).
    #[allow(clippy::too_many_arguments)] // each is a field of the header; a struct would only rename them
    pub fn new(
        data_key: &[u8],
        name: &str,
        key_id: &str,
        encrypted_data_key: &[u8],
        encryption_context: BTreeMap<String, String>,
        plaintext_len: u64,
        chunk_size: u32,
        rng: &dyn RandomSource,
    ) -> Result<(ModelSealer, Vec<u8>), EnvelopeError> {
        let file_id = random::array::<16>(rng)?;
        let header = ModelHeader {
            v: MODEL_FILE_VERSION,
            name: name.to_owned(),
            key_id: key_id.to_owned(),
            encrypted_data_key: ByteBuf::from(encrypted_data_key.to_vec()),
            encryption_context,
            file_id: ByteBuf::from(file_id.to_vec()),
            chunk_size,
            plaintext_len,
        };
        header.check()?;
        let mut hbytes = Vec::new();
        ciborium::into_writer(&header, &mut hbytes).map_err(|e| err(e.to_string()))?;
        let digest = digest::digest(&digest::SHA256, &hbytes).as_ref().to_vec();
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&(hbytes.len() as u32).to_be_bytes());
        start.extend_from_slice(&hbytes);
        Ok((ModelSealer { key: key_for(data_key, &digest)?, digest, header, next: 0 }, start))
    }

    /// Plaintext bytes each chunk must hold (the last one may hold fewer).
    pub fn chunk_size(&self) -> usize {
        self.header.chunk_size as usize
    }

    /// Encrypts the next chunk of plaintext and returns its ciphertext.
    pub fn seal_chunk(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let chunks = self.header.chunks();
        if self.next >= chunks {
            return Err(err("more chunks than the header announced"));
        }
        let last = self.next + 1 == chunks;
        let want = if last { self.header.last_chunk_len() } else { self.chunk_size() };
        if plaintext.len() != want {
            return Err(err(format!("chunk {} must be {want} bytes, got {}", self.next, plaintext.len())));
        }
        let mut buf = Vec::with_capacity(plaintext.len() + TAG);
        buf.extend_from_slice(plaintext);
        self.key
            .seal_in_place_append_tag(nonce(self.next), Aad::from(aad(&self.digest, self.next, last)), &mut buf)
            .map_err(|_| EnvelopeError::Decrypt)?;
        self.next += 1;
        Ok(buf)
    }
}

/// Reads the header of an encrypted model from the file's first bytes: the header and how many bytes it
/// took, or `Ok(None)` when more bytes are needed.
pub fn read_header(start: &[u8]) -> Result<Option<(ModelHeader, usize)>, EnvelopeError> {
    if start.len() < MAGIC.len() + 4 {
        return Ok(None);
    }
    if &start[..MAGIC.len()] != MAGIC {
        if start.starts_with(b"VEILMDL1") {
            return Err(err("the file uses the retired format VEILMDL1: encrypt the model again with this version"));
        }
        return Err(err("not an encrypted Veil model (bad magic)"));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&start[MAGIC.len()..MAGIC.len() + 4]);
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_HEADER {
        return Err(err(format!("model header length {len} is not 1 to {MAX_HEADER}")));
    }
    let end = MAGIC.len() + 4 + len as usize;
    let Some(hbytes) = start.get(MAGIC.len() + 4..end) else { return Ok(None) };
    let mut cursor = hbytes;
    let header: ModelHeader = ciborium::from_reader(&mut cursor).map_err(|e| err(format!("model header: {e}")))?;
    if !cursor.is_empty() {
        return Err(err("model header has trailing bytes"));
    }
    header.check()?;
    Ok(Some((header, end)))
}

/// Opens an encrypted model chunk by chunk, hashing the plaintext (SHA-384) as it goes.
pub struct ModelOpener {
    key: LessSafeKey,
    digest: Vec<u8>,
    header: ModelHeader,
    next: u64,
    sha384: digest::Context,
}

impl std::fmt::Debug for ModelOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelOpener").field("header", &self.header).field("next", &self.next).finish()
    }
}

impl ModelOpener {
    /// Prepares to open a file whose header bytes (magic to header end) are `start`, with the data key KMS
    /// released for `header.encrypted_data_key`.
    pub fn new(start: &[u8], data_key: &[u8]) -> Result<ModelOpener, EnvelopeError> {
        let (header, end) = read_header(start)?.ok_or_else(|| err("model header is truncated"))?;
        let digest = digest::digest(&digest::SHA256, &start[MAGIC.len() + 4..end]).as_ref().to_vec();
        Ok(ModelOpener {
            key: key_for(data_key, &digest)?,
            digest,
            header,
            next: 0,
            sha384: digest::Context::new(&digest::SHA384),
        })
    }

    /// Ciphertext bytes the next chunk takes, or `None` when all chunks are open.
    pub fn next_chunk_len(&self) -> Option<usize> {
        let chunks = self.header.chunks();
        if self.next >= chunks {
            return None;
        }
        let plain =
            if self.next + 1 == chunks { self.header.last_chunk_len() } else { self.header.chunk_size as usize };
        Some(plain + TAG)
    }

    /// Decrypts the next chunk in place and returns its plaintext part.
    pub fn open_chunk<'a>(&mut self, chunk: &'a mut [u8]) -> Result<&'a [u8], EnvelopeError> {
        let want = self.next_chunk_len().ok_or_else(|| err("more chunks than the header announced"))?;
        if chunk.len() != want {
            return Err(EnvelopeError::Decrypt);
        }
        let last = self.next + 1 == self.header.chunks();
        let plain = self
            .key
            .open_in_place(nonce(self.next), Aad::from(aad(&self.digest, self.next, last)), chunk)
            .map_err(|_| EnvelopeError::Decrypt)?;
        self.sha384.update(plain);
        self.next += 1;
        Ok(plain)
    }

    /// After the last chunk: the SHA-384 of the whole plaintext.
    pub fn finish(self) -> Result<[u8; 48], EnvelopeError> {
        if self.next != self.header.chunks() {
            return Err(err("the encrypted model is truncated"));
        }
        let mut out = [0u8; 48];
        out.copy_from_slice(self.sha384.finish().as_ref());
        Ok(out)
    }

    /// The header.
    pub fn header(&self) -> &ModelHeader {
        &self.header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(plain: &[u8], chunk: u32) -> Vec<u8> {
        let rng = crate::random::SystemRandom::new();
        let (mut s, mut out) =
            ModelSealer::new(&[9; 32], "m", "k", b"edk", BTreeMap::new(), plain.len() as u64, chunk, &rng).unwrap();
        let mut chunks: Vec<&[u8]> = plain.chunks(chunk as usize).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for c in chunks {
            out.extend_from_slice(&s.seal_chunk(c).unwrap());
        }
        out
    }

    fn open_all(file: &[u8], key: &[u8]) -> Result<(Vec<u8>, [u8; 48]), EnvelopeError> {
        let (_, end) = read_header(file)?.unwrap();
        let mut o = ModelOpener::new(&file[..end], key)?;
        let mut pos = end;
        let mut plain = Vec::new();
        while let Some(n) = o.next_chunk_len() {
            let mut c = file.get(pos..pos + n).ok_or(EnvelopeError::Decrypt)?.to_vec();
            plain.extend_from_slice(o.open_chunk(&mut c)?);
            pos += n;
        }
        if pos != file.len() {
            return Err(err("trailing bytes"));
        }
        Ok((plain, o.finish()?))
    }

    #[test]
    fn round_trips_any_size_and_hashes_the_plaintext() {
        for len in [0usize, 1, 15, 16, 17, 100, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let file = seal_all(&plain, 16);
            let (back, sha) = open_all(&file, &[9; 32]).unwrap();
            assert_eq!(back, plain, "len {len}");
            assert_eq!(&sha[..], digest::digest(&digest::SHA384, &plain).as_ref());
            let (h, end) = read_header(&file).unwrap().unwrap();
            assert_eq!(h.file_len(end - 12), Some(file.len() as u64));
            assert_eq!(h.name, "m");
        }
    }

    #[test]
    fn tampering_reordering_and_truncation_fail() {
        let plain = vec![5u8; 64];
        let file = seal_all(&plain, 16);
        let (_, end) = read_header(&file).unwrap().unwrap();
        for i in end..file.len() {
            let mut t = file.clone();
            t[i] ^= 1;
            assert!(open_all(&t, &[9; 32]).is_err(), "flip at {i}");
        }
        // Swap chunk 0 and 1 (same size, same plaintext!): the index in nonce and AAD catches it.
        let c = 16 + TAG;
        let mut swapped = file.clone();
        swapped[end..end + c].copy_from_slice(&file[end + c..end + 2 * c]);
        swapped[end + c..end + 2 * c].copy_from_slice(&file[end..end + c]);
        assert_eq!(open_all(&swapped, &[9; 32]).unwrap_err(), EnvelopeError::Decrypt);
        // Dropping the last chunk: the header's length says more must come.
        assert!(open_all(&file[..file.len() - c], &[9; 32]).is_err());
        assert_eq!(open_all(&file, &[8; 32]).unwrap_err(), EnvelopeError::Decrypt);
        assert!(read_header(b"NOTAVEIL\0\0\0\x01x").unwrap_err().to_string().contains("bad magic"));
        assert!(read_header(b"VEILMDL2\xff\xff\xff\xff").unwrap_err().to_string().contains("header length"));
    }
}

#[cfg(test)]
mod regression {
    use super::*;

    /// Finding 8 of the security review: a hostile header's `plaintext_len` overflowed `file_len` (a panic
    /// in debug builds, a silent wrap in release).
    #[test]
    fn finding_8_a_hostile_header_cannot_overflow_the_file_length() {
        let header = ModelHeader {
            v: MODEL_FILE_VERSION,
            name: "m".into(),
            key_id: "k".into(),
            encrypted_data_key: ByteBuf::from(vec![1]),
            encryption_context: BTreeMap::new(),
            file_id: ByteBuf::from(vec![0; 16]),
            chunk_size: 1,
            plaintext_len: u64::MAX,
        };
        assert_eq!(header.file_len(100), None);
        let header = ModelHeader { chunk_size: MAX_CHUNK, plaintext_len: u64::MAX - 5, ..header };
        assert_eq!(header.file_len(100), None);
    }
}

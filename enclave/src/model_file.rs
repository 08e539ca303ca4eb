//! Encrypted model files at boot: ask KMS for the file's data key (with attestation), then decrypt in
//! place, chunk by chunk, so a model needs its own size in memory once, not twice.
use std::time::Duration;

use veil_protocol::model_file::{self, ModelOpener};
use zeroize::Zeroizing;

use crate::sealed::KeySource;

/// True when `bytes` start like an encrypted Veil model.
pub fn is_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(model_file::MAGIC)
}

/// Decrypts an encrypted model in place and returns the SHA-384 of the plaintext model.
pub async fn decrypt_in_place(
    bytes: &mut Zeroizing<Vec<u8>>,
    keys: &dyn KeySource,
    timeout: Duration,
) -> anyhow::Result<[u8; 48]> {
    let (header, start) =
        model_file::read_header(bytes)?.ok_or_else(|| anyhow::anyhow!("encrypted model: header truncated"))?;
    anyhow::ensure!(
        header.file_len(start - model_file::MAGIC.len() - 4) == bytes.len() as u64,
        "encrypted model: the file is {} bytes, its header says {}",
        bytes.len(),
        header.file_len(start - model_file::MAGIC.len() - 4)
    );
    let fetch = keys.data_key(&header.key_id, &header.encrypted_data_key, &header.encryption_context);
    let data_key = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("KMS did not release the model's data key within {timeout:?}"))?
        .map_err(|e| anyhow::anyhow!("KMS refused the model's data key: {}", e.message))?;
    let mut opener = ModelOpener::new(&bytes[..start], &data_key)?;
    drop(data_key);
    let (mut read, mut write) = (start, 0usize);
    while let Some(n) = opener.next_chunk_len() {
        let end = read + n;
        anyhow::ensure!(end <= bytes.len(), "encrypted model: truncated at chunk starting at byte {read}");
        let plain_len = opener
            .open_chunk(&mut bytes[read..end])
            .map_err(|_| {
                anyhow::anyhow!(
                    "encrypted model: chunk at byte {read} does not decrypt (tampered, reordered or another key)"
                )
            })?
            .len();
        bytes.copy_within(read..read + plain_len, write);
        write += plain_len;
        read = end;
    }
    anyhow::ensure!(read == bytes.len(), "encrypted model: {} bytes after the last chunk", bytes.len() - read);
    let sha384 = opener.finish()?;
    // Wipe the tail (header and tags moved past) before shrinking.
    zeroize::Zeroize::zeroize(&mut bytes[write..]);
    bytes.truncate(write);
    Ok(sha384)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::BoxFuture;
    use std::collections::BTreeMap;
    use veil_protocol::message::{ErrorKind, ErrorReply};
    use veil_protocol::model_file::ModelSealer;

    #[derive(Debug)]
    struct OneKey;
    impl KeySource for OneKey {
        fn data_key<'a>(
            &'a self,
            _: &'a str,
            edk: &'a [u8],
            _: &'a BTreeMap<String, String>,
        ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, ErrorReply>> {
            Box::pin(async move {
                if edk == b"edk" {
                    Ok(Zeroizing::new(vec![4u8; 32]))
                } else {
                    Err(ErrorReply::new(ErrorKind::BadRequest, "AccessDeniedException: PCR0 does not match"))
                }
            })
        }
    }

    fn sealed(plain: &[u8], edk: &[u8]) -> Vec<u8> {
        let (mut s, mut out) = ModelSealer::new(&[4u8; 32], "k", edk, BTreeMap::new(), plain.len() as u64, 7).unwrap();
        for c in plain.chunks(7) {
            out.extend_from_slice(&s.seal_chunk(c).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn decrypts_in_place_and_hashes_the_plaintext() {
        let plain: Vec<u8> = (0..100u8).collect();
        let mut bytes = Zeroizing::new(sealed(&plain, b"edk"));
        assert!(is_encrypted(&bytes));
        let sha = decrypt_in_place(&mut bytes, &OneKey, Duration::from_secs(1)).await.unwrap();
        assert_eq!(&bytes[..], &plain[..]);
        assert_eq!(&sha[..], ring::digest::digest(&ring::digest::SHA384, &plain).as_ref());
    }

    #[tokio::test]
    async fn refusals_and_tampering_are_reported() {
        let plain = vec![1u8; 50];
        let mut denied = Zeroizing::new(sealed(&plain, b"other"));
        let e = decrypt_in_place(&mut denied, &OneKey, Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("KMS refused the model's data key: AccessDeniedException"), "{e}");
        let mut tampered = Zeroizing::new(sealed(&plain, b"edk"));
        let n = tampered.len();
        tampered[n - 3] ^= 1;
        let e = decrypt_in_place(&mut tampered, &OneKey, Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        let mut short = Zeroizing::new(sealed(&plain, b"edk"));
        short.truncate(n - 1);
        let e = decrypt_in_place(&mut short, &OneKey, Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("its header says"), "{e}");
    }
}

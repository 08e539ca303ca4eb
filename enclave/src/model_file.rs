//! Model files at boot: checked against the image's configuration, then (for encrypted ones) decrypted in
//! place with the data key KMS releases to this enclave's attestation, chunk by chunk, so a model needs its
//! own size in memory once, not twice.
//!
//! What the configuration says decides what is accepted, never what the file says: a model configured under
//! a KMS key loads only from a file encrypted for that model's name under that key ARN, and KMS itself is
//! asked with that ARN as `KeyId` (so a file under any other key fails at KMS even if its header lied). A
//! plaintext file is accepted only by a development build, and only for a model configured as plaintext.
use std::time::Duration;

use veil_protocol::model_file::{self, ModelOpener};
use zeroize::Zeroizing;

use crate::config::{ModelConfig, ModelSource};
use crate::sealed::KeySource;

/// Why a model file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error(
        "model {model:?} is configured under KMS key {key}, but the parent served a plaintext file: the enclave loads \
         only files encrypted for it (`veil model encrypt`)"
    )]
    PlaintextServed { model: String, key: String },
    #[error("model {model:?} is configured as plaintext, but the parent served an encrypted file")]
    EncryptedServed { model: String },
    #[error("model {model:?}: the file is encrypted for model {found:?}, not this one")]
    OtherName { model: String, found: String },
    #[error("model {model:?}: the file is encrypted under KMS key {found:?}, but the configuration says {key}")]
    OtherKey { model: String, key: String, found: String },
    #[error("model {model:?}: {source}")]
    Format { model: String, source: veil_protocol::envelope::EnvelopeError },
    #[error("model {model:?}: {reason}")]
    Corrupt { model: String, reason: String },
    #[error("model {model:?}: KMS did not release the model's data key within {timeout:?}")]
    KmsTimeout { model: String, timeout: Duration },
    #[error("model {model:?}: KMS refused the model's data key: {source}")]
    Kms { model: String, source: crate::kms::KmsError },
    #[error("model {model:?}: the decrypted model's SHA-384 is {found}, but the configuration pins {want}")]
    Digest { model: String, want: String, found: String },
}

/// True when `bytes` start like an encrypted Veil model.
pub fn is_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(model_file::MAGIC) || bytes.starts_with(b"VEILMDL")
}

/// Makes the fetched bytes of `model` into the plaintext model the configuration allows, and returns its
/// SHA-384: decrypts in place when the model is configured under a KMS key. `fetched_sha384` is the digest
/// of the bytes as fetched (the plaintext's, for a plaintext model).
pub async fn prepare(
    model: &ModelConfig,
    bytes: &mut Zeroizing<Vec<u8>>,
    fetched_sha384: [u8; 48],
    keys: &dyn KeySource,
    timeout: Duration,
) -> Result<[u8; 48], ModelFileError> {
    let name = model.name.clone();
    let sha384 = match &model.source {
        ModelSource::Plaintext => {
            if is_encrypted(bytes) {
                return Err(ModelFileError::EncryptedServed { model: name });
            }
            fetched_sha384
        }
        ModelSource::Kms { key_arn } => {
            if !is_encrypted(bytes) {
                return Err(ModelFileError::PlaintextServed { model: name, key: key_arn.clone() });
            }
            decrypt_in_place(&name, key_arn, bytes, keys, timeout).await?
        }
    };
    if let Some(want) = model.sha384
        && want != sha384
    {
        return Err(ModelFileError::Digest { model: name, want: hex::encode(want), found: hex::encode(sha384) });
    }
    Ok(sha384)
}

/// Decrypts an encrypted model in place and returns the SHA-384 of the plaintext model.
async fn decrypt_in_place(
    name: &str,
    key_arn: &str,
    bytes: &mut Zeroizing<Vec<u8>>,
    keys: &dyn KeySource,
    timeout: Duration,
) -> Result<[u8; 48], ModelFileError> {
    let corrupt = |reason: String| ModelFileError::Corrupt { model: name.to_owned(), reason };
    let format = |source| ModelFileError::Format { model: name.to_owned(), source };
    let (header, start) =
        model_file::read_header(bytes).map_err(format)?.ok_or_else(|| corrupt("the header is truncated".into()))?;
    if header.name != name {
        return Err(ModelFileError::OtherName {
            model: name.to_owned(),
            found: header.name.chars().take(128).collect(),
        });
    }
    if header.key_id != key_arn {
        return Err(ModelFileError::OtherKey {
            model: name.to_owned(),
            key: key_arn.to_owned(),
            found: header.key_id.chars().take(200).collect(),
        });
    }
    let want = header.file_len(start - model_file::MAGIC.len() - 4);
    if want != Some(bytes.len() as u64) {
        return Err(corrupt(match want {
            Some(w) => format!("the file is {} bytes, its header says {w}", bytes.len()),
            None => "its header's sizes overflow".to_owned(),
        }));
    }
    // The configured ARN, not the header's word, is what KMS is asked with.
    let fetch = keys.data_key(key_arn, &header.encrypted_data_key, &header.encryption_context);
    let data_key = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| ModelFileError::KmsTimeout { model: name.to_owned(), timeout })?
        .map_err(|source| ModelFileError::Kms { model: name.to_owned(), source })?;
    let mut opener = ModelOpener::new(&bytes[..start], &data_key).map_err(format)?;
    drop(data_key);
    let (mut read, mut write) = (start, 0usize);
    while let Some(n) = opener.next_chunk_len() {
        let end = read
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| corrupt(format!("truncated at the chunk starting at byte {read}")))?;
        let plain_len = opener
            .open_chunk(&mut bytes[read..end])
            .map_err(|_| {
                corrupt(format!("the chunk at byte {read} does not decrypt (tampered, reordered or another key)"))
            })?
            .len();
        bytes.copy_within(read..read + plain_len, write);
        write += plain_len;
        read = end;
    }
    if read != bytes.len() {
        return Err(corrupt(format!("{} bytes after the last chunk", bytes.len() - read)));
    }
    let sha384 = opener.finish().map_err(format)?;
    // Wipe the tail (header and tags moved past) before shrinking.
    zeroize::Zeroize::zeroize(&mut bytes[write..]);
    bytes.truncate(write);
    Ok(sha384)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KmsError;
    use crate::sealed::BoxFuture;
    use std::collections::BTreeMap;
    use veil_protocol::model_file::ModelSealer;
    use veil_protocol::random::SystemRandom;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/model-key";

    #[derive(Debug)]
    struct OneKey;
    impl KeySource for OneKey {
        fn data_key<'a>(
            &'a self,
            key_id: &'a str,
            edk: &'a [u8],
            _: &'a BTreeMap<String, String>,
        ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsError>> {
            Box::pin(async move {
                if edk == b"edk" && key_id == ARN {
                    Ok(Zeroizing::new(vec![4u8; 32]))
                } else {
                    Err(KmsError::Refused("AccessDeniedException: PCR0 does not match".into()))
                }
            })
        }
    }

    fn sealed(name: &str, key_id: &str, plain: &[u8], edk: &[u8]) -> Vec<u8> {
        let (mut s, mut out) = ModelSealer::new(
            &[4u8; 32],
            name,
            key_id,
            edk,
            BTreeMap::new(),
            plain.len() as u64,
            7,
            &SystemRandom::new(),
        )
        .unwrap();
        for c in plain.chunks(7) {
            out.extend_from_slice(&s.seal_chunk(c).unwrap());
        }
        out
    }

    fn config(source: ModelSource, sha384: Option<[u8; 48]>) -> ModelConfig {
        ModelConfig { name: "m".into(), source, sha384 }
    }

    async fn run(model: &ModelConfig, file: Vec<u8>) -> Result<(Vec<u8>, [u8; 48]), ModelFileError> {
        let mut bytes = Zeroizing::new(file);
        let fetched: [u8; 48] = ring::digest::digest(&ring::digest::SHA384, &bytes).as_ref().try_into().unwrap();
        let sha = prepare(model, &mut bytes, fetched, &OneKey, Duration::from_secs(1)).await?;
        Ok((bytes.to_vec(), sha))
    }

    #[tokio::test]
    async fn decrypts_in_place_and_hashes_the_plaintext() {
        let plain: Vec<u8> = (0..100u8).collect();
        let want: [u8; 48] = ring::digest::digest(&ring::digest::SHA384, &plain).as_ref().try_into().unwrap();
        let kms = ModelSource::Kms { key_arn: ARN.into() };
        let (bytes, sha) = run(&config(kms.clone(), None), sealed("m", ARN, &plain, b"edk")).await.unwrap();
        assert_eq!((bytes, sha), (plain.clone(), want));
        // A pinned digest must match.
        run(&config(kms.clone(), Some(want)), sealed("m", ARN, &plain, b"edk")).await.unwrap();
        let e = run(&config(kms, Some([0; 48])), sealed("m", ARN, &plain, b"edk")).await.unwrap_err();
        assert!(matches!(e, ModelFileError::Digest { .. }), "{e}");
    }

    /// Finding 1 of the security review: the parent could serve a plaintext ONNX file, or a file under a
    /// KMS key it controls, or another model's file, under a configured name; the enclave loaded it.
    #[tokio::test]
    async fn finding_1_the_parent_cannot_substitute_the_model() {
        let plain = vec![1u8; 50];
        let kms = config(ModelSource::Kms { key_arn: ARN.into() }, None);
        let e = run(&kms, plain.clone()).await.unwrap_err();
        assert!(matches!(e, ModelFileError::PlaintextServed { .. }), "{e}");
        let e = run(&kms, sealed("other", ARN, &plain, b"edk")).await.unwrap_err();
        assert!(matches!(e, ModelFileError::OtherName { .. }), "{e}");
        let e =
            run(&kms, sealed("m", "arn:aws:kms:eu-west-1:999999999999:key/parents", &plain, b"edk")).await.unwrap_err();
        assert!(matches!(e, ModelFileError::OtherKey { .. }), "{e}");
        // A plaintext-configured model (development builds) takes no encrypted file either.
        let dev = config(ModelSource::Plaintext, None);
        let e = run(&dev, sealed("m", ARN, &plain, b"edk")).await.unwrap_err();
        assert!(matches!(e, ModelFileError::EncryptedServed { .. }), "{e}");
        assert_eq!(run(&dev, plain.clone()).await.unwrap().0, plain);
    }

    #[tokio::test]
    async fn refusals_and_tampering_are_reported() {
        let plain = vec![1u8; 50];
        let kms = config(ModelSource::Kms { key_arn: ARN.into() }, None);
        let e = run(&kms, sealed("m", ARN, &plain, b"other")).await.unwrap_err();
        assert!(e.to_string().contains("KMS refused the model's data key: KMS refused the key: AccessDenied"), "{e}");
        let mut tampered = sealed("m", ARN, &plain, b"edk");
        let n = tampered.len();
        tampered[n - 3] ^= 1;
        let e = run(&kms, tampered).await.unwrap_err();
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        let mut short = sealed("m", ARN, &plain, b"edk");
        short.truncate(n - 1);
        let e = run(&kms, short).await.unwrap_err();
        assert!(e.to_string().contains("its header says"), "{e}");
    }
}

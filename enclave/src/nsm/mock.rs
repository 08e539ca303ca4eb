//! The mock NSM: real COSE_Sign1 ES384 attestation documents, encoded by AWS's own code, for off-hardware
//! runs.
//!
//! Encoding: the payload is `aws-nitro-enclaves-nsm-api`'s `AttestationDoc`, serialized with serde_cbor as
//! its `to_binary()` does (the nine fields in AWS's order, PCRs as an integer-keyed map of byte strings,
//! `null` for an absent optional field); the COSE_Sign1 around it is `aws-nitro-enclaves-cose`'s
//! `CoseSign1` (protected header `{1: -35}`, empty unprotected header, untagged), signed with ring through
//! that crate's key traits ([`RingEs384`]). Veil writes no CBOR of its own here.
//!
//! Shape: `cabundle` = [root, regional, zonal, instance], all ECDSA P-384 / SHA-384 CAs with critical basic
//! constraints (path lengths 2, 1, 0 below the root) and key usage; a leaf (not a CA, digitalSignature) that
//! lives three hours and is renewed half an hour before it expires, as the NSM does; PCRs 0..=15 of 48
//! bytes; a `module_id` like `i-mock…-enc…`; timestamps in milliseconds from the wall clock (the real NSM
//! uses its own clock too).
//!
//! Trust: the root's subject says MOCK; its key lives in `mock-root.key.pem` (mode 0600) next to
//! `mock-root.pem`. Verifiers trust it only when given that file explicitly (`--root`); the default AWS
//! root refuses these documents on the `root` check.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_nitro_enclaves_cose::CoseSign1;
use aws_nitro_enclaves_cose::crypto::{Hash, MessageDigest, SignatureAlgorithm, SigningPrivateKey, SigningPublicKey};
use aws_nitro_enclaves_cose::error::CoseError;
use aws_nitro_enclaves_cose::header_map::HeaderMap;
use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use zeroize::Zeroize;

use super::{Nsm, NsmError, check_fields};

/// File name of the mock root certificate (PEM) in the directory given to [`MockNsm::load_or_create`].
pub const MOCK_ROOT_PEM_FILE: &str = "mock-root.pem";
/// File name of the mock root's private key (PKCS#8 PEM, mode 0600).
pub const MOCK_ROOT_KEY_FILE: &str = "mock-root.key.pem";

const ROOT_SUBJECT_CN: &str = "MOCK aws.nitro-enclaves root - NOT AWS, NOT FOR PRODUCTION";
const MOCK_ORG: &str = "Veil MOCK NSM (not Amazon)";
const REGION: &str = "mock-region-1";
const LEAF_LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// Renew the leaf when less than this is left (so that a document stays valid for a while after issue).
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);
const CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const ROOT_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Certificates start a little in the past, to tolerate clock skew between mock NSM and verifier.
const BACKDATE: Duration = Duration::from_secs(60);
const PCR_LEN: usize = 48;
const PCR_COUNT: u16 = 16;

/// The PCRs a [`MockNsm`] reports: 0..=15, each 48 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockPcrs {
    values: BTreeMap<u16, [u8; PCR_LEN]>,
    /// Indexes set explicitly (PCR4 is derived from the mock instance id unless set here).
    overridden: std::collections::BTreeSet<u16>,
}

impl MockPcrs {
    /// PCR0, PCR1 and PCR2 derived from the bytes of the running executable, so that a code change
    /// changes them, as it would change a real image's measurements. Others are zero (PCR4: see
    /// [`MockNsm`]).
    pub fn from_current_exe() -> Result<Self, NsmError> {
        let path =
            std::env::current_exe().map_err(|source| NsmError::MockRootFile { path: "current_exe".into(), source })?;
        let mut file =
            std::fs::File::open(&path).map_err(|source| NsmError::MockRootFile { path: path.clone(), source })?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA384);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(|source| NsmError::MockRootFile { path: path.clone(), source })?;
            if n == 0 {
                break;
            }
            ctx.update(buf.get(..n).unwrap_or_default());
        }
        Ok(Self::from_image_digest(ctx.finish().as_ref()))
    }

    /// PCR0..=2 from the SHA-384 of an image: PCRn = SHA-384(48 zero bytes ‖ SHA-384("veil-mock-pcr" ‖ n ‖
    /// image digest)), the same extend-once shape as real PCRs.
    pub fn from_image_digest(image_sha384: &[u8]) -> Self {
        let mut values = BTreeMap::new();
        for i in 0..PCR_COUNT {
            values.insert(i, [0u8; PCR_LEN]);
        }
        for n in 0u8..=2 {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA384);
            ctx.update(b"veil-mock-pcr");
            ctx.update(&[n]);
            ctx.update(image_sha384);
            values.insert(u16::from(n), extend_once(ctx.finish().as_ref()));
        }
        MockPcrs { values, overridden: Default::default() }
    }

    /// Sets PCR `index` (0..=15) to `value`. Setting PCR0, 1 and 2 to zero makes a debug-mode document.
    pub fn with(mut self, index: u16, value: [u8; PCR_LEN]) -> Result<Self, NsmError> {
        if index >= PCR_COUNT {
            return Err(NsmError::PcrIndex(index));
        }
        self.values.insert(index, value);
        self.overridden.insert(index);
        Ok(self)
    }

    /// The value of PCR `index`.
    pub fn get(&self, index: u16) -> Option<&[u8; PCR_LEN]> {
        self.values.get(&index)
    }
}

/// SHA-384(48 zero bytes ‖ data): one PCR extend from the reset value.
fn extend_once(data: &[u8]) -> [u8; PCR_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA384);
    ctx.update(&[0u8; PCR_LEN]);
    ctx.update(data);
    let mut out = [0u8; PCR_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The current leaf: its certificate and signing key.
struct Leaf {
    der: Vec<u8>,
    key: EcdsaKeyPair,
    not_after: SystemTime,
}

/// The off-hardware NSM. See the module documentation.
pub struct MockNsm {
    root_pem_path: PathBuf,
    /// root, regional, zonal, instance (DER).
    cabundle: Vec<Vec<u8>>,
    instance: Issuer<'static, KeyPair>,
    instance_cn: String,
    leaf: Mutex<Leaf>,
    pcrs: MockPcrs,
    module_id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for MockNsm {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockNsm")
            .field("module_id", &self.module_id)
            .field("instance", &self.instance_cn)
            .field("root", &self.root_pem_path)
            .finish_non_exhaustive()
    }
}

fn mock(e: impl std::fmt::Display) -> NsmError {
    NsmError::Mock(e.to_string())
}

fn random_hex(rng: &SystemRandom, bytes: usize) -> Result<String, NsmError> {
    let mut b = vec![0u8; bytes];
    rng.fill(&mut b).map_err(|_| NsmError::Random)?;
    Ok(hex::encode(b))
}

fn serial(rng: &SystemRandom) -> Result<SerialNumber, NsmError> {
    let mut b = [0u8; 16];
    rng.fill(&mut b).map_err(|_| NsmError::Random)?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and no leading zero byte to strip
    Ok(SerialNumber::from_slice(&b))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, MOCK_ORG);
    dn.push(DnType::OrganizationalUnitName, "MOCK");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str, path_len: Option<u8>, from: SystemTime, lifetime: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = (from - BACKDATE).into();
    p.not_after = (from + lifetime).into();
    p
}

fn new_key() -> Result<KeyPair, NsmError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(mock)
}

fn read(path: &Path) -> Result<String, NsmError> {
    std::fs::read_to_string(path).map_err(|source| NsmError::MockRootFile { path: path.to_owned(), source })
}

/// Writes `contents` to `path` atomically (temporary file, then rename), with `mode` on Unix.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), NsmError> {
    let err = |source| NsmError::MockRootFile { path: path.to_owned(), source };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    // A stale temporary file would keep its old permissions: remove it, then create afresh (create_new
    // refuses to follow a symlink planted in its place).
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(&tmp).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

impl MockNsm {
    /// Loads the mock root from `dir` (`mock-root.pem` and `mock-root.key.pem`), or creates both if the
    /// certificate does not exist; then builds a fresh chain (regional, zonal, instance, leaf) for this
    /// process. Checks itself before returning: a document it makes must verify under its root.
    pub fn load_or_create(dir: &Path, pcrs: MockPcrs) -> Result<MockNsm, NsmError> {
        let rng = SystemRandom::new();
        let now = SystemTime::now();
        let pem_path = dir.join(MOCK_ROOT_PEM_FILE);
        let key_path = dir.join(MOCK_ROOT_KEY_FILE);
        let (root, root_pem) = if pem_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| mock(format!("{}: {e}", key_path.display())))?;
            let pem = read(&pem_path)?;
            // The issuer is rebuilt from the same parameters (rcgen encodes names deterministically); the
            // self-check below proves that the files and the rebuilt issuer agree.
            (Issuer::new(ca_params(ROOT_SUBJECT_CN, None, now, ROOT_LIFETIME), key), pem)
        } else {
            std::fs::create_dir_all(dir).map_err(|source| NsmError::MockRootFile { path: dir.to_owned(), source })?;
            let key = new_key()?;
            let mut params = ca_params(ROOT_SUBJECT_CN, None, now, ROOT_LIFETIME);
            params.serial_number = Some(serial(&rng)?);
            let cert = params.self_signed(&key).map_err(mock)?;
            let mut key_pem = key.serialize_pem();
            write_file(&key_path, key_pem.as_bytes(), 0o600)?;
            key_pem.zeroize();
            let pem = cert.pem();
            write_file(&pem_path, pem.as_bytes(), 0o644)?;
            (Issuer::new(params, key), pem)
        };
        let root_der = veil_protocol::attestation::TrustAnchor::from_pem(root_pem.as_bytes())
            .map_err(|e| mock(format!("{}: {e}", pem_path.display())))?
            .der()
            .to_vec();

        let instance_id = format!("i-mock{}", &random_hex(&rng, 7)?[..13]);
        let module_id = format!("{instance_id}-enc{}", random_hex(&rng, 8)?);
        let mut chain = vec![root_der];
        let issue = |cn: String,
                     path_len: u8,
                     parent: &Issuer<'_, KeyPair>|
         -> Result<(Issuer<'static, KeyPair>, Vec<u8>), NsmError> {
            let key = new_key()?;
            let mut params = ca_params(&cn, Some(path_len), now, CA_LIFETIME);
            params.serial_number = Some(serial(&rng)?);
            let cert = params.signed_by(&key, parent).map_err(mock)?;
            Ok((Issuer::new(params, key), cert.der().to_vec()))
        };
        let (regional, der) = issue(format!("{}.{REGION}.MOCK.aws.nitro-enclaves", random_hex(&rng, 8)?), 2, &root)?;
        chain.push(der);
        let (zonal, der) =
            issue(format!("{}.zonal.{REGION}.MOCK.aws.nitro-enclaves", random_hex(&rng, 8)?), 1, &regional)?;
        chain.push(der);
        let instance_cn = format!("{instance_id}.{REGION}.MOCK.aws.nitro-enclaves");
        let (instance, der) = issue(instance_cn.clone(), 0, &zonal)?;
        chain.push(der);

        let mut pcrs = pcrs;
        if !pcrs.overridden.contains(&4) {
            pcrs.values.insert(4, extend_once(instance_id.as_bytes()));
        }
        let leaf = Self::issue_leaf(&instance, &module_id, &rng, now)?;
        let nsm = MockNsm {
            root_pem_path: pem_path.clone(),
            cabundle: chain,
            instance,
            instance_cn,
            leaf: Mutex::new(leaf),
            pcrs,
            module_id,
            rng,
        };
        nsm.self_check(&root_pem, now)?;
        Ok(nsm)
    }

    fn issue_leaf(
        instance: &Issuer<'_, KeyPair>,
        module_id: &str,
        rng: &SystemRandom,
        now: SystemTime,
    ) -> Result<Leaf, NsmError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{module_id}.{REGION}.MOCK.aws"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::ContentCommitment];
        params.not_before = (now - BACKDATE).into();
        let not_after = now + LEAF_LIFETIME;
        params.not_after = not_after.into();
        params.serial_number = Some(serial(rng)?);
        let cert = params.signed_by(&key, instance).map_err(mock)?;
        let mut pkcs8 = key.serialize_der();
        let signing = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &pkcs8, rng).map_err(mock);
        pkcs8.zeroize();
        Ok(Leaf { der: cert.der().to_vec(), key: signing?, not_after })
    }

    fn self_check(&self, root_pem: &str, now: SystemTime) -> Result<(), NsmError> {
        use veil_protocol::attestation::{Policy, TrustAnchor, verify};
        let doc = self.attestation(None, Some(b"self-check"), None)?;
        let root = TrustAnchor::from_pem(root_pem.as_bytes()).map_err(mock)?;
        let at = now.duration_since(UNIX_EPOCH).map_err(mock)?.as_millis() as u64;
        verify(&doc, &Policy::new(at).with_root(root).allow_debug(true)).map(|_| ()).map_err(|r| {
            mock(format!(
                "the mock root in {} does not work ({}); delete {MOCK_ROOT_PEM_FILE} and {MOCK_ROOT_KEY_FILE} to make a new one",
                self.root_pem_path.display(),
                r.error
            ))
        })
    }

    /// Path of the mock root certificate that verifiers must be given.
    pub fn root_pem_path(&self) -> &Path {
        &self.root_pem_path
    }

    /// The mock module id (`i-mock…-enc…`).
    pub fn module_id(&self) -> &str {
        &self.module_id
    }

    /// The PCRs this mock reports.
    pub fn pcrs(&self) -> &MockPcrs {
        &self.pcrs
    }

    /// The payload: nsm-api's own `AttestationDoc`, serialized by serde_cbor exactly as its `to_binary()`
    /// does (which unwraps; this returns the error instead). Its field order, integer PCR keys, byte
    /// strings and `null`s for absent optional fields are AWS's, not ours.
    fn payload(
        &self,
        leaf_der: &[u8],
        timestamp_ms: u64,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        let doc = AttestationDoc::new(
            self.module_id.clone(),
            Digest::SHA384,
            timestamp_ms,
            self.pcrs.values.iter().map(|(i, v)| (usize::from(*i), v.to_vec())).collect(),
            leaf_der.to_vec(),
            self.cabundle.clone(),
            user_data.map(<[u8]>::to_vec),
            nonce.map(<[u8]>::to_vec),
            public_key.map(<[u8]>::to_vec),
        );
        serde_cbor::to_vec(&doc).map_err(mock)
    }
}

/// The leaf key as `aws-nitro-enclaves-cose` wants it (ES384: ECDSA P-384 with SHA-384, signature `r‖s`),
/// backed by ring.
///
/// ring signs and verifies *messages*: it hashes inside the ECDSA operation and has no API for a
/// precomputed digest. So the crate's "digest" step is [`HashedByRing`], which hands the Sig_structure
/// through unchanged, and `sign` / `verify` here run ring's ES384 over it. The result is exactly COSE
/// ES384 (RFC 9052 §8.1: ECDSA P-384 over SHA-384 of the Sig_structure); the agreement test in
/// `protocol/tests/attestation_aws_agreement.rs` checks the same construction against real NSM signatures.
struct RingEs384<'a> {
    key: &'a EcdsaKeyPair,
    rng: &'a SystemRandom,
}

impl SigningPublicKey for RingEs384<'_> {
    fn get_parameters(&self) -> Result<(SignatureAlgorithm, MessageDigest), CoseError> {
        Ok((SignatureAlgorithm::ES384, MessageDigest::Sha384))
    }

    fn verify(&self, sig_structure: &[u8], signature: &[u8]) -> Result<bool, CoseError> {
        let public = ring::signature::UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, self.key.public_key().as_ref());
        Ok(public.verify(sig_structure, signature).is_ok())
    }
}

impl SigningPrivateKey for RingEs384<'_> {
    fn sign(&self, sig_structure: &[u8]) -> Result<Vec<u8>, CoseError> {
        let sig = self
            .key
            .sign(self.rng, sig_structure)
            .map_err(|_| CoseError::SignatureError("ring: ES384 signing failed".into()))?;
        Ok(sig.as_ref().to_vec())
    }
}

/// The crate's digest step for [`RingEs384`]: SHA-384 happens inside ring's ES384, so the bytes pass
/// through. Any other digest is refused, so this can never stand in for a real hash elsewhere.
struct HashedByRing;

impl Hash for HashedByRing {
    fn hash(digest: MessageDigest, data: &[u8]) -> Result<Vec<u8>, CoseError> {
        match digest {
            MessageDigest::Sha384 => Ok(data.to_vec()),
            other => Err(CoseError::UnsupportedError(format!("{other:?}: the mock NSM signs ES384 (SHA-384) only"))),
        }
    }
}

impl Nsm for MockNsm {
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        check_fields(user_data, nonce, public_key)?;
        let now = SystemTime::now();
        let timestamp_ms = now.duration_since(UNIX_EPOCH).map_err(mock)?.as_millis() as u64;
        let mut leaf = self.leaf.lock().map_err(|_| mock("leaf lock poisoned"))?;
        if now + LEAF_RENEW_BEFORE >= leaf.not_after {
            *leaf = Self::issue_leaf(&self.instance, &self.module_id, &self.rng, now)?;
        }
        let payload = self.payload(&leaf.der, timestamp_ms, user_data, nonce, public_key)?;
        // COSE_Sign1 by AWS's crate: protected header {1: -35} (ES384), empty unprotected header, untagged
        // (as the NSM sends it).
        let cose =
            CoseSign1::new::<HashedByRing>(&payload, &HeaderMap::new(), &RingEs384 { key: &leaf.key, rng: &self.rng })
                .map_err(mock)?;
        drop(leaf);
        cose.as_bytes(false).map_err(mock)
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        // Off hardware, the kernel RNG stands in for the NSM's; never anything from the parent.
        self.rng.fill(buf).map_err(|_| NsmError::Random)
    }

    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError> {
        if index > 31 {
            return Err(NsmError::PcrIndex(index));
        }
        Ok(self.pcrs.values.get(&index).map(|v| v.to_vec()).unwrap_or_else(|| vec![0; PCR_LEN]))
    }

    fn is_mock(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use veil_protocol::attestation::{Policy, TrustAnchor, UnverifiedDocument, VerifyError, verify};

    fn now_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn nsm(dir: &Path) -> MockNsm {
        MockNsm::load_or_create(dir, MockPcrs::from_image_digest(&[7; 48])).unwrap()
    }

    #[test]
    fn documents_verify_only_under_the_named_mock_root() {
        let dir = tempfile::tempdir().unwrap();
        let nsm = nsm(dir.path());
        assert!(nsm.is_mock());
        let doc = nsm.attestation(Some(b"commitment"), Some(&[1; 32]), Some(b"spki")).unwrap();
        let root = TrustAnchor::from_pem(&std::fs::read(dir.path().join(MOCK_ROOT_PEM_FILE)).unwrap()).unwrap();
        assert!(!root.is_aws_root_g1());
        assert!(root.name().contains("MOCK"));
        let pcr0 = nsm.pcrs().get(0).unwrap();
        let policy = Policy::new(now_ms()).with_root(root).expect_pcr(0, pcr0).unwrap().expect_nonce(&[1; 32]).unwrap();
        let v = verify(&doc, &policy).unwrap_or_else(|r| panic!("{}: {:#?}", r.error, r.report));
        assert_eq!(v.user_data(), Some(&b"commitment"[..]));
        assert_eq!(v.public_key(), Some(&b"spki"[..]));
        assert_eq!(v.module_id(), nsm.module_id());
        assert_eq!(v.certificates().len(), 5);
        assert!(!v.is_debug());
        // The default policy trusts only AWS's root: the mock document is refused on the root check.
        let err = verify(&doc, &Policy::new(now_ms())).unwrap_err();
        assert!(matches!(err.error, VerifyError::UntrustedRoot { .. }), "{}", err.error);
        assert_eq!(err.report.first_failure().unwrap().name, "root");
    }

    #[test]
    fn the_root_is_created_once_with_a_private_key_file_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = nsm(dir.path());
        let pem1 = std::fs::read(dir.path().join(MOCK_ROOT_PEM_FILE)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(MOCK_ROOT_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = nsm(dir.path());
        assert_eq!(std::fs::read(dir.path().join(MOCK_ROOT_PEM_FILE)).unwrap(), pem1);
        // Each instance has its own chain below the shared root.
        assert_ne!(a.module_id(), b.module_id());
        let root = TrustAnchor::from_pem(&pem1).unwrap();
        for n in [&a, &b] {
            verify(&n.attestation(None, None, None).unwrap(), &Policy::new(now_ms()).with_root(root.clone())).unwrap();
        }
    }

    #[test]
    fn a_mismatched_root_key_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        nsm(dir.path());
        // Replace the key with another: the self-check must refuse to start.
        let other = new_key().unwrap();
        write_file(&dir.path().join(MOCK_ROOT_KEY_FILE), other.serialize_pem().as_bytes(), 0o600).unwrap();
        let err = MockNsm::load_or_create(dir.path(), MockPcrs::from_image_digest(&[7; 48])).unwrap_err();
        assert!(err.to_string().contains("does not work"), "{err}");
    }

    #[test]
    fn pcrs_follow_the_image_and_overrides_and_debug_is_zero() {
        let a = MockPcrs::from_image_digest(&[1; 48]);
        let b = MockPcrs::from_image_digest(&[2; 48]);
        assert_ne!(a.get(0), b.get(0));
        assert_ne!(a.get(0), a.get(1));
        let exe = MockPcrs::from_current_exe().unwrap();
        assert_ne!(exe.get(0), Some(&[0; 48]));
        assert!(MockPcrs::from_image_digest(&[1; 48]).with(16, [0; 48]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let debug =
            a.with(0, [0; 48]).unwrap().with(1, [0; 48]).unwrap().with(2, [0; 48]).unwrap().with(4, [9; 48]).unwrap();
        let nsm = MockNsm::load_or_create(dir.path(), debug).unwrap();
        assert_eq!(nsm.describe_pcr(4).unwrap(), vec![9; 48]);
        assert!(nsm.describe_pcr(32).is_err());
        let doc = nsm.attestation(None, None, None).unwrap();
        let root = TrustAnchor::from_pem(&std::fs::read(nsm.root_pem_path()).unwrap()).unwrap();
        let err = verify(&doc, &Policy::new(now_ms()).with_root(root.clone())).unwrap_err();
        assert_eq!(err.error, VerifyError::DebugMode);
        assert!(verify(&doc, &Policy::new(now_ms()).with_root(root).allow_debug(true)).unwrap().is_debug());
    }

    #[test]
    fn documents_are_shaped_like_aws_and_the_leaf_lives_three_hours() {
        let dir = tempfile::tempdir().unwrap();
        let nsm = nsm(dir.path());
        let doc = nsm.attestation(None, None, None).unwrap();
        assert_eq!(&doc[..6], &[0x84, 0x44, 0xa1, 0x01, 0x38, 0x22]);
        let parsed = UnverifiedDocument::parse(&doc).unwrap();
        let claims = parsed.unverified_claims();
        assert_eq!(claims.cabundle.len(), 4);
        assert_eq!(claims.pcrs.len(), 16);
        assert!(claims.module_id.starts_with("i-mock") && claims.module_id.contains("-enc"));
        assert_eq!(
            claims.pcrs.get(&4).unwrap().as_slice(),
            &extend_once(claims.module_id.split("-enc").next().unwrap().as_bytes())
        );
        let certs = parsed.certificates();
        let leaf = certs.last().unwrap().as_ref().unwrap();
        let life = leaf.not_after - leaf.not_before;
        assert!((3 * 3600..=3 * 3600 + 120).contains(&life), "{life}");
        assert!(certs[0].as_ref().unwrap().subject.contains("MOCK"));
        // After the leaf's life, verification fails on validity (the verifier is given the time).
        let late = now_ms() + 4 * 3600 * 1000;
        let root = TrustAnchor::from_pem(&std::fs::read(nsm.root_pem_path()).unwrap()).unwrap();
        let err = verify(&doc, &Policy::new(late).with_root(root)).unwrap_err();
        assert!(
            matches!(err.error, VerifyError::CertificateTime { ref which, .. } if which == "leaf"),
            "{}",
            err.error
        );
    }

    #[test]
    fn documents_are_aws_encodings_that_aws_code_reads_back_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let nsm = nsm(dir.path());
        let doc = nsm.attestation(Some(b"commitment"), Some(&[1; 32]), None).unwrap();
        // AWS's COSE reader takes the document, re-encodes it byte for byte and verifies its signature.
        let cose = CoseSign1::from_bytes(&doc).unwrap();
        assert_eq!(cose.as_bytes(false).unwrap(), doc);
        let leaf = nsm.leaf.lock().unwrap();
        assert!(cose.verify_signature::<HashedByRing>(&RingEs384 { key: &leaf.key, rng: &nsm.rng }).unwrap());
        // nsm-api's reader takes the payload and writes it back byte for byte.
        let payload = cose.get_payload::<HashedByRing>(None).unwrap();
        let aws = AttestationDoc::from_binary(&payload).unwrap();
        assert_eq!(aws.to_binary(), payload);
        assert_eq!(aws.digest, Digest::SHA384);
        assert_eq!(aws.certificate.as_slice(), leaf.der.as_slice());
        // Veil's reader sees the same fields.
        let parsed = UnverifiedDocument::parse(&doc).unwrap();
        assert_eq!(parsed.unverified_payload(), payload.as_slice());
        let claims = parsed.unverified_claims();
        assert_eq!(claims.module_id, aws.module_id);
        assert_eq!(claims.timestamp_ms, aws.timestamp);
        assert_eq!(claims.pcrs.len(), aws.pcrs.len());
        for (i, v) in &aws.pcrs {
            assert_eq!(claims.pcrs.get(&u8::try_from(*i).unwrap()).unwrap(), v.as_slice(), "PCR{i}");
        }
        assert_eq!(claims.cabundle, aws.cabundle.iter().map(|c| c.to_vec()).collect::<Vec<_>>());
        assert_eq!(claims.user_data.as_deref(), Some(&b"commitment"[..]));
        assert_eq!(aws.user_data.as_deref().map(|b| b.as_slice()), Some(&b"commitment"[..]));
        assert_eq!(claims.nonce.as_deref(), aws.nonce.as_deref().map(|b| b.as_slice()));
        assert_eq!((claims.public_key.as_deref(), aws.public_key.as_deref()), (None, None));
    }

    #[test]
    fn the_digest_step_refuses_anything_but_sha384() {
        assert_eq!(HashedByRing::hash(MessageDigest::Sha384, b"x").unwrap(), b"x");
        assert!(HashedByRing::hash(MessageDigest::Sha256, b"x").is_err());
        assert!(HashedByRing::hash(MessageDigest::Sha512, b"x").is_err());
    }

    #[test]
    fn oversized_inputs_are_refused_and_random_fills() {
        let dir = tempfile::tempdir().unwrap();
        let nsm = nsm(dir.path());
        let big = vec![0u8; 1025];
        assert!(matches!(nsm.attestation(Some(&big), None, None), Err(NsmError::TooLarge { field: "user_data", .. })));
        assert!(matches!(nsm.attestation(None, None, Some(&big)), Err(NsmError::TooLarge { field: "public_key", .. })));
        let max = vec![0u8; 1024];
        nsm.attestation(Some(&max), Some(&max), Some(&max)).unwrap();
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        nsm.random(&mut a).unwrap();
        nsm.random(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_commitment_in_user_data_is_checked_by_the_verifier() {
        use veil_protocol::attestation::{ModelDigest, UserDataCommitment};
        let dir = tempfile::tempdir().unwrap();
        let nsm = nsm(dir.path());
        let commitment = UserDataCommitment {
            ohttp_keys_sha384: Some([5; 48]),
            receipt_key: Some([4; 32]),
            recipient_rsa_spki_sha384: Some(UserDataCommitment::sha384(b"spki")),
            models: vec![ModelDigest { name: "iris".into(), sha384: [1; 48] }],
            config_sha384: [2; 48],
        };
        let doc = nsm.attestation(Some(&commitment.encode().unwrap()), Some(b"n"), None).unwrap();
        let root = TrustAnchor::from_pem(&std::fs::read(nsm.root_pem_path()).unwrap()).unwrap();
        let base = Policy::new(now_ms()).with_root(root);
        let ok = base.clone().expect_model("iris", &[1; 48]).unwrap().expect_config_sha384(&[2; 48]).unwrap();
        let v = verify(&doc, &ok).unwrap();
        assert_eq!(v.commitment().unwrap(), commitment);
        let wrong = base.clone().expect_model("iris", &[9; 48]).unwrap();
        let err = verify(&doc, &wrong).unwrap_err();
        assert!(
            matches!(&err.error, VerifyError::Commitment(r) if r.contains("model \"iris\": expected SHA-384 0909")),
            "{}",
            err.error
        );
        let missing = base.expect_model("minilm", &[1; 48]).unwrap();
        let err = verify(&doc, &missing).unwrap_err();
        assert!(
            matches!(&err.error, VerifyError::Commitment(r) if r.contains("not in the commitment")),
            "{}",
            err.error
        );
    }

    #[test]
    fn hardware_nsm_is_unavailable_off_hardware() {
        if !Path::new("/dev/nsm").exists() {
            assert!(matches!(super::super::HardwareNsm::open(), Err(NsmError::Unavailable)));
        }
    }
}

//! The mock's TLS identity: a self-signed CA made at first start and kept in the state directory, and a
//! server certificate it issues at every start (so `--hostname` can change without a new CA to trust).
//!
//! Clients trust `ca.pem` only: it says "NOT AWS" in its name and no system trust store has it.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::store::{StoreError, write_atomically};

/// Why the TLS identity could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Generating or parsing a certificate or key failed.
    #[error("TLS certificate: {0}")]
    Certificate(String),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] StoreError),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn cert_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(e.to_string())
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Veil mock KMS CA - NOT AWS, NOT FOR PRODUCTION");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    Ok(params)
}

/// The server's TLS configuration and the CA certificate clients should trust.
#[derive(Debug)]
pub struct TlsIdentity {
    /// rustls server configuration (ring provider).
    pub config: Arc<rustls::ServerConfig>,
    /// `ca.pem`'s contents.
    pub ca_pem: String,
}

/// Loads (or makes) the CA in `dir`, issues a server certificate for `localhost`, `127.0.0.1` and
/// `hostnames`, writes `ca.pem`, `ca.key.pem` (0600), `server.pem`, `server.key.pem` (0600).
pub fn load_or_create(dir: &Path, hostnames: &[String]) -> Result<TlsIdentity, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path, source })
    };
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key.pem");
    let (ca_pem, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
        (read("ca.pem")?, KeyPair::from_pem(&read("ca.key.pem")?).map_err(cert_err)?)
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let cert = ca_params()?.self_signed(&key).map_err(cert_err)?;
        write_atomically(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomically(&ca_cert_path, cert.pem().as_bytes(), 0o644)?;
        (cert.pem(), key)
    };
    // The issuer is rebuilt from the same parameters: same name, same key identifier, so certificates chain
    // to the stored `ca.pem`.
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(hostnames.iter().filter(|h| !names.contains(h)).cloned().collect::<Vec<_>>());
    let mut params = CertificateParams::new(names).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Veil mock KMS - NOT AWS");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    write_atomically(&dir.join("server.key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&dir.join("server.pem"), cert.pem().as_bytes(), 0o644)?;

    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(cert_err)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(cert_err)?;
    Ok(TlsIdentity { config: Arc::new(config), ca_pem })
}

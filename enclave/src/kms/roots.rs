//! The TLS roots the enclave trusts for KMS: Amazon Trust Services' own, embedded and pinned by hash.
//!
//! KMS endpoints' certificates chain to Amazon Root CA 1 (RSA; Amazon Root CA 2 to 4 are its RSA-4096 and
//! ECDSA siblings), and older chains to Starfield Services Root Certificate Authority - G2, which Amazon
//! operates. The enclave trusts exactly these five (taken from the Mozilla store as Debian ships it,
//! `ca-certificates` 20230311), not the whole web PKI: a certificate for `kms.REGION.amazonaws.com` from
//! any other CA, however it was obtained, does not reach the enclave's TLS. Each embedded certificate is
//! checked against its published SHA-256 fingerprint before it is used, so a changed file cannot slip in.
//!
//! Development builds may add one more root (the mock KMS's CA), and only with the mock NSM.
use rustls::pki_types::CertificateDer;

/// One pinned root: its name, DER, and SHA-256 fingerprint as Amazon publishes it.
struct Root {
    name: &'static str,
    der: &'static [u8],
    sha256: &'static str,
}

const ROOTS: [Root; 5] = [
    Root {
        name: "Amazon Root CA 1",
        der: include_bytes!("roots/amazon-root-ca-1.der"),
        sha256: "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e",
    },
    Root {
        name: "Amazon Root CA 2",
        der: include_bytes!("roots/amazon-root-ca-2.der"),
        sha256: "1ba5b2aa8c65401a82960118f80bec4f62304d83cec4713a19c39c011ea46db4",
    },
    Root {
        name: "Amazon Root CA 3",
        der: include_bytes!("roots/amazon-root-ca-3.der"),
        sha256: "18ce6cfe7bf14e60b2e347b8dfe868cb31d02ebb3ada271569f50343b46db3a4",
    },
    Root {
        name: "Amazon Root CA 4",
        der: include_bytes!("roots/amazon-root-ca-4.der"),
        sha256: "e35d28419ed02025cfa69038cd623962458da5c695fbdea3c22b0bfb25897092",
    },
    Root {
        name: "Starfield Services Root Certificate Authority - G2",
        der: include_bytes!("roots/starfield-services-root-ca-g2.der"),
        sha256: "568d6905a2c88708a4b3025190edcfedb1974a606a13c6e5290fcb2ae63edab5",
    },
];

/// The root store for KMS: the five pinned Amazon roots, each checked against its fingerprint.
pub(crate) fn kms_roots() -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for root in &ROOTS {
        let got = hex::encode(ring::digest::digest(&ring::digest::SHA256, root.der));
        if got != root.sha256 {
            return Err(format!("embedded root {} does not match its pinned SHA-256", root.name));
        }
        store.add(CertificateDer::from(root.der)).map_err(|e| format!("embedded root {}: {e}", root.name))?;
    }
    Ok(store)
}

/// The names of the pinned roots (for logs and documentation).
pub fn kms_root_names() -> Vec<&'static str> {
    ROOTS.iter().map(|r| r.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_roots_load_and_nothing_else_is_trusted() {
        let store = kms_roots().unwrap();
        assert_eq!(store.len(), 5);
        // None of webpki's other roots are in: for example ISRG Root X1 (Let's Encrypt).
        let isrg = webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .find(|a| String::from_utf8_lossy(a.subject.as_ref()).contains("ISRG Root X1"));
        assert!(isrg.is_some(), "the comparison needs a root outside Amazon's");
        let subjects: Vec<Vec<u8>> = store.roots.iter().map(|r| r.subject.as_ref().to_vec()).collect();
        assert!(!subjects.contains(&isrg.unwrap().subject.as_ref().to_vec()));
    }
}

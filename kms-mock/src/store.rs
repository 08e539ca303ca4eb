//! The key store: keys with their material and policy, their aliases and grants, persisted to `keys.json`
//! after every change.
//!
//! Written atomically (a temporary file in the same directory, mode 0600, synced, then renamed over the old
//! one), so a crash or a restart never loses or half-writes a key, and a restarted mock decrypts what the
//! previous one encrypted. The material is hex in the file: this is a mock, and the file is its HSM.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::alias::Alias;
use crate::grants::Grant;

/// Most keys one store holds (bounds the file and `ListKeys`).
pub const MAX_KEYS: usize = 10_000;

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading, writing or renaming the file failed.
    #[error("key store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a key store this version wrote.
    #[error("key store {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One KMS key.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct StoredKey {
    /// The UUID key id.
    #[zeroize(skip)]
    pub key_id: String,
    /// Creation time, seconds since the Unix epoch.
    #[zeroize(skip)]
    pub creation_date: f64,
    /// The description given at creation.
    #[zeroize(skip)]
    pub description: String,
    /// The key policy document, as given (KMS returns it verbatim).
    #[zeroize(skip)]
    pub policy: String,
    /// The 32-byte AES-256 key material, hex.
    material_hex: String,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl StoredKey {
    /// A key with the given material.
    pub fn new(key_id: String, creation_date: f64, description: String, policy: String, material: &[u8; 32]) -> Self {
        Self { key_id, creation_date, description, policy, material_hex: hex::encode(material) }
    }

    /// The key material. `None` if the stored hex is damaged (checked at load, so only on a bug).
    pub fn material(&self) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&self.material_hex, out.as_mut()).ok()?;
        Some(out)
    }
}

/// The file format version written; version 1 (keys only, before aliases and grants) is still read.
const VERSION: u32 = 2;

#[derive(Serialize, Deserialize, Default)]
struct File {
    version: u32,
    keys: Vec<StoredKey>,
    #[serde(default)]
    aliases: Vec<Alias>,
    #[serde(default)]
    grants: Vec<Grant>,
}

/// The keys in creation order, their aliases and grants, and the file they live in.
#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    keys: Vec<StoredKey>,
    aliases: Vec<Alias>,
    grants: Vec<Grant>,
}

impl KeyStore {
    /// Opens `path`, or starts empty if it does not exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io { path: path.to_owned(), source };
        let corrupt = |reason: String| StoreError::Corrupt { path: path.to_owned(), reason };
        let file = match std::fs::read(path) {
            Ok(bytes) => {
                let file: File = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if !(1..=VERSION).contains(&file.version) {
                    return Err(corrupt(format!("unknown version {}", file.version)));
                }
                for key in &file.keys {
                    if key.material().is_none() || crate::server::valid_key_id(&key.key_id).is_none() {
                        return Err(corrupt(format!("key {:?} is damaged", key.key_id)));
                    }
                }
                let has_key = |id: &str| file.keys.iter().any(|k| k.key_id == id);
                for alias in &file.aliases {
                    if crate::alias::check_name(&alias.alias_name).is_err() || !has_key(&alias.target_key_id) {
                        return Err(corrupt(format!("alias {:?} is damaged", alias.alias_name)));
                    }
                }
                for grant in &file.grants {
                    if !crate::grants::valid_grant_id(&grant.grant_id) || !has_key(&grant.key_id) {
                        return Err(corrupt(format!("grant {:?} is damaged", grant.grant_id)));
                    }
                }
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(io(e)),
        };
        Ok(Self { path: path.to_owned(), keys: file.keys, aliases: file.aliases, grants: file.grants })
    }

    /// The keys in creation order.
    pub fn keys(&self) -> &[StoredKey] {
        &self.keys
    }

    /// The key with this UUID.
    pub fn get(&self, key_id: &str) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    /// Adds a key and persists; on failure the store is unchanged.
    pub fn insert(&mut self, key: StoredKey) -> Result<(), StoreError> {
        self.keys.push(key);
        if let Err(e) = self.persist() {
            self.keys.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Replaces a key's policy and persists; on failure the store is unchanged.
    pub fn set_policy(&mut self, key_id: &str, policy: String) -> Result<(), StoreError> {
        let Some(index) = self.keys.iter().position(|k| k.key_id == key_id) else {
            return Ok(());
        };
        let old = std::mem::replace(&mut self.keys[index].policy, policy);
        if let Err(e) = self.persist() {
            self.keys[index].policy = old;
            return Err(e);
        }
        Ok(())
    }

    /// The aliases, in creation order.
    pub fn aliases(&self) -> &[Alias] {
        &self.aliases
    }

    /// The alias with this name (`alias/NAME`).
    pub fn alias(&self, name: &str) -> Option<&Alias> {
        self.aliases.iter().find(|a| a.alias_name == name)
    }

    /// Adds an alias and persists; on failure the store is unchanged. The caller checked name and target.
    pub fn insert_alias(&mut self, alias: Alias) -> Result<(), StoreError> {
        self.aliases.push(alias);
        self.persist().inspect_err(|_| {
            self.aliases.pop();
        })
    }

    /// Points an alias at another key and persists; on failure the store is unchanged.
    pub fn retarget_alias(&mut self, name: &str, key_id: &str, now: f64) -> Result<(), StoreError> {
        let Some(alias) = self.aliases.iter_mut().find(|a| a.alias_name == name) else { return Ok(()) };
        let old = alias.clone();
        alias.target_key_id = key_id.to_owned();
        alias.last_updated_date = now;
        self.persist().inspect_err(|_| {
            if let Some(a) = self.aliases.iter_mut().find(|a| a.alias_name == name) {
                *a = old;
            }
        })
    }

    /// Removes an alias and persists; on failure the store is unchanged.
    pub fn remove_alias(&mut self, name: &str) -> Result<(), StoreError> {
        let Some(index) = self.aliases.iter().position(|a| a.alias_name == name) else { return Ok(()) };
        let old = self.aliases.remove(index);
        self.persist().inspect_err(|_| self.aliases.insert(index, old))
    }

    /// The grants of every key, in creation order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Adds a grant and persists; on failure the store is unchanged.
    pub fn insert_grant(&mut self, grant: Grant) -> Result<(), StoreError> {
        self.grants.push(grant);
        self.persist().inspect_err(|_| {
            self.grants.pop();
        })
    }

    /// Removes a grant (revoked or retired) and persists; on failure the store is unchanged.
    pub fn remove_grant(&mut self, grant_id: &str) -> Result<(), StoreError> {
        let Some(index) = self.grants.iter().position(|g| g.grant_id == grant_id) else { return Ok(()) };
        let old = self.grants.remove(index);
        self.persist().inspect_err(|_| self.grants.insert(index, old))
    }

    fn persist(&self) -> Result<(), StoreError> {
        let file = File {
            version: VERSION,
            keys: self.keys.clone(),
            aliases: self.aliases.clone(),
            grants: self.grants.clone(),
        };
        let bytes = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&file)
                .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: e.to_string() })?,
        );
        write_atomically(&self.path, &bytes, 0o600)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, then renames it into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| StoreError::Io { path: path.to_owned(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A stale temporary from a crash would keep its old permissions: remove it first.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn persists_atomically_with_mode_0600_and_reloads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut store = KeyStore::open(&path).unwrap();
        let id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".to_owned();
        store.insert(StoredKey::new(id.clone(), 1.5, "d".into(), "{}".into(), &[9u8; 32])).unwrap();
        store.set_policy(&id, "{\"Statement\":[]}".into()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = KeyStore::open(&path).unwrap();
        let key = again.get(&id).unwrap();
        assert_eq!(*key.material().unwrap(), [9u8; 32]);
        assert_eq!(key.policy, "{\"Statement\":[]}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left behind");
    }

    #[test]
    fn aliases_and_grants_persist_and_version_1_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".to_owned();
        let v1 = serde_json::json!({"version": 1, "keys": [StoredKey::new(id.clone(), 1.0, "d".into(), "{}".into(), &[9u8; 32])]});
        std::fs::write(&path, v1.to_string()).unwrap();
        let mut store = KeyStore::open(&path).unwrap();
        assert!(store.aliases().is_empty() && store.grants().is_empty());
        store
            .insert_alias(Alias {
                alias_name: "alias/a".into(),
                target_key_id: id.clone(),
                creation_date: 1.0,
                last_updated_date: 1.0,
            })
            .unwrap();
        store.retarget_alias("alias/a", &id, 2.0).unwrap();
        let grant = Grant {
            grant_id: "cd".repeat(32),
            key_id: id.clone(),
            name: None,
            grantee_principal: "arn:aws:iam::111122223333:role/x".into(),
            retiring_principal: None,
            operations: vec!["Decrypt".into()],
            constraints: None,
            creation_date: 3.0,
            issuing_account: "arn:aws:iam::111122223333:root".into(),
        };
        store.insert_grant(grant.clone()).unwrap();
        let again = KeyStore::open(&path).unwrap();
        assert_eq!(again.alias("alias/a").unwrap().last_updated_date, 2.0);
        assert_eq!(again.grants(), &[grant]);
        let mut again = again;
        again.remove_alias("alias/a").unwrap();
        again.remove_grant(&"cd".repeat(32)).unwrap();
        let last = KeyStore::open(&path).unwrap();
        assert!(last.aliases().is_empty() && last.grants().is_empty());

        // An alias whose key is gone is damage, not something to serve.
        let broken = serde_json::json!({"version": 2, "keys": [], "aliases": [
            {"alias_name": "alias/a", "target_key_id": id, "creation_date": 1.0, "last_updated_date": 1.0}], "grants": []});
        std::fs::write(&path, broken.to_string()).unwrap();
        assert!(matches!(KeyStore::open(&path), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, b"{\"version\": 3, \"keys\": []}").unwrap();
        assert!(matches!(KeyStore::open(&path), Err(StoreError::Corrupt { .. })));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(KeyStore::open(&path), Err(StoreError::Corrupt { .. })));
    }
}

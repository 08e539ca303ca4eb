//! The enclave's cache of data keys released by KMS: one KMS call per data key, not per request.
//!
//! A client keeps one data key for a session of many requests; the enclave asks KMS for it once and
//! remembers it here, bounded in count and time; a key's bytes are zeroized when its entry leaves (expiry,
//! eviction) and the last request using it ends ([`DataKey`] wipes itself on drop).
//!
//! Replay protection lives here too. Each request carries a random id and its issue time, both bound into
//! its ciphertext. The enclave refuses requests issued outside its replay window, and within the window
//! refuses any request id already seen under the same data key. An entry therefore must outlive the window:
//! when the cache is full, only entries older than the window may be evicted, and if none is, a new key is
//! refused (fail closed) rather than forgetting which ids were seen.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest;
use veil_protocol::envelope::{DataKey, REQUEST_ID_LEN};

/// Limits of the cache.
#[derive(Debug, Clone, Copy)]
pub struct KeyCacheLimits {
    /// Most data keys held at once.
    pub capacity: usize,
    /// How long a data key is kept after KMS released it.
    pub ttl: Duration,
    /// How far `issued_at` may be from the enclave's clock, either way.
    pub replay_window: Duration,
    /// Most requests one data key may seal (the client starts a new session before).
    pub max_requests_per_key: usize,
}

impl Default for KeyCacheLimits {
    fn default() -> Self {
        KeyCacheLimits {
            capacity: 4096,
            ttl: Duration::from_secs(15 * 60),
            replay_window: Duration::from_secs(5 * 60),
            max_requests_per_key: 100_000,
        }
    }
}

/// Which data key: SHA-256 over the key id, the encrypted data key and the encryption context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheId([u8; 32]);

impl CacheId {
    pub fn new(key_id: &str, encrypted_data_key: &[u8], context: &BTreeMap<String, String>) -> CacheId {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [key_id.as_bytes(), encrypted_data_key] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        for (k, v) in context {
            for part in [k.as_bytes(), v.as_bytes()] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        CacheId(out)
    }
}

/// Why a request may not use a data key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyUseError {
    #[error("this request id was already used: replayed request refused")]
    Replay,
    #[error(
        "the request was issued {0}s away from the enclave's clock, outside the replay window; check the client's clock"
    )]
    OutsideWindow(u64),
    #[error("this data key has sealed its maximum number of requests; start a new session (a new data key)")]
    Exhausted,
    #[error("the enclave's key cache is full; try again shortly")]
    Full,
}

struct Entry {
    key: Arc<DataKey>,
    created: Instant,
    seen: HashSet<[u8; REQUEST_ID_LEN]>,
}

/// The cache.
pub struct KeyCache {
    limits: KeyCacheLimits,
    entries: Mutex<HashMap<CacheId, Entry>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("KeyCache").field("limits", &self.limits).field("entries", &n).finish()
    }
}

impl KeyCache {
    pub fn new(limits: KeyCacheLimits) -> KeyCache {
        KeyCache { limits, entries: Mutex::new(HashMap::new()) }
    }

    /// Checks `issued_at` (Unix seconds) against the enclave's clock `now_unix`.
    pub fn check_window(&self, issued_at: u64, now_unix: u64) -> Result<(), KeyUseError> {
        let skew = issued_at.abs_diff(now_unix);
        if skew > self.limits.replay_window.as_secs() {
            return Err(KeyUseError::OutsideWindow(skew));
        }
        Ok(())
    }

    /// The cached key for `id`, recording `request_id` as used; `Ok(None)` when KMS must be asked.
    pub fn use_key(
        &self,
        id: &CacheId,
        request_id: &[u8; REQUEST_ID_LEN],
        now: Instant,
    ) -> Result<Option<Arc<DataKey>>, KeyUseError> {
        let mut entries = self.entries.lock().map_err(|_| KeyUseError::Full)?;
        let Some(entry) = entries.get_mut(id) else { return Ok(None) };
        if now.duration_since(entry.created) > self.limits.ttl {
            entries.remove(id);
            return Ok(None);
        }
        if entry.seen.contains(request_id) {
            return Err(KeyUseError::Replay);
        }
        if entry.seen.len() >= self.limits.max_requests_per_key {
            return Err(KeyUseError::Exhausted);
        }
        entry.seen.insert(*request_id);
        Ok(Some(Arc::clone(&entry.key)))
    }

    /// Stores a key KMS just released, with its first request id. If another request stored the same key
    /// meanwhile, that one is kept and this request id is recorded on it.
    pub fn insert(
        &self,
        id: CacheId,
        key: DataKey,
        request_id: &[u8; REQUEST_ID_LEN],
        now: Instant,
    ) -> Result<Arc<DataKey>, KeyUseError> {
        let mut entries = self.entries.lock().map_err(|_| KeyUseError::Full)?;
        if let Some(entry) = entries.get_mut(&id) {
            if !entry.seen.insert(*request_id) {
                return Err(KeyUseError::Replay);
            }
            return Ok(Arc::clone(&entry.key));
        }
        entries.retain(|_, e| now.duration_since(e.created) <= self.limits.ttl);
        if entries.len() >= self.limits.capacity {
            // Evict the oldest entry, but only if it is past the replay window (see the module docs).
            let oldest = entries.iter().min_by_key(|(_, e)| e.created).map(|(k, e)| (*k, e.created));
            match oldest {
                Some((k, created)) if now.duration_since(created) > self.limits.replay_window * 2 => {
                    entries.remove(&k);
                }
                _ => return Err(KeyUseError::Full),
            }
        }
        let key = Arc::new(key);
        entries.insert(id, Entry { key: Arc::clone(&key), created: now, seen: HashSet::from([*request_id]) });
        Ok(key)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::new(&[1u8; 32]).unwrap()
    }

    fn id(n: u8) -> CacheId {
        CacheId::new("k", &[n], &BTreeMap::new())
    }

    #[test]
    fn one_kms_call_per_key_then_hits() {
        let cache = KeyCache::new(KeyCacheLimits::default());
        let t = Instant::now();
        assert!(cache.use_key(&id(1), &[1; 16], t).unwrap().is_none());
        cache.insert(id(1), key(), &[1; 16], t).unwrap();
        for i in 2..50u8 {
            assert!(cache.use_key(&id(1), &[i; 16], t).unwrap().is_some());
        }
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn replays_are_refused_including_the_first_request() {
        let cache = KeyCache::new(KeyCacheLimits::default());
        let t = Instant::now();
        cache.insert(id(1), key(), &[1; 16], t).unwrap();
        assert_eq!(cache.use_key(&id(1), &[1; 16], t).unwrap_err(), KeyUseError::Replay);
        cache.use_key(&id(1), &[2; 16], t).unwrap();
        assert_eq!(cache.use_key(&id(1), &[2; 16], t).unwrap_err(), KeyUseError::Replay);
        assert_eq!(cache.insert(id(1), key(), &[2; 16], t).unwrap_err(), KeyUseError::Replay);
    }

    #[test]
    fn the_context_is_part_of_the_identity() {
        let a = CacheId::new("k", b"blob", &BTreeMap::from([("a".into(), "1".into())]));
        let b = CacheId::new("k", b"blob", &BTreeMap::from([("a".into(), "2".into())]));
        let c = CacheId::new("k", b"blob", &BTreeMap::new());
        assert!(a != b && a != c && b != c);
        // Length prefixes: moving a byte between fields changes the id.
        assert_ne!(CacheId::new("ab", b"c", &BTreeMap::new()), CacheId::new("a", b"bc", &BTreeMap::new()));
    }

    #[test]
    fn keys_expire_and_full_caches_fail_closed() {
        let limits = KeyCacheLimits {
            capacity: 2,
            ttl: Duration::from_secs(60),
            replay_window: Duration::from_secs(10),
            max_requests_per_key: 3,
        };
        let cache = KeyCache::new(limits);
        let t = Instant::now();
        cache.insert(id(1), key(), &[1; 16], t).unwrap();
        cache.insert(id(2), key(), &[1; 16], t).unwrap();
        // Full, and nothing is old enough to forget: refuse.
        assert_eq!(cache.insert(id(3), key(), &[1; 16], t + Duration::from_secs(5)).unwrap_err(), KeyUseError::Full);
        // Past twice the window, the oldest may go.
        cache.insert(id(3), key(), &[1; 16], t + Duration::from_secs(25)).unwrap();
        assert_eq!(cache.len(), 2);
        // Past the TTL, KMS is asked again.
        assert!(cache.use_key(&id(3), &[2; 16], t + Duration::from_secs(120)).unwrap().is_none());
        // A key is good for a bounded number of requests.
        cache.insert(id(4), key(), &[1; 16], t).unwrap();
        cache.use_key(&id(4), &[2; 16], t).unwrap();
        cache.use_key(&id(4), &[3; 16], t).unwrap();
        assert_eq!(cache.use_key(&id(4), &[4; 16], t).unwrap_err(), KeyUseError::Exhausted);
    }

    #[test]
    fn the_window_is_checked_both_ways() {
        let cache = KeyCache::new(KeyCacheLimits::default());
        cache.check_window(1000, 1000 + 300).unwrap();
        cache.check_window(1300, 1000).unwrap();
        assert_eq!(cache.check_window(1000, 1000 + 301).unwrap_err(), KeyUseError::OutsideWindow(301));
        assert_eq!(cache.check_window(2000, 1000).unwrap_err(), KeyUseError::OutsideWindow(1000));
    }
}

//! The enclave's cache of data keys released by KMS: one KMS call per data key, not per request.
//!
//! A client keeps one data key for a session of many requests; the enclave asks KMS for it once and
//! remembers it here, bounded in count and time. A key's bytes are zeroized when its entry leaves (expiry,
//! eviction) and the last request using it ends ([`DataKey`] wipes itself on drop).
//!
//! This cache holds keys only. Which request ids were seen lives in [`crate::replay`], keyed by the data
//! key and kept for as long as each id's replay window is open, so evicting a key here never lets a request
//! be replayed: the worst an eviction costs is one more KMS call.
//!
//! **Fair sharing.** When the cache is full, the entry that goes is the least recently used one of the KMS
//! key (tenant) holding the most entries, so one tenant filling the cache with its data keys evicts only its
//! own, and never locks the others out.
//!
//! **Refusals are remembered.** A data key KMS refused (the key policy said no, the ciphertext is garbage)
//! is remembered for [`NEGATIVE_TTL`], bounded in count: a flood of requests under one garbage data key
//! costs one KMS call, not one per request.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest;
use veil_protocol::envelope::DataKey;

use crate::kms::KmsError;

/// How long a refusal is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Most refusals remembered at once.
pub const NEGATIVE_CAPACITY: usize = 4096;

/// Limits of the cache.
#[derive(Debug, Clone, Copy)]
pub struct KeyCacheLimits {
    /// Most data keys held at once.
    pub capacity: usize,
    /// How long a data key is kept after KMS released it.
    pub ttl: Duration,
    /// Most requests one data key may seal (the client starts a new session before).
    pub max_requests_per_key: u64,
}

impl Default for KeyCacheLimits {
    fn default() -> Self {
        KeyCacheLimits { capacity: 4096, ttl: Duration::from_secs(15 * 60), max_requests_per_key: 100_000 }
    }
}

/// Which data key: SHA-256 over the key id, the encrypted data key and the encryption context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// The raw bytes (for the replay records).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Who shares the cache fairly: one KMS key.
type Tenant = [u8; 32];

fn tenant(key_id: &str) -> Tenant {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, key_id.as_bytes()).as_ref());
    out
}

struct Entry {
    key: Arc<DataKey>,
    tenant: Tenant,
    created: Instant,
    last_used: Instant,
    used: u64,
}

struct Refusal {
    error: KmsError,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheId, Entry>,
    per_tenant: HashMap<Tenant, usize>,
    refusals: HashMap<CacheId, Refusal>,
}

/// A cache hit, a miss, or a remembered refusal.
#[derive(Debug)]
pub enum Lookup {
    Hit(Arc<DataKey>),
    Miss,
    Refused(KmsError),
}

/// The cache.
pub struct KeyCache {
    limits: KeyCacheLimits,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("limits", &self.limits).field("entries", &self.len()).finish()
    }
}

impl KeyCache {
    pub fn new(limits: KeyCacheLimits) -> KeyCache {
        KeyCache { limits, inner: Mutex::new(Inner::default()) }
    }

    /// The cached key for `id`, a remembered refusal, or a miss (KMS must be asked).
    pub fn get(&self, id: &CacheId, now: Instant) -> Lookup {
        let Ok(mut inner) = self.inner.lock() else { return Lookup::Miss };
        if let Some(r) = inner.refusals.get(id) {
            if now.duration_since(r.at) <= NEGATIVE_TTL
                && let Some(e) = r.error.definitive()
            {
                return Lookup::Refused(e);
            }
            inner.refusals.remove(id);
        }
        let expired = match inner.entries.get_mut(id) {
            None => return Lookup::Miss,
            Some(e) if now.duration_since(e.created) > self.limits.ttl => true,
            Some(e) => {
                e.last_used = now;
                return Lookup::Hit(Arc::clone(&e.key));
            }
        };
        if expired {
            inner.remove(id);
        }
        Lookup::Miss
    }

    /// Counts one authenticated request against `id`'s budget; `false` when the budget is spent.
    pub fn charge(&self, id: &CacheId) -> bool {
        let Ok(mut inner) = self.inner.lock() else { return false };
        match inner.entries.get_mut(id) {
            Some(e) if e.used >= self.limits.max_requests_per_key => false,
            Some(e) => {
                e.used += 1;
                true
            }
            // Evicted between opening and charging: the request authenticated under a key KMS released;
            // count it as the first of a new entry's budget when the key returns.
            None => true,
        }
    }

    /// Stores a key KMS just released (if another request stored the same key meanwhile, that one is kept).
    pub fn insert(&self, id: CacheId, key_id: &str, key: DataKey, now: Instant) -> Arc<DataKey> {
        let Ok(mut inner) = self.inner.lock() else { return Arc::new(key) };
        if let Some(e) = inner.entries.get(&id) {
            return Arc::clone(&e.key);
        }
        let ttl = self.limits.ttl;
        let stale: Vec<CacheId> =
            inner.entries.iter().filter(|(_, e)| now.duration_since(e.created) > ttl).map(|(k, _)| *k).collect();
        for k in stale {
            inner.remove(&k);
        }
        while inner.entries.len() >= self.limits.capacity.max(1) {
            if !inner.evict_fairly() {
                break;
            }
        }
        let key = Arc::new(key);
        let t = tenant(key_id);
        *inner.per_tenant.entry(t).or_default() += 1;
        inner.entries.insert(id, Entry { key: Arc::clone(&key), tenant: t, created: now, last_used: now, used: 0 });
        key
    }

    /// Remembers a definitive refusal for [`NEGATIVE_TTL`] (transient failures are not remembered).
    pub fn refuse(&self, id: CacheId, error: &KmsError, now: Instant) {
        let Some(error) = error.definitive() else { return };
        let Ok(mut inner) = self.inner.lock() else { return };
        if inner.refusals.len() >= NEGATIVE_CAPACITY {
            inner.refusals.retain(|_, r| now.duration_since(r.at) <= NEGATIVE_TTL);
            if inner.refusals.len() >= NEGATIVE_CAPACITY {
                // Full of fresh refusals: forget the oldest (it only costs another KMS call).
                if let Some(oldest) = inner.refusals.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| *k) {
                    inner.refusals.remove(&oldest);
                }
            }
        }
        inner.refusals.insert(id, Refusal { error, at: now });
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn remove(&mut self, id: &CacheId) {
        if let Some(e) = self.entries.remove(id)
            && let Some(n) = self.per_tenant.get_mut(&e.tenant)
        {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(&e.tenant);
            }
        }
    }

    /// Evicts the least recently used entry of the tenant holding the most entries.
    fn evict_fairly(&mut self) -> bool {
        let Some((&biggest, _)) = self.per_tenant.iter().max_by_key(|(t, n)| (**n, **t)) else { return false };
        let victim =
            self.entries.iter().filter(|(_, e)| e.tenant == biggest).min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k);
        match victim {
            Some(v) => {
                self.remove(&v);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::new(&[1u8; 32]).unwrap()
    }

    fn id(tenant: &str, n: u32) -> CacheId {
        CacheId::new(tenant, &n.to_be_bytes(), &BTreeMap::new())
    }

    #[test]
    fn one_kms_call_per_key_then_hits() {
        let cache = KeyCache::new(KeyCacheLimits::default());
        let t = Instant::now();
        assert!(matches!(cache.get(&id("k", 1), t), Lookup::Miss));
        cache.insert(id("k", 1), "k", key(), t);
        for _ in 0..50 {
            assert!(matches!(cache.get(&id("k", 1), t), Lookup::Hit(_)));
        }
        assert_eq!(cache.len(), 1);
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
    fn keys_expire_and_budgets_are_kept() {
        let limits = KeyCacheLimits { capacity: 8, ttl: Duration::from_secs(60), max_requests_per_key: 2 };
        let cache = KeyCache::new(limits);
        let t = Instant::now();
        cache.insert(id("k", 1), "k", key(), t);
        assert!(cache.charge(&id("k", 1)) && cache.charge(&id("k", 1)));
        assert!(!cache.charge(&id("k", 1)), "the third request over a budget of two");
        assert!(matches!(cache.get(&id("k", 1), t + Duration::from_secs(61)), Lookup::Miss));
    }

    /// Finding 4 of the security review: one tenant's data keys filled the cache and locked every other
    /// tenant out for the keys' lifetime.
    #[test]
    fn finding_4_one_tenant_cannot_lock_others_out_of_the_key_cache() {
        let limits = KeyCacheLimits { capacity: 100, ..KeyCacheLimits::default() };
        let cache = KeyCache::new(limits);
        let t = Instant::now();
        cache.insert(id("victim", 0), "victim", key(), t);
        for n in 0..1000 {
            cache.insert(id("flood", n), "flood", key(), t + Duration::from_millis(u64::from(n) + 1));
        }
        assert_eq!(cache.len(), 100);
        // The victim's key survived the flood: the flooding tenant evicted only its own.
        assert!(matches!(cache.get(&id("victim", 0), t + Duration::from_secs(2)), Lookup::Hit(_)));
        // A new tenant still gets in.
        cache.insert(id("newcomer", 0), "newcomer", key(), t + Duration::from_secs(3));
        assert!(matches!(cache.get(&id("newcomer", 0), t + Duration::from_secs(3)), Lookup::Hit(_)));
        assert!(matches!(cache.get(&id("victim", 0), t + Duration::from_secs(3)), Lookup::Hit(_)));
    }

    #[test]
    fn refusals_are_remembered_briefly_and_only_definitive_ones() {
        let cache = KeyCache::new(KeyCacheLimits::default());
        let t = Instant::now();
        cache.refuse(id("k", 1), &KmsError::InvalidCiphertext, t);
        assert!(matches!(
            cache.get(&id("k", 1), t + Duration::from_secs(1)),
            Lookup::Refused(KmsError::InvalidCiphertext)
        ));
        assert!(matches!(cache.get(&id("k", 1), t + NEGATIVE_TTL + Duration::from_secs(1)), Lookup::Miss));
        cache.refuse(id("k", 2), &KmsError::Unavailable, t);
        assert!(matches!(cache.get(&id("k", 2), t), Lookup::Miss));
    }
}

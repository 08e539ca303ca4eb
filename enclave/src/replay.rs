//! Replay protection: which authenticated requests were seen, kept exactly as long as they could be
//! replayed.
//!
//! Each sealed request carries a random 16-byte id and its issue time, both authenticated. The enclave
//! refuses a request issued more than the replay window `W` away from its clock, so a request issued at `t`
//! can only ever be accepted while `now ≤ t + W`. The record of its id is therefore kept until `t + W` has
//! passed, and not a second less: expiry goes by `issued_at`, never by how long ago a key was fetched, and
//! nothing else (cache pressure, a data key's eviction) removes a record early.
//!
//! Records are made only for requests that authenticated, so a forged body with a copied clear header can
//! neither burn a real request's id nor spend a key's budget.
//!
//! The store is bounded ([`ReplayGuard::new`]'s `capacity`): when it is full of open windows, new requests
//! are refused (503, the `overloaded` kind) rather than any record being forgotten. A record is 16 bytes of
//! SHA-256 over (data key id, request id) plus 8 bytes of expiry, about 64 bytes with the maps' overhead;
//! the capacity a deployment needs is its request rate times twice the window (a request may be
//! future-dated by up to `W`).
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use ring::digest;
use veil_protocol::envelope::REQUEST_ID_LEN;

use crate::keys::CacheId;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Issued this many seconds away from the enclave's clock.
    OutsideWindow(u64),
    /// Seen before, inside its window.
    Replayed,
    /// The store is full of open windows.
    Full,
}

type Record = [u8; 16];

#[derive(Default)]
struct Inner {
    seen: HashSet<Record>,
    /// Expiry second → the records that expire then.
    by_expiry: BTreeMap<u64, Vec<Record>>,
}

/// The record of seen request ids.
pub struct ReplayGuard {
    window_secs: u64,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard").field("window_secs", &self.window_secs).field("records", &self.len()).finish()
    }
}

fn record(key: &CacheId, request_id: &[u8; REQUEST_ID_LEN]) -> Record {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(key.as_bytes());
    ctx.update(request_id);
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

impl ReplayGuard {
    /// A guard with a window of `window_secs` either way, holding at most `capacity` records.
    pub fn new(window_secs: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard { window_secs, capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    /// The window, in seconds.
    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    /// Checks an authenticated request issued at `issued_at` (Unix seconds) against the clock `now_unix`,
    /// and records it: the request may proceed only on `Ok`.
    pub fn admit(
        &self,
        key: &CacheId,
        request_id: &[u8; REQUEST_ID_LEN],
        issued_at: u64,
        now_unix: u64,
    ) -> Result<(), Refusal> {
        self.admit_record(record(key, request_id), issued_at, now_unix)
    }

    /// Checks and records an OHTTP request by its encapsulated key (fresh for every request, and bound to
    /// the request's ciphertext by HPKE), dated `issued_at`: the request's `Date`, or its arrival for a
    /// request without one.
    pub fn admit_encapsulated_key(&self, enc: &[u8; 32], issued_at: u64, now_unix: u64) -> Result<(), Refusal> {
        self.admit_record(enc_record(enc), issued_at, now_unix)
    }

    /// True when this encapsulated key has a record: its request was seen, so a copy can be refused before
    /// it costs a decryption. Records are made only after a request authenticated, so no one can plant one.
    pub fn has_encapsulated_key(&self, enc: &[u8; 32], now_unix: u64) -> bool {
        let r = enc_record(enc);
        self.inner
            .lock()
            .map(|mut i| {
                i.expire(now_unix);
                i.seen.contains(&r)
            })
            .unwrap_or(false)
    }

    /// Remembers an encapsulated key that was refused for a `Date` ahead of the window (`issued_at`), until
    /// that date leaves the window: the relay must not be able to deliver the same request again once the
    /// clock has caught up with it. Bounded by the store's capacity like every record.
    pub fn remember_future_encapsulated_key(
        &self,
        enc: &[u8; 32],
        issued_at: u64,
        now_unix: u64,
    ) -> Result<(), Refusal> {
        let r = enc_record(enc);
        let mut inner = self.inner.lock().map_err(|_| Refusal::Full)?;
        inner.expire(now_unix);
        if inner.seen.contains(&r) {
            return Err(Refusal::Replayed);
        }
        if inner.seen.len() >= self.capacity {
            return Err(Refusal::Full);
        }
        let expires = issued_at.saturating_add(self.window_secs).saturating_add(1);
        inner.seen.insert(r);
        inner.by_expiry.entry(expires).or_default().push(r);
        Ok(())
    }

    fn admit_record(&self, r: Record, issued_at: u64, now_unix: u64) -> Result<(), Refusal> {
        let mut inner = self.inner.lock().map_err(|_| Refusal::Full)?;
        inner.expire(now_unix);
        let skew = issued_at.abs_diff(now_unix);
        if skew > self.window_secs {
            return Err(Refusal::OutsideWindow(skew));
        }
        if inner.seen.contains(&r) {
            return Err(Refusal::Replayed);
        }
        if inner.seen.len() >= self.capacity {
            return Err(Refusal::Full);
        }
        // Acceptable until issued_at + W: keep the record one second past that.
        let expires = issued_at.saturating_add(self.window_secs).saturating_add(1);
        inner.seen.insert(r);
        inner.by_expiry.entry(expires).or_default().push(r);
        Ok(())
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.seen.len()).unwrap_or(0)
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An encapsulated key's record: its hash, domain-separated from the sealed mode's request ids.
fn enc_record(enc: &[u8; 32]) -> Record {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"veil ohttp enc\0");
    ctx.update(enc);
    let mut r = [0u8; 16];
    r.copy_from_slice(&ctx.finish().as_ref()[..16]);
    r
}

impl Inner {
    /// Drops the records whose windows closed before `now`.
    fn expire(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() > now {
                break;
            }
            for r in entry.remove() {
                self.seen.remove(&r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    fn key(n: u8) -> CacheId {
        CacheId::new("k", &[n], &Map::new())
    }

    #[test]
    fn replays_are_refused_inside_the_window_and_the_window_both_ways() {
        let g = ReplayGuard::new(300, 1000);
        g.admit(&key(1), &[1; 16], 1000, 1000).unwrap();
        assert_eq!(g.admit(&key(1), &[1; 16], 1000, 1001), Err(Refusal::Replayed));
        // The same id under another data key is another request.
        g.admit(&key(2), &[1; 16], 1000, 1001).unwrap();
        assert_eq!(g.admit(&key(1), &[2; 16], 1000, 1301), Err(Refusal::OutsideWindow(301)));
        assert_eq!(g.admit(&key(1), &[2; 16], 2000, 1000), Err(Refusal::OutsideWindow(1000)));
        g.admit(&key(1), &[3; 16], 1300, 1000).unwrap();
    }

    /// Finding 3 of the security review: a request id could be forgotten (its data key evicted from the
    /// cache or expired) while the request was still inside its replay window, and was then accepted
    /// again. Records now live by `issued_at` alone, whatever happens to keys.
    #[test]
    fn finding_3_a_request_stays_refused_for_its_whole_window() {
        let g = ReplayGuard::new(300, 1000);
        // Future-dated by the whole window: acceptable until 1600.
        g.admit(&key(1), &[9; 16], 1300, 1000).unwrap();
        for now in [1000, 1200, 1450, 1599, 1600] {
            assert_eq!(g.admit(&key(1), &[9; 16], 1300, now), Err(Refusal::Replayed), "at {now}");
        }
        // Once the window has closed the record goes, and the request is refused by the window instead.
        assert_eq!(g.admit(&key(1), &[9; 16], 1300, 1601), Err(Refusal::OutsideWindow(301)));
        assert!(g.is_empty());
    }

    #[test]
    fn a_full_store_refuses_rather_than_forgets() {
        let g = ReplayGuard::new(300, 2);
        g.admit(&key(1), &[1; 16], 1000, 1000).unwrap();
        g.admit(&key(1), &[2; 16], 1000, 1000).unwrap();
        assert_eq!(g.admit(&key(1), &[3; 16], 1000, 1000), Err(Refusal::Full));
        // The first two are still refused as replays, not forgotten to make room.
        assert_eq!(g.admit(&key(1), &[1; 16], 1000, 1100), Err(Refusal::Replayed));
        // After the window, room again.
        g.admit(&key(1), &[3; 16], 1302, 1302).unwrap();
    }
}

//! A global bound on the bytes of requests the enclave holds at once.
//!
//! Every frame from the parent is charged against one budget before its payload is read, and the charge is
//! held until the request's answer is sent. A frame that does not fit within a short wait is not buffered
//! at all: its bytes are read and dropped, and the request is answered `unavailable` with a `Retry-After`,
//! so however many requests the parent (or anyone who reaches its API) sends at once, the enclave's memory
//! for request bodies stays within the budget. The default is a quarter of the enclave's memory
//! (`MemTotal` in `/proc/meminfo`, which inside a Nitro Enclave is the enclave's own allocation); the image's
//! configuration can set it (`[limits] max_request_bytes_in_flight`).
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's unit: charges are rounded up to whole KiB.
const UNIT: u64 = 1024;
/// The smallest default budget (a tiny enclave still takes a few large requests).
const MIN_DEFAULT: u64 = 64 << 20;

/// The budget.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    total: u64,
}

/// Bytes held against the budget; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ByteBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> ByteBudget {
        let units = (total / UNIT).clamp(1, (Semaphore::MAX_PERMITS as u64).min(u64::from(u32::MAX)));
        ByteBudget { semaphore: Arc::new(Semaphore::new(units as usize)), total: units * UNIT }
    }

    /// The default: a quarter of this machine's (or enclave's) memory, at least 64 MiB.
    pub fn default_total() -> u64 {
        let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        });
        mem.map(|m| m / 4).unwrap_or(MIN_DEFAULT).max(MIN_DEFAULT)
    }

    /// The budget in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes free now.
    pub fn available(&self) -> u64 {
        self.semaphore.available_permits() as u64 * UNIT
    }

    /// Charges `bytes`, waiting at most `wait` for room; `None` when there is none (or `bytes` exceeds the
    /// whole budget).
    pub async fn charge(&self, bytes: usize, wait: Duration) -> Option<Charge> {
        let units = (bytes as u64).div_ceil(UNIT).max(1);
        let units = u32::try_from(units).ok()?;
        if u64::from(units) * UNIT > self.total {
            return None;
        }
        if let Ok(p) = Arc::clone(&self.semaphore).try_acquire_many_owned(units) {
            return Some(Charge { _permit: Some(p) });
        }
        match tokio::time::timeout(wait, Arc::clone(&self.semaphore).acquire_many_owned(units)).await {
            Ok(Ok(p)) => Some(Charge { _permit: Some(p) }),
            _ => None,
        }
    }
}

impl Charge {
    /// A charge of nothing (for requests that carry no body worth counting).
    pub fn none() -> Charge {
        Charge { _permit: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_are_bounded_and_given_back() {
        let b = ByteBudget::new(10 * 1024);
        let a = b.charge(6000, Duration::ZERO).await.unwrap();
        assert!(b.charge(6000, Duration::from_millis(10)).await.is_none());
        drop(a);
        assert!(b.charge(6000, Duration::ZERO).await.is_some());
        assert!(b.charge(11 * 1024, Duration::ZERO).await.is_none(), "more than the whole budget");
        assert!(ByteBudget::default_total() >= MIN_DEFAULT);
    }
}

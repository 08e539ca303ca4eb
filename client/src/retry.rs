//! Retries: which failed inference calls a client sends again, when, and why that is safe.
//!
//! A call is retried when the failure says the service may answer a second try: the parent could not be
//! reached (nothing was sent); the connection closed after the request was sent but before any answer (a
//! parent restarting); the parent or the enclave answered 503 (the enclave is down, restarting, loading
//! its models, or over its byte budget) or 429. `Retry-After`, in either of its forms (delta-seconds or
//! an HTTP-date, RFC 9110 §10.2.3), is honoured up to [`RetryPolicy::max_retry_after`], so a hostile
//! parent cannot park a client for a day; otherwise the wait is an exponential backoff with full jitter
//! (a uniform draw below `base × 2^(n-1)`, capped at [`RetryPolicy::max_delay`]), so that a fleet of
//! clients refused at one instant does not come back at one instant.
//!
//! Each retry is a new request: sealed afresh, under a new request id and nonce (KMS envelope mode), or
//! encapsulated afresh to the verified key (attested-key mode), so the enclave's replay protection, which
//! refuses a request id or an encapsulation it has seen, is never in the way, and never weakened.
//!
//! Some retried requests may have run: a 503 for a connection to the enclave that broke mid-request, or a
//! connection to the parent that closed after the request went out. That is harmless because inference
//! has no effect but its answer: the enclave changes no state a client relies on when it runs a model
//! (it spends CPU, remembers the request id for replay protection, counts metrics, and, with receipts,
//! logs one receipt per answer it made). Running the same input twice gives the same answer, sealed each
//! time to its own request id; the client opens only the answer to the attempt it is waiting for.
//!
//! Not retried: a timeout (the request may still be running: a second copy doubles the load exactly when
//! the enclave is slowest, the way retry storms start; raise the timeout instead), a 504 from the parent
//! (the same), and every other answer: 4xx statuses say the request itself is wrong and would fail the
//! same way again, 500 and 502 are faults a retry would repeat, a 403 is KMS's key policy, and a 422 in
//! attested-key mode is handled where it belongs, by verifying the enclave again
//! ([`crate::oblivious::ObliviousClient::send`]).
use std::time::Duration;

use hyper::StatusCode;

use crate::ClientError;

/// How a client retries a failed inference call (see the module documentation for which ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: no retries).
    pub max_retries: u32,
    /// The first backoff window; each retry doubles it.
    pub base_delay: Duration,
    /// The largest backoff window.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to this.
    pub max_retry_after: Duration,
    /// No retry starts later than this after the first attempt did: a parent that holds every attempt
    /// until just before the client's timeout, then answers 503, cannot multiply the wait by the retries.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// Four retries, windows of 250 ms, 0.5 s, 1 s and 2 s (so about 2 s of waiting on average without
    /// `Retry-After`, and at least 4 s behind a parent that says `Retry-After: 1`), `Retry-After` honoured
    /// up to 30 s, and no retry started more than 2 minutes after the first attempt.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure is final.
    pub fn none() -> RetryPolicy {
        RetryPolicy { max_retries: 0, ..RetryPolicy::default() }
    }

    /// This policy with `n` retries.
    pub fn with_max_retries(self, n: u32) -> RetryPolicy {
        RetryPolicy { max_retries: n, ..self }
    }

    /// The backoff window before retry `n` (1 for the first retry): `base × 2^(n-1)`, at most
    /// [`RetryPolicy::max_delay`].
    pub fn window(&self, n: u32) -> Duration {
        let doubling = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(doubling).min(self.max_delay)
    }

    /// How long to wait before retry `n` (1 for the first retry), given the server's `Retry-After`: that
    /// (at most [`RetryPolicy::max_retry_after`]) plus a uniform draw in the backoff window (full jitter).
    /// `Retry-After` is the least a client should wait, so waiting longer honours it.
    pub fn delay(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let floor = retry_after.map_or(Duration::ZERO, |r| r.min(self.max_retry_after));
        floor + jitter(self.window(n))
    }
}

/// A uniform draw in `[0, window]`.
fn jitter(window: Duration) -> Duration {
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    // The system generator: a retry is rare, and a jitter nobody can predict is as good as any.
    let draw = veil_protocol::random::array::<8>(&veil_protocol::random::SystemRandom::new())
        .map(u64::from_le_bytes)
        .unwrap_or(nanos / 2);
    Duration::from_nanos(draw % (nanos + 1))
}

/// What one failed attempt means for the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Final: sending the same request again would not help, or could hurt.
    Final,
    /// Worth another attempt, after at least `retry_after` when the server named it.
    Retry { retry_after: Option<Duration> },
}

impl ClientError {
    /// Whether a call that failed this way may be sent again (see [`crate::retry`]).
    pub fn verdict(&self) -> Verdict {
        match self {
            ClientError::Connect { .. } | ClientError::Disconnected { .. } => Verdict::Retry { retry_after: None },
            ClientError::Unauthenticated { status, retry_after, .. } => status_verdict(*status, *retry_after),
            ClientError::Enclave { kind, retry_after, .. } => enclave_verdict(*kind, *retry_after),
            _ => Verdict::Final,
        }
    }
}

/// The verdict for an error the enclave sealed into its answer, and its `Retry-After` (seconds): only
/// "unavailable" (loading, over its byte budget, its audit log backed up) is retried.
pub fn enclave_verdict(kind: veil_protocol::error::ErrorKind, retry_after_secs: Option<u32>) -> Verdict {
    match kind {
        veil_protocol::error::ErrorKind::Unavailable => {
            Verdict::Retry { retry_after: retry_after_secs.map(|s| Duration::from_secs(s.into())) }
        }
        _ => Verdict::Final,
    }
}

/// The verdict for an HTTP status and its `Retry-After` (seconds): 503 and 429 are retried.
pub fn status_verdict(status: StatusCode, retry_after: Option<u64>) -> Verdict {
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        Verdict::Retry { retry_after: retry_after.map(Duration::from_secs) }
    } else {
        Verdict::Final
    }
}

/// Parses a `Retry-After` value, either delta-seconds (`120`) or an HTTP-date (IMF-fixdate, `Sun, 06 Nov
/// 1994 08:49:37 GMT`), into seconds from `now_unix` (a date in the past is 0). `None` for anything else.
pub fn parse_retry_after(value: &str, now_unix: u64) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // A number too long for u64 is still "a very long time".
        return Some(value.parse::<u64>().unwrap_or(u64::MAX));
    }
    veil_protocol::time::parse_http_date(value).map(|date| date.saturating_sub(now_unix))
}

/// [`parse_retry_after`] against the system clock.
pub(crate) fn parse_retry_after_now(value: &str) -> Option<u64> {
    let now = veil_protocol::time::now_unix();
    parse_retry_after(value, now)
}

/// One retry about to happen, for observers (logs, counters): which retry it is (1 for the first), how
/// long the client waits before it, and what failed.
pub struct Retried<'a> {
    pub retry: u32,
    pub delay: Duration,
    pub reason: &'a dyn std::fmt::Display,
}

impl std::fmt::Debug for Retried<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retried")
            .field("retry", &self.retry)
            .field("delay", &self.delay)
            .field("reason", &self.reason.to_string())
            .finish()
    }
}

/// The retries of one call: counts them against the policy, tells the observer, and says how long to wait.
/// A retrying call is a loop: attempt; on failure, `next`; on `Some(delay)`, sleep and attempt again.
#[derive(Debug)]
pub(crate) struct Retries<'p> {
    policy: &'p RetryPolicy,
    done: u32,
    started: std::time::Instant,
}

impl<'p> Retries<'p> {
    pub(crate) fn new(policy: &'p RetryPolicy) -> Retries<'p> {
        Retries { policy, done: 0, started: std::time::Instant::now() }
    }

    /// After an attempt that failed with `verdict` because of `reason`: the wait before the next attempt,
    /// or `None` when the failure is final or the retries are spent.
    pub(crate) fn next(
        &mut self,
        verdict: Verdict,
        reason: &dyn std::fmt::Display,
        observe: &mut (dyn FnMut(Retried<'_>) + Send),
    ) -> Option<Duration> {
        let Verdict::Retry { retry_after } = verdict else { return None };
        if self.done >= self.policy.max_retries {
            return None;
        }
        let delay = self.policy.delay(self.done + 1, retry_after);
        if self.started.elapsed().saturating_add(delay) > self.policy.max_elapsed {
            tracing::debug!(reason = %reason, "not retrying: the retries' time is spent");
            return None;
        }
        self.done += 1;
        tracing::debug!(retry = self.done, delay_ms = delay.as_millis() as u64, reason = %reason, "retrying");
        observe(Retried { retry: self.done, delay, reason });
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_double_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.window(1), Duration::from_millis(250));
        assert_eq!(p.window(2), Duration::from_millis(500));
        assert_eq!(p.window(4), Duration::from_secs(2));
        assert_eq!(p.window(5), Duration::from_secs(4));
        assert_eq!(p.window(6), Duration::from_secs(5));
        assert_eq!(p.window(200), Duration::from_secs(5), "no overflow on absurd retry counts");
    }

    #[test]
    fn delays_stay_in_the_window_and_spread() {
        let p = RetryPolicy::default();
        let draws: Vec<Duration> = (0..200).map(|_| p.delay(3, None)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(1)), "{draws:?}");
        // Full jitter: the draws cover the window rather than clustering at its end.
        assert!(draws.iter().any(|d| *d < Duration::from_millis(300)), "{draws:?}");
        assert!(draws.iter().any(|d| *d > Duration::from_millis(700)), "{draws:?}");
    }

    #[test]
    fn retry_after_is_a_floor_and_is_capped() {
        let p = RetryPolicy::default();
        let d = p.delay(1, Some(Duration::from_secs(2)));
        assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2250), "{d:?}");
        // A parent asking for a day gets max_retry_after.
        let d = p.delay(1, Some(Duration::from_secs(86_400)));
        assert!(d >= Duration::from_secs(30) && d <= Duration::from_millis(30_250), "{d:?}");
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        // 1994-11-06 08:49:37 UTC is 784111777.
        let now = 784_111_777;
        assert_eq!(parse_retry_after("120", now), Some(120));
        assert_eq!(parse_retry_after(" 0 ", now), Some(0));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(30));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(0), "a past date: now");
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(u64::MAX));
        for bad in ["", "-1", "1.5", "soon", "Sunday, 06-Nov-94 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn only_what_may_succeed_again_is_retried() {
        let unauth = |code: u16, retry_after| ClientError::Unauthenticated {
            status: StatusCode::from_u16(code).unwrap(),
            message: String::new(),
            retry_after,
        };
        assert_eq!(unauth(503, Some(1)).verdict(), Verdict::Retry { retry_after: Some(Duration::from_secs(1)) });
        assert_eq!(unauth(429, None).verdict(), Verdict::Retry { retry_after: None });
        for code in [400, 403, 404, 413, 422, 500, 502, 504] {
            assert_eq!(unauth(code, None).verdict(), Verdict::Final, "{code}");
        }
        let timeout = ClientError::Timeout { url: "u".into(), timeout: Duration::from_secs(1) };
        assert_eq!(timeout.verdict(), Verdict::Final, "a timeout may still be running: not sent twice");
        let connect = ClientError::Connect { url: "u".into(), source: "refused".into() };
        assert_eq!(connect.verdict(), Verdict::Retry { retry_after: None });
        let sealed = |kind| ClientError::Enclave { kind, message: String::new(), retry_after: Some(2), receipt: None };
        assert_eq!(
            sealed(veil_protocol::error::ErrorKind::Unavailable).verdict(),
            Verdict::Retry { retry_after: Some(Duration::from_secs(2)) }
        );
        assert_eq!(sealed(veil_protocol::error::ErrorKind::BadRequest).verdict(), Verdict::Final);
        assert_eq!(sealed(veil_protocol::error::ErrorKind::Timeout).verdict(), Verdict::Final);
    }

    #[test]
    fn retries_stop_at_a_final_failure_and_when_spent() {
        let policy = RetryPolicy::default().with_max_retries(3);
        let again = Verdict::Retry { retry_after: Some(Duration::from_secs(1)) };
        let mut seen = vec![];
        let mut retries = Retries::new(&policy);
        for _ in 0..3 {
            let delay = retries.next(again, &"503", &mut |r| seen.push((r.retry, r.reason.to_string()))).unwrap();
            assert!(delay >= Duration::from_secs(1), "{delay:?}");
        }
        assert_eq!(retries.next(again, &"503", &mut |_| panic!("a fourth retry")), None, "spent");
        assert_eq!(seen, vec![(1, "503".into()), (2, "503".into()), (3, "503".into())]);
        let mut retries = Retries::new(&policy);
        assert_eq!(retries.next(Verdict::Final, &"400", &mut |_| panic!("a final failure retried")), None);
        assert_eq!(Retries::new(&RetryPolicy::none()).next(again, &"503", &mut |_| panic!("retried")), None);
    }

    #[test]
    fn a_parent_that_stalls_every_attempt_cannot_stretch_the_retries_past_max_elapsed() {
        // Finding of review: each attempt may take the whole timeout and each wait a long Retry-After, so
        // retries alone bounded nothing in time. A retry that would start past max_elapsed is not made.
        let policy = RetryPolicy { max_elapsed: Duration::from_secs(60), ..RetryPolicy::default() };
        let again = Verdict::Retry { retry_after: Some(Duration::from_secs(30)) };
        let mut retries = Retries::new(&policy);
        assert!(retries.next(again, &"503", &mut |_| {}).is_some(), "the first wait fits");
        // 45 s later (an attempt held until just before its timeout): another 30 s would end past 60 s.
        retries.started = retries.started.checked_sub(Duration::from_secs(45)).unwrap();
        assert_eq!(retries.next(again, &"503", &mut |_| panic!("retried past max_elapsed")), None);
        assert_eq!(retries.done, 1);
    }
}

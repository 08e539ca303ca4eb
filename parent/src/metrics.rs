//! Prometheus metrics of the parent: what an operator watches. No label ever carries request data; the
//! model label takes only configured model names (anything else is counted as `other`).
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub model: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub route: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    /// `attestation`, `receipt` or `tree_head`.
    pub kind: &'static str,
}

/// The parent's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub in_flight: Gauge<i64, AtomicI64>,
    pub enclave_connections: Gauge<i64, AtomicI64>,
    /// Audit records stored, by kind.
    pub audit_records: Family<AuditLabels, Counter>,
    /// Batches of audit records that could not be stored.
    pub audit_failures: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("veil_parent");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 50 µs to ~100 s in 22 doubling steps: covers iris on loopback and a large model alike.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 22))
        });
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let enclave_connections = Gauge::<i64, AtomicI64>::default();
        let audit_records = Family::<AuditLabels, Counter>::default();
        let audit_failures = Counter::default();
        registry.register("requests", "Requests answered, by route, model and HTTP status", requests.clone());
        registry.register("errors", "Failed requests, by route and kind of failure", errors.clone());
        registry.register("request_duration_seconds", "Time from request to answer, by route", latency.clone());
        registry.register("in_flight_requests", "Requests being served now", in_flight.clone());
        registry.register("enclave_connections", "Live connections to the enclave", enclave_connections.clone());
        registry.register(
            "audit_records",
            "Audit-log records stored (with --audit-log) or received, by kind",
            audit_records.clone(),
        );
        registry.register(
            "audit_failures",
            "Batches of audit records that could not be stored",
            audit_failures.clone(),
        );
        Metrics { registry, requests, errors, latency, in_flight, enclave_connections, audit_records, audit_failures }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

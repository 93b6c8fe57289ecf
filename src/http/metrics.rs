//! Prometheus metrics: what `/metrics` reports.
//!
//! One process-wide registry (`prometheus-client`), so that code far from the HTTP state (the
//! problem-JSON conversion, say) can count without threading a handle through.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub appends: Counter,
    pub events_appended: Counter,
    pub bytes_appended: Counter,
    pub errors: Family<CodeLabel, Counter>,
    pub erasures: Family<KindLabel, Counter>,
    pub request_seconds: Family<RouteLabel, Histogram>,
    pub key_cache_hits: Gauge,
    pub key_cache_misses: Gauge,
    pub keys_cached: Gauge,
    pub subscribers: Gauge,
    pub head_position: Gauge,
    pub keys_unreadable: Gauge,
    pub writer_transactions: Gauge,
    pub writer_appends: Gauge,
    pub writer_busy_seconds: Gauge<f64, AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("lethe");
        let metrics = Metrics {
            appends: Counter::default(),
            events_appended: Counter::default(),
            bytes_appended: Counter::default(),
            errors: Family::default(),
            erasures: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            key_cache_hits: Gauge::default(),
            key_cache_misses: Gauge::default(),
            keys_cached: Gauge::default(),
            subscribers: Gauge::default(),
            head_position: Gauge::default(),
            keys_unreadable: Gauge::default(),
            writer_transactions: Gauge::default(),
            writer_appends: Gauge::default(),
            writer_busy_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("appends", "Successful appends", metrics.appends.clone());
        registry.register("events_appended", "Events appended", metrics.events_appended.clone());
        registry.register(
            "bytes_appended",
            "Bytes of event data and metadata appended",
            metrics.bytes_appended.clone(),
        );
        registry.register("errors", "Error responses by stable code", metrics.errors.clone());
        registry.register("erasures", "Erasures requested, by kind", metrics.erasures.clone());
        registry.register(
            "request_seconds",
            "HTTP request latency by route",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "key_cache_hits",
            "DEK cache hits since start",
            metrics.key_cache_hits.clone(),
        );
        registry.register(
            "key_cache_misses",
            "DEK cache misses since start",
            metrics.key_cache_misses.clone(),
        );
        registry.register("keys_cached", "DEKs held in memory", metrics.keys_cached.clone());
        registry.register("subscribers", "Open SSE subscriptions", metrics.subscribers.clone());
        registry.register(
            "head_position",
            "Last committed position",
            metrics.head_position.clone(),
        );
        registry.register(
            "keys_unreadable",
            "Keys the vault holds wrapped only by KEK epochs it no longer has",
            metrics.keys_unreadable.clone(),
        );
        // Group commit, for sizing: appends ÷ transactions is the group size, and busy seconds
        // growing as fast as the clock means the writer (one transaction at a time) is the
        // bottleneck rather than the clients or the database's CPU.
        registry.register(
            "writer_transactions",
            "Transactions the group writer ran since start",
            metrics.writer_transactions.clone(),
        );
        registry.register(
            "writer_appends",
            "Appends the group writer handled since start",
            metrics.writer_appends.clone(),
        );
        registry.register(
            "writer_busy_seconds",
            "Seconds the group writer spent in transactions since start",
            metrics.writer_busy_seconds.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// The Prometheus text exposition: the process-wide metrics, then those of the store that
    /// answers ([`store_registry`]).
    pub fn encode(&self, store: &Registry) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, store);
        let _ = encode_eof(&mut out);
        out
    }
}

/// The metrics one store counts itself (rather than this process-wide registry), read when
/// `/metrics` is scraped: several stores in one process (tests) each report their own.
pub fn store_registry(schema_violations: u64) -> Registry {
    let mut registry = Registry::with_prefix("lethe");
    registry.register(
        "schema_violations",
        "Events stored in warn mode although they did not match their type's schema, since start",
        ConstCounter::new(schema_violations),
    );
    registry
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

pub fn record_error(code: &'static str) {
    metrics()
        .errors
        .get_or_create(&CodeLabel { code: code.to_owned() })
        .inc();
}

//! `GET /metrics`: what vLLM's and llama.cpp's servers expose, in Prometheus' text format (the
//! `prometheus-client` crate), so a cluster's monitoring can watch replicas: requests by status,
//! tokens, the queue and the batch, time to first token and per token, device resets and the
//! GPU memory held.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The server's instruments; clones share their values.
pub struct Metrics {
    registry: Registry,
    /// Answered requests by HTTP status (`499`: the client went away mid-stream).
    pub requests: Family<Labels, Counter>,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    /// Requests queued for the engine, not yet started.
    pub waiting: Gauge,
    /// Sequences decoding (the batch).
    pub running: Gauge,
    /// From a request's arrival to its first token, in seconds.
    pub time_to_first_token: Histogram,
    /// Between a request's tokens, in seconds.
    pub time_per_token: Histogram,
    pub device_resets: Counter,
    /// GPU memory the weights and the running sequences hold, in bytes.
    pub gpu_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::with_prefix("paligemma"),
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            waiting: Gauge::default(),
            running: Gauge::default(),
            // 1 ms to ~65 s, and 0.1 ms to ~6.5 s.
            time_to_first_token: Histogram::new(exponential_buckets(1e-3, 2.0, 17)),
            time_per_token: Histogram::new(exponential_buckets(1e-4, 2.0, 17)),
            device_resets: Counter::default(),
            gpu_memory: Gauge::default(),
        };
        m.registered()
    }
}

impl Metrics {
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "requests",
            "Requests answered, by HTTP status",
            self.requests.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens (image tokens included) of answered requests",
            self.prompt_tokens.clone(),
        );
        r.register(
            "generation_tokens",
            "Tokens generated",
            self.generated_tokens.clone(),
        );
        r.register(
            "requests_waiting",
            "Requests queued, not yet started",
            self.waiting.clone(),
        );
        r.register(
            "requests_running",
            "Sequences decoding together",
            self.running.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From a request's arrival to its first token",
            self.time_to_first_token.clone(),
        );
        r.register(
            "time_per_output_token_seconds",
            "Between a request's consecutive tokens",
            self.time_per_token.clone(),
        );
        r.register(
            "device_resets",
            "GPU devices lost and the model reloaded",
            self.device_resets.clone(),
        );
        r.register(
            "gpu_memory_bytes",
            "GPU memory held by the weights and running sequences",
            self.gpu_memory.clone(),
        );
        self
    }

    /// Counts an answered request.
    pub fn answered(&self, status: u16) {
        let labels = vec![("status".to_string(), status.to_string())];
        self.requests.get_or_create(&labels).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

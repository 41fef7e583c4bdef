//! `/metrics`: the server's own counters (requests by endpoint and status, bytes sent as
//! server-sent events) and the backend's gauges and counters, in the Prometheus text
//! exposition format (version 0.0.4). The format is a handful of lines per metric, so
//! it is written here rather than pulled in with a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::backend::BackendMetrics;

/// The endpoints requests are counted under (anything else is "other").
pub const ENDPOINTS: [&str; 6] =
    ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "other"];

/// The endpoint label of a request path.
pub fn endpoint_label(path: &str) -> &'static str {
    if path.starts_with("/v1/models") {
        return "/v1/models";
    }
    ENDPOINTS.iter().find(|e| **e == path).copied().unwrap_or("other")
}

/// Counters kept by the HTTP layer.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    sse_bytes: AtomicU64,
    in_flight: AtomicU64,
}

impl HttpMetrics {
    /// Count one finished request (its status is known once the handler returned).
    pub fn record(&self, endpoint: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((endpoint, status)).or_default() += 1;
    }

    /// Count bytes written as server-sent events.
    pub fn add_sse_bytes(&self, n: usize) {
        self.sse_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Generation requests whose response is still being produced (a guard decrements).
    pub fn in_flight(&self) -> &AtomicU64 {
        &self.in_flight
    }

    /// Requests counted for `(endpoint, status)`.
    pub fn requests(&self, endpoint: &str, status: u16) -> u64 {
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().filter(|((e, s), _)| *e == endpoint && *s == status).map(|(_, n)| *n).sum()
    }

    /// The exposition text.
    pub fn render(&self, b: &BackendMetrics) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric("airllm_sequences_running", "gauge", "Sequences in the running batch.", b.running as u64);
        metric("airllm_sequences_waiting", "gauge", "Accepted requests waiting for admission.", b.waiting as u64);
        metric("airllm_kv_blocks_used", "gauge", "KV cache blocks held by sequences.", b.kv_blocks_used as u64);
        metric("airllm_kv_blocks_total", "gauge", "KV cache blocks in the pool.", b.kv_blocks_total as u64);
        metric(
            "airllm_passes_total",
            "counter",
            "Passes over the weights (prefill chunks and decode steps).",
            b.passes_total,
        );
        metric(
            "airllm_generated_tokens_total",
            "counter",
            "Tokens generated, all requests (divide by airllm_passes_total for tokens per pass).",
            b.generated_tokens_total,
        );
        metric("airllm_prompt_tokens_total", "counter", "Prompt tokens processed.", b.prompt_tokens_total);
        metric("airllm_streamed_bytes_total", "counter", "Weight bytes streamed to the GPU.", b.streamed_bytes_total);
        metric(
            "airllm_sequences_cancelled_total",
            "counter",
            "Requests cancelled (client gone, or shutdown).",
            b.cancelled_total,
        );
        metric(
            "airllm_sse_bytes_total",
            "counter",
            "Bytes sent to clients as server-sent events.",
            self.sse_bytes.load(Ordering::Relaxed),
        );
        metric(
            "airllm_requests_in_flight",
            "gauge",
            "Generation requests whose response is being produced.",
            self.in_flight.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP airllm_requests_total HTTP requests by endpoint and status code.\n# TYPE airllm_requests_total counter"
        );
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((endpoint, status), n) in m.iter() {
            let _ = writeln!(s, "airllm_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        s
    }
}

/// Read one sample from exposition text: `name` or `name{labels}` exactly as written.
/// For tests and the load generator.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reads_back() {
        let m = HttpMetrics::default();
        m.record("/v1/completions", 200);
        m.record("/v1/completions", 200);
        m.record("/v1/completions", 429);
        m.add_sse_bytes(42);
        let b =
            BackendMetrics { passes_total: 7, generated_tokens_total: 21, kv_blocks_total: 8, ..Default::default() };
        let t = m.render(&b);
        assert_eq!(sample(&t, "airllm_passes_total"), Some(7.0));
        assert_eq!(sample(&t, "airllm_generated_tokens_total"), Some(21.0));
        assert_eq!(sample(&t, "airllm_kv_blocks_total"), Some(8.0));
        assert_eq!(sample(&t, "airllm_sse_bytes_total"), Some(42.0));
        assert_eq!(sample(&t, r#"airllm_requests_total{endpoint="/v1/completions",status="200"}"#), Some(2.0));
        assert_eq!(sample(&t, r#"airllm_requests_total{endpoint="/v1/completions",status="429"}"#), Some(1.0));
        assert_eq!(sample(&t, "airllm_passes"), None);
        assert_eq!(endpoint_label("/v1/models/x"), "/v1/models");
        assert_eq!(endpoint_label("/nope"), "other");
    }
}

//! `airllm loadgen`: a load generator for `airllm serve` (or any OpenAI-compatible
//! server): R streamed requests, N at a time, then aggregate tokens/s, time to first
//! token, inter-token latency and end-to-end latency percentiles, and tokens per pass
//! from the server's `/metrics` when it has them.

/// Load an OpenAI-compatible server and report throughput and latency percentiles.
#[derive(clap::Args, Debug)]
pub struct LoadgenArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080 (a trailing /v1 is fine).
    #[arg(long, alias = "serve")]
    pub url: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// New tokens per request (max_tokens).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// The user message (chat) or prompt (completions). Each request appends its number
    /// unless --same-prompt is given.
    #[arg(long, default_value = "Write a short story about a robot who learns to paint.")]
    pub prompt: String,
    /// Send the prompt unchanged in every request.
    #[arg(long)]
    pub same_prompt: bool,
    /// chat (POST /v1/chat/completions) or completions (POST /v1/completions).
    #[arg(long, default_value = "chat", value_parser = ["chat", "completions"])]
    pub endpoint: String,
    /// Model name to send (default: the first of GET /v1/models).
    #[arg(long)]
    pub model: Option<String>,
    /// API key (also AIRLLM_API_KEY).
    #[arg(long, env = "AIRLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Ask for whole responses instead of streams (then time to first token is the latency).
    #[arg(long)]
    pub no_stream: bool,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(not(feature = "server"))]
pub fn run(_a: LoadgenArgs) -> anyhow::Result<()> {
    anyhow::bail!("this airllm was built without the `server` feature; rebuild with `--features server`")
}

#[cfg(feature = "server")]
pub use imp::run;

#[cfg(feature = "server")]
mod imp {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use futures_util::StreamExt;
    use serde_json::{Value, json};

    use super::LoadgenArgs;

    /// What one request measured.
    #[derive(Debug, Default)]
    struct Sample {
        ttft: Option<f64>,
        gaps: Vec<f64>,
        latency: f64,
        tokens: usize,
    }

    fn base_url(url: &str) -> String {
        let u = url.trim_end_matches('/');
        u.strip_suffix("/v1").unwrap_or(u).to_string()
    }

    /// Nearest-rank percentile of sorted values.
    fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
        if sorted.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    fn summary(mut v: Vec<f64>) -> Value {
        v.sort_by(f64::total_cmp);
        let mean = if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) };
        json!({
            "p50": percentile(&v, 50.0), "p90": percentile(&v, 90.0), "p99": percentile(&v, 99.0),
            "mean": mean, "count": v.len(),
        })
    }

    async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
        let text = client.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
        airllm::serve::metrics::sample(&text, name)
    }

    async fn one(
        client: &reqwest::Client,
        url: &str,
        key: Option<&str>,
        body: &Value,
        stream: bool,
    ) -> anyhow::Result<Sample> {
        let t0 = Instant::now();
        let mut req = client.post(url).json(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.context("sending the request")?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("HTTP {status}: {}", text.trim());
        }
        let mut s = Sample::default();
        if !stream {
            let v: Value = resp.json().await.context("reading the response")?;
            s.latency = t0.elapsed().as_secs_f64();
            s.ttft = Some(s.latency);
            s.tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
            return Ok(s);
        }
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut last: Option<Instant> = None;
        let mut chunks = 0usize;
        let mut done = false;
        while let Some(part) = body.next().await {
            buf.extend_from_slice(&part.context("reading the stream")?);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let event = String::from_utf8_lossy(&event);
                for line in event.lines() {
                    let Some(data) = line.strip_prefix("data: ") else { continue };
                    if data == "[DONE]" {
                        done = true;
                        continue;
                    }
                    let v: Value = serde_json::from_str(data).with_context(|| format!("bad chunk {data:?}"))?;
                    if let Some(e) = v.get("error") {
                        bail!("the server failed the request mid-stream: {e}");
                    }
                    if let Some(u) = v.get("usage").and_then(|u| u["completion_tokens"].as_u64()) {
                        s.tokens = u as usize;
                    }
                    let c = &v["choices"][0];
                    let text = c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or("");
                    if text.is_empty() {
                        continue;
                    }
                    let now = Instant::now();
                    match last {
                        None => s.ttft = Some((now - t0).as_secs_f64()),
                        Some(l) => s.gaps.push((now - l).as_secs_f64()),
                    }
                    last = Some(now);
                    chunks += 1;
                }
            }
        }
        if !done {
            bail!("the stream ended without data: [DONE]");
        }
        if s.tokens == 0 {
            s.tokens = chunks;
        }
        s.latency = t0.elapsed().as_secs_f64();
        Ok(s)
    }

    pub fn run(a: LoadgenArgs) -> anyhow::Result<()> {
        if a.concurrency == 0 || a.requests == 0 {
            bail!("--concurrency and --requests must be at least 1");
        }
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
        rt.block_on(drive(a))
    }

    async fn drive(a: LoadgenArgs) -> anyhow::Result<()> {
        let base = base_url(&a.url);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(a.timeout.max(1.0)))
            .build()
            .context("building the HTTP client")?;
        let key = a.api_key.clone().filter(|k| !k.is_empty());
        let model = match &a.model {
            Some(m) => m.clone(),
            None => {
                let mut req = client.get(format!("{base}/v1/models"));
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let resp = req.send().await.with_context(|| format!("GET {base}/v1/models (is the server up?)"))?;
                let status = resp.status();
                let v: Value = resp.json().await.context("reading /v1/models")?;
                match v["data"][0]["id"].as_str() {
                    Some(m) => m.to_string(),
                    None => bail!("GET /v1/models gave {status} and no model: {v}"),
                }
            }
        };
        let stream = !a.no_stream;
        let url = match a.endpoint.as_str() {
            "chat" => format!("{base}/v1/chat/completions"),
            _ => format!("{base}/v1/completions"),
        };
        let before = (
            metric(&client, &base, "airllm_generated_tokens_total").await,
            metric(&client, &base, "airllm_passes_total").await,
        );
        let next = Arc::new(AtomicUsize::new(0));
        let a = Arc::new(a);
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..a.concurrency.min(a.requests) {
            let (client, next, a, url, model, key) =
                (client.clone(), next.clone(), a.clone(), url.clone(), model.clone(), key.clone());
            workers.push(tokio::spawn(async move {
                let mut out: Vec<anyhow::Result<Sample>> = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.requests {
                        break;
                    }
                    let prompt = if a.same_prompt { a.prompt.clone() } else { format!("{} ({})", a.prompt, i + 1) };
                    let mut body = json!({
                        "model": model, "max_tokens": a.max_tokens, "temperature": a.temperature, "stream": stream,
                    });
                    if stream {
                        body["stream_options"] = json!({"include_usage": true});
                    }
                    if a.endpoint == "chat" {
                        body["messages"] = json!([{"role": "user", "content": prompt}]);
                    } else {
                        body["prompt"] = json!(prompt);
                    }
                    out.push(one(&client, &url, key.as_deref(), &body, stream).await);
                }
                out
            }));
        }
        let mut samples = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for w in workers {
            for r in w.await.context("a load worker failed")? {
                match r {
                    Ok(s) => samples.push(s),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        let wall = start.elapsed().as_secs_f64();
        let after = (
            metric(&client, &base, "airllm_generated_tokens_total").await,
            metric(&client, &base, "airllm_passes_total").await,
        );
        let tokens: usize = samples.iter().map(|s| s.tokens).sum();
        let tokens_per_pass = match (before, after) {
            ((Some(g0), Some(p0)), (Some(g1), Some(p1))) if p1 > p0 => Some((g1 - g0) / (p1 - p0)),
            _ => None,
        };
        let report = json!({
            "url": base, "endpoint": a.endpoint, "model": model, "stream": stream,
            "concurrency": a.concurrency, "requests": a.requests, "max_tokens": a.max_tokens,
            "ok": samples.len(), "failed": errors.len(), "first_error": errors.first(),
            "wall_s": wall,
            "requests_per_s": samples.len() as f64 / wall,
            "generated_tokens": tokens,
            "tokens_per_s": tokens as f64 / wall,
            "tokens_per_pass": tokens_per_pass,
            "ttft_s": summary(samples.iter().filter_map(|s| s.ttft).collect()),
            "itl_s": summary(samples.iter().flat_map(|s| s.gaps.iter().copied()).collect()),
            "latency_s": summary(samples.iter().map(|s| s.latency).collect()),
        });
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_text(&report);
        }
        if samples.is_empty() {
            bail!("every request failed; first error: {}", errors.first().map(String::as_str).unwrap_or("?"));
        }
        Ok(())
    }

    fn print_text(r: &Value) {
        let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
        println!(
            "{} requests ({} ok, {} failed) at concurrency {} in {:.2} s: {:.2} requests/s",
            r["requests"],
            r["ok"],
            r["failed"],
            r["concurrency"],
            r["wall_s"].as_f64().unwrap_or(0.0),
            r["requests_per_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "{} tokens generated: {:.2} tokens/s aggregate{}",
            r["generated_tokens"],
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            r["tokens_per_pass"].as_f64().map_or(String::new(), |t| format!(", {t:.2} tokens per pass (server)"))
        );
        for (name, key) in
            [("time to first token", "ttft_s"), ("inter-token latency", "itl_s"), ("latency", "latency_s")]
        {
            let s = &r[key];
            println!(
                "{name:>20}: p50 {} s  p90 {} s  p99 {} s  (n = {})",
                f(&s["p50"]),
                f(&s["p90"]),
                f(&s["p99"]),
                s["count"]
            );
        }
        if let Some(e) = r["first_error"].as_str() {
            println!("first error: {e}");
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn nearest_rank_percentiles() {
            let v: Vec<f64> = (1..=100).map(f64::from).collect();
            assert_eq!(super::percentile(&v, 50.0), Some(50.0));
            assert_eq!(super::percentile(&v, 99.0), Some(99.0));
            assert_eq!(super::percentile(&[3.0], 90.0), Some(3.0));
            assert_eq!(super::percentile(&[], 50.0), None);
            assert_eq!(super::base_url("http://h:1/v1/"), "http://h:1");
        }
    }
}

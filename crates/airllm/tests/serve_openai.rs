//! The real thing: `airllm serve` on the SmolLM2-135M GGUF, driven by the official
//! `openai` Python client (scripts/openai_client_test.py): 8 concurrent greedy chat
//! requests, half streamed, each must return exactly what a lone
//! `airllm generate --chat --temperature 0 --json` returns for the same messages;
//! `/metrics` is read at the end; SIGTERM stops the server with exit status 0.
//!
//! Skips with a printed reason when the GGUF, python3 or the `openai` package is
//! missing, and fails instead when `CI` is set (CI installs them: see .ci/run).

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airllm::serve::metrics::sample;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_airllm");
const MAX_TOKENS: usize = 12;
const CONTEXT: &str = "256";

fn skip_or_fail(why: &str) -> bool {
    assert!(std::env::var_os("CI").is_none(), "CI must provide this: {why}");
    eprintln!("skipping: {why}");
    false
}

/// The GGUF, and python3 with `openai`, or a printed reason to skip.
fn prerequisites() -> Option<PathBuf> {
    let Some(gguf) = airllm_format::gguf::smollm2_path() else {
        skip_or_fail("SmolLM2 GGUF not found (run `cargo xtask demo --fetch-only`)");
        return None;
    };
    let py = Command::new("python3").args(["-c", "import openai"]).output();
    match py {
        Err(e) => {
            skip_or_fail(&format!("python3 not runnable: {e}"));
            None
        }
        Ok(o) if !o.status.success() => {
            skip_or_fail("the `openai` Python package is missing (python3 -m pip install openai)");
            None
        }
        Ok(_) => Some(gguf),
    }
}

/// Kill the child on drop, so a failing test leaves no server behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < limit, "process still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The conversations: each is sent four times, twice streamed and twice not (two keep
/// the reference runs of `airllm generate` few: each loads the model, slow on lavapipe).
fn conversations() -> Vec<(Option<&'static str>, &'static str)> {
    vec![(None, "What is the capital of France?"), (Some("You are a pirate. Answer in one sentence."), "Say hello.")]
}

/// What a lone `airllm generate --chat --json` returns: (text, new tokens, finish).
fn reference(gguf: &Path, shards: &Path, system: Option<&str>, user: &str) -> (String, usize, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("generate").arg("--model").arg(gguf).arg("--shards-dir").arg(shards);
    cmd.args(["--max-context", CONTEXT, "--chat", "--temperature", "0", "--json"]);
    cmd.args(["--max-new-tokens", &MAX_TOKENS.to_string(), "--prompt", user]);
    if let Some(s) = system {
        cmd.args(["--system", s]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "airllm generate failed: {}", String::from_utf8_lossy(&out.stderr));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &all["generations"][0];
    let finish = match v["finish"].as_str().unwrap() {
        "eos" | "stop" => "stop",
        other => other,
    };
    (v["text"].as_str().unwrap().to_string(), v["new_ids"].as_array().unwrap().len(), finish.to_string())
}

/// Start `airllm serve` on a free port; returns the child and its base URL.
fn serve(gguf: &Path, shards: &Path) -> (Reaped, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--model")
        .arg(gguf)
        .arg("--shards-dir")
        .arg(shards)
        // A KV pool for all 8 requests at once (by default it holds one --max-context).
        .args(["--max-context", CONTEXT, "--kv-tokens", "2048", "--port", "0", "--shutdown-grace", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Read stderr on a thread (the model loads first), forwarding it to ours.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[serve] {line}");
            if let Some(rest) = line.split(" on http://").nth(1) {
                let addr = rest.split('/').next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let child = Reaped(child);
    let addr = rx.recv_timeout(Duration::from_secs(600)).expect("airllm serve did not report its address");
    (child, format!("http://{addr}"))
}

/// The whole check; `min_tokens_per_pass` is what /metrics must show at the end.
fn openai_client_check(min_tokens_per_pass: f64) {
    let Some(gguf) = prerequisites() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    // The references first (the first run shards the GGUF, which the server then reuses).
    let convs = conversations();
    let refs: Vec<_> = convs.iter().map(|(s, u)| reference(&gguf, &shards, *s, u)).collect();

    let (mut server, base) = serve(&gguf, &shards);
    let mut cases = Vec::new();
    for stream in [false, true, false, true] {
        for (system, user) in &convs {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": user}));
            cases.push(json!({"messages": messages, "max_tokens": MAX_TOKENS, "stream": stream}));
        }
    }
    let cases_path = tmp.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out_path = tmp.path().join("out.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_test.py");
    let name = gguf.file_stem().unwrap().to_string_lossy().into_owned();
    let mut py = Command::new("python3")
        .arg(&script)
        .arg("--base-url")
        .arg(format!("{base}/v1"))
        .args(["--model", &name, "--cases"])
        .arg(&cases_path)
        .arg("--out")
        .arg(&out_path)
        .spawn()
        .unwrap();
    let st = wait_with_timeout(&mut py, Duration::from_secs(1200));
    assert!(st.success(), "scripts/openai_client_test.py failed ({st})");

    let out: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    eprintln!("openai client {}", out["openai_version"]);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    for (i, r) in results.iter().enumerate() {
        let (text, n, finish) = &refs[i % convs.len()];
        assert_eq!(r["text"].as_str().unwrap(), text, "case {i} (stream {}) differs from airllm generate", r["stream"]);
        assert_eq!(r["completion_tokens"].as_u64().unwrap() as usize, *n, "case {i}: completion tokens");
        assert_eq!(r["finish_reason"].as_str().unwrap(), finish, "case {i}: finish reason");
    }
    let metrics = out["metrics"].as_str().unwrap();
    let generated = sample(metrics, "airllm_generated_tokens_total").unwrap();
    let passes = sample(metrics, "airllm_passes_total").unwrap();
    let expected: usize = results.iter().map(|r| r["completion_tokens"].as_u64().unwrap() as usize).sum();
    // The two error checks of the script generate nothing (404 and 400 come before the engine).
    assert_eq!(generated as usize, expected, "{metrics}");
    assert!(passes > 0.0, "{metrics}");
    eprintln!("tokens per pass: {generated} / {passes} = {:.2}", generated / passes);
    assert!(
        generated / passes >= min_tokens_per_pass,
        "tokens per pass {generated} / {passes} = {:.2}, want at least {min_tokens_per_pass}",
        generated / passes
    );
    assert_eq!(sample(metrics, "airllm_sequences_running"), Some(0.0), "{metrics}");
    assert_eq!(sample(metrics, r#"airllm_requests_total{endpoint="/v1/chat/completions",status="200"}"#), Some(8.0));

    // SIGTERM: graceful shutdown, exit status 0.
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let st = wait_with_timeout(&mut server.0, Duration::from_secs(60));
    assert!(st.success(), "airllm serve exited with {st} after SIGTERM");
}

#[test]
fn openai_client_requests_share_passes() {
    // 8 concurrent requests decoded together (the batched backend): each still gets what
    // a lone `airllm generate` gets, and generated tokens per pass are well above 1.
    openai_client_check(3.0);
}

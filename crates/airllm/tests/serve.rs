//! `airllm serve`'s HTTP layer against the deterministic mock backend: every error the
//! issue lists, SSE framing, log-probabilities, disconnects (the backend sees the
//! cancel, `/metrics` shows the sequence freed), 100 requests with random early
//! cancellation, the API key and graceful shutdown. Each test runs a server on an
//! ephemeral port and is bounded by a timeout.

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use airllm::ChatMessage;
use airllm::serve::metrics::sample;
use airllm::serve::{Backend, GenRequest, MockBackend, MockConfig, Server, ServerConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

struct TestServer {
    base: String,
    backend: Arc<MockBackend>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

async fn start(cfg: MockConfig, scfg: ServerConfig) -> TestServer {
    let backend = Arc::new(MockBackend::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let dyn_backend: Arc<dyn Backend> = backend.clone();
    let server = Server::new(dyn_backend, scfg);
    let task = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    TestServer { base, backend, stop: Some(tx), task, client }
}

async fn default_server() -> TestServer {
    start(MockConfig::default(), ServerConfig::default()).await
}

impl TestServer {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")))
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).body(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn post_text(&self, path: &str, body: Value) -> (u16, String) {
        let r = self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    /// Wait (bounded) until the backend holds no sequence, and return /metrics then.
    async fn wait_idle(&self) -> String {
        for _ in 0..500 {
            let m = self.metrics().await;
            let idle = ["airllm_sequences_running", "airllm_sequences_waiting", "airllm_kv_blocks_used"]
                .iter()
                .all(|n| sample(&m, n) == Some(0.0));
            if idle {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the backend never became idle:\n{}", self.metrics().await);
    }

    async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(LIMIT, self.task).await.expect("shutdown took too long").unwrap()
    }
}

/// The request the mock sees for a chat body, to compute the text it must return.
fn chat_request(b: &MockBackend, messages: &[(&str, &str)], max: usize) -> GenRequest {
    let msgs: Vec<ChatMessage> = messages.iter().map(|(r, c)| ChatMessage::new(r, c)).collect();
    GenRequest {
        prompt_ids: b.encode_chat(&msgs).unwrap(),
        max_new_tokens: max,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop: vec![],
        top_logprobs: None,
    }
}

/// Split an SSE body into its `data:` payloads, checking the framing on the way:
/// every event is `data: ...\n\n` (or a `:` comment), and the body ends with `[DONE]`.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("data: [DONE]\n\n"), "stream must end with data: [DONE]: {body:?}");
    let mut out = Vec::new();
    let events: Vec<&str> = body.split("\n\n").collect();
    assert_eq!(events.last(), Some(&""), "trailing bytes after the last event");
    let n = events.len() - 1;
    for (i, ev) in events[..n].iter().enumerate() {
        if ev.starts_with(':') {
            continue;
        }
        let data = ev.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {ev:?}"));
        assert!(!data.contains('\n'), "one line per event: {ev:?}");
        if data == "[DONE]" {
            assert_eq!(i, n - 1, "[DONE] must be last");
            continue;
        }
        out.push(serde_json::from_str(data).unwrap_or_else(|_| panic!("bad JSON in {ev:?}")));
    }
    out
}

macro_rules! bounded {
    ($body:expr) => {
        tokio::time::timeout(LIMIT, $body).await.expect("test took longer than its limit")
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_plain_responses() {
    bounded!(async {
        let s = default_server().await;
        let r: Value = s.client.get(format!("{}/v1/models", s.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(r["object"], "list");
        assert_eq!(r["data"][0]["id"], "mock");
        let r = s.client.get(format!("{}/v1/models/mock", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = s.client.get(format!("{}/v1/models/gpt-4", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let h: Value = s.client.get(format!("{}/health", s.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(h["status"], "ok");

        // Chat, not streamed: the mock's deterministic words, usage, finish reason.
        let msgs = [("system", "be brief"), ("user", "hello there")];
        let expect = MockBackend::expected_words(&chat_request(&s.backend, &msgs, 6), 6);
        let (st, v) = s
            .post(
                "/v1/chat/completions",
                json!({"model": "mock", "max_tokens": 6, "temperature": 0,
                       "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], expect.as_str());
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let prompt_len = chat_request(&s.backend, &msgs, 6).prompt_ids.len();
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": prompt_len, "completion_tokens": 6, "total_tokens": prompt_len + 6})
        );

        // Content parts and max_completion_tokens (which wins over max_tokens).
        let (st, v) = s
            .post(
                "/v1/chat/completions",
                json!({"model": "mock", "max_tokens": 50, "max_completion_tokens": 3,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 3);

        // Completions: stop string (as a string, and as an array) cuts the text, finish "stop".
        let req = GenRequest {
            prompt_ids: s.backend.encode("Once upon").unwrap(),
            max_new_tokens: 16,
            // The API's default temperature is 1.
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
            top_logprobs: None,
        };
        let full = MockBackend::expected_words(&req, 16);
        let third = full.split(' ').nth(2).unwrap().to_string();
        for stop in [json!(third), json!(["zzz", third])] {
            let (st, v) = s
                .post(
                    "/v1/completions",
                    json!({"model": "mock", "prompt": ["Once upon"], "max_tokens": 16, "stop": stop}),
                )
                .await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["object"], "text_completion");
            let text = v["choices"][0]["text"].as_str().unwrap();
            assert_eq!(text, &full[..full.find(&third).unwrap()]);
            assert!(!text.contains(&third));
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
        }
        // The legacy default is 16 new tokens.
        let (_, v) = s.post("/v1/completions", json!({"model": "mock", "prompt": "Once upon"})).await;
        assert_eq!(v["usage"]["completion_tokens"], 16);
        assert_eq!(v["choices"][0]["text"], full.as_str());
        // Token ids as the prompt.
        let (st, v) = s.post("/v1/completions", json!({"model": "mock", "prompt": [72, 105], "max_tokens": 2})).await;
        assert_eq!((st, v["usage"]["prompt_tokens"].clone()), (200, json!(2)));
        s.wait_idle().await;
        assert_eq!(s.metric(r#"airllm_requests_total{endpoint="/v1/completions",status="200"}"#).await, 4.0);
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_framing_for_both_endpoints() {
    bounded!(async {
        let s = default_server().await;
        let msgs = [("user", "stream me")];
        let expect = MockBackend::expected_words(&chat_request(&s.backend, &msgs, 5), 5);
        let (st, body) = s
            .post_text(
                "/v1/chat/completions",
                json!({"model": "mock", "max_tokens": 5, "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
                       "messages": [{"role": "user", "content": "stream me"}]}),
            )
            .await;
        assert_eq!(st, 200);
        let evs = sse_events(&body);
        // role chunk, 5 content chunks, finish chunk, usage chunk
        assert_eq!(evs.len(), 8, "{body}");
        let id = evs[0]["id"].as_str().unwrap();
        assert!(evs.iter().all(|e| e["id"] == id && e["object"] == "chat.completion.chunk"));
        assert_eq!(evs[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        let text: String =
            evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
        assert_eq!(text, expect);
        assert_eq!(evs[6]["choices"][0]["finish_reason"], "length");
        assert_eq!(evs[6]["choices"][0]["delta"], json!({}));
        assert!(evs[..7].iter().all(|e| e["usage"].is_null() && e.get("usage").is_some()));
        assert_eq!(evs[7]["choices"], json!([]));
        assert_eq!(evs[7]["usage"]["completion_tokens"], 5);

        // Without include_usage there is no usage field at all, and no usage chunk.
        let (_, body) = s
            .post_text("/v1/completions", json!({"model": "mock", "max_tokens": 4, "stream": true, "prompt": "abc"}))
            .await;
        let evs = sse_events(&body);
        assert_eq!(evs.len(), 5, "{body}");
        assert!(evs.iter().all(|e| e.get("usage").is_none() && e["object"] == "text_completion"));
        assert_eq!(evs[4]["choices"][0]["finish_reason"], "length");
        assert!(evs[..4].iter().all(|e| e["choices"][0]["finish_reason"].is_null()));
        assert!(s.metric("airllm_sse_bytes_total").await > 0.0);
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_both_apis_streamed_and_not() {
    bounded!(async {
        let s = default_server().await;
        let body = json!({"model": "mock", "max_tokens": 4, "logprobs": true, "top_logprobs": 3,
                          "messages": [{"role": "user", "content": "hi"}]});
        let (st, v) = s.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(st, 200, "{v}");
        let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 4);
        let mut joined = String::new();
        for c in content {
            assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 3);
            assert_eq!(c["top_logprobs"][0]["token"], c["token"]);
            assert!(c["logprob"].as_f64().unwrap() <= 0.0);
            assert_eq!(c["bytes"].as_array().unwrap().len(), c["token"].as_str().unwrap().len());
            joined.push_str(c["token"].as_str().unwrap());
        }
        assert_eq!(joined, v["choices"][0]["message"]["content"].as_str().unwrap());
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (_, text) = s.post_text("/v1/chat/completions", streamed).await;
        let evs = sse_events(&text);
        let n = evs.iter().filter(|e| e["choices"][0]["logprobs"]["content"].is_array()).count();
        assert_eq!(n, 4);
        // Without logprobs the field is null.
        let (_, v) = s
            .post(
                "/v1/chat/completions",
                json!({"model": "mock", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert!(v["choices"][0]["logprobs"].is_null());
        // Legacy completions logprobs with text offsets.
        let (st, v) =
            s.post("/v1/completions", json!({"model": "mock", "prompt": "x", "max_tokens": 3, "logprobs": 2})).await;
        assert_eq!(st, 200, "{v}");
        let lp = &v["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
        assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
        let first = lp["tokens"][0].as_str().unwrap().len();
        assert_eq!(lp["text_offset"], json!([0, first, first + lp["tokens"][1].as_str().unwrap().len()]));
        // top_logprobs without logprobs, or out of range: 400 naming it.
        for bad in [json!({"top_logprobs": 2}), json!({"logprobs": true, "top_logprobs": 21})] {
            let mut b = json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]});
            b.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
            let (st, v) = s.post("/v1/chat/completions", b).await;
            assert_eq!((st, v["error"]["param"].clone()), (400, json!("top_logprobs")), "{v}");
        }
        s.shutdown().await.unwrap();
    });
}

fn assert_error(st: u16, v: &Value, status: u16, param: Option<&str>, needles: &[&str]) {
    assert_eq!(st, status, "{v}");
    let e = &v["error"];
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error lacks {k}: {v}");
    }
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
    let msg = e["message"].as_str().unwrap();
    for n in needles {
        assert!(msg.contains(n), "{msg:?} should mention {n:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_in_openai_shape() {
    bounded!(async {
        let s = start(MockConfig { context_len: 64, ..Default::default() }, ServerConfig::default()).await;
        let chat = "/v1/chat/completions";
        let user = json!([{"role": "user", "content": "hi"}]);

        let (st, v) = s.post_raw(chat, "{\"model\": \"mock\", \"messages\": [").await;
        assert_error(st, &v, 400, None, &["not valid JSON", "line 1"]);
        let (st, v) = s.post_raw(chat, "[1, 2]").await;
        assert_error(st, &v, 400, None, &["JSON object"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": user, "temperature": "hot"})).await;
        assert_error(st, &v, 400, Some("temperature"), &["temperature", "invalid type"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": [{"role": "user", "content": 5}]})).await;
        assert_error(st, &v, 400, Some("messages[0].content"), &["messages[0].content"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": [{"content": "x"}]})).await;
        assert_error(st, &v, 400, Some("messages[0]"), &["role"]);
        let (st, v) = s.post(chat, json!({"model": "mock"})).await;
        assert_error(st, &v, 400, Some("messages"), &["messages"]);
        let (st, v) = s.post(chat, json!({"messages": user})).await;
        assert_error(st, &v, 400, Some("model"), &["model"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": user, "stop": 3})).await;
        assert_error(st, &v, 400, Some("stop"), &["string"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": user, "n": 2})).await;
        assert_error(st, &v, 400, Some("n"), &["n = 2"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": user, "max_tokens": -1})).await;
        assert_error(st, &v, 400, Some("max_tokens"), &["max_tokens"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": [{"role": "tool", "content": "x"}]})).await;
        assert_error(st, &v, 400, Some("messages[0].role"), &["tool"]);
        let (st, v) = s.post(chat, json!({"model": "mock", "messages": user, "presence_penalty": 1.0})).await;
        assert_error(st, &v, 400, Some("presence_penalty"), &["not supported"]);
        let (st, v) = s.post("/v1/completions", json!({"model": "mock", "prompt": ["a", "b"]})).await;
        assert_error(st, &v, 400, Some("prompt"), &["one prompt"]);
        let (st, v) = s.post("/v1/completions", json!({"model": "mock"})).await;
        assert_error(st, &v, 400, Some("prompt"), &["prompt"]);

        // Unknown model: 404 with the served name.
        let (st, v) = s.post(chat, json!({"model": "gpt-4o", "messages": user})).await;
        assert_error(st, &v, 404, Some("model"), &["gpt-4o", "mock"]);
        assert_eq!(v["error"]["code"], "model_not_found");

        // Prompt longer than the context: 400 with both numbers.
        let long = "x".repeat(100);
        let (st, v) = s.post("/v1/completions", json!({"model": "mock", "prompt": long})).await;
        assert_error(st, &v, 400, Some("prompt"), &["100", "64"]);
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        // Prompt that fits, but not with max_tokens: all three numbers.
        let (st, v) =
            s.post("/v1/completions", json!({"model": "mock", "prompt": "x".repeat(40), "max_tokens": 30})).await;
        assert_error(st, &v, 400, Some("max_tokens"), &["64", "40", "30", "70"]);

        // Routes: unknown path, wrong method.
        let r = s.client.get(format!("{}/v1/nothing", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("/v1/nothing"));
        let r = s.client.get(format!("{}{chat}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 405);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string());

        // The server is still fine after all that, and counted the statuses.
        let (st, _) = s.post(chat, json!({"model": "mock", "messages": user, "max_tokens": 2})).await;
        assert_eq!(st, 200);
        assert!(s.metric(r#"airllm_requests_total{endpoint="/v1/chat/completions",status="400"}"#).await >= 12.0);
        assert_eq!(s.metric(r#"airllm_requests_total{endpoint="/v1/chat/completions",status="404"}"#).await, 1.0);
        s.wait_idle().await;
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_gives_429_and_failures_are_reported() {
    bounded!(async {
        let cfg =
            MockConfig { max_sequences: 1, max_waiting: 1, pass_delay: Duration::from_millis(5), ..Default::default() };
        let s = start(cfg, ServerConfig::default()).await;
        let body = json!({"model": "mock", "max_tokens": 400, "stream": true, "messages": [{"role": "user", "content": "long"}]});
        // One running, one waiting...
        let url = format!("{}/v1/chat/completions", s.base);
        let running = s.client.post(&url).json(&body).send().await.unwrap();
        let waiting = s.client.post(&url).json(&body).send().await.unwrap();
        assert_eq!((running.status().as_u16(), waiting.status().as_u16()), (200, 200));
        for _ in 0..500 {
            if s.metric("airllm_sequences_waiting").await == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ... and the third is refused with a clear message.
        let r = s.client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        let v: Value = r.json().await.unwrap();
        assert_error(429, &v, 429, None, &["busy", "waiting", "retry"]);
        drop((running, waiting));
        let m = s.wait_idle().await;
        assert_eq!(sample(&m, "airllm_sequences_cancelled_total"), Some(2.0), "{m}");

        // A request the engine fails: streamed, an error event then [DONE]; plain, a 500.
        let fail = json!({"model": "mock", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "FAIL"}]});
        let (st, text) = s.post_text("/v1/chat/completions", fail.clone()).await;
        assert_eq!(st, 200);
        let evs = sse_events(&text);
        assert!(evs.last().unwrap()["error"]["message"].as_str().unwrap().contains("mock failure"), "{text}");
        let mut plain = fail;
        plain["stream"] = json!(false);
        let (st, v) = s.post("/v1/chat/completions", plain).await;
        assert_error(st, &v, 500, None, &["mock failure"]);
        s.wait_idle().await;
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    bounded!(async {
        let scfg = ServerConfig { api_key: Some("sekrit".into()), ..Default::default() };
        let s = start(MockConfig::default(), scfg).await;
        let body = json!({"model": "mock", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
        let url = format!("{}/v1/chat/completions", s.base);
        let r = s.client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_error(401, &v, 401, None, &["missing API key", "Bearer"]);
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let r = s.client.post(&url).bearer_auth("wrong").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("incorrect"));
        let r = s.client.post(&url).header("authorization", "sekrit").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = s.client.get(format!("{}/v1/models", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = s.client.post(&url).bearer_auth("sekrit").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = s.client.get(format!("{}/v1/models", s.base)).bearer_auth("sekrit").send().await.unwrap();
        assert_eq!(r.status(), 200);
        // Probes and scrapers need no key.
        assert_eq!(s.client.get(format!("{}/health", s.base)).send().await.unwrap().status(), 200);
        assert_eq!(s.client.get(format!("{}/metrics", s.base)).send().await.unwrap().status(), 200);
        assert_eq!(s.metric(r#"airllm_requests_total{endpoint="/v1/chat/completions",status="401"}"#).await, 3.0);
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_frees_the_sequence() {
    bounded!(async {
        let cfg = MockConfig { pass_delay: Duration::from_millis(5), ..Default::default() };
        let s = start(cfg, ServerConfig::default()).await;
        let body = json!({"model": "mock", "max_tokens": 450, "stream": true, "messages": [{"role": "user", "content": "go"}]});
        let r = s.client.post(format!("{}/v1/chat/completions", s.base)).json(&body).send().await.unwrap();
        let mut stream = r.bytes_stream();
        let mut got = 0;
        while got < 4 {
            got += stream.next().await.unwrap().unwrap().len().min(1);
        }
        assert_eq!(s.metric("airllm_sequences_running").await, 1.0);
        assert!(s.metric("airllm_kv_blocks_used").await > 0.0);
        drop(stream);
        let m = s.wait_idle().await;
        assert_eq!(sample(&m, "airllm_sequences_cancelled_total"), Some(1.0), "{m}");
        // It stopped well before its 450 tokens.
        assert!(sample(&m, "airllm_generated_tokens_total").unwrap() < 450.0, "{m}");
        assert_eq!(sample(&m, "airllm_requests_in_flight"), Some(0.0), "{m}");
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_before_the_first_token_cancels_a_plain_request() {
    use std::io::Write;
    bounded!(async {
        // One slot, held by a long request, so the next one waits in the queue.
        let cfg = MockConfig { max_sequences: 1, pass_delay: Duration::from_millis(5), ..Default::default() };
        let s = start(cfg, ServerConfig::default()).await;
        let url = format!("{}/v1/completions", s.base);
        let hold =
            s.client.post(&url).json(&json!({"model": "mock", "prompt": "a", "max_tokens": 400, "stream": true}));
        let hold = hold.send().await.unwrap();
        // A non-streamed request over a raw socket, closed while it waits.
        let body = json!({"model": "mock", "prompt": "b", "max_tokens": 400}).to_string();
        let addr = s.base.trim_start_matches("http://").to_string();
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(req.as_bytes()).unwrap();
        for _ in 0..500 {
            if s.metric("airllm_sequences_waiting").await == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(s.metric("airllm_sequences_waiting").await, 1.0);
        drop(sock);
        for _ in 0..500 {
            if s.metric("airllm_sequences_waiting").await == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(s.metric("airllm_sequences_waiting").await, 0.0, "the closed request still waits");
        assert_eq!(s.metric("airllm_sequences_cancelled_total").await, 1.0);
        drop(hold);
        s.wait_idle().await;
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_requests_with_random_early_cancellation() {
    bounded!(async {
        let cfg = MockConfig {
            max_sequences: 6,
            max_waiting: 200,
            kv_blocks: 40,
            pass_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let s = Arc::new(start(cfg, ServerConfig::default()).await);
        // A fixed-seed LCG picks each request's fate, so a failure reproduces.
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut rnd = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        let mut tasks = Vec::new();
        for i in 0..100 {
            let (fate, tokens, stream) = (rnd() % 3, 4 + rnd() % 60, rnd() % 2 == 0);
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let prompt = format!("request {i}");
                let body = json!({"model": "mock", "prompt": prompt, "max_tokens": tokens, "stream": stream});
                let send = s.client.post(format!("{}/v1/completions", s.base)).json(&body).send();
                match (fate, stream) {
                    // Complete: the text must be the mock's, in full.
                    (0, _) => {
                        let r = send.await.unwrap();
                        assert_eq!(r.status(), 200);
                        let text = r.text().await.unwrap();
                        let got = if stream {
                            sse_events(&text)
                                .iter()
                                .filter_map(|e| e["choices"][0]["text"].as_str())
                                .collect::<String>()
                        } else {
                            serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["text"]
                                .as_str()
                                .unwrap()
                                .to_string()
                        };
                        let req = GenRequest {
                            prompt_ids: s.backend.encode(&prompt).unwrap(),
                            max_new_tokens: tokens,
                            temperature: 1.0,
                            top_p: 1.0,
                            seed: 0,
                            stop: vec![],
                            top_logprobs: None,
                        };
                        assert_eq!(got, MockBackend::expected_words(&req, tokens), "request {i}");
                        true
                    }
                    // Streamed, dropped after a few chunks.
                    (1, true) => {
                        let r = send.await.unwrap();
                        let mut st = r.bytes_stream();
                        for _ in 0..(i % 4) {
                            if st.next().await.is_none() {
                                break;
                            }
                        }
                        false
                    }
                    // Given up on after a moment, wherever it is (queued, running, done).
                    _ => {
                        let _ = tokio::time::timeout(Duration::from_millis((i % 7) as u64 * 3), send).await;
                        false
                    }
                }
            }));
        }
        let mut completed = 0;
        for t in tasks {
            completed += usize::from(t.await.unwrap());
        }
        assert!(completed > 10);
        let m = s.wait_idle().await;
        assert_eq!(sample(&m, "airllm_requests_in_flight"), Some(0.0), "{m}");
        let h = s.client.get(format!("{}/health", s.base)).send().await.unwrap();
        assert_eq!(h.status(), 200);
        // Still serving correctly.
        let (st, v) = s.post("/v1/completions", json!({"model": "mock", "prompt": "after", "max_tokens": 3})).await;
        assert_eq!((st, v["usage"]["completion_tokens"].clone()), (200, json!(3)));
        let s = Arc::try_unwrap(s).ok().unwrap();
        s.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_passes() {
    bounded!(async {
        let cfg = MockConfig { max_sequences: 8, pass_delay: Duration::from_millis(5), ..Default::default() };
        let s = Arc::new(start(cfg, ServerConfig::default()).await);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.post("/v1/completions", json!({"model": "mock", "prompt": format!("p{i}"), "max_tokens": 32})).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().0, 200);
        }
        let m = s.wait_idle().await;
        let generated = sample(&m, "airllm_generated_tokens_total").unwrap();
        let passes = sample(&m, "airllm_passes_total").unwrap();
        assert_eq!(generated, 256.0);
        assert!(generated / passes > 1.0, "tokens per pass {generated}/{passes}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_short_requests_and_cancels_long_ones() {
    bounded!(async {
        let cfg = MockConfig { pass_delay: Duration::from_millis(5), ..Default::default() };
        let scfg = ServerConfig { shutdown_grace: Duration::from_millis(300), ..Default::default() };
        let s = start(cfg, scfg).await;
        let url = format!("{}/v1/chat/completions", s.base);
        let short = json!({"model": "mock", "max_tokens": 10, "messages": [{"role": "user", "content": "short"}]});
        let long = json!({"model": "mock", "max_tokens": 450, "stream": true, "messages": [{"role": "user", "content": "long"}]});
        let long_resp = s.client.post(&url).json(&long).send().await.unwrap();
        assert_eq!(long_resp.status(), 200);
        let short_req = tokio::spawn(s.client.post(&url).json(&short).send());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let base = s.base.clone();
        let backend = s.backend.clone();
        let client = s.client.clone();
        let down = tokio::spawn(s.shutdown());
        // The short one finishes within the grace period.
        let r = short_req.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 10);
        // The long stream is cut after the grace period: an error event, then [DONE].
        let text = long_resp.text().await.unwrap();
        let evs = sse_events(&text);
        assert!(evs.last().unwrap()["error"]["message"].as_str().unwrap().contains("shutting down"), "{text}");
        // The server returns Ok, accepts nothing more, and the backend refuses work.
        down.await.unwrap().unwrap();
        assert!(client.get(format!("{base}/health")).send().await.is_err());
        let m = backend.metrics();
        assert_eq!((m.running, m.waiting, m.kv_blocks_used), (0, 0, 0));
        let refused = backend.submit(chat_request(&backend, &[("user", "x")], 1), Box::new(|_| true));
        assert_eq!(refused, Err(airllm::serve::SubmitError::ShuttingDown));
    });
}

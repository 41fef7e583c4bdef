//! From a backend's events to a response: collected into one JSON body, or framed as
//! server-sent events (`data: {chunk}\n\n` ... `data: [DONE]\n\n`).
//!
//! Cancellation is tied to ownership: an accepted request lives in a [`Generation`],
//! whose receiver the backend's sink feeds and whose guard calls [`Backend::cancel`] when
//! it is dropped before a terminal event. The handler future owns it for a plain
//! response, the response body for a stream; hyper drops either when the client goes
//! away, so a disconnect frees the sequence at the next pass boundary, whether it was
//! waiting, prefilling or decoding.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::backend::{Backend, GenEvent, GenRequest, RequestId, SubmitError, TokenLogprob};
use super::metrics::HttpMetrics;
use super::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta, ChatLogprobs,
    Completion, CompletionChoice, CompletionLogprobs, Usage, finish_reason,
};
use crate::FinishReason;

/// Calls `cancel` on drop unless the request reached a terminal event.
struct CancelGuard {
    backend: Arc<dyn Backend>,
    metrics: Arc<HttpMetrics>,
    id: RequestId,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            tracing::debug!(id = self.id, "client gone before the end: cancelling");
            self.backend.cancel(self.id);
        }
        self.metrics.in_flight().fetch_sub(1, Ordering::Relaxed);
    }
}

/// An accepted request: its events and the guard that cancels it.
pub struct Generation {
    rx: UnboundedReceiver<GenEvent>,
    guard: CancelGuard,
}

impl Generation {
    /// Submit `req`; the sink pushes into an unbounded channel, so the engine thread never
    /// waits for a slow client (memory is bounded by `max_new_tokens`).
    pub fn start(
        backend: &Arc<dyn Backend>,
        metrics: &Arc<HttpMetrics>,
        req: GenRequest,
    ) -> Result<Generation, SubmitError> {
        let (tx, rx) = unbounded_channel();
        let id = backend.submit(req, Box::new(move |ev| tx.send(ev).is_ok()))?;
        metrics.in_flight().fetch_add(1, Ordering::Relaxed);
        Ok(Generation {
            rx,
            guard: CancelGuard { backend: backend.clone(), metrics: metrics.clone(), id, done: false },
        })
    }

    /// The next event; `None` once the backend dropped the sink without a terminal event
    /// (reported to the client as a failure).
    async fn next(&mut self) -> Option<GenEvent> {
        let ev = self.rx.recv().await;
        if matches!(ev, Some(GenEvent::Finished { .. } | GenEvent::Failed(_)) | None) {
            self.guard.done = true;
        }
        ev
    }
}

/// Which API a response speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// What every chunk of a response repeats, and what the request asked for.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    /// The API.
    pub api: Api,
    /// "chatcmpl-..." or "cmpl-...".
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model name.
    pub model: String,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Log-probabilities were asked for.
    pub logprobs: bool,
}

/// A whole generation, collected.
#[derive(Debug, Default)]
pub struct Collected {
    /// The completion.
    pub text: String,
    /// One per token, when asked for, with the byte offset of its text.
    pub logprobs: Vec<(TokenLogprob, usize)>,
    /// Why it ended.
    pub reason: Option<FinishReason>,
    /// Token counts.
    pub usage: Option<Usage>,
}

/// Wait for the whole generation. `Err` carries the backend's failure message.
pub async fn collect(mut g: Generation) -> Result<Collected, String> {
    let mut c = Collected::default();
    loop {
        match g.next().await {
            Some(GenEvent::Token { text, logprob, .. }) => {
                if let Some(l) = logprob {
                    c.logprobs.push((l, c.text.len()));
                }
                c.text.push_str(&text);
            }
            Some(GenEvent::Finished { reason, text, prompt_tokens, completion_tokens }) => {
                c.text.push_str(&text);
                c.reason = Some(reason);
                c.usage = Some(Usage::new(prompt_tokens, completion_tokens));
                return Ok(c);
            }
            Some(GenEvent::Failed(msg)) => return Err(msg),
            None => return Err("the engine dropped the request without finishing it".into()),
        }
    }
}

impl ResponseMeta {
    /// The non-streamed body.
    pub fn response(&self, c: Collected) -> Value {
        let reason = finish_reason(c.reason.unwrap_or(FinishReason::Length));
        let usage = c.usage.unwrap_or(Usage::new(0, 0));
        let v = match self.api {
            Api::Chat => serde_json::to_value(ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage { role: "assistant", content: c.text },
                    logprobs: self.logprobs.then(|| ChatLogprobs {
                        content: c.logprobs.iter().map(|(l, _)| l.into()).collect(),
                        refusal: None,
                    }),
                    finish_reason: reason,
                }],
                usage,
            }),
            Api::Completion => serde_json::to_value(Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    text: c.text,
                    index: 0,
                    logprobs: self.logprobs.then(|| {
                        let mut lp = CompletionLogprobs::default();
                        for (l, off) in &c.logprobs {
                            lp.push(l, *off);
                        }
                        lp
                    }),
                    finish_reason: Some(reason),
                }],
                usage: Some(Some(usage)),
            }),
        };
        v.unwrap_or(Value::Null)
    }

    fn usage_field(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    /// A chunk with new text (and the logprobs of the token that completed it).
    fn text_chunk(&self, text: Option<String>, role: bool, logprob: Option<(&TokenLogprob, usize)>) -> Value {
        let v = match self.api {
            Api::Chat => serde_json::to_value(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: ChatDelta { role: role.then_some("assistant"), content: text },
                    logprobs: logprob.map(|(l, _)| ChatLogprobs { content: vec![l.into()], refusal: None }),
                    finish_reason: None,
                }],
                usage: self.usage_field(),
            }),
            Api::Completion => serde_json::to_value(Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    text: text.unwrap_or_default(),
                    index: 0,
                    logprobs: logprob.map(|(l, off)| {
                        let mut lp = CompletionLogprobs::default();
                        lp.push(l, off);
                        lp
                    }),
                    finish_reason: None,
                }],
                usage: self.usage_field(),
            }),
        };
        v.unwrap_or(Value::Null)
    }

    /// The chunk that carries `finish_reason`.
    fn finish_chunk(&self, reason: FinishReason) -> Value {
        let reason = Some(finish_reason(reason));
        let v = match self.api {
            Api::Chat => serde_json::to_value(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: ChatDelta::default(),
                    logprobs: None,
                    finish_reason: reason,
                }],
                usage: self.usage_field(),
            }),
            Api::Completion => serde_json::to_value(Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    text: String::new(),
                    index: 0,
                    logprobs: None,
                    finish_reason: reason,
                }],
                usage: self.usage_field(),
            }),
        };
        v.unwrap_or(Value::Null)
    }

    /// The last chunk with `include_usage`: no choices, the counts.
    fn usage_chunk(&self, usage: Usage) -> Value {
        let v = match self.api {
            Api::Chat => serde_json::to_value(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage: Some(Some(usage)),
            }),
            Api::Completion => serde_json::to_value(Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage: Some(Some(usage)),
            }),
        };
        v.unwrap_or(Value::Null)
    }
}

/// One SSE event.
fn frame(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

const DONE: &str = "data: [DONE]\n\n";

enum Phase {
    Start,
    Run,
    End,
}

struct SseState {
    g: Generation,
    meta: ResponseMeta,
    metrics: Arc<HttpMetrics>,
    keep_alive: Duration,
    phase: Phase,
    /// Bytes of completion text sent so far (legacy logprobs' text_offset).
    sent: usize,
}

/// The server-sent-events response for an accepted request.
pub fn sse_response(g: Generation, meta: ResponseMeta, metrics: Arc<HttpMetrics>, keep_alive: Duration) -> Response {
    let state = SseState { g, meta, metrics, keep_alive, phase: Phase::Start, sent: 0 };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        let out = next_frames(&mut s).await?;
        s.metrics.add_sse_bytes(out.len());
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(out)), s))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The next piece of the body, or `None` at the end.
async fn next_frames(s: &mut SseState) -> Option<String> {
    let mut out = String::new();
    match s.phase {
        Phase::End => return None,
        Phase::Start => {
            s.phase = Phase::Run;
            if s.meta.api == Api::Chat {
                // As OpenAI does: the role first, with empty content.
                frame(&mut out, &s.meta.text_chunk(Some(String::new()), true, None));
                return Some(out);
            }
        }
        Phase::Run => {}
    }
    loop {
        // A comment line now and then keeps proxies from timing out during a long queue
        // wait or prefill, and a write to a closed socket ends the stream sooner.
        let ev = match tokio::time::timeout(s.keep_alive, s.g.next()).await {
            Err(_) => return Some(": keep-alive\n\n".into()),
            Ok(ev) => ev,
        };
        match ev {
            Some(GenEvent::Token { text, logprob, .. }) => {
                if text.is_empty() && logprob.is_none() {
                    continue;
                }
                let chunk = s.meta.text_chunk(Some(text.clone()), false, logprob.as_ref().map(|l| (l, s.sent)));
                s.sent += text.len();
                frame(&mut out, &chunk);
                return Some(out);
            }
            Some(GenEvent::Finished { reason, text, prompt_tokens, completion_tokens }) => {
                if !text.is_empty() {
                    frame(&mut out, &s.meta.text_chunk(Some(text), false, None));
                }
                frame(&mut out, &s.meta.finish_chunk(reason));
                if s.meta.include_usage {
                    frame(&mut out, &s.meta.usage_chunk(Usage::new(prompt_tokens, completion_tokens)));
                }
                out.push_str(DONE);
                s.phase = Phase::End;
                return Some(out);
            }
            Some(GenEvent::Failed(msg)) => {
                frame(&mut out, &super::openai::ApiError::new(500, "server_error", msg).body());
                out.push_str(DONE);
                s.phase = Phase::End;
                return Some(out);
            }
            None => {
                let e = super::openai::ApiError::new(
                    500,
                    "server_error",
                    "the engine dropped the request without finishing it",
                );
                frame(&mut out, &e.body());
                out.push_str(DONE);
                s.phase = Phase::End;
                return Some(out);
            }
        }
    }
}

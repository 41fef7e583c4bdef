//! The line between the HTTP server and whatever generates tokens.
//!
//! The server ([`super::http`]) parses OpenAI requests, encodes prompts through
//! [`Backend::encode`] / [`Backend::encode_chat`], submits a [`GenRequest`] and turns the
//! [`GenEvent`]s it gets back into JSON or server-sent events. A backend owns everything
//! below that line: queueing, admission, KV memory, passes over the weights, sampling,
//! incremental detokenization and stop strings.
//!
//! The contract, which every backend keeps and the server relies on:
//!
//! - `submit` either refuses at once ([`SubmitError`], nothing allocated) or accepts and
//!   returns a [`RequestId`]. An accepted request's sink is then called from the engine's
//!   own thread with zero or more [`GenEvent::Token`]s followed by exactly one terminal
//!   event ([`GenEvent::Finished`] or [`GenEvent::Failed`]), and never again after that.
//!   The sink may be called before `submit` returns, and (for requests still waiting)
//!   from the thread that calls [`Backend::shutdown`].
//! - The sink returns `false` when nobody is listening any more (the client went away).
//!   The backend then cancels the request: it is dropped from the queue or the running
//!   batch at the next pass boundary, its KV blocks are freed, and the sink is not
//!   called again (no terminal event either).
//! - [`Backend::cancel`] does the same from the server's side (a client that disconnects
//!   while its request still waits or prefills, before any token reached the sink). It is
//!   a no-op for ids that are finished, cancelled or unknown, so calling it twice is fine.
//! - Text: each `Token` carries the text it newly completes (possibly empty, e.g. half of
//!   a multi-byte character). The concatenation of every `Token` text and the terminal
//!   `Finished::text` is the completion, exactly: cut before the first stop string, which
//!   never appears in any event. [`StopFilter`] does this bookkeeping for a backend.
//! - Nothing here blocks for long: `submit`, `cancel` and `metrics` take at most a short
//!   lock; the sink must not block either (the server's sink pushes into an unbounded
//!   channel, so a slow client never stalls a pass that serves other clients).
//!
//! No async runtime types appear here: a backend is plain threads, and any transport
//! (this HTTP server, a test, a future gRPC front) can drive it.

use crate::FinishReason;
use crate::tokenizer::ChatMessage;

/// Identifies an accepted request within one backend.
pub type RequestId = u64;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    /// The prompt, already encoded (chat template applied for chat requests).
    pub prompt_ids: Vec<u32>,
    /// New tokens at most (the server never asks for more than the context holds).
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling threshold (1.0 = off).
    pub top_p: f32,
    /// RNG seed for sampling.
    pub seed: u64,
    /// Generation stops before the first occurrence of any of these in the text.
    pub stop: Vec<String>,
    /// `None`: no log-probabilities. `Some(k)`: each token's log-probability and the `k`
    /// most likely alternatives at its position (`k` may be 0).
    pub top_logprobs: Option<usize>,
}

/// One candidate token and its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TopLogprob {
    /// Token id.
    pub id: u32,
    /// The token's own text (its decoded piece, not the text it completes).
    pub token: String,
    /// The token's bytes (the UTF-8 of `token`, or the raw bytes of a byte-fallback token).
    pub bytes: Vec<u8>,
    /// Natural-log probability under the model's own distribution (the softmax of its
    /// logits: temperature 1, before any sampling setting), as vLLM reports by default.
    pub logprob: f32,
}

/// The sampled token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The sampled token.
    pub chosen: TopLogprob,
    /// The `top_logprobs` most likely tokens at this position, most likely first.
    pub top: Vec<TopLogprob>,
}

/// What a backend reports about an accepted request.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// One generated token.
    Token {
        /// Its id.
        id: u32,
        /// The text it newly completes (may be empty; never contains a stop string).
        text: String,
        /// Present when the request asked for log-probabilities.
        logprob: Option<TokenLogprob>,
    },
    /// The request ended normally. Terminal.
    Finished {
        /// `Eos` or `Stop` (both "stop" in the API) or `Length`.
        reason: FinishReason,
        /// Text released only at the end: held back because it could have begun a stop
        /// string, or completed by the final decode. Usually empty.
        text: String,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (an end-of-sequence token is not counted).
        completion_tokens: usize,
    },
    /// The request failed (engine error, shutdown). Terminal. The message is for the client.
    Failed(String),
}

/// Why `submit` refused a request. Nothing was allocated for it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is full (HTTP 429).
    #[error(
        "the server is busy: {waiting} requests are already waiting for a free sequence slot; retry later \
         (the operator can raise --max-waiting or --max-sequences)"
    )]
    QueueFull {
        /// Requests waiting now.
        waiting: usize,
    },
    /// Prompt plus new tokens do not fit the context (HTTP 400).
    #[error(
        "this model's context is {context} tokens, but the request needs {} ({prompt} in the prompt, \
         {max_new_tokens} to generate); shorten the prompt or lower max_tokens",
        prompt + max_new_tokens
    )]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// New tokens asked for.
        max_new_tokens: usize,
        /// The context length.
        context: usize,
    },
    /// The backend is shutting down (HTTP 503).
    #[error("the server is shutting down and accepts no new requests")]
    ShuttingDown,
    /// A request field the backend cannot honour (HTTP 400, naming the field).
    #[error("{param}: {message}")]
    Invalid {
        /// The request field at fault (OpenAI's `param`), e.g. "logprobs".
        param: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Why encoding a prompt failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The input cannot be encoded (no chat template, a template that rejects the
    /// messages); the client can fix it (HTTP 400).
    #[error("{param}: {message}")]
    Invalid {
        /// The request field at fault, e.g. "messages".
        param: String,
        /// What is wrong.
        message: String,
    },
    /// Anything else (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

/// A snapshot of the backend's gauges and counters, for `/metrics` and `/health`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendMetrics {
    /// Sequences in the running batch now.
    pub running: usize,
    /// Accepted requests waiting for admission now.
    pub waiting: usize,
    /// KV cache blocks held by sequences now.
    pub kv_blocks_used: usize,
    /// KV cache blocks in the pool.
    pub kv_blocks_total: usize,
    /// Passes over the weights since start (prefill chunks and decode steps).
    pub passes_total: u64,
    /// Tokens generated since start, over all requests (so tokens per pass is
    /// `generated_tokens_total / passes_total`).
    pub generated_tokens_total: u64,
    /// Prompt tokens processed since start.
    pub prompt_tokens_total: u64,
    /// Weight bytes streamed to the GPU since start.
    pub streamed_bytes_total: u64,
    /// Requests cancelled since start (client gone, or shutdown).
    pub cancelled_total: u64,
}

/// A token generator the server can drive. See the module docs for the contract.
pub trait Backend: Send + Sync + 'static {
    /// The model's name, as `/v1/models` lists it and requests must name it.
    fn model_name(&self) -> String;
    /// Longest sequence (prompt + generated tokens) the backend can hold.
    fn context_len(&self) -> usize;
    /// Encode a conversation with the model's chat template (generation prompt added).
    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, BackendError>;
    /// Encode plain text as the tokenizer does by default (special tokens per the tokenizer).
    fn encode(&self, text: &str) -> Result<Vec<u32>, BackendError>;
    /// Start generating. Events go to `sink`, called from the engine thread, until it
    /// returns `false` (the request is then cancelled and its KV freed) or after a
    /// terminal event.
    fn submit(&self, req: GenRequest, sink: Box<dyn FnMut(GenEvent) -> bool + Send>) -> Result<RequestId, SubmitError>;
    /// Cancel a request (no-op when it is finished, cancelled or unknown).
    fn cancel(&self, id: RequestId);
    /// Gauges and counters now.
    fn metrics(&self) -> BackendMetrics;
    /// Stop admitting (`submit` returns `ShuttingDown`) and end every accepted request
    /// with `Failed` at the next pass boundary. Returns at once; idempotent.
    fn shutdown(&self);
}

/// Incremental stop-string handling for one sequence: feed it each newly decoded piece,
/// send what it releases. Text that could be the beginning of a stop string is held back
/// until the next piece decides; [`StopFilter::finish`] releases it at the end.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    /// Text decoded but not yet released (a possible stop-string prefix).
    held: String,
    stopped: bool,
}

impl StopFilter {
    /// A filter for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopFilter { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// Whether a stop string was seen (the sequence should end).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Add a piece; returns the text that can be released now. After a stop string is
    /// found, returns the text before it and then only empty strings.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        // The earliest occurrence of any stop string ends the text.
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(pos);
            return std::mem::take(&mut self.held);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&n| s.is_char_boundary(n) && self.held.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        std::mem::replace(&mut self.held, rest)
    }

    /// The sequence ended without a stop string: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let out: Vec<String> = pieces.iter().map(|p| f.push(p)).collect();
        let stopped = f.stopped();
        (out, f.finish(), stopped)
    }

    #[test]
    fn no_stops_passes_through() {
        let (out, tail, stopped) = run(&[], &["a", "b c", ""]);
        assert_eq!(out, ["a", "b c", ""]);
        assert_eq!(tail, "");
        assert!(!stopped);
    }

    #[test]
    fn stop_split_across_pieces_never_leaks() {
        let (out, tail, stopped) = run(&["END"], &["hello E", "N", "D more"]);
        assert_eq!(out, ["hello ", "", ""]);
        assert_eq!(tail, "");
        assert!(stopped);
    }

    #[test]
    fn false_alarm_is_released() {
        let (out, tail, stopped) = run(&["END"], &["an E", "Nd", " x E"]);
        assert_eq!(out, ["an ", "ENd", " x "]);
        assert_eq!(tail, "E");
        assert!(!stopped);
        assert_eq!(format!("{}{tail}", out.concat()), "an ENd x E");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, _, stopped) = run(&["zz", "b"], &["a b zz"]);
        assert_eq!(out, ["a "]);
        assert!(stopped);
    }

    #[test]
    fn multibyte_stop_prefixes_respect_char_boundaries() {
        let (out, tail, _) = run(&["é!"], &["caf", "é", "?"]);
        assert_eq!(out, ["caf", "", "é?"]);
        assert_eq!(tail, "");
    }
}

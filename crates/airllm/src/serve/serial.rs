//! [`SerialBackend`]: today's [`AutoModel`] behind the [`Backend`] trait, one request at a
//! time on a dedicated engine thread. Correct, not batched: it stands in until the
//! batched engine (paged KV, ragged steps, a scheduler) implements the trait.
//!
//! Limits that follow from [`AutoModel::generate`]: its callback cannot stop a
//! generation, so a cancelled *running* request stops receiving events at once (and
//! counts as cancelled) but the engine finishes its `max_new_tokens` before taking the
//! next one; waiting requests are dropped at once. It has no logits, so requests for
//! log-probabilities are refused (400, naming `logprobs`).

use std::collections::{HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::backend::{Backend, BackendError, BackendMetrics, GenEvent, GenRequest, RequestId, StopFilter, SubmitError};
use crate::error::{EngineError, Result};
use crate::model::{AutoModel, FinishReason, Prompt};
use crate::options::GenerateOptions;
use crate::tokenizer::{ChatMessage, TextTokenizer};

type Sink = Box<dyn FnMut(GenEvent) -> bool + Send>;

struct Job {
    id: RequestId,
    req: GenRequest,
    sink: Sink,
}

#[derive(Default)]
struct Queue {
    next_id: RequestId,
    waiting: VecDeque<Job>,
    running: Option<RequestId>,
    cancel: HashSet<RequestId>,
    shutting_down: bool,
}

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    generated: AtomicU64,
    prompt: AtomicU64,
    streamed: AtomicU64,
    cancelled: AtomicU64,
}

struct Shared {
    q: Mutex<Queue>,
    wake: Condvar,
    n: Counters,
    max_waiting: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request at a time over an [`AutoModel`]. See the module docs.
pub struct SerialBackend {
    shared: Arc<Shared>,
    tokenizer: Arc<TextTokenizer>,
    name: String,
    context: usize,
}

impl std::fmt::Debug for SerialBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialBackend").field("name", &self.name).field("context", &self.context).finish()
    }
}

/// What the engine thread reports once the model is loaded.
struct Loaded {
    tokenizer: TextTokenizer,
    context: usize,
}

impl SerialBackend {
    /// Start the engine thread, load the model there with `load` (so GPU objects are
    /// created and used on one thread), and return once it is ready to serve `name`.
    /// At most `max_waiting` requests wait behind the running one.
    pub fn spawn<E: std::fmt::Display>(
        name: String,
        max_waiting: usize,
        load: impl FnOnce() -> std::result::Result<AutoModel, E> + Send + 'static,
    ) -> Result<SerialBackend> {
        let shared = Arc::new(Shared {
            q: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            n: Counters::default(),
            max_waiting,
        });
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<Loaded, String>>();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("airllm-engine".into())
            .spawn(move || {
                let mut model = match load() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                // A second tokenizer for the HTTP threads: the model's own is behind the
                // engine's `&mut` during generation.
                let spec = model.spec().clone();
                match TextTokenizer::load(model.shards_dir(), &spec.eos_token_ids) {
                    Ok(tokenizer) => {
                        let _ = tx.send(Ok(Loaded { tokenizer, context: model.engine().max_context() }));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e}")));
                        return;
                    }
                }
                engine_loop(&s, &mut model);
            })
            .map_err(|e| EngineError::invalid("serve", format!("cannot start the engine thread: {e}")))?;
        let loaded = rx
            .recv()
            .map_err(|_| EngineError::invalid("serve", "the engine thread stopped while loading the model"))?
            .map_err(|e| EngineError::invalid("--model", e))?;
        Ok(SerialBackend { shared, tokenizer: Arc::new(loaded.tokenizer), name, context: loaded.context })
    }
}

fn engine_loop(s: &Shared, model: &mut AutoModel) {
    let eos: Vec<u32> = model.tokenizer().eos_ids().to_vec();
    loop {
        let job = {
            let mut q = s.lock();
            loop {
                if q.shutting_down {
                    return;
                }
                if let Some(j) = q.waiting.pop_front() {
                    q.running = Some(j.id);
                    break j;
                }
                q = s.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let id = job.id;
        run_job(s, model, &eos, job);
        let mut q = s.lock();
        q.running = None;
        q.cancel.remove(&id);
    }
}

/// Whether the running request should still get events: `Err(Some(msg))` ends it with a
/// failure (shutdown), `Err(None)` silently (cancelled).
fn still_wanted(s: &Shared, id: RequestId) -> std::result::Result<(), Option<&'static str>> {
    let q = s.lock();
    if q.shutting_down {
        Err(Some("the server is shutting down; the request was cancelled"))
    } else if q.cancel.contains(&id) {
        Err(None)
    } else {
        Ok(())
    }
}

fn run_job(s: &Shared, model: &mut AutoModel, eos: &[u32], job: Job) {
    let Job { id, req, mut sink } = job;
    s.n.prompt.fetch_add(req.prompt_ids.len() as u64, Ordering::Relaxed);
    let opts = GenerateOptions {
        max_new_tokens: req.max_new_tokens,
        temperature: req.temperature,
        top_k: 0,
        top_p: req.top_p,
        repetition_penalty: 1.0,
        seed: req.seed,
        stop_strings: req.stop.clone(),
        stop_at_eos: true,
        ..GenerateOptions::default()
    };
    let mut stop = StopFilter::new(&req.stop);
    // The text as generate streams it, before stop strings are cut.
    let mut raw = String::new();
    let mut alive = true;
    let mut cancelled = false;
    let prompt = [Prompt::Ids(req.prompt_ids)];
    let result = catch_unwind(AssertUnwindSafe(|| {
        model.generate(&prompt, &opts, |ev| {
            // The end-of-sequence token ends the text; it is not a completion token.
            let is_eos = ev.text.is_none() && eos.contains(&ev.id);
            if !is_eos {
                // Counted even when nobody listens any more: the engine made it, and
                // tokens per pass measures the engine.
                s.n.generated.fetch_add(1, Ordering::Relaxed);
            }
            if !alive {
                return;
            }
            match still_wanted(s, id) {
                Ok(()) => {}
                Err(failure) => {
                    alive = false;
                    cancelled = true;
                    if let Some(msg) = failure {
                        sink(GenEvent::Failed(msg.into()));
                    }
                    return;
                }
            }
            if is_eos {
                return;
            }
            let piece = ev.text.clone().unwrap_or_default();
            raw.push_str(&piece);
            let text = stop.push(&piece);
            if !sink(GenEvent::Token { id: ev.id, text, logprob: None }) {
                alive = false;
                cancelled = true;
            }
        })
    }));
    if cancelled {
        s.n.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    let event = match result {
        Ok(Ok((gens, timings))) => {
            s.n.passes.fetch_add(timings.engine.passes, Ordering::Relaxed);
            s.n.streamed.fetch_add(timings.engine.streamed_bytes, Ordering::Relaxed);
            match gens.into_iter().next() {
                Some(g) => {
                    // The final text is a full decode of the ids; the stream may have held
                    // back an incomplete character at the end.
                    let extra = match g.text.strip_prefix(raw.as_str()) {
                        Some(rest) if g.finish != FinishReason::Stop => rest,
                        Some(_) => "",
                        None => {
                            tracing::warn!(
                                id,
                                "the final decode does not extend the streamed text; keeping the stream"
                            );
                            ""
                        }
                    };
                    let mut text = stop.push(extra);
                    let reason = if stop.stopped() { FinishReason::Stop } else { g.finish };
                    if !stop.stopped() {
                        text.push_str(&stop.finish());
                    }
                    GenEvent::Finished {
                        reason,
                        text,
                        prompt_tokens: g.prompt_ids.len(),
                        completion_tokens: g.new_ids.len(),
                    }
                }
                None => GenEvent::Failed("the engine returned no generation".into()),
            }
        }
        Ok(Err(e)) => GenEvent::Failed(format!("generation failed: {e}")),
        Err(_) => GenEvent::Failed("the engine panicked during generation (see the server log)".into()),
    };
    if alive {
        sink(event);
    }
}

fn encode_error(e: EngineError, param: &str) -> BackendError {
    match e {
        EngineError::Tokenizer { .. } | EngineError::Invalid { .. } => {
            BackendError::Invalid { param: param.into(), message: e.to_string() }
        }
        other => BackendError::Internal(other.to_string()),
    }
}

impl Backend for SerialBackend {
    fn model_name(&self) -> String {
        self.name.clone()
    }

    fn context_len(&self) -> usize {
        self.context
    }

    fn encode_chat(&self, messages: &[ChatMessage]) -> std::result::Result<Vec<u32>, BackendError> {
        if !self.tokenizer.has_chat_template() {
            return Err(BackendError::Invalid {
                param: "messages".into(),
                message: "this model has no chat template; use POST /v1/completions with a plain prompt".into(),
            });
        }
        self.tokenizer.encode_chat(messages).map_err(|e| encode_error(e, "messages"))
    }

    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, BackendError> {
        self.tokenizer.encode(text).map_err(|e| encode_error(e, "prompt"))
    }

    fn submit(&self, req: GenRequest, sink: Sink) -> std::result::Result<RequestId, SubmitError> {
        if req.top_logprobs.is_some() {
            return Err(SubmitError::Invalid {
                param: "logprobs".into(),
                message: "logprobs not supported by this backend (the serial engine has no logits yet); leave \
                          logprobs out"
                    .into(),
            });
        }
        if req.prompt_ids.is_empty() {
            return Err(SubmitError::Invalid { param: "prompt".into(), message: "the prompt has no tokens".into() });
        }
        if req.prompt_ids.len() + req.max_new_tokens > self.context {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt_ids.len(),
                max_new_tokens: req.max_new_tokens,
                context: self.context,
            });
        }
        let mut q = self.shared.lock();
        if q.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if q.waiting.len() >= self.shared.max_waiting {
            return Err(SubmitError::QueueFull { waiting: q.waiting.len() });
        }
        q.next_id += 1;
        let id = q.next_id;
        q.waiting.push_back(Job { id, req, sink });
        self.shared.wake.notify_one();
        Ok(id)
    }

    fn cancel(&self, id: RequestId) {
        let mut q = self.shared.lock();
        if q.running == Some(id) {
            q.cancel.insert(id);
        } else if let Some(i) = q.waiting.iter().position(|j| j.id == id) {
            // Dropped here: it never reached the engine (its sink is not called).
            q.waiting.remove(i);
            self.shared.n.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn metrics(&self) -> BackendMetrics {
        let q = self.shared.lock();
        let n = &self.shared.n;
        let running = usize::from(q.running.is_some());
        BackendMetrics {
            running,
            waiting: q.waiting.len(),
            // Today's engine has one contiguous cache for one sequence: one "block".
            kv_blocks_used: running,
            kv_blocks_total: 1,
            passes_total: n.passes.load(Ordering::Relaxed),
            generated_tokens_total: n.generated.load(Ordering::Relaxed),
            prompt_tokens_total: n.prompt.load(Ordering::Relaxed),
            streamed_bytes_total: n.streamed.load(Ordering::Relaxed),
            cancelled_total: n.cancelled.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&self) {
        let waiting: Vec<Job> = {
            let mut q = self.shared.lock();
            q.shutting_down = true;
            q.waiting.drain(..).collect()
        };
        self.shared.wake.notify_all();
        self.shared.n.cancelled.fetch_add(waiting.len() as u64, Ordering::Relaxed);
        for mut j in waiting {
            (j.sink)(GenEvent::Failed("the server is shutting down; the request was cancelled".into()));
        }
    }
}

impl Drop for SerialBackend {
    fn drop(&mut self) {
        // The engine thread exits after the running request; not joined (it may be in a
        // long generation, and the process is usually exiting).
        self.shutdown();
    }
}

//! [`BatchedBackend`]: the engine's [`Scheduler`] behind the [`Backend`] trait, with
//! continuous batching: every running request shares each pass over the weights, a new
//! request joins the batch at the next pass boundary, and a finished, stopped or
//! cancelled one leaves it (its KV blocks freed) at once.
//!
//! Threads: one engine thread owns the [`AutoModel`] and the [`Scheduler`] (GPU objects
//! are created and used on that thread alone). HTTP threads only touch a small shared
//! inbox behind a mutex: `submit` checks the request against limits known up front
//! (context, vocabulary, queue length), pushes it and returns its id; `cancel` removes a
//! request still in the inbox or marks one the engine holds. The engine thread, at each
//! pass boundary, takes what arrived, applies cancels (`Scheduler::cancel` frees the KV
//! blocks there and then), runs one [`Scheduler::step`] without holding the lock, routes
//! the step's events to the sinks and publishes its gauges. It sleeps on a condition
//! variable while nothing is queued or running.
//!
//! What a client sees, per the trait: token text exactly as the scheduler releases it
//! (held back while it could begin a stop string; stop strings never appear), text held
//! back to the end in `Finished::text`, usage counts where an end-of-sequence token is
//! not a completion token (`completion_tokens` is the scheduler's generated ids, as
//! `airllm generate` reports them). Log-probabilities are the model's own distribution
//! (temperature 1, before any sampling setting), as vLLM reports them by default.
//!
//! Failures: an engine error in a pass fails the requests that were in it (the message
//! names the error) and serving goes on with the rest; a panic in a pass fails every
//! request the scheduler holds, since its state can no longer be trusted. Shutdown fails
//! what waits in the inbox at once and what the engine holds at the next boundary.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::backend::{
    Backend, BackendError, BackendMetrics, GenEvent, GenRequest, RequestId, SubmitError, TokenLogprob, TopLogprob,
};
use crate::engine::EngineStats;
use crate::error::{EngineError, Result};
use crate::model::{AutoModel, FinishReason};
use crate::options::GenerateOptions;
use crate::scheduler::{self, Event, Request, Scheduler};
use crate::tokenizer::{ChatMessage, TextTokenizer};

type Sink = Box<dyn FnMut(GenEvent) -> bool + Send>;

const SHUTDOWN_MSG: &str = "the server is shutting down; the request was cancelled";

struct Job {
    id: RequestId,
    req: GenRequest,
    sink: Sink,
}

/// What the HTTP threads and the engine thread share.
#[derive(Default)]
struct Inbox {
    next_id: RequestId,
    /// Accepted, not yet taken by the engine.
    new: VecDeque<Job>,
    /// Ids the engine holds that the server cancelled since the last boundary.
    cancel: HashSet<RequestId>,
    /// Ids the engine holds (taken from `new`, no terminal event yet).
    held: HashSet<RequestId>,
    /// The scheduler's gauges at the last boundary.
    running: usize,
    sched_waiting: usize,
    kv_used: usize,
    kv_total: usize,
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
    q: Mutex<Inbox>,
    wake: Condvar,
    n: Counters,
    max_waiting: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // A panic elsewhere cannot leave the inbox half-updated; keep serving.
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Continuous batching over an [`AutoModel`]. See the module docs.
pub struct BatchedBackend {
    shared: Arc<Shared>,
    tokenizer: Arc<TextTokenizer>,
    name: String,
    context: usize,
    vocab: usize,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BatchedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedBackend").field("name", &self.name).field("context", &self.context).finish()
    }
}

/// What the engine thread reports once the model is loaded.
struct Loaded {
    tokenizer: TextTokenizer,
    context: usize,
    vocab: usize,
}

impl BatchedBackend {
    /// Start the engine thread, load the model there with `load` (so GPU objects are
    /// created and used on one thread), and return once it is ready to serve `name`.
    /// Requests beyond the engine's `max_sequences` wait; at most `max_waiting` may wait
    /// (more get [`SubmitError::QueueFull`]).
    pub fn spawn<E: std::fmt::Display>(
        name: String,
        max_waiting: usize,
        load: impl FnOnce() -> std::result::Result<AutoModel, E> + Send + 'static,
    ) -> Result<BatchedBackend> {
        let shared = Arc::new(Shared {
            q: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            n: Counters::default(),
            max_waiting,
        });
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<Loaded, String>>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("airllm-engine".into())
            .spawn(move || {
                let mut model = match catch_unwind(AssertUnwindSafe(load)) {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return;
                    }
                    Err(_) => {
                        let _ = tx.send(Err("the engine panicked while loading the model (see the log)".into()));
                        return;
                    }
                };
                let e = model.engine();
                // A request must fit the context and, alone, the KV pool.
                let pool_tokens = e.total_blocks().saturating_mul(e.capacity().kv_block);
                let loaded = Loaded {
                    tokenizer: model.tokenizer().clone(),
                    context: e.max_context().min(pool_tokens),
                    vocab: e.spec().vocab_size,
                };
                // The pool's size is known now: /metrics shows it before the first request.
                s.lock().kv_total = e.total_blocks();
                let _ = tx.send(Ok(loaded));
                let _gone = EngineGone(&s);
                engine_loop(&s, &mut model);
            })
            .map_err(|e| EngineError::invalid("serve", format!("cannot start the engine thread: {e}")))?;
        let loaded = rx
            .recv()
            .map_err(|_| EngineError::invalid("serve", "the engine thread stopped while loading the model"))?
            .map_err(|e| EngineError::invalid("--model", e))?;
        Ok(BatchedBackend {
            shared,
            tokenizer: Arc::new(loaded.tokenizer),
            name,
            context: loaded.context,
            vocab: loaded.vocab,
            thread: Some(thread),
        })
    }
}

/// Dropped when the engine thread ends, however it ends: the backend then refuses new
/// requests and fails what still waits in the inbox, so no client waits forever.
struct EngineGone<'a>(&'a Shared);

impl Drop for EngineGone<'_> {
    fn drop(&mut self) {
        let jobs: Vec<Job> = {
            let mut q = self.0.lock();
            q.shutting_down = true;
            q.held.clear();
            q.running = 0;
            q.sched_waiting = 0;
            q.new.drain(..).collect()
        };
        if std::thread::panicking() {
            tracing::error!("the engine thread panicked outside a pass; the server accepts no more requests");
        }
        for mut j in jobs {
            (j.sink)(GenEvent::Failed("the engine stopped; the request was not run".into()));
        }
    }
}

/// A request the scheduler holds, as the engine thread tracks it.
struct Live {
    id: RequestId,
    sink: Sink,
    logprobs: bool,
    /// Text sent in `Token` events so far.
    streamed: String,
    /// Text the scheduler released at the end (`Event::Text`), for `Finished::text`.
    tail: String,
    /// The sink returned false: nothing more goes to it.
    dead: bool,
}

/// The engine thread's state besides the model.
struct EngineState {
    sched: Scheduler,
    /// By scheduler id.
    live: HashMap<scheduler::RequestId, Live>,
    /// Backend id to scheduler id.
    by_id: HashMap<RequestId, scheduler::RequestId>,
    /// Backend ids that reached their end since the last boundary.
    ended: Vec<RequestId>,
    /// Engine counters at start (passes and streamed bytes are counted from there).
    base: EngineStats,
    eos: Vec<u32>,
}

fn engine_loop(s: &Shared, model: &mut AutoModel) {
    let mut st = EngineState {
        // The backend bounds the queue itself (inbox + scheduler), so the scheduler's is open.
        sched: {
            let mut sched = Scheduler::new(usize::MAX);
            // Speculation, when the model was loaded with a drafter: per request,
            // while no batch fills the pass.
            sched.set_speculation(model.set_speculation(None));
            sched
        },
        live: HashMap::new(),
        by_id: HashMap::new(),
        ended: Vec::new(),
        base: model.engine().stats(),
        eos: model.tokenizer().eos_ids().to_vec(),
    };
    st.publish(s, model);
    loop {
        // Pass boundary: take what arrived, under the lock; sleep while there is nothing to do.
        let (jobs, cancels, shutting_down) = {
            let mut q = s.lock();
            while q.new.is_empty() && q.cancel.is_empty() && st.sched.is_idle() && !q.shutting_down {
                q = s.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let jobs: Vec<Job> = q.new.drain(..).collect();
            for j in &jobs {
                q.held.insert(j.id);
            }
            // They wait in the scheduler now; `publish` settles the count after the pass,
            // so `submit`'s queue bound never undercounts.
            q.sched_waiting += jobs.len();
            (jobs, std::mem::take(&mut q.cancel), q.shutting_down)
        };
        if shutting_down {
            st.fail_all(s, model, jobs, SHUTDOWN_MSG, true);
            st.publish(s, model);
            return;
        }
        st.admit(s, model, jobs);
        st.apply_cancels(s, model, &cancels);
        if !st.sched.is_idle() {
            st.pass(s, model);
        }
        st.publish(s, model);
    }
}

impl EngineState {
    /// Hand the new requests to the scheduler.
    fn admit(&mut self, s: &Shared, model: &mut AutoModel, jobs: Vec<Job>) {
        for Job { id, req, mut sink } in jobs {
            let prompt_tokens = req.prompt_ids.len();
            let logprobs = req.top_logprobs.is_some();
            let opts = generate_options(&req);
            let request = Request::new(req.prompt_ids, opts, 0);
            match self.sched.submit(model.engine(), request) {
                Ok(sid) => {
                    s.n.prompt.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                    self.by_id.insert(id, sid);
                    let live = Live { id, sink, logprobs, streamed: String::new(), tail: String::new(), dead: false };
                    self.live.insert(sid, live);
                }
                Err(e) => {
                    // `submit` checked what it could up front; this is the scheduler's word.
                    self.ended.push(id);
                    sink(GenEvent::Failed(format!("the request was refused: {e}")));
                }
            }
        }
    }

    /// Drop the requests the server cancelled (their KV blocks are freed now).
    fn apply_cancels(&mut self, s: &Shared, model: &mut AutoModel, cancels: &HashSet<RequestId>) {
        for id in cancels {
            let Some(sid) = self.by_id.get(id).copied() else { continue };
            self.drop_request(model, sid);
            s.n.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remove a request from the scheduler and from the tables, without a terminal event.
    fn drop_request(&mut self, model: &mut AutoModel, sid: scheduler::RequestId) {
        self.sched.cancel(model.engine_mut(), sid, &mut |_| {});
        if let Some(l) = self.live.remove(&sid) {
            self.by_id.remove(&l.id);
            self.ended.push(l.id);
        }
    }

    /// One pass over the weights, its events routed to the sinks.
    fn pass(&mut self, s: &Shared, model: &mut AutoModel) {
        let mut events = Vec::new();
        let result = {
            let (engine, tok) = model.parts_mut();
            let sched = &mut self.sched;
            catch_unwind(AssertUnwindSafe(|| sched.step(engine, tok, &mut |ev| events.push(ev))))
        };
        // Route what the step produced before failing anything: a lone sequence that
        // filled the pool may have finished before the engine ran.
        let routed = catch_unwind(AssertUnwindSafe(|| self.route(s, model.tokenizer(), events)));
        let gone = match routed {
            Ok(gone) => gone,
            Err(_) => {
                tracing::error!("a sink panicked while routing a pass's events");
                self.fail_all(s, model, Vec::new(), "the server failed while sending this request's tokens", false);
                return;
            }
        };
        for sid in gone {
            self.drop_request(model, sid);
        }
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!("a pass failed: {e}");
                let msg = format!("the engine failed while generating this request: {e}");
                let running: Vec<_> = self.sched.running_ids().collect();
                for sid in running {
                    if let Some(mut l) = self.live.remove(&sid) {
                        self.by_id.remove(&l.id);
                        self.ended.push(l.id);
                        if !l.dead {
                            (l.sink)(GenEvent::Failed(msg.clone()));
                        }
                    }
                    self.sched.cancel(model.engine_mut(), sid, &mut |_| {});
                }
            }
            Err(_) => {
                tracing::error!("the engine panicked during a pass; failing every request it held");
                let msg = "the engine panicked during generation (see the server log)";
                self.fail_all(s, model, Vec::new(), msg, false);
            }
        }
    }

    /// Send a step's events to their sinks; returns the scheduler ids whose sink is gone.
    fn route(&mut self, s: &Shared, tok: &TextTokenizer, events: Vec<Event>) -> Vec<scheduler::RequestId> {
        let mut gone = Vec::new();
        for ev in events {
            match ev {
                Event::Token { id: sid, token, text, logprob } => {
                    let Some(l) = self.live.get_mut(&sid) else { continue };
                    // The end-of-sequence token ends the text; it is not a completion token.
                    if text.is_none() && self.eos.contains(&token) {
                        continue;
                    }
                    // Counted even when nobody listens any more: the engine made it, and
                    // tokens per pass measures the engine.
                    s.n.generated.fetch_add(1, Ordering::Relaxed);
                    if l.dead {
                        continue;
                    }
                    let text = text.unwrap_or_default();
                    l.streamed.push_str(&text);
                    let logprob = if l.logprobs { logprob.map(|lp| map_logprob(tok, token, &lp)) } else { None };
                    if !(l.sink)(GenEvent::Token { id: token, text, logprob }) {
                        l.dead = true;
                        s.n.cancelled.fetch_add(1, Ordering::Relaxed);
                        gone.push(sid);
                    }
                }
                Event::Text { id: sid, text } => {
                    if let Some(l) = self.live.get_mut(&sid) {
                        l.tail.push_str(&text);
                    }
                }
                Event::Finished { id: sid, reason, ids, text, prompt_tokens, .. } => {
                    let Some(mut l) = self.live.remove(&sid) else { continue };
                    self.by_id.remove(&l.id);
                    self.ended.push(l.id);
                    if l.dead || reason == FinishReason::Cancelled {
                        continue;
                    }
                    let text = final_text(&l.streamed, l.tail, &text, l.id);
                    (l.sink)(GenEvent::Finished { reason, text, prompt_tokens, completion_tokens: ids.len() });
                }
            }
        }
        gone
    }

    /// End every request the engine holds (and `jobs`, not yet handed over) with
    /// `Failed(msg)`, freeing their KV blocks. `shutdown` counts them as cancelled.
    fn fail_all(&mut self, s: &Shared, model: &mut AutoModel, jobs: Vec<Job>, msg: &str, shutdown: bool) {
        let mut failed = 0u64;
        for mut j in jobs {
            self.ended.push(j.id);
            failed += 1;
            (j.sink)(GenEvent::Failed(msg.into()));
        }
        let sids: Vec<scheduler::RequestId> = self.live.keys().copied().collect();
        for sid in sids {
            if let Some(mut l) = self.live.remove(&sid) {
                self.by_id.remove(&l.id);
                self.ended.push(l.id);
                if !l.dead {
                    failed += 1;
                    (l.sink)(GenEvent::Failed(msg.into()));
                }
            }
            let engine = model.engine_mut();
            let sched = &mut self.sched;
            if catch_unwind(AssertUnwindSafe(|| sched.cancel(engine, sid, &mut |_| {}))).is_err() {
                tracing::error!("the scheduler panicked while freeing a request; starting a fresh one");
                self.sched = Scheduler::new(usize::MAX);
            }
        }
        if shutdown {
            s.n.cancelled.fetch_add(failed, Ordering::Relaxed);
        }
    }

    /// Publish the gauges and counters, and forget the ids that ended.
    fn publish(&mut self, s: &Shared, model: &AutoModel) {
        let e = model.engine();
        let stats = self.base.since(&e.stats());
        s.n.passes.store(stats.passes, Ordering::Relaxed);
        s.n.streamed.store(stats.streamed_bytes, Ordering::Relaxed);
        let mut q = s.lock();
        q.running = self.sched.running();
        q.sched_waiting = self.sched.waiting();
        q.kv_total = e.total_blocks();
        q.kv_used = e.total_blocks().saturating_sub(e.free_blocks());
        for id in self.ended.drain(..) {
            q.held.remove(&id);
        }
    }
}

/// The text to send with `Finished`: what the scheduler released at the end, or, should
/// its final decode not extend the streamed text that way, the part it adds to it.
fn final_text(streamed: &str, tail: String, full: &str, id: RequestId) -> String {
    if full.len() == streamed.len() + tail.len() && full.starts_with(streamed) && full.ends_with(tail.as_str()) {
        return tail;
    }
    match full.strip_prefix(streamed) {
        Some(rest) => rest.to_string(),
        None => {
            tracing::warn!(id, "the final decode does not extend the streamed text; keeping the stream");
            tail
        }
    }
}

/// The scheduler's options for a request.
fn generate_options(req: &GenRequest) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: req.max_new_tokens,
        temperature: req.temperature,
        top_k: 0,
        top_p: req.top_p,
        repetition_penalty: 1.0,
        seed: req.seed,
        // Empty stop strings never match (as `StopFilter` treats them).
        stop_strings: req.stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
        stop_at_eos: true,
        logprobs: req.top_logprobs,
        cancel: None,
        logits_hook: None,
    }
}

/// The scheduler's log-probabilities with each token's text and bytes.
fn map_logprob(tok: &TextTokenizer, chosen: u32, lp: &scheduler::TokenLogprob) -> TokenLogprob {
    TokenLogprob {
        chosen: top_logprob(tok, chosen, lp.logprob),
        top: lp.top.iter().map(|&(id, logprob)| top_logprob(tok, id, logprob)).collect(),
    }
}

fn top_logprob(tok: &TextTokenizer, id: u32, logprob: f32) -> TopLogprob {
    let (token, bytes) = token_text(tok, id);
    TopLogprob { id, token, bytes, logprob }
}

/// A token's own text and bytes: its decoded piece; a special token's name (decoding
/// skips special tokens); for a piece that is part of a multi-byte character, the raw
/// bytes (from a byte-fallback `<0xNN>` entry or a byte-level BPE entry).
fn token_text(tok: &TextTokenizer, id: u32) -> (String, Vec<u8>) {
    let text = tok.decode(&[id]);
    let entry = tok.id_to_token(id);
    if text.is_empty() {
        let name = entry.unwrap_or_default();
        let bytes = name.clone().into_bytes();
        return (name, bytes);
    }
    if text.contains('\u{FFFD}')
        && let Some(b) = entry.as_deref().and_then(|e| byte_fallback(e).or_else(|| byte_level(e)))
    {
        return (String::from_utf8_lossy(&b).into_owned(), b);
    }
    let bytes = text.clone().into_bytes();
    (text, bytes)
}

/// `<0xE2>` → `[0xE2]`.
fn byte_fallback(entry: &str) -> Option<Vec<u8>> {
    let hex = entry.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten().map(|b| vec![b])
}

/// A byte-level BPE entry (GPT-2's byte-to-character table) back to its bytes.
fn byte_level(entry: &str) -> Option<Vec<u8>> {
    // Bytes printable in Latin-1 stand for themselves; the other 68 map, in order, to 256...
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let others: Vec<u8> = (0u32..=255).filter(|&b| !printable(b)).map(|b| b as u8).collect();
    entry
        .chars()
        .map(|c| {
            let c = c as u32;
            if printable(c) { Some(c as u8) } else { c.checked_sub(256).and_then(|i| others.get(i as usize).copied()) }
        })
        .collect()
}

fn encode_error(e: EngineError, param: &str) -> BackendError {
    match e {
        EngineError::Tokenizer { .. } | EngineError::Invalid { .. } => {
            BackendError::Invalid { param: param.into(), message: e.to_string() }
        }
        other => BackendError::Internal(other.to_string()),
    }
}

impl Backend for BatchedBackend {
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
        let invalid = |param: &str, message: String| SubmitError::Invalid { param: param.into(), message };
        if req.prompt_ids.is_empty() {
            return Err(invalid("prompt", "the prompt has no tokens".into()));
        }
        if let Some(&bad) = req.prompt_ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(invalid(
                "prompt",
                format!("token id {bad} is not in this model's vocabulary (ids are below {})", self.vocab),
            ));
        }
        if req.max_new_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1".into()));
        }
        if req.prompt_ids.len().saturating_add(req.max_new_tokens) > self.context {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt_ids.len(),
                max_new_tokens: req.max_new_tokens,
                context: self.context,
            });
        }
        if let Err(e) = generate_options(&req).validate() {
            return Err(match e {
                EngineError::Invalid { option, message } => SubmitError::Invalid { param: option, message },
                other => invalid("request", other.to_string()),
            });
        }
        let mut q = self.shared.lock();
        if q.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        let waiting = q.new.len() + q.sched_waiting;
        if waiting >= self.shared.max_waiting {
            return Err(SubmitError::QueueFull { waiting });
        }
        q.next_id += 1;
        let id = q.next_id;
        q.new.push_back(Job { id, req, sink });
        self.shared.wake.notify_one();
        Ok(id)
    }

    fn cancel(&self, id: RequestId) {
        let mut q = self.shared.lock();
        if let Some(i) = q.new.iter().position(|j| j.id == id) {
            // It never reached the engine: dropped here, its sink not called.
            q.new.remove(i);
            self.shared.n.cancelled.fetch_add(1, Ordering::Relaxed);
        } else if q.held.contains(&id) {
            q.cancel.insert(id);
            self.shared.wake.notify_one();
        }
    }

    fn metrics(&self) -> BackendMetrics {
        let q = self.shared.lock();
        let n = &self.shared.n;
        BackendMetrics {
            running: q.running,
            waiting: q.new.len() + q.sched_waiting,
            kv_blocks_used: q.kv_used,
            kv_blocks_total: q.kv_total,
            passes_total: n.passes.load(Ordering::Relaxed),
            generated_tokens_total: n.generated.load(Ordering::Relaxed),
            prompt_tokens_total: n.prompt.load(Ordering::Relaxed),
            streamed_bytes_total: n.streamed.load(Ordering::Relaxed),
            cancelled_total: n.cancelled.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&self) {
        let jobs: Vec<Job> = {
            let mut q = self.shared.lock();
            q.shutting_down = true;
            q.new.drain(..).collect()
        };
        self.shared.wake.notify_all();
        self.shared.n.cancelled.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for mut j in jobs {
            (j.sink)(GenEvent::Failed(SHUTDOWN_MSG.into()));
        }
    }
}

impl Drop for BatchedBackend {
    fn drop(&mut self) {
        // The engine thread stops at the next pass boundary; wait for it so the model
        // (and its GPU objects) are gone when the backend is.
        self.shutdown();
        // (Not from the engine thread itself: a sink that held the last reference.)
        if let Some(h) = self.thread.take()
            && h.thread().id() != std::thread::current().id()
            && h.join().is_err()
        {
            tracing::error!("the engine thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{byte_fallback, byte_level, final_text};

    #[test]
    fn byte_fallback_entries() {
        assert_eq!(byte_fallback("<0xE2>"), Some(vec![0xE2]));
        assert_eq!(byte_fallback("<0xE>"), None);
        assert_eq!(byte_fallback("hello"), None);
    }

    #[test]
    fn byte_level_entries() {
        // "Ġ" is GPT-2's stand-in for a space (byte 32, the 33rd non-printable byte).
        assert_eq!(byte_level("Ġhi"), Some(b" hi".to_vec()));
        // "â" (U+00E2) stands for itself: the first byte of a 3-byte character.
        assert_eq!(byte_level("â"), Some(vec![0xE2]));
        assert_eq!(byte_level("\u{1F600}"), None);
    }

    #[test]
    fn final_text_keeps_the_invariant() {
        assert_eq!(final_text("ab", "c".into(), "abc", 1), "c");
        // The final decode completed a character the stream held back.
        assert_eq!(final_text("ab", String::new(), "abé", 1), "é");
        assert_eq!(final_text("ab", "x".into(), "zz", 1), "x");
    }
}

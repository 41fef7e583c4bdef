//! A deterministic backend for tests and for measuring the server's own overhead: no
//! model, no GPU, but the same shape as the batched engine: a thread that runs passes,
//! a bounded waiting queue, at most `max_sequences` running, admission while KV blocks
//! are free, cancellation at pass boundaries, stop strings, log-probabilities.
//!
//! Its "tokenizer" maps each byte of the text to one id (so prompt lengths are byte
//! counts); a chat renders as `<|role|>content\n` per message plus `<|assistant|>`.
//! Generated tokens are words from a fixed list, chosen by a hash of the prompt, the
//! position and (at temperature > 0) the seed, each followed by a space: the same
//! request always gives the same text. A prompt containing the bytes `FAIL` makes the
//! request fail after two tokens (to test the failure path).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::backend::{
    Backend, BackendError, BackendMetrics, GenEvent, GenRequest, RequestId, StopFilter, SubmitError, TokenLogprob,
    TopLogprob,
};
use crate::FinishReason;
use crate::tokenizer::ChatMessage;

/// The words the mock generates; their ids are `WORD_BASE + index`.
pub const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
    "mike", "november", "oscar", "papa",
];
/// The id of `WORDS[0]`.
pub const WORD_BASE: u32 = 1000;

/// Limits and speed of a [`MockBackend`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Name served.
    pub model_name: String,
    /// Context length in tokens (bytes of prompt + generated words).
    pub context_len: usize,
    /// Sequences running at once.
    pub max_sequences: usize,
    /// Requests waiting at most (beyond: `QueueFull`).
    pub max_waiting: usize,
    /// KV blocks in the pool; a sequence reserves `ceil((prompt + max_new) / block_size)`.
    pub kv_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Time one pass takes.
    pub pass_delay: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            model_name: "mock".into(),
            context_len: 512,
            max_sequences: 8,
            max_waiting: 32,
            kv_blocks: 256,
            block_size: 16,
            pass_delay: Duration::from_millis(2),
        }
    }
}

type Sink = Box<dyn FnMut(GenEvent) -> bool + Send>;

struct Seq {
    id: RequestId,
    req: GenRequest,
    sink: Sink,
    blocks: usize,
    generated: usize,
    stop: StopFilter,
    fail: bool,
}

#[derive(Default)]
struct Queue {
    next_id: RequestId,
    waiting: VecDeque<Seq>,
    /// Ids of the running batch (the sequences themselves are with the engine thread).
    running: HashSet<RequestId>,
    cancel: HashSet<RequestId>,
    kv_used: usize,
    shutting_down: bool,
}

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    generated: AtomicU64,
    prompt: AtomicU64,
    cancelled: AtomicU64,
}

struct Shared {
    cfg: MockConfig,
    q: Mutex<Queue>,
    wake: Condvar,
    n: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic in a sink cannot leave the queue half-updated; keep serving.
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The deterministic backend. See the module docs.
pub struct MockBackend {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for MockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBackend").field("cfg", &self.shared.cfg).finish()
    }
}

impl MockBackend {
    /// Start the engine thread.
    pub fn new(cfg: MockConfig) -> MockBackend {
        let shared =
            Arc::new(Shared { cfg, q: Mutex::new(Queue::default()), wake: Condvar::new(), n: Counters::default() });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("airllm-mock-engine".into()).spawn(move || engine(&s)).ok();
        MockBackend { shared, thread: Mutex::new(thread) }
    }

    /// The text the mock generates for `req` (before stop strings and length limits are
    /// applied: `n` words), to check responses against.
    pub fn expected_words(req: &GenRequest, n: usize) -> String {
        (0..n).map(|i| format!("{} ", WORDS[word(req, i)])).collect()
    }

    fn blocks_for(&self, req: &GenRequest) -> usize {
        (req.prompt_ids.len() + req.max_new_tokens).div_ceil(self.shared.cfg.block_size.max(1))
    }
}

fn word(req: &GenRequest, pos: usize) -> usize {
    // FNV-1a over the prompt, the position and (when sampling) the seed.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut mix = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x100000001b3);
    };
    req.prompt_ids.iter().for_each(|&id| mix(id as u64));
    mix(pos as u64);
    if req.temperature > 0.0 {
        mix(req.seed);
    }
    // FNV alone mixes the last input poorly into the high bits: finish with splitmix64.
    let mut z = h.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    ((z ^ (z >> 31)) % WORDS.len() as u64) as usize
}

fn logprob_of(req: &GenRequest, w: usize, k: usize) -> TokenLogprob {
    let tp = |i: usize, lp: f32| {
        let t = format!("{} ", WORDS[i]);
        TopLogprob { id: WORD_BASE + i as u32, bytes: t.clone().into_bytes(), token: t, logprob: lp }
    };
    // The chosen word is the most likely; the others follow it in list order.
    let chosen = -0.05 - 0.01 * (w as f32);
    let top = (0..k.min(WORDS.len())).map(|j| tp((w + j) % WORDS.len(), chosen - j as f32)).collect();
    let _ = req;
    TokenLogprob { chosen: tp(w, chosen), top }
}

fn contains_fail(ids: &[u32]) -> bool {
    ids.windows(4).any(|w| w == [b'F' as u32, b'A' as u32, b'I' as u32, b'L' as u32])
}

/// One step of a running sequence: the events to send and whether it ended.
fn step(seq: &mut Seq) -> (Vec<GenEvent>, bool) {
    if seq.fail && seq.generated == 2 {
        return (vec![GenEvent::Failed("mock failure (the prompt asked for it)".into())], true);
    }
    let w = word(&seq.req, seq.generated);
    seq.generated += 1;
    let piece = format!("{} ", WORDS[w]);
    let text = seq.stop.push(&piece);
    let logprob = seq.req.top_logprobs.map(|k| logprob_of(&seq.req, w, k));
    let mut evs = vec![GenEvent::Token { id: WORD_BASE + w as u32, text, logprob }];
    let prompt_tokens = seq.req.prompt_ids.len();
    if seq.stop.stopped() {
        evs.push(GenEvent::Finished {
            reason: FinishReason::Stop,
            text: String::new(),
            prompt_tokens,
            completion_tokens: seq.generated,
        });
        return (evs, true);
    }
    if seq.generated >= seq.req.max_new_tokens {
        evs.push(GenEvent::Finished {
            reason: FinishReason::Length,
            text: seq.stop.finish(),
            prompt_tokens,
            completion_tokens: seq.generated,
        });
        return (evs, true);
    }
    (evs, false)
}

fn engine(s: &Shared) {
    let mut batch: Vec<Seq> = Vec::new();
    loop {
        // Pass boundary: apply cancels, shutdown and admission under the lock.
        let mut failed: Vec<Seq> = Vec::new();
        let exit;
        {
            let mut q = s.lock();
            while batch.is_empty() && q.waiting.is_empty() && !q.shutting_down {
                q = s.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let cancel = std::mem::take(&mut q.cancel);
            let before = q.waiting.len() + batch.len();
            q.waiting.retain(|x| !cancel.contains(&x.id));
            let mut freed = 0;
            batch.retain(|x| {
                let keep = !cancel.contains(&x.id);
                if !keep {
                    freed += x.blocks;
                }
                keep
            });
            q.kv_used -= freed;
            let gone = before - q.waiting.len() - batch.len();
            s.n.cancelled.fetch_add(gone as u64, Ordering::Relaxed);
            exit = q.shutting_down;
            if q.shutting_down {
                failed.extend(q.waiting.drain(..));
                failed.append(&mut batch);
                q.kv_used = 0;
                q.running.clear();
            } else {
                while batch.len() < s.cfg.max_sequences {
                    let Some(front) = q.waiting.front() else { break };
                    if q.kv_used + front.blocks > s.cfg.kv_blocks {
                        break;
                    }
                    let Some(x) = q.waiting.pop_front() else { break };
                    q.kv_used += x.blocks;
                    q.running.insert(x.id);
                    s.n.prompt.fetch_add(x.req.prompt_ids.len() as u64, Ordering::Relaxed);
                    batch.push(x);
                }
                for id in &cancel {
                    q.running.remove(id);
                }
            }
        }
        if exit {
            s.n.cancelled.fetch_add(failed.len() as u64, Ordering::Relaxed);
            for mut x in failed {
                (x.sink)(GenEvent::Failed("the server is shutting down; the request was cancelled".into()));
            }
            return;
        }
        if batch.is_empty() {
            continue;
        }
        // The pass: one token for every running sequence, sinks called without the lock.
        std::thread::sleep(s.cfg.pass_delay);
        s.n.passes.fetch_add(1, Ordering::Relaxed);
        let mut ended: Vec<(RequestId, usize, bool)> = Vec::new();
        // A finished sequence's last event is sent only after its blocks and
        // its running slot are released, so a client that has seen `Finished`
        // reads metrics that no longer count it (as with the real backend).
        let mut last: Vec<(usize, GenEvent)> = Vec::new();
        for (i, x) in batch.iter_mut().enumerate() {
            let (mut evs, done) = step(x);
            let held = if done { evs.pop() } else { None };
            let mut alive = true;
            for ev in evs {
                if matches!(ev, GenEvent::Token { .. }) {
                    s.n.generated.fetch_add(1, Ordering::Relaxed);
                }
                if !(x.sink)(ev) {
                    alive = false;
                    break;
                }
            }
            if let Some(ev) = held.filter(|_| alive) {
                last.push((i, ev));
            }
            if done || !alive {
                ended.push((x.id, x.blocks, !alive && !done));
            }
        }
        if !ended.is_empty() {
            {
                let mut q = s.lock();
                for (id, blocks, cancelled) in &ended {
                    q.kv_used -= blocks;
                    q.running.remove(id);
                    q.cancel.remove(id);
                    if *cancelled {
                        s.n.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for (i, ev) in last {
                if matches!(ev, GenEvent::Token { .. }) {
                    s.n.generated.fetch_add(1, Ordering::Relaxed);
                }
                (batch[i].sink)(ev);
            }
            batch.retain(|x| !ended.iter().any(|(id, _, _)| *id == x.id));
        }
    }
}

impl Backend for MockBackend {
    fn model_name(&self) -> String {
        self.shared.cfg.model_name.clone()
    }

    fn context_len(&self) -> usize {
        self.shared.cfg.context_len
    }

    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, BackendError> {
        let mut text = String::new();
        for m in messages {
            text.push_str(&format!("<|{}|>{}\n", m.role, m.content));
        }
        text.push_str("<|assistant|>");
        self.encode(&text)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, BackendError> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn submit(&self, req: GenRequest, sink: Sink) -> Result<RequestId, SubmitError> {
        let context = self.shared.cfg.context_len;
        if req.prompt_ids.len() + req.max_new_tokens > context {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt_ids.len(),
                max_new_tokens: req.max_new_tokens,
                context,
            });
        }
        if req.max_new_tokens == 0 {
            return Err(SubmitError::Invalid { param: "max_tokens".into(), message: "must be at least 1".into() });
        }
        let blocks = self.blocks_for(&req);
        if blocks > self.shared.cfg.kv_blocks {
            return Err(SubmitError::Invalid {
                param: "max_tokens".into(),
                message: format!("needs {blocks} KV blocks; the pool has {}", self.shared.cfg.kv_blocks),
            });
        }
        let mut q = self.shared.lock();
        if q.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if q.waiting.len() >= self.shared.cfg.max_waiting {
            return Err(SubmitError::QueueFull { waiting: q.waiting.len() });
        }
        q.next_id += 1;
        let id = q.next_id;
        let fail = contains_fail(&req.prompt_ids);
        let stop = StopFilter::new(&req.stop);
        q.waiting.push_back(Seq { id, req, sink, blocks, generated: 0, stop, fail });
        self.shared.wake.notify_one();
        Ok(id)
    }

    fn cancel(&self, id: RequestId) {
        let mut q = self.shared.lock();
        if q.running.contains(&id) || q.waiting.iter().any(|x| x.id == id) {
            q.cancel.insert(id);
            self.shared.wake.notify_one();
        }
    }

    fn metrics(&self) -> BackendMetrics {
        let q = self.shared.lock();
        let n = &self.shared.n;
        BackendMetrics {
            running: q.running.len(),
            waiting: q.waiting.len(),
            kv_blocks_used: q.kv_used,
            kv_blocks_total: self.shared.cfg.kv_blocks,
            passes_total: n.passes.load(Ordering::Relaxed),
            generated_tokens_total: n.generated.load(Ordering::Relaxed),
            prompt_tokens_total: n.prompt.load(Ordering::Relaxed),
            streamed_bytes_total: 0,
            cancelled_total: n.cancelled.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&self) {
        self.shared.lock().shutting_down = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.shutdown();
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn req(prompt: &str, n: usize) -> GenRequest {
        GenRequest {
            prompt_ids: prompt.bytes().map(u32::from).collect(),
            max_new_tokens: n,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
            top_logprobs: None,
        }
    }

    fn run(b: &MockBackend, r: GenRequest) -> Vec<GenEvent> {
        let (tx, rx) = mpsc::channel();
        b.submit(r, Box::new(move |ev| tx.send(ev).is_ok())).unwrap();
        let mut out = Vec::new();
        while let Ok(ev) = rx.recv_timeout(Duration::from_secs(10)) {
            let end = matches!(ev, GenEvent::Finished { .. } | GenEvent::Failed(_));
            out.push(ev);
            if end {
                break;
            }
        }
        out
    }

    #[test]
    fn deterministic_text_and_counts() {
        let b = MockBackend::new(MockConfig::default());
        let r = req("hello", 5);
        let evs = run(&b, r.clone());
        let text: String = evs
            .iter()
            .map(|e| match e {
                GenEvent::Token { text, .. } => text.clone(),
                GenEvent::Finished { text, .. } => text.clone(),
                GenEvent::Failed(m) => panic!("{m}"),
            })
            .collect();
        assert_eq!(text, MockBackend::expected_words(&r, 5));
        assert!(matches!(
            evs.last(),
            Some(GenEvent::Finished { reason: FinishReason::Length, prompt_tokens: 5, completion_tokens: 5, .. })
        ));
        let m = b.metrics();
        assert_eq!((m.running, m.waiting, m.kv_blocks_used, m.generated_tokens_total), (0, 0, 0, 5));
    }

    #[test]
    fn stop_strings_end_early_without_leaking() {
        let b = MockBackend::new(MockConfig::default());
        let mut r = req("hello", 20);
        let full = MockBackend::expected_words(&r, 20);
        let second = full.split(' ').nth(1).unwrap().to_string();
        r.stop = vec![second.clone()];
        let evs = run(&b, r);
        let text: String = evs
            .iter()
            .filter_map(|e| if let GenEvent::Token { text, .. } = e { Some(text.clone()) } else { None })
            .collect();
        assert_eq!(text, full[..full.find(&second).unwrap()]);
        assert!(matches!(evs.last(), Some(GenEvent::Finished { reason: FinishReason::Stop, .. })));
    }

    #[test]
    fn shutdown_fails_everything_in_flight() {
        let b = MockBackend::new(MockConfig { pass_delay: Duration::from_millis(20), ..Default::default() });
        let (tx, rx) = mpsc::channel();
        b.submit(req("x", 400), Box::new(move |ev| tx.send(ev).is_ok())).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        b.shutdown();
        let last = rx.iter().last();
        assert!(matches!(last, Some(GenEvent::Failed(_))), "{last:?}");
        assert_eq!(b.submit(req("x", 1), Box::new(|_| true)), Err(SubmitError::ShuttingDown));
    }
}

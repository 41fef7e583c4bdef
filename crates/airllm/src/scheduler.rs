//! The scheduler: turns generation requests into engine steps. `generate`,
//! `chat` and the server are its clients.
//!
//! Each [`Scheduler::step`] builds one pass over the weights:
//! 1. every running sequence that has a sampled token decodes it (one row);
//! 2. sequences still reading their prompt add a chunk, as far as the pass's
//!    row budget allows (long prompts are spread over several passes, so a
//!    pass stays bounded and decoding sequences keep their pace);
//! 3. waiting requests are admitted while KV blocks are free for their whole
//!    prompt and there is room in the pass.
//!
//! Invariants: a request is waiting, running or finished, never two; a
//! finished or cancelled request's KV blocks are freed at once; when the
//! pool runs dry mid-decode, the most recently admitted other sequence is
//! preempted (its blocks freed; it re-reads prompt + generated text later,
//! which gives the same tokens: recompute preemption, as vLLM does). A
//! request that cannot fit the pool even alone is refused at submission.
//!
//! Prefix reuse (chat turns): a request may bring a [`Retained`] sequence, one
//! an earlier request kept ([`Request::keep`]), with the exact ids its cache
//! holds. At admission the scheduler keeps the longest common prefix of those
//! ids and the new prompt (cutting the sequence there; at least the prompt's
//! last token is always read, for its logits) and reads only the rest; with no
//! common prefix, or a handle that does not match the engine's sequence, the
//! retained sequence is freed and the prompt is read from scratch. The KV of
//! positions `0..n` depends only on tokens `0..n`, so a cut prefix is exact.
//! A kept request's `Finished` event hands its sequence back, with exactly the
//! ids fed into its cache (the last sampled token is usually not among them:
//! it is fed only by the next step). Until a retained sequence is given to a
//! request again, or freed with [`Engine::remove_sequence`], its blocks stay
//! taken.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::engine::{Engine, Logits, SeqId, StepItem, Tree};
use crate::error::{EngineError, Result};
use crate::model::FinishReason;
use crate::options::GenerateOptions;
use crate::sampler::{Sampler, SamplerConfig};
use crate::spec::{self, DraftRequest, SpecStats, Speculator};
use crate::tokenizer::{StreamDecoder, TextTokenizer};

/// A request's handle.
pub type RequestId = u64;

/// Log-probability of a token, and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The chosen token's log-probability under the model (before sampling settings).
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// What a step produced for a request.
#[derive(Clone, Debug)]
pub enum Event {
    /// A generated token. `text` is the newly completed text, held back while
    /// it could still be the start of a stop string.
    Token {
        /// The request.
        id: RequestId,
        /// The token id.
        token: u32,
        /// Text completed by this token, if any.
        text: Option<String>,
        /// Log-probabilities, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// Text held back until the end (it could have been a stop string's start).
    Text {
        /// The request.
        id: RequestId,
        /// The text.
        text: String,
    },
    /// The request ended (EOS, stop string, length, or cancelled).
    Finished {
        /// The request.
        id: RequestId,
        /// Why.
        reason: FinishReason,
        /// Generated ids (up to, not including, a stop string).
        ids: Vec<u32>,
        /// Generated text (cut before a stop string).
        text: String,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Of those, how many were taken from a retained sequence's cache (not re-read).
        reused_tokens: usize,
        /// The request's sequence, kept when [`Request::keep`] asked for it (also
        /// when cancelled); the caller must pass it to a later request or free it.
        retained: Option<Retained>,
    },
}

/// A sequence kept after its request finished, and the ids its cache holds.
///
/// Give it to one later request ([`Request::reuse`]) or free it with
/// [`Engine::remove_sequence`]; until then its KV blocks stay taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    /// The engine sequence.
    pub seq: SeqId,
    /// Exactly the token ids fed into its cache, in order (`engine.sequence_len(seq)` of them).
    pub ids: Vec<u32>,
}

/// A generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Sampling and stopping.
    pub opts: GenerateOptions,
    /// The index this request's sequence has for `opts.logits_hook` (a batch's
    /// requests share one hook that keeps state per index).
    pub hook_seq: usize,
    /// A retained sequence whose cached prefix this prompt may start with: the
    /// common prefix is not re-read (see the module docs). If [`Scheduler::submit`]
    /// refuses the request, the sequence is still the caller's to free.
    pub reuse: Option<Retained>,
    /// Keep the sequence when the request ends and hand it back in
    /// [`Event::Finished::retained`] instead of freeing it.
    pub keep: bool,
}

impl Request {
    /// A request for `prompt` with no prefix reuse.
    pub fn new(prompt: Vec<u32>, opts: GenerateOptions, hook_seq: usize) -> Request {
        Request { prompt, opts, hook_seq, reuse: None, keep: false }
    }
}

struct Running {
    id: RequestId,
    seq: SeqId,
    /// Tokens the sequence's cache must hold before decoding: the prompt, or
    /// after a preemption prompt + generated.
    context: Vec<u32>,
    /// Of `context`, how many are in the cache.
    fed: usize,
    prompt_len: usize,
    generated: Vec<u32>,
    /// A sampled token not yet fed.
    next: Option<u32>,
    sampler: Sampler,
    decoder: StreamDecoder,
    text: String,
    /// Bytes of `text` already emitted.
    emitted: usize,
    opts: GenerateOptions,
    hook_seq: usize,
    /// Admission order (for choosing whom to preempt).
    admitted: u64,
    /// Exactly the ids fed into the sequence's cache (what a kept sequence holds).
    cached: Vec<u32>,
    /// Prompt tokens taken from a retained sequence at admission.
    reused: usize,
    /// Hand the sequence back when the request ends.
    keep: bool,
}

struct Waiting {
    id: RequestId,
    req: Request,
    /// Set when the request was preempted: its state so far.
    resumed: Option<Box<Running>>,
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Whether a pass ran.
    pub ran: bool,
    /// Token rows in the pass.
    pub rows: usize,
    /// Tokens sampled (generated) by it.
    pub sampled: usize,
    /// Sequences preempted to make room.
    pub preempted: usize,
}

/// Queues requests and runs them on an [`Engine`] in shared passes.
pub struct Scheduler {
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
    next_id: RequestId,
    admissions: u64,
    max_waiting: usize,
    cancel: Option<Arc<AtomicBool>>,
    /// Speculative decoding, when on.
    spec: Option<Speculator>,
}

/// One item of a pass being planned: a running request's tokens.
struct Planned {
    /// Index into `running`.
    ri: usize,
    tokens: Vec<u32>,
    logits: Logits,
    /// Parents of a verify tree (`tokens[0]` is the root: the sampled token).
    tree: Option<Vec<u32>>,
    /// A decode item speculation sized: (tree size asked for, seconds drafting).
    asked: Option<(usize, f64)>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("waiting", &self.waiting.len()).field("running", &self.running.len()).finish()
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new(usize::MAX)
    }
}

impl Scheduler {
    /// A scheduler that queues at most `max_waiting` requests.
    pub fn new(max_waiting: usize) -> Self {
        Scheduler {
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            admissions: 0,
            max_waiting,
            cancel: None,
            spec: None,
        }
    }

    /// Turns speculative decoding on (Some) or off (None); returns the
    /// speculator it replaces. Requests with a logits hook (constrained
    /// output) never speculate.
    pub fn set_speculation(&mut self, spec: Option<Speculator>) -> Option<Speculator> {
        std::mem::replace(&mut self.spec, spec)
    }

    /// Speculation counters so far (None: speculation is off).
    pub fn spec_stats(&self) -> Option<SpecStats> {
        self.spec.as_ref().map(|s| s.stats)
    }

    /// Cancels every request when `flag` becomes true (checked once per step).
    pub fn set_cancel_flag(&mut self, flag: Option<Arc<AtomicBool>>) {
        self.cancel = flag;
    }

    /// Requests waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Ids of the running requests (admitted: in the passes, holding KV blocks).
    pub fn running_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.running.iter().map(|r| r.id)
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues a request. Refused when the prompt cannot fit the context or the
    /// KV pool even alone, or the queue is full.
    pub fn submit(&mut self, engine: &Engine, req: Request) -> Result<RequestId> {
        req.opts.validate()?;
        if req.prompt.is_empty() {
            return Err(EngineError::invalid("prompt", "the prompt encoded to no tokens; give some text"));
        }
        let ctx = engine.max_context();
        if req.prompt.len() >= ctx {
            return Err(EngineError::PromptTooLong { prompt: req.prompt.len(), context: ctx });
        }
        let blocks = engine.blocks_needed(None, req.prompt.len() + 1);
        if blocks > engine.total_blocks() {
            return Err(EngineError::KvFull {
                needed: blocks,
                free: engine.free_blocks(),
                total: engine.total_blocks(),
                block: engine.capacity().kv_block,
            });
        }
        if self.waiting.len() >= self.max_waiting {
            return Err(EngineError::QueueFull { waiting: self.waiting.len() });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiting { id, req, resumed: None });
        Ok(id)
    }

    /// Cancels a request (waiting or running); its KV blocks are freed now.
    /// Returns whether it was found. A `Finished` event with
    /// [`FinishReason::Cancelled`] goes to `sink`.
    pub fn cancel(&mut self, engine: &mut Engine, id: RequestId, sink: &mut dyn FnMut(Event)) -> bool {
        if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            let w = self.waiting.remove(i);
            if let Some(w) = w {
                let (ids, text) = w.resumed.map(|r| (r.generated, r.text)).unwrap_or_default();
                // A waiting request's retained sequence is unchanged but possibly cut
                // to its verified prefix: handed back when asked to keep it, else freed.
                let retained = match w.req.reuse {
                    Some(ret) if w.req.keep && engine.sequence_len(ret.seq) == Some(ret.ids.len()) => Some(ret),
                    Some(ret) => {
                        self.drop_retained(engine, ret.seq);
                        None
                    }
                    None => None,
                };
                sink(Event::Finished {
                    id,
                    reason: FinishReason::Cancelled,
                    ids,
                    text,
                    prompt_tokens: w.req.prompt.len(),
                    reused_tokens: 0,
                    retained,
                });
            }
            return true;
        }
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            let r = self.running.swap_remove(i);
            if let Some(sp) = self.spec.as_mut() {
                sp.drafter.finish(r.id);
            }
            let retained = self.release(engine, r.seq, r.keep, r.cached);
            sink(Event::Finished {
                id,
                reason: FinishReason::Cancelled,
                ids: r.generated,
                text: r.text,
                prompt_tokens: r.prompt_len,
                reused_tokens: r.reused,
                retained,
            });
            return true;
        }
        false
    }

    /// Runs one pass over the weights for the queued and running requests.
    pub fn step(
        &mut self,
        engine: &mut Engine,
        tok: &TextTokenizer,
        sink: &mut dyn FnMut(Event),
    ) -> Result<StepReport> {
        if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            let ids: Vec<RequestId> =
                self.running.iter().map(|r| r.id).chain(self.waiting.iter().map(|w| w.id)).collect();
            for id in ids {
                self.cancel(engine, id, sink);
            }
            return Ok(StepReport::default());
        }
        let cap = engine.capacity();
        let mut report = StepReport::default();
        // 1. Room for every decode token: preempt the newest sequences while the
        //    pool cannot take them (a lone sequence that fills the pool stops).
        loop {
            let need: usize =
                self.running.iter().filter(|r| r.next.is_some()).map(|r| engine.blocks_needed(Some(r.seq), 1)).sum();
            if need <= engine.free_blocks() {
                break;
            }
            let newest = (0..self.running.len()).max_by_key(|&i| self.running[i].admitted);
            match newest {
                Some(v) if self.running.len() > 1 => {
                    self.preempt(engine, v);
                    report.preempted += 1;
                }
                Some(v) => {
                    self.running[v].next = None;
                    self.finish(engine, tok, v, FinishReason::Length, sink);
                    break;
                }
                None => break,
            }
        }
        // Plan the pass: (index into running, tokens, logits wanted).
        let mut plan: Vec<Planned> = Vec::new();
        let mut rows = 0usize;
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| self.running[i].admitted);
        for &ri in &order {
            if let Some(t) = self.running[ri].next {
                plan.push(Planned { ri, tokens: vec![t], logits: Logits::Last, tree: None, asked: None });
                rows += 1;
            }
        }
        // Blocks the running sequences still need: this pass's decode tokens and
        // the rest of every prompt being read.
        let mut reserved: usize = self
            .running
            .iter()
            .map(|r| {
                let pending = if r.next.is_some() { 1 } else { r.context.len() - r.fed + 1 };
                engine.blocks_needed(Some(r.seq), pending)
            })
            .sum();
        // 2. Admit waiting requests while their whole context fits the pool.
        while !self.waiting.is_empty() {
            if self.running.len() >= cap.sequences || rows >= cap.rows {
                break;
            }
            // A retained sequence is checked (and cut to the common prefix) before
            // its blocks are counted; the check is idempotent if admission waits.
            let reuse = self.waiting[0].req.reuse.take();
            let reuse = reuse.and_then(|ret| self.verify_reuse(engine, ret, &self.waiting[0].req.prompt));
            let w = &mut self.waiting[0];
            w.req.reuse = reuse;
            let ctx_len = w.resumed.as_ref().map(|r| r.context.len()).unwrap_or(w.req.prompt.len());
            let need = match &w.req.reuse {
                Some(ret) => engine.blocks_needed(Some(ret.seq), ctx_len - ret.ids.len() + 1),
                None => engine.blocks_needed(None, ctx_len + 1),
            };
            if need + reserved > engine.free_blocks() {
                break;
            }
            let Some(mut w) = self.waiting.pop_front() else { break };
            let (seq, cached) = match w.req.reuse.take() {
                Some(ret) => (ret.seq, ret.ids),
                None => (engine.add_sequence(), Vec::new()),
            };
            let fed = cached.len();
            self.admissions += 1;
            let r = match w.resumed {
                Some(mut r) => {
                    // Preempted: its retained prefix (if any) went with it; re-read all.
                    debug_assert_eq!(fed, 0);
                    r.seq = seq;
                    r.fed = fed;
                    r.cached = cached;
                    r.reused = fed;
                    r.admitted = self.admissions;
                    *r
                }
                None => Running {
                    id: w.id,
                    seq,
                    prompt_len: w.req.prompt.len(),
                    context: w.req.prompt,
                    fed,
                    cached,
                    reused: fed,
                    keep: w.req.keep,
                    generated: Vec::new(),
                    next: None,
                    sampler: Sampler::new(SamplerConfig {
                        temperature: w.req.opts.temperature,
                        top_k: w.req.opts.top_k,
                        top_p: w.req.opts.top_p,
                        repetition_penalty: w.req.opts.repetition_penalty,
                        seed: w.req.opts.seed,
                    }),
                    decoder: StreamDecoder::default(),
                    text: String::new(),
                    emitted: 0,
                    opts: w.req.opts,
                    hook_seq: w.req.hook_seq,
                    admitted: self.admissions,
                },
            };
            reserved += need;
            self.running.push(r);
        }
        // 3. Prompt chunks, in admission order, as far as the row budget goes.
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| self.running[i].admitted);
        for ri in order {
            let r = &self.running[ri];
            if r.next.is_some() || r.fed >= r.context.len() || plan.len() >= cap.sequences {
                continue;
            }
            let room = cap.rows.saturating_sub(rows);
            if room == 0 {
                break;
            }
            let n = (r.context.len() - r.fed).min(room);
            let last = r.fed + n == r.context.len();
            let logits = if last { Logits::Last } else { Logits::None };
            plan.push(Planned { ri, tokens: r.context[r.fed..r.fed + n].to_vec(), logits, tree: None, asked: None });
            rows += n;
        }
        if plan.is_empty() {
            return Ok(report);
        }
        // 4. Speculation: decode tokens become verify trees while the pass has room.
        if self.spec.is_some() {
            rows = self.draft_trees(engine, &mut plan, rows)?;
        }
        let bases: Vec<usize> = plan.iter().map(|p| engine.sequence_len(self.running[p.ri].seq).unwrap_or(0)).collect();
        let items: Vec<StepItem<'_>> = plan
            .iter()
            .zip(&bases)
            .map(|(p, &base)| StepItem {
                seq: self.running[p.ri].seq,
                tokens: &p.tokens,
                logits: p.logits,
                tree: p.tree.as_deref().map(|parents| Tree { base, parents }),
            })
            .collect();
        let t_pass = Instant::now();
        let logits = engine.step(&items)?;
        report.ran = true;
        report.rows = rows;
        let pass_s = t_pass.elapsed().as_secs_f64();
        let v = engine.spec().vocab_size;
        let mut finished = Vec::new();
        let mut accepted_path: Vec<u32> = Vec::new();
        for ((p, lg), &base) in plan.iter().zip(logits).zip(&bases) {
            let (ri, toks) = (&p.ri, &p.tokens);
            if let Some(parents) = &p.tree {
                let (end, path) = self.verify_tree(engine, tok, *ri, toks, parents, base, &lg, &mut report, sink)?;
                if let Some(reason) = end {
                    finished.push((*ri, reason));
                }
                accepted_path = path;
                continue;
            }
            let r = &mut self.running[*ri];
            r.cached.extend_from_slice(toks);
            if r.next.take().is_some() {
                // The decoded token is now in the cache.
            } else {
                r.fed += toks.len();
            }
            if lg.len() < v {
                continue;
            }
            let mut row = lg[..v].to_vec();
            let logprob = r.opts.logprobs.map(|n| token_logprobs(&row, n));
            let mut context = r.context[..r.prompt_len.min(r.context.len())].to_vec();
            context.extend(&r.generated);
            // Constrained output: the hook masks what may come next and sees the choice.
            if let Some(h) = &r.opts.logits_hook {
                let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
                h.mask(r.hook_seq, &mut row).map_err(|m| EngineError::invalid("constrained output", m))?;
            }
            let id = r.sampler.sample(&mut row, &context);
            if let Some(h) = &r.opts.logits_hook {
                let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
                h.accept(r.hook_seq, id).map_err(|m| EngineError::invalid("constrained output", m))?;
            }
            report.sampled += 1;
            let logprob = logprob.map(|mut lp| {
                lp.logprob = log_softmax_at(&lg[..v], id);
                lp
            });
            match emit(r, tok, id, logprob, engine.max_context(), sink) {
                Some(reason) => finished.push((*ri, reason)),
                None => r.next = Some(id),
            }
        }
        // A lone sequence's pass measures what its tree size costs and gives.
        if let (Some(sp), [p]) = (self.spec.as_mut(), plan.as_slice()) {
            if let (Some(sizer), Some((asked, draft_s))) = (sp.sizer.as_mut(), p.asked) {
                sizer.record(asked, p.tokens.len() - 1, draft_s + pass_s, &accepted_path);
            }
        }
        // Remove finished requests (highest index first so indices stay valid).
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (ri, reason) in finished {
            self.finish(engine, tok, ri, reason, sink);
        }
        Ok(report)
    }

    /// Turns decode items into verify trees: each decoding request (without a
    /// logits hook) asks the drafter for a tree within what the pass, the KV
    /// pool and its context allow. Returns the pass's rows.
    fn draft_trees(&mut self, engine: &mut Engine, plan: &mut [Planned], mut rows: usize) -> Result<usize> {
        let Some(sp) = self.spec.as_mut() else { return Ok(rows) };
        let cap = engine.capacity();
        let mut logit_rows: usize = plan.iter().map(|p| p.logits.rows(p.tokens.len())).sum();
        // KV blocks not yet promised to this pass's items.
        let needed: usize =
            plan.iter().map(|p| engine.blocks_needed(Some(self.running[p.ri].seq), p.tokens.len())).sum();
        let mut spare = engine.free_blocks().saturating_sub(needed);
        for p in plan.iter_mut() {
            let r = &self.running[p.ri];
            if r.next.is_none() || r.opts.logits_hook.is_some() || p.tokens.len() != 1 {
                continue;
            }
            let room_rows = sp.cfg.max_rows.min(cap.rows).saturating_sub(rows);
            let room_logits = cap.logit_rows.saturating_sub(logit_rows);
            let len = engine.sequence_len(r.seq).unwrap_or(0);
            let room_ctx = engine.max_context().saturating_sub(len + 1);
            let want = match sp.sizer.as_mut() {
                Some(z) => z.choose().min(sp.cfg.tree),
                None => sp.cfg.tree,
            };
            let mut budget = want.min(room_rows).min(room_logits).min(room_ctx).min(crate::engine::MAX_TREE_NODES);
            let one = engine.blocks_needed(Some(r.seq), 1);
            while budget > 0 && engine.blocks_needed(Some(r.seq), 1 + budget) > one + spare {
                budget -= 1;
            }
            if budget == 0 {
                p.asked = Some((0, 0.0));
                continue;
            }
            let mut context = r.context[..r.prompt_len.min(r.context.len())].to_vec();
            context.extend(&r.generated);
            let t = Instant::now();
            let tree = sp.drafter.propose(engine, DraftRequest { key: r.id, seq: r.seq, context: &context, budget })?;
            sp.stats.draft += t.elapsed();
            p.asked = Some((budget, t.elapsed().as_secs_f64()));
            if tree.is_empty() {
                continue;
            }
            tree.validate()?;
            let n = tree.len().min(budget);
            let (tokens, parents) = tree.with_root(p.tokens[0]);
            spare -= engine.blocks_needed(Some(r.seq), 1 + n) - one;
            rows += n;
            logit_rows += n;
            sp.stats.proposed += n as u64;
            p.tokens = tokens[..=n].to_vec();
            p.tree = Some(parents[..=n].to_vec());
            p.logits = Logits::All;
        }
        Ok(rows)
    }

    /// Walks a verified tree from its root (see [`crate::spec`]): at each node
    /// the next token is chosen from the target's distribution by the
    /// speculative-sampling rule against the node's children, and emitted; the
    /// walk moves into the child holding it, if any. The accepted path's KV is
    /// kept and the rest of the tree dropped. Returns why the request ended,
    /// if it did, and the accepted draft nodes (the drafter's numbering).
    #[allow(clippy::too_many_arguments)]
    fn verify_tree(
        &mut self,
        engine: &mut Engine,
        tok: &TextTokenizer,
        ri: usize,
        tokens: &[u32],
        parents: &[u32],
        base: usize,
        logits: &[f32],
        report: &mut StepReport,
        sink: &mut dyn FnMut(Event),
    ) -> Result<(Option<FinishReason>, Vec<u32>)> {
        let v = engine.spec().vocab_size;
        let max_context = engine.max_context();
        let kids = spec::children(parents);
        let r = &mut self.running[ri];
        // The root was the sampled token: it is in the cache now.
        r.next = None;
        let (mut node, mut path, mut outcome) = (0usize, vec![0usize], None);
        let mut emitted = 0u64;
        while (node + 1) * v <= logits.len() {
            let raw = &logits[node * v..(node + 1) * v];
            let mut row = raw.to_vec();
            let logprob = r.opts.logprobs.map(|n| token_logprobs(&row, n));
            let mut context = r.context[..r.prompt_len.min(r.context.len())].to_vec();
            context.extend(&r.generated);
            let dist = r.sampler.distribution(&mut row, &context);
            let cands: Vec<u32> = kids[node].iter().map(|&c| tokens[c as usize]).collect();
            let sampler = &mut r.sampler;
            let id = spec::choose(dist, &cands, || sampler.uniform());
            report.sampled += 1;
            emitted += 1;
            let logprob = logprob.map(|mut lp| {
                lp.logprob = log_softmax_at(raw, id);
                lp
            });
            if let Some(reason) = emit(r, tok, id, logprob, max_context, sink) {
                outcome = Some(reason);
                break;
            }
            match kids[node].iter().find(|&&c| tokens[c as usize] == id) {
                Some(&c) => {
                    node = c as usize;
                    path.push(node);
                }
                None => {
                    r.next = Some(id);
                    break;
                }
            }
        }
        engine.keep_tree_path(r.seq, base, &path)?;
        r.cached.extend(path.iter().map(|&j| tokens[j]));
        if let Some(sp) = self.spec.as_mut() {
            sp.stats.verified += 1;
            sp.stats.emitted += emitted;
            sp.stats.accepted += (path.len() - 1) as u64;
        }
        // The accepted draft nodes, as the drafter numbered them (the root is node 0 here).
        let draft_path = path[1..].iter().map(|&j| j as u32 - 1).collect();
        Ok((outcome, draft_path))
    }

    /// Ends running request `ri`: frees its blocks, flushes held-back text and
    /// reports it.
    fn finish(
        &mut self,
        engine: &mut Engine,
        tok: &TextTokenizer,
        ri: usize,
        reason: FinishReason,
        sink: &mut dyn FnMut(Event),
    ) {
        let mut r = self.running.swap_remove(ri);
        if let Some(sp) = self.spec.as_mut() {
            sp.drafter.finish(r.id);
        }
        let retained = self.release(engine, r.seq, r.keep, std::mem::take(&mut r.cached));
        if reason != FinishReason::Stop {
            // The full decode: the stream decoder may still hold an incomplete
            // character at the end.
            r.text = tok.decode(&r.generated);
        }
        if r.emitted < r.text.len() && r.text.is_char_boundary(r.emitted) {
            let rest = r.text[r.emitted..].to_string();
            r.emitted = r.text.len();
            sink(Event::Text { id: r.id, text: rest });
        }
        sink(Event::Finished {
            id: r.id,
            reason,
            ids: r.generated,
            text: r.text,
            prompt_tokens: r.prompt_len,
            reused_tokens: r.reused,
            retained,
        });
    }

    /// Frees a finished request's sequence, or hands it back when it is to be kept.
    fn release(&self, engine: &mut Engine, seq: SeqId, keep: bool, cached: Vec<u32>) -> Option<Retained> {
        if keep && engine.sequence_len(seq) == Some(cached.len()) {
            return Some(Retained { seq, ids: cached });
        }
        engine.remove_sequence(seq);
        None
    }

    /// Frees a retained sequence unless a running request owns it (a handle given twice).
    fn drop_retained(&self, engine: &mut Engine, seq: SeqId) {
        if !self.running.iter().any(|r| r.seq == seq) {
            engine.remove_sequence(seq);
        }
    }

    /// The part of `ret` that `prompt` may reuse: the sequence cut to the longest
    /// common prefix of its ids and the prompt (leaving at least the prompt's last
    /// token to read), or None, the sequence freed, when nothing matches or the
    /// handle does not describe the engine's sequence.
    fn verify_reuse(&self, engine: &mut Engine, mut ret: Retained, prompt: &[u32]) -> Option<Retained> {
        if self.running.iter().any(|r| r.seq == ret.seq) {
            tracing::warn!("{} is in use by a running request; reading the prompt from scratch", ret.seq);
            return None;
        }
        if engine.sequence_len(ret.seq) != Some(ret.ids.len()) {
            tracing::warn!("a retained {} does not hold the ids it names; reading from scratch", ret.seq);
            engine.remove_sequence(ret.seq);
            return None;
        }
        let common = ret.ids.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        if keep == 0 {
            engine.remove_sequence(ret.seq);
            return None;
        }
        if keep < ret.ids.len() {
            if engine.truncate(ret.seq, keep).is_err() {
                engine.remove_sequence(ret.seq);
                return None;
            }
            ret.ids.truncate(keep);
        }
        Some(ret)
    }

    /// Ends every request without events and frees all their sequences, retained
    /// ones included (after an engine error, so no KV block is leaked).
    pub fn clear(&mut self, engine: &mut Engine) {
        for r in self.running.drain(..) {
            if let Some(sp) = self.spec.as_mut() {
                sp.drafter.finish(r.id);
            }
            engine.remove_sequence(r.seq);
        }
        for w in self.waiting.drain(..) {
            if let Some(ret) = w.req.reuse {
                engine.remove_sequence(ret.seq);
            }
        }
    }

    /// Frees running request `ri`'s cache and queues it to resume later.
    fn preempt(&mut self, engine: &mut Engine, ri: usize) {
        let mut r = self.running.swap_remove(ri);
        engine.remove_sequence(r.seq);
        r.cached.clear();
        // Resume by re-reading everything it has seen, the last sampled token
        // included: the logits of that re-read give the token after it, exactly
        // what its decode step would have given.
        let mut context = r.context[..r.prompt_len].to_vec();
        context.extend(&r.generated);
        r.context = context;
        r.fed = 0;
        r.next = None;
        let id = r.id;
        let req = Request::new(r.context[..r.prompt_len].to_vec(), r.opts.clone(), r.hook_seq);
        self.waiting.push_front(Waiting { id, req, resumed: Some(Box::new(r)) });
    }
}

/// Hands a chosen token to request `r`: reports it and returns why the
/// request ends with it (EOS, a stop string, its length), if it does.
fn emit(
    r: &mut Running,
    tok: &TextTokenizer,
    id: u32,
    logprob: Option<TokenLogprob>,
    max_context: usize,
    sink: &mut dyn FnMut(Event),
) -> Option<FinishReason> {
    if r.opts.stop_at_eos && tok.eos_ids().contains(&id) {
        sink(Event::Token { id: r.id, token: id, text: None, logprob });
        return Some(FinishReason::Eos);
    }
    r.generated.push(id);
    if let Some(piece) = r.decoder.push(tok, id) {
        r.text.push_str(&piece);
    }
    // A stop string ends the request; neither it nor what follows is kept.
    if let Some(pos) = r.opts.stop_strings.iter().filter_map(|s| r.text.find(s.as_str())).min() {
        r.text.truncate(pos);
        r.generated = ids_within(tok, &r.generated, pos);
        let text = new_text(r, r.text.len());
        sink(Event::Token { id: r.id, token: id, text, logprob });
        return Some(FinishReason::Stop);
    }
    let safe = r.text.len() - stop_prefix_len(&r.text, &r.opts.stop_strings);
    let text = new_text(r, safe);
    sink(Event::Token { id: r.id, token: id, text, logprob });
    if r.generated.len() >= r.opts.max_new_tokens || r.context.len() + r.generated.len() >= max_context {
        return Some(FinishReason::Length);
    }
    None
}

/// Text of `r` from what was emitted up to byte `upto`, if any.
fn new_text(r: &mut Running, upto: usize) -> Option<String> {
    if upto <= r.emitted || !r.text.is_char_boundary(upto) {
        return None;
    }
    let s = r.text[r.emitted..upto].to_string();
    r.emitted = upto;
    Some(s)
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string.
pub fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for k in (1..s.len()).rev() {
            if k <= best {
                break;
            }
            if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                best = k;
                break;
            }
        }
    }
    best
}

/// The longest prefix of `ids` whose text fits in the first `bytes` bytes.
fn ids_within(tok: &TextTokenizer, ids: &[u32], bytes: usize) -> Vec<u32> {
    let mut k = ids.len();
    while k > 0 && tok.decode(&ids[..k]).len() > bytes {
        k -= 1;
    }
    ids[..k].to_vec()
}

/// `log softmax(logits)[id]`.
fn log_softmax_at(logits: &[f32], id: u32) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits.iter().map(|&l| ((l - m) as f64).exp()).sum::<f64>().ln() as f32;
    logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY) - lse
}

/// The top `n` tokens' log-probabilities (the chosen one's is filled in later).
fn token_logprobs(logits: &[f32], n: usize) -> TokenLogprob {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits.iter().map(|&l| ((l - m) as f64).exp()).sum::<f64>().ln() as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(idx.len());
    if n > 0 {
        idx.select_nth_unstable_by(n - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        idx.truncate(n);
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    } else {
        idx.clear();
    }
    TokenLogprob { logprob: 0.0, top: idx.into_iter().map(|i| (i, logits[i as usize] - lse)).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_prefix_holdback() {
        let stops = vec!["</end>".to_string(), "STOP".to_string()];
        assert_eq!(stop_prefix_len("hello </e", &stops), 3);
        assert_eq!(stop_prefix_len("hello ST", &stops), 2);
        assert_eq!(stop_prefix_len("hello", &stops), 0);
    }

    #[test]
    fn logprobs_are_normalised() {
        let l = [1.0f32, 2.0, 3.0];
        let t = token_logprobs(&l, 2);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 1]);
        let total: f64 = (0..3).map(|i| (log_softmax_at(&l, i) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}

//! [`AutoModel`]: the library entry point, close to what AirLLM and
//! transformers users know.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airllm_format::{ModelSpec, ShardDir, ShardOptions};
use airllm_gpu::{GpuContext, GpuOptions};

use crate::engine::{Engine, EngineStats, Logits, SeqId, StepItem};
use crate::error::{EngineError, Result};
use crate::options::{Device, GenerateOptions, Options};
use crate::scheduler::{Event, Request, Scheduler};
use crate::tokenizer::{ChatMessage, TextTokenizer};

/// A prompt: text, ids used verbatim, or a conversation rendered with the chat template.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text, tokenized as `tokenizer(text)` does (special tokens per the tokenizer).
    Text(String),
    /// Ids used as they are (no BOS added).
    Ids(Vec<u32>),
    /// A conversation; the chat template adds the generation prompt.
    Chat(Vec<ChatMessage>),
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// `max_new_tokens` (or the context) reached.
    Length,
    /// Cancelled by the caller.
    Cancelled,
}

impl FinishReason {
    /// Lower-case name (`eos`, `stop`, `length`, `cancelled`).
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Timings of one `generate` call.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Until every sequence had its first new token (the prompts' passes).
    pub prefill: Duration,
    /// The passes after that.
    pub decode: Duration,
    /// Decode passes run.
    pub decode_steps: usize,
    /// Tokens generated (all sequences).
    pub generated: usize,
    /// Engine counters accumulated during the call.
    pub engine: EngineStats,
}

impl Timings {
    /// Seconds per decode pass.
    pub fn per_token(&self) -> f64 {
        if self.decode_steps == 0 { 0.0 } else { self.decode.as_secs_f64() / self.decode_steps as f64 }
    }

    /// Tokens generated per pass over the weights.
    pub fn tokens_per_pass(&self) -> f64 {
        if self.engine.passes == 0 { 0.0 } else { self.generated as f64 / self.engine.passes as f64 }
    }
}

/// One sequence's result.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Prompt ids.
    pub prompt_ids: Vec<u32>,
    /// Generated ids (a stop string and what follows are not included).
    pub new_ids: Vec<u32>,
    /// Generated text (cut before a stop string).
    pub text: String,
    /// Why it stopped.
    pub finish: FinishReason,
}

/// A token as it is produced.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    /// Sequence index in the batch.
    pub seq: usize,
    /// The id (`u32::MAX` for text released at the end that no new token carried).
    pub id: u32,
    /// Newly completed text, if any.
    pub text: Option<String>,
    /// Log-probabilities, when asked for.
    pub logprob: Option<crate::scheduler::TokenLogprob>,
}

/// A model ready to generate.
pub struct AutoModel {
    engine: Engine,
    tokenizer: TextTokenizer,
    shards_dir: PathBuf,
    /// Why `--device auto` chose the CPU executor, when it did.
    device_note: Option<String>,
}

impl std::fmt::Debug for AutoModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoModel").field("shards", &self.shards_dir).finish()
    }
}

/// The GPU context `opts` asks for: none for `--device cpu`; for `auto`,
/// none when no adapter exists or the only one is a software rasterizer
/// (the CPU executor is far faster there); for `gpu`, the adapter or an error.
pub fn open_device(opts: &Options) -> Result<Option<GpuContext>> {
    Ok(open_device_explained(opts)?.0)
}

/// [`open_device`], and why `auto` chose the CPU executor when it did (for the
/// startup line).
pub fn open_device_explained(opts: &Options) -> Result<(Option<GpuContext>, Option<String>)> {
    let gpu_opts = GpuOptions { adapter: opts.adapter.clone(), backend: opts.backend, ..Default::default() };
    match opts.device {
        Device::Cpu => Ok((None, None)),
        Device::Gpu => Ok((Some(GpuContext::new(&gpu_opts)?), None)),
        Device::Auto => match GpuContext::new(&gpu_opts) {
            Ok(ctx) if ctx.caps().is_software() && opts.adapter.is_none() => {
                let note = format!("{} is a software rasterizer; --device gpu uses it", ctx.caps().adapter_name);
                tracing::info!("{note}");
                Ok((None, Some(note)))
            }
            Ok(ctx) => Ok((Some(ctx), None)),
            Err(e) => {
                let note = format!("no GPU adapter ({e})");
                tracing::info!("{note}");
                Ok((None, Some(note)))
            }
        },
    }
}

/// The default shard directory of a checkpoint (see [`airllm_format::default_shards_dir`]:
/// airllm's cache for models in a Hugging Face cache snapshot, else beside the
/// checkpoint when writable, else under the user cache, named by its canonical path).
pub fn default_shards_dir(model: &Path, opts: &Options) -> PathBuf {
    airllm_format::default_shards_dir(model, opts.compression)
}

impl AutoModel {
    /// Load `model` (checkpoint directory, shard directory, `.gguf`, or cached repo id),
    /// sharding it on first use.
    pub fn from_pretrained(model: &str, opts: Options) -> Result<AutoModel> {
        let loc = airllm_format::resolve_model(model)?;
        let so = ShardOptions {
            compression: opts.compression,
            delete_original: opts.delete_original,
            progress: opts.progress,
            ..Default::default()
        };
        // Reused only while they are still this checkpoint's shards (source identity).
        let shards_dir = airllm_format::ensure_shards(&loc, opts.shards_dir.as_deref(), &so)?;
        let dir = ShardDir::open(&shards_dir)?;
        dir.verify(opts.verify)?;
        let spec = dir.manifest().spec.clone();
        let tokenizer = TextTokenizer::load(&shards_dir, &spec.eos_token_ids)?;
        if let Some(t) = opts.threads {
            airllm_quant::pool::init_global(t)
                .map_err(|e| EngineError::invalid("--threads", format!("{e} (set it before any model is loaded)")))?;
        }
        let (ctx, device_note) = open_device_explained(&opts)?;
        if let Some(ctx) = &ctx {
            if opts.profiling {
                ctx.set_profiling(true);
            }
        }
        let mut cfg = opts.engine_config(&spec);
        // The cost model decides CPU-or-stream only when the choice was left to us.
        cfg.cost_model = opts.device == Device::Auto;
        let engine = Engine::new(ctx, dir, cfg)?;
        tracing::info!("{} on {}", spec.family, engine.device_name());
        Ok(AutoModel { engine, tokenizer, shards_dir, device_note })
    }

    /// Why `--device auto` chose the CPU executor (no adapter, or only a software
    /// rasterizer), when it did.
    pub fn device_note(&self) -> Option<&str> {
        self.device_note.as_deref()
    }

    /// The model description.
    pub fn spec(&self) -> &ModelSpec {
        self.engine.spec()
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    /// Mutable tokenizer access (a chat template override; issue 19).
    pub fn tokenizer_mut(&mut self) -> &mut TextTokenizer {
        &mut self.tokenizer
    }
    /// The engine (plan, stats, GPU context).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
    /// Mutable engine access (raw steps over sequences).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
    /// The engine and the tokenizer together (to drive a [`Scheduler`] directly).
    pub fn parts_mut(&mut self) -> (&mut Engine, &TextTokenizer) {
        (&mut self.engine, &self.tokenizer)
    }
    /// The shard directory in use.
    pub fn shards_dir(&self) -> &Path {
        &self.shards_dir
    }

    /// Token ids of a prompt.
    pub fn encode(&self, p: &Prompt) -> Result<Vec<u32>> {
        match p {
            Prompt::Text(t) => self.tokenizer.encode(t),
            Prompt::Ids(ids) => Ok(ids.clone()),
            Prompt::Chat(m) => self.tokenizer.encode_chat(m),
        }
    }

    /// Logits of every position of each prompt (`result[b]` is `[len_b, vocab]`),
    /// the prompts sharing passes as one ragged step where they fit.
    pub fn forward_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.run_prompts(prompts, Logits::All)
    }

    /// Logits of each prompt's last position (`result[b]` is `[vocab]`).
    pub fn last_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.run_prompts(prompts, Logits::Last)
    }

    /// Runs prompts through temporary sequences in as few passes as the step
    /// capacity and the KV pool allow, keeping the logits `want` asks for. A
    /// prompt starts once the pool can hold all of it, and its sequence is
    /// freed as soon as it is read.
    fn run_prompts(&mut self, prompts: &[Vec<u32>], want: Logits) -> Result<Vec<Vec<f32>>> {
        if prompts.iter().any(Vec::is_empty) {
            return Err(EngineError::invalid("prompt", "a prompt encoded to no tokens; give some text"));
        }
        let cap = self.engine.capacity();
        if let Some(p) = prompts.iter().find(|p| p.len() > cap.max_context) {
            return Err(EngineError::PromptTooLong { prompt: p.len(), context: cap.max_context });
        }
        let mut seqs: Vec<Option<SeqId>> = vec![None; prompts.len()];
        let result = (|| {
            let mut out: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
            let mut fed = vec![0usize; prompts.len()];
            while fed.iter().zip(prompts).any(|(f, p)| *f < p.len()) {
                // Start prompts while the pool holds every started prompt whole.
                let mut reserved: usize = (0..prompts.len())
                    .filter_map(|i| seqs[i].map(|s| self.engine.blocks_needed(Some(s), prompts[i].len() - fed[i])))
                    .sum();
                for i in 0..prompts.len() {
                    if seqs[i].is_none() && fed[i] == 0 {
                        let need = self.engine.blocks_needed(None, prompts[i].len());
                        let running = seqs.iter().filter(|s| s.is_some()).count();
                        if need + reserved > self.engine.free_blocks() || running >= cap.sequences {
                            if running == 0 {
                                return Err(EngineError::KvFull {
                                    needed: need,
                                    free: self.engine.free_blocks(),
                                    total: self.engine.total_blocks(),
                                    block: cap.kv_block,
                                });
                            }
                            break;
                        }
                        reserved += need;
                        seqs[i] = Some(self.engine.add_sequence());
                    }
                }
                let (mut rows, mut logit_rows) = (0, 0);
                let mut items = Vec::new();
                for (i, p) in prompts.iter().enumerate() {
                    let Some(seq) = seqs[i] else { continue };
                    let mut n = (p.len() - fed[i]).min(cap.rows - rows);
                    if want == Logits::All {
                        n = n.min(cap.logit_rows - logit_rows);
                    }
                    if n == 0 {
                        break;
                    }
                    let last = fed[i] + n == p.len();
                    let l = match want {
                        Logits::All => Logits::All,
                        _ if last => Logits::Last,
                        _ => Logits::None,
                    };
                    items.push((i, seq, n, l));
                    rows += n;
                    logit_rows += l.rows(n);
                }
                let step: Vec<StepItem<'_>> = items
                    .iter()
                    .map(|&(i, seq, n, l)| StepItem { seq, tokens: &prompts[i][fed[i]..fed[i] + n], logits: l })
                    .collect();
                let logits = self.engine.step(&step)?;
                for (&(i, seq, n, _), l) in items.iter().zip(logits) {
                    out[i].extend(l);
                    fed[i] += n;
                    if fed[i] == prompts[i].len() {
                        self.engine.remove_sequence(seq);
                        seqs[i] = None;
                    }
                }
            }
            Ok(out)
        })();
        for s in seqs.into_iter().flatten() {
            self.engine.remove_sequence(s);
        }
        result
    }

    /// Generates continuations of `prompts`, sharing passes over the weights
    /// (continuous batching: sequences join and leave as KV blocks allow).
    /// `on_token` sees every token as it is produced; sequence `i` samples
    /// with seed `opts.seed + i`.
    pub fn generate(
        &mut self,
        prompts: &[Prompt],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<(Vec<Generation>, Timings)> {
        if prompts.is_empty() {
            return Ok((Vec::new(), Timings::default()));
        }
        opts.validate()?;
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.encode(p)).collect::<Result<_>>()?;
        let before = self.engine.stats();
        let mut sched = Scheduler::new(usize::MAX);
        sched.set_cancel_flag(opts.cancel.clone());
        let mut index = std::collections::HashMap::new();
        for (i, p) in ids.iter().enumerate() {
            let o = GenerateOptions { seed: opts.seed.wrapping_add(i as u64), ..opts.clone() };
            let id = sched.submit(&self.engine, Request::new(p.clone(), o, i))?;
            index.insert(id, i);
        }
        let mut gens: Vec<Option<Generation>> = vec![None; ids.len()];
        let mut first = vec![false; ids.len()];
        let t0 = Instant::now();
        let mut prefill = None;
        let mut decode_steps = 0;
        let mut generated = 0;
        while !sched.is_idle() {
            let all_started = first.iter().all(|f| *f);
            let report = sched.step(&mut self.engine, &self.tokenizer, &mut |ev| match ev {
                Event::Token { id, token, text, logprob } => {
                    let seq = index[&id];
                    first[seq] = true;
                    on_token(&TokenEvent { seq, id: token, text, logprob });
                }
                Event::Text { id, text } => {
                    on_token(&TokenEvent { seq: index[&id], id: u32::MAX, text: Some(text), logprob: None });
                }
                Event::Finished { id, reason, ids: new_ids, text, .. } => {
                    let seq = index[&id];
                    first[seq] = true;
                    gens[seq] = Some(Generation { prompt_ids: ids[seq].clone(), new_ids, text, finish: reason });
                }
            });
            let report = match report {
                Ok(r) => r,
                Err(e) => {
                    // Free every sequence's KV blocks: the model stays usable after an error.
                    sched.clear(&mut self.engine);
                    return Err(e);
                }
            };
            generated += report.sampled;
            if all_started && report.ran {
                decode_steps += 1;
            }
            if prefill.is_none() && first.iter().all(|f| *f) {
                prefill = Some(t0.elapsed());
            }
        }
        let prefill = prefill.unwrap_or_else(|| t0.elapsed());
        let gens: Vec<Generation> = gens
            .into_iter()
            .zip(&ids)
            .map(|(g, p)| {
                g.unwrap_or(Generation {
                    prompt_ids: p.clone(),
                    new_ids: Vec::new(),
                    text: String::new(),
                    finish: FinishReason::Cancelled,
                })
            })
            .collect();
        let engine = before.since(&self.engine.stats());
        Ok((gens, Timings { prefill, decode: t0.elapsed() - prefill, decode_steps, generated, engine }))
    }
}

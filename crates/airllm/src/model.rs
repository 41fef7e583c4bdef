//! [`AutoModel`]: the library entry point, close to what AirLLM and
//! transformers users know.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airllm_format::{ModelSpec, ShardDir, ShardOptions};
use airllm_gpu::{GpuBackend, GpuContext, GpuOptions};

use crate::engine::{Engine, EngineConfig, EngineStats};
use crate::error::{EngineError, Result};
use crate::options::{GenerateOptions, Options};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{ChatMessage, StreamDecoder, TextTokenizer};

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
    /// `max_new_tokens` reached.
    Length,
}

/// Timings of one `generate` call.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Prefill (prompt) time.
    pub prefill: Duration,
    /// Decode time (all generated tokens after the first).
    pub decode: Duration,
    /// Decode steps run.
    pub decode_steps: usize,
    /// Engine counters accumulated during the call.
    pub engine: EngineStats,
}

impl Timings {
    /// Seconds per decode step.
    pub fn per_token(&self) -> f64 {
        if self.decode_steps == 0 { 0.0 } else { self.decode.as_secs_f64() / self.decode_steps as f64 }
    }
}

/// One sequence's result.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Prompt ids (no padding).
    pub prompt_ids: Vec<u32>,
    /// Generated ids.
    pub new_ids: Vec<u32>,
    /// Generated text (cut at a stop string).
    pub text: String,
    /// Why it stopped.
    pub finish: FinishReason,
}

/// A token as it is produced.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    /// Sequence index in the batch.
    pub seq: usize,
    /// The id.
    pub id: u32,
    /// Newly completed text, if any.
    pub text: Option<String>,
}

/// A model ready to generate.
pub struct AutoModel {
    engine: Engine,
    tokenizer: TextTokenizer,
    shards_dir: PathBuf,
}

impl std::fmt::Debug for AutoModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoModel").field("shards", &self.shards_dir).finish()
    }
}

/// The default shard directory of a checkpoint (see [`airllm_format::default_shards_dir`]:
/// beside it when writable, else under the user cache, named by its canonical path).
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
        let backend = opts.backend.as_deref().map(str::parse::<GpuBackend>).transpose()?;
        let ctx = GpuContext::new(&GpuOptions { adapter: opts.adapter.clone(), backend, ..Default::default() })?;
        if opts.profiling {
            ctx.set_profiling(true);
        }
        let cfg = EngineConfig {
            max_vram: opts.max_vram,
            resident_layers: opts.resident_layers,
            prefetch_depth: opts.prefetch_depth,
            max_context: opts.max_context.unwrap_or(spec.max_position_embeddings.min(4096)),
            max_batch: 1,
            prefill_chunk: opts.prefill_chunk,
            read_mode: opts.read_mode,
            read_threads: None,
            kv_f16: opts.kv_f16,
        };
        let engine = Engine::new(ctx, dir, cfg)?;
        Ok(AutoModel { engine, tokenizer, shards_dir })
    }

    /// The model description.
    pub fn spec(&self) -> &ModelSpec {
        self.engine.spec()
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    /// The engine (plan, stats, GPU context).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
    /// Mutable engine access (raw forward passes).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
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

    /// Logits of every position of each prompt, batched with left padding:
    /// `result[b]` is `[len_b, vocab]` for prompt b's real tokens.
    pub fn forward_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let (tokens, first_valid, t) = left_pad(prompts, self.pad_id())?;
        let rows: Vec<usize> =
            (0..prompts.len()).flat_map(|b| (first_valid[b] as usize..t).map(move |i| b * t + i)).collect();
        let all = self.engine.forward(&tokens, prompts.len(), 0, &first_valid, &rows)?;
        let v = self.spec().vocab_size;
        let mut out = Vec::new();
        let mut k = 0;
        for p in prompts {
            out.push(all[k * v..(k + p.len()) * v].to_vec());
            k += p.len();
        }
        Ok(out)
    }

    fn pad_id(&self) -> u32 {
        let s = self.spec();
        s.pad_token_id.or(s.eos_token_ids.first().copied()).unwrap_or(0)
    }

    /// Generate continuations of `prompts` as one batch (one pass over the weights
    /// per step serves all of them). `on_token` sees every token as it is produced.
    pub fn generate(
        &mut self,
        prompts: &[Prompt],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<(Vec<Generation>, Timings)> {
        if prompts.is_empty() {
            return Ok((Vec::new(), Timings::default()));
        }
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.encode(p)).collect::<Result<_>>()?;
        let before = self.engine.stats();
        let (tokens, first_valid, t) = left_pad(&ids, self.pad_id())?;
        let ctx_len = self.engine.max_context();
        if t + opts.max_new_tokens > ctx_len {
            return Err(EngineError::invalid(
                "prompt",
                format!(
                    "{t} prompt tokens + {} new tokens exceed the context of {ctx_len}; shorten the prompt, \
                     lower --max-new-tokens or raise --max-context",
                    opts.max_new_tokens
                ),
            ));
        }
        let b = ids.len();
        let v = self.spec().vocab_size;
        let t_start = Instant::now();
        let last: Vec<usize> = (0..b).map(|i| i * t + t - 1).collect();
        let mut logits = self.engine.forward(&tokens, b, 0, &first_valid, &last)?;
        let prefill = t_start.elapsed();
        let mut samplers: Vec<Sampler> = (0..b)
            .map(|i| {
                Sampler::new(SamplerConfig {
                    temperature: opts.temperature,
                    top_k: opts.top_k,
                    top_p: opts.top_p,
                    repetition_penalty: opts.repetition_penalty,
                    seed: opts.seed.wrapping_add(i as u64),
                })
            })
            .collect();
        let mut gens: Vec<Generation> = ids
            .iter()
            .map(|p| Generation {
                prompt_ids: p.clone(),
                new_ids: Vec::new(),
                text: String::new(),
                finish: FinishReason::Length,
            })
            .collect();
        let mut decoders: Vec<StreamDecoder> = (0..b).map(|_| StreamDecoder::default()).collect();
        let mut done = vec![false; b];
        let mut past = t;
        let mut decode = Duration::ZERO;
        let mut steps = 0;
        for step in 0..opts.max_new_tokens {
            let mut next = vec![self.pad_id(); b];
            for i in 0..b {
                if done[i] {
                    continue;
                }
                let mut row = logits[i * v..(i + 1) * v].to_vec();
                let mut context = gens[i].prompt_ids.clone();
                context.extend(&gens[i].new_ids);
                let id = samplers[i].sample(&mut row, &context);
                next[i] = id;
                let g = &mut gens[i];
                if opts.stop_at_eos && self.tokenizer.eos_ids().contains(&id) {
                    g.finish = FinishReason::Eos;
                    done[i] = true;
                    on_token(&TokenEvent { seq: i, id, text: None });
                    continue;
                }
                g.new_ids.push(id);
                let piece = decoders[i].push(&self.tokenizer, id);
                if let Some(p) = &piece {
                    g.text.push_str(p);
                }
                on_token(&TokenEvent { seq: i, id, text: piece });
                if let Some(pos) = opts.stop_strings.iter().filter_map(|s| g.text.find(s.as_str())).min() {
                    g.text.truncate(pos);
                    g.finish = FinishReason::Stop;
                    done[i] = true;
                }
            }
            if done.iter().all(|d| *d) || step + 1 == opts.max_new_tokens {
                break;
            }
            let ts = Instant::now();
            let rows: Vec<usize> = (0..b).collect();
            logits = self.engine.forward(&next, b, past, &first_valid, &rows)?;
            decode += ts.elapsed();
            steps += 1;
            past += 1;
        }
        for g in &mut gens {
            // Full decode for the final text (the stream may hold back an incomplete char).
            if g.finish != FinishReason::Stop {
                g.text = self.tokenizer.decode(&g.new_ids);
            }
        }
        let after = self.engine.stats();
        let engine = diff_stats(&before, &after);
        Ok((gens, Timings { prefill, decode, decode_steps: steps, engine }))
    }
}

fn diff_stats(a: &EngineStats, b: &EngineStats) -> EngineStats {
    EngineStats {
        passes: b.passes - a.passes,
        rows: b.rows - a.rows,
        forward: b.forward - a.forward,
        io_wait: b.io_wait.saturating_sub(a.io_wait),
        remap_wait: b.remap_wait.saturating_sub(a.remap_wait),
        upload: b.upload.saturating_sub(a.upload),
        host: b.host - a.host,
        readback: b.readback - a.readback,
        streamed_bytes: b.streamed_bytes - a.streamed_bytes,
        load: b.load,
    }
}

/// Left-pad prompts to a common length: `(tokens [b, t], first_valid [b], t)`.
pub fn left_pad(prompts: &[Vec<u32>], pad: u32) -> Result<(Vec<u32>, Vec<u32>, usize)> {
    let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if t == 0 || prompts.iter().any(Vec::is_empty) {
        return Err(EngineError::invalid("prompt", "a prompt encoded to no tokens; give some text"));
    }
    let mut tokens = Vec::with_capacity(prompts.len() * t);
    let mut first_valid = Vec::new();
    for p in prompts {
        let padn = t - p.len();
        tokens.extend(std::iter::repeat_n(pad, padn));
        tokens.extend(p);
        first_valid.push(padn as u32);
    }
    Ok((tokens, first_valid, t))
}

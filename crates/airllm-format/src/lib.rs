//! # airllm-format
//!
//! The model description and on-disk formats of airllm-rs:
//!
//! - [`ModelSpec`]: one architecture-neutral description of a decoder-only model,
//!   parsed from a Hugging Face `config.json` (transformers 4 or 5 key layout) for
//!   the families llama, mistral, qwen2, qwen3, mixtral, phi3, gemma, gemma2, gemma3
//!   and glm.
//! - [`Checkpoint`]: a memory-mapped Hugging Face safetensors checkpoint (one file or
//!   an index with several), every tensor assigned a [`Unit`] and [`Role`].
//! - The layer-shard directory: one file per execution unit in forward order
//!   (embedding, each decoder layer, final norm, lm_head) plus `manifest.json`; see
//!   [`shard_file`] for the byte layout and [`manifest`] for the JSON.
//! - [`write_shards`]: the atomic, resumable shard writer with optional block-wise
//!   compression through `airllm-quant`; one writer per directory at a time (an
//!   advisory lock; a second one waits, then reuses what the first wrote).
//! - [`ShardDir::verify`]: headers and checksums checked before use, with a cache
//!   so that a warm start stays fast ([`VerifyMode`]).
//! - [`ensure_shards`]: shards of a checkpoint reused only while they are still that
//!   checkpoint's ([`SourceIdentity`]), made or re-made otherwise.
//! - [`resolve_model`]: model arguments (directory, shard directory, `.gguf`, or a
//!   repo id in the local Hugging Face cache).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use airllm_format::ModelSpec;
//! let config = serde_json::json!({
//!     "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
//!     "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
//!     "vocab_size": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0
//! });
//! let spec = ModelSpec::from_config_value(&config, "config.json".as_ref())?;
//! assert_eq!(spec.head_dim, 16);
//! assert_eq!(spec.rope.inv_freq().len(), 8);
//! # Ok(()) }
//! ```
//!
//! Non-goals: this crate knows nothing of GPUs and runs no model; it never
//! downloads anything (repo ids resolve only against the local cache); PyTorch
//! `.bin` pickles are not read (convert them to safetensors first).

pub mod checkpoint;
pub mod dtype;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod layers;
pub mod lock;
pub mod manifest;
pub mod mla;
pub mod roles;
pub mod shard_dir;
pub mod shard_file;
pub mod source;
pub mod source_identity;
pub mod spec;
pub mod verify;
pub mod writer;

pub use checkpoint::{Checkpoint, expected_tensors, parse_safetensors_header};
pub use dtype::{DType, StorageFormat};
pub use error::{FormatError, Result, human_bytes};
pub use gguf::GgufSource;
pub use hub::{ModelLocation, SearchRoots, resolve_model, resolve_model_with};
pub use layers::{AttentionSpec, LayerOverrides, LayerSpec, LayerType, MlpSpec};
pub use manifest::{MANIFEST_FILE, Manifest, ShardEntry, TensorEntry};
pub use roles::{Role, Unit};
pub use shard_dir::ShardDir;
pub use source::{SourceFile, SourceTensor, TensorSource};
pub use source_identity::{SourceIdentity, default_shards_dir, ensure_shards};
pub use spec::{
    Activation, Family, MlaSpec, ModelSpec, MoeRouting, MoeSpec, NormKind, RopeScaling, RopeSpec, RopeStyle,
};
pub use verify::{VerifyMode, VerifyReport};
pub use writer::{ShardOptions, ShardReport, write_shards};

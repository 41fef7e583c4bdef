//! `manifest.json`: the table of contents of a shard directory.
//!
//! ```text
//! manifest.json
//! {
//!   "format_version": 2,
//!   "source": "safetensors checkpoint /models/llama",
//!   "source_identity": { "kind": "safetensors", "path": "/models/llama", "config_hash": "...",
//!                        "files": [ { "name": "config.json", "size": 750, "mtime_s": ..., ... } ] },
//!   "compression": "none" | "8bit" | "4bit" | codec name,
//!   "re_encoded": 0,
//!   "checksum_algorithm": "xxh3-64",
//!   "spec": { ...ModelSpec... },
//!   "tokenizer_files": ["tokenizer.json", ...],
//!   "shards": [
//!     { "unit": {"kind": "embedding"}, "file": "embedding.shard", "bytes": 65792,
//!       "checksum": "0f1e...", "plan_hash": "a1b2...",
//!       "tensors": [ { "name": "model.embed_tokens.weight", "role": "embedding",
//!                      "format": "bf16", "shape": [512, 64], "offset": 256, "bytes": 65536 } ] },
//!     { "unit": {"kind": "layer", "index": 0}, "file": "layer.00.shard", ... },
//!     ...
//!   ]
//! }
//! ```
//!
//! **Re-encoded tensors.** A tensor whose source stores it quantized but whose
//! shard bytes are not those bytes (decoded and encoded again: `--compression`
//! naming another codec, or a GGUF type without a codec such as Q3_K) carries
//! `"re_encoded_from": "<source type>"`, and the top-level `re_encoded` counts
//! them. Both are absent from manifests written before they existed (read as
//! "not recorded", never as zero). Dense weights encoded by `--compression`
//! are not re-encoded: they had no quantized bytes to keep.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::expected_tensors;
use crate::dtype::StorageFormat;
use crate::error::{FormatError, IoContext, Result};
use crate::roles::{Role, Unit};
use crate::source_identity::SourceIdentity;
use crate::spec::ModelSpec;

/// File name of the manifest inside a shard directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the shard directory layout this crate writes and reads. Version 2:
/// vectors (norm weights, biases) are always f32, the shard header carries the hashes
/// of its tensor table and of the model spec, and the manifest records the source's
/// identity.
pub const FORMAT_VERSION: u32 = 2;
/// Alignment of every tensor inside a shard file, so a whole layer can be
/// uploaded with one copy and each tensor bound by offset (wgpu requires 256).
pub const TENSOR_ALIGN: u64 = 256;
/// Shard files are padded to this size so O_DIRECT can read them whole.
pub const FILE_ALIGN: u64 = 4096;
/// The checksum algorithm named in manifests.
pub const CHECKSUM_ALGORITHM: &str = "xxh3-64";

/// One tensor inside a shard file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Name in the source checkpoint.
    pub name: String,
    /// Role in the unit.
    pub role: Role,
    /// Storage format (dtype or codec).
    pub format: StorageFormat,
    /// Logical shape (`[out, in]` for matrices).
    pub shape: Vec<usize>,
    /// Byte offset in the shard file (a multiple of 256).
    pub offset: u64,
    /// Byte length.
    pub bytes: u64,
    /// For a part of a tensor split by rows (the lm_head): the first row of the
    /// full tensor this part holds (`shape` is the part's own shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_start: Option<usize>,
    /// The quantized type the source stores this tensor in, when the shard
    /// holds it decoded and encoded again (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re_encoded_from: Option<String>,
}

/// One shard file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The execution unit it holds.
    pub unit: Unit,
    /// File name relative to the shard directory.
    pub file: String,
    /// File length in bytes (a multiple of 4096).
    pub bytes: u64,
    /// xxh3-64 of the whole file, 16 hex digits.
    pub checksum: String,
    /// Hash of the planned layout and its sources, 16 hex digits (also in the file header).
    pub plan_hash: String,
    /// Tensor table, in file order.
    pub tensors: Vec<TensorEntry>,
}

impl ShardEntry {
    /// The tensor with a role, if present.
    pub fn tensor(&self, role: Role) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.role == role)
    }
    /// Checksum as a number.
    pub fn checksum_u64(&self) -> Option<u64> {
        u64::from_str_radix(&self.checksum, 16).ok()
    }
    /// Plan hash as a number.
    pub fn plan_hash_u64(&self) -> Option<u64> {
        u64::from_str_radix(&self.plan_hash, 16).ok()
    }
}

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// What the shards were made from.
    pub source: String,
    /// The tool that wrote them.
    pub created_by: String,
    /// The `--compression` setting used.
    pub compression: String,
    /// How many tensors were decoded from a quantized source type and encoded
    /// again (those with [`TensorEntry::re_encoded_from`]); `None` in
    /// manifests from builds that did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re_encoded: Option<usize>,
    /// Always [`CHECKSUM_ALGORITHM`].
    pub checksum_algorithm: String,
    /// The model description.
    pub spec: ModelSpec,
    /// Tokenizer files copied next to the manifest.
    pub tokenizer_files: Vec<String>,
    /// Shards in forward order.
    pub shards: Vec<ShardEntry>,
    /// What the shards were made from, to tell whether they still are that (absent
    /// for synthetic sources; see [`crate::source_identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<SourceIdentity>,
}

impl Manifest {
    /// Read and validate `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).at("reading", &path)?;
        Manifest::parse(&bytes, &path)
    }

    /// Parse and validate manifest bytes; `path` is used in errors. Never panics.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| FormatError::Manifest {
            path: path.to_owned(),
            message: format!("cannot parse ({e}); re-run `airllm shard` to rewrite the directory"),
        })?;
        m.validate(path)?;
        Ok(m)
    }

    fn bad(path: &Path, message: String) -> FormatError {
        FormatError::Manifest { path: path.to_owned(), message }
    }

    /// Structural checks: version, units in order, every needed tensor present with its
    /// shape, offsets aligned and in bounds, lengths consistent with formats.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(Self::bad(
                path,
                format!(
                    "format version {} but this build reads version {FORMAT_VERSION}; re-run `airllm shard`",
                    self.format_version
                ),
            ));
        }
        self.spec.validate().map_err(|m| Self::bad(path, format!("spec: {m}")))?;
        if self.checksum_algorithm != CHECKSUM_ALGORITHM {
            return Err(Self::bad(
                path,
                format!(
                    "checksum algorithm {} is not {CHECKSUM_ALGORITHM}; re-run `airllm shard`",
                    crate::error::quote(&self.checksum_algorithm)
                ),
            ));
        }
        // Count before listing what the spec needs: a damaged layer count must not make
        // us build a table of billions of entries.
        // (A few missing are named one by one below.)
        let listed: usize = self.shards.iter().map(|s| s.tensors.len()).sum();
        if self.spec.expected_tensor_count() > listed.saturating_add(4096) {
            return Err(Self::bad(
                path,
                format!(
                    "the spec needs {} tensors ({} layers), the shards list {listed}; the manifest is damaged, \
                     re-run `airllm shard`",
                    self.spec.expected_tensor_count(),
                    self.spec.num_layers
                ),
            ));
        }
        if let Some(n) = self.re_encoded {
            let listed = self.re_encoded_tensors().count();
            if n != listed {
                return Err(Self::bad(
                    path,
                    format!("re_encoded says {n} tensors, {listed} carry re_encoded_from; re-run `airllm shard`"),
                ));
            }
        }
        let mut files = BTreeSet::new();
        for s in &self.shards {
            if s.file.is_empty()
                || s.file.len() > 255
                || s.file.contains('/')
                || s.file.contains('\\')
                || s.file.starts_with('.')
            {
                return Err(Self::bad(
                    path,
                    format!("shard file name {} is not a plain file name", crate::error::quote(&s.file)),
                ));
            }
            if !files.insert(&s.file) {
                return Err(Self::bad(path, format!("shard file {:?} is listed twice", s.file)));
            }
            if s.checksum.len() != 16 || s.checksum_u64().is_none() || s.plan_hash_u64().is_none() {
                return Err(Self::bad(
                    path,
                    format!("shard {}: checksum and plan_hash must be 16 hex digits", crate::error::quote(&s.file)),
                ));
            }
            if s.checksum_u64() == Some(0) {
                return Err(Self::bad(
                    path,
                    format!(
                        "shard {:?}: the checksum is zero (not recorded), so the file cannot be verified; \
                         re-run `airllm shard`",
                        s.file
                    ),
                ));
            }
            if !s.bytes.is_multiple_of(FILE_ALIGN) {
                return Err(Self::bad(
                    path,
                    format!("shard {:?}: length {} is not a multiple of {FILE_ALIGN}", s.file, s.bytes),
                ));
            }
            let mut prev_end = crate::shard_file::HEADER_LEN as u64;
            for t in &s.tensors {
                let Some(want) = t.format.checked_byte_len(&t.shape).map(|b| b as u64) else {
                    return Err(Self::bad(
                        path,
                        format!(
                            "shard {:?} tensor {}: shape {:?} is too large",
                            s.file,
                            crate::error::quote(&t.name),
                            t.shape
                        ),
                    ));
                };
                if t.shape.len() == 1 && t.format != StorageFormat::Dense(crate::dtype::DType::F32) {
                    return Err(Self::bad(
                        path,
                        format!(
                            "shard {:?} tensor {}: a vector stored as {}; vectors (norms, biases) are stored as f32. \
                             Re-run `airllm shard`",
                            s.file,
                            crate::error::quote(&t.name),
                            t.format
                        ),
                    ));
                }
                let end = t.offset.checked_add(t.bytes);
                if t.bytes != want {
                    return Err(Self::bad(
                        path,
                        format!(
                            "shard {:?} tensor {}: {} bytes recorded, its shape and format need {want}",
                            s.file,
                            crate::error::quote(&t.name),
                            t.bytes
                        ),
                    ));
                }
                if t.offset % TENSOR_ALIGN != 0 || t.offset < prev_end || end.is_none_or(|e| e > s.bytes) {
                    return Err(Self::bad(
                        path,
                        format!(
                            "shard {:?} tensor {}: offset {} is misaligned, overlapping or out of the file",
                            s.file,
                            crate::error::quote(&t.name),
                            t.offset
                        ),
                    ));
                }
                prev_end = end.unwrap_or(u64::MAX);
            }
        }
        // Every tensor the spec needs, exactly once, in the right unit and shape.
        let mut have: BTreeMap<(Unit, Role), &TensorEntry> = BTreeMap::new();
        for s in &self.shards {
            for t in &s.tensors {
                if have.insert((s.unit, t.role), t).is_some() {
                    return Err(Self::bad(path, format!("{} {} appears twice", s.unit, t.role)));
                }
            }
        }
        let parts: Vec<&ShardEntry> = self.shards.iter().filter(|s| matches!(s.unit, Unit::LmHeadPart(_))).collect();
        if !parts.is_empty() {
            // A split lm_head: parts in order, contiguous rows covering the vocabulary.
            let mut next = 0usize;
            for s in &parts {
                let t = s
                    .tensor(Role::LmHead)
                    .ok_or_else(|| Self::bad(path, format!("{} has no lm_head tensor", s.file)))?;
                if t.row_start != Some(next) || t.shape.len() != 2 || t.shape[1] != self.spec.hidden_size {
                    return Err(Self::bad(path, format!("{}: lm_head part does not continue at row {next}", s.file)));
                }
                next = next.saturating_add(t.shape[0]);
            }
            if next != self.spec.vocab_size {
                return Err(Self::bad(
                    path,
                    format!("lm_head parts cover {next} rows, the vocabulary has {}", self.spec.vocab_size),
                ));
            }
        }
        for (unit, role, shape) in expected_tensors(&self.spec) {
            if unit == Unit::LmHead && !parts.is_empty() {
                continue;
            }
            match have.get(&(unit, role)) {
                None => {
                    return Err(Self::bad(
                        path,
                        format!("no entry for {unit} {role}; the directory is incomplete, re-run `airllm shard`"),
                    ));
                }
                Some(t) if t.shape != shape => {
                    return Err(Self::bad(
                        path,
                        format!("{unit} {role} has shape {:?}, the spec needs {shape:?}", t.shape),
                    ));
                }
                Some(_) => {}
            }
        }
        let units: Vec<Unit> = self.shards.iter().map(|s| s.unit).collect();
        let mut want = expected_units(&self.spec);
        if !parts.is_empty() {
            want.retain(|u| *u != Unit::LmHead);
            want.extend((0..parts.len() as u32).map(Unit::LmHeadPart));
        }
        if units != want {
            return Err(Self::bad(path, "shards are not one per unit in forward order".into()));
        }
        Ok(())
    }

    /// Index of the shard holding a unit.
    pub fn shard_index(&self, unit: Unit) -> Option<usize> {
        self.shards.iter().position(|s| s.unit == unit)
    }

    /// Where a tensor lives: (shard index, entry). For a tied model the lm_head
    /// is the embedding matrix.
    pub fn find(&self, unit: Unit, role: Role) -> Option<(usize, &TensorEntry)> {
        let (unit, role) = if role == Role::LmHead && self.spec.tie_word_embeddings {
            (Unit::Embedding, Role::Embedding)
        } else {
            (unit, role)
        };
        let i = self.shard_index(unit)?;
        self.shards[i].tensor(role).map(|t| (i, t))
    }

    /// The tensors carrying [`TensorEntry::re_encoded_from`], with their shards.
    pub fn re_encoded_tensors(&self) -> impl Iterator<Item = (&ShardEntry, &TensorEntry)> {
        self.shards.iter().flat_map(|s| s.tensors.iter().filter(|t| t.re_encoded_from.is_some()).map(move |t| (s, t)))
    }

    /// Bytes of all tensors (without headers and alignment padding).
    pub fn tensor_bytes(&self) -> u64 {
        self.shards.iter().flat_map(|s| &s.tensors).map(|t| t.bytes).sum()
    }

    /// Total bytes of all shard files.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// Serialize (pretty JSON).
    pub fn to_json(&self) -> String {
        // Serializing plain data structures cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Path of a shard file.
    pub fn shard_path(&self, dir: &Path, i: usize) -> PathBuf {
        dir.join(&self.shards[i].file)
    }
}

/// The units of a model in forward order (lm_head only when untied).
pub fn expected_units(spec: &ModelSpec) -> Vec<Unit> {
    let mut v = vec![Unit::Embedding];
    v.extend((0..spec.num_layers as u32).map(Unit::Layer));
    v.push(Unit::FinalNorm);
    if !spec.tie_word_embeddings {
        v.push(Unit::LmHead);
    }
    v
}

/// Format a u64 as 16 hex digits.
pub fn hex64(x: u64) -> String {
    format!("{x:016x}")
}

impl Manifest {
    /// The units that compute logits, in order: the lm_head, its parts, or the
    /// embedding when tied.
    pub fn head_units(&self) -> Vec<(usize, Unit)> {
        let parts: Vec<(usize, Unit)> = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.unit, Unit::LmHeadPart(_)))
            .map(|(i, s)| (i, s.unit))
            .collect();
        if !parts.is_empty() {
            return parts;
        }
        self.shard_index(Unit::LmHead)
            .map(|i| (i, Unit::LmHead))
            .or_else(|| {
                self.spec
                    .tie_word_embeddings
                    .then(|| self.shard_index(Unit::Embedding).map(|i| (i, Unit::LmHead)))
                    .flatten()
            })
            .into_iter()
            .collect()
    }
}

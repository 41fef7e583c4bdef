//! The input side of the shard writer: anything that can list tensors with
//! their roles and hand out their bytes (a safetensors checkpoint, a GGUF file,
//! or random weights made on the fly by `cargo xtask synth`).

use std::borrow::Cow;
use std::path::PathBuf;

use crate::dtype::StorageFormat;
use crate::error::Result;
use crate::roles::{Role, Unit};
use crate::spec::ModelSpec;

/// A source file, for fingerprints and `--delete-original`.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Path on disk.
    pub path: PathBuf,
    /// Size in bytes when opened.
    pub size: u64,
}

/// A reordering of whole rows applied while copying (GGUF's q/k permutation undone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowPermutation {
    /// Undo llama.cpp's q/k permutation (`LlamaModel.permute` in
    /// `convert_hf_to_gguf.py`: `w.reshape(heads, 2, d/2, ...).swapaxes(1, 2)`), which
    /// interleaves the two halves of each head's `d = rows/heads` rows for ggml's
    /// adjacent-pair RoPE. Output (Hugging Face) row `h*d + j*(d/2) + i` is GGUF row
    /// `h*d + 2*i + j` (`i < d/2`, `j < 2`); see [`crate::gguf`].
    UnpermuteGgufQk {
        /// Heads the rows are split into.
        heads: usize,
    },
}

impl RowPermutation {
    /// For output row `r` of `rows`, the source row to copy.
    pub fn source_row(self, r: usize, rows: usize) -> usize {
        match self {
            RowPermutation::UnpermuteGgufQk { heads } => {
                // HF -> GGUF permute: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2).
                // So GGUF row (h, i, j) [i < d/2, j < 2] = HF row (h, j, i).
                // Inverse: HF row r = (h, j, i) comes from GGUF row h*d + i*2 + j.
                let d = rows / heads;
                let h = r / d;
                let rem = r % d;
                let j = rem / (d / 2);
                let i = rem % (d / 2);
                h * d + i * 2 + j
            }
        }
    }
}

/// One tensor offered by a source.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    /// Name in the source (kept in the manifest for traceability).
    pub name: String,
    /// The execution unit it belongs to.
    pub unit: Unit,
    /// Its role there.
    pub role: Role,
    /// How its bytes are stored in the source.
    pub format: StorageFormat,
    /// Logical shape, row-major, PyTorch order (`[out, in]` for matrices).
    pub shape: Vec<usize>,
    /// Index into [`TensorSource::files`] of the file holding it (None for synthetic data).
    pub file: Option<usize>,
    /// Row reordering to apply while copying, if any.
    pub row_perm: Option<RowPermutation>,
    /// Position of this tensor in its source's [`TensorSource::tensors`] list.
    pub index: usize,
}

impl SourceTensor {
    /// Stored byte length of the source data.
    pub fn byte_len(&self) -> usize {
        self.format.byte_len(&self.shape)
    }
}

/// Something the shard writer can read tensors from.
pub trait TensorSource: Sync {
    /// The model description.
    fn spec(&self) -> &ModelSpec;
    /// Every tensor inference needs, with roles assigned.
    fn tensors(&self) -> &[SourceTensor];
    /// Files backing the tensors (empty for synthetic sources).
    fn files(&self) -> &[SourceFile];
    /// The bytes of a tensor exactly as stored in the source.
    fn read(&self, tensor: &SourceTensor) -> Result<Cow<'_, [u8]>>;
    /// A one-line description for the manifest ("safetensors checkpoint at ...").
    fn describe(&self) -> String;
    /// Tokenizer files to copy next to the manifest (name in the shard dir, contents).
    fn tokenizer_files(&self) -> Result<Vec<(String, Vec<u8>)>>;
    /// What the files on disk are now, recorded in the manifest so that stale shards are
    /// never used (None for sources with no files, such as synthetic weights).
    fn identity(&self) -> Result<Option<crate::source_identity::SourceIdentity>> {
        Ok(None)
    }

    /// When [`read`](TensorSource::read) does not hand out the stored bytes but
    /// decodes a quantized type and encodes it again (GGUF Q2_K, Q3_K), that
    /// type's name (lower case, e.g. `q3_k`); recorded in the manifest. `None`
    /// (the default) for tensors read as stored.
    fn re_encoded_from(&self, tensor: &SourceTensor) -> Option<String> {
        let _ = tensor;
        None
    }
}

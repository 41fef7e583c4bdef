//! [`GgufSource`]: a memory-mapped GGUF file offered to the shard writer.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use airllm_quant::Codec;
use memmap2::Mmap;

use crate::checkpoint::check_tensors;
use crate::dtype::{DType, StorageFormat, dense_to_f32};
use crate::error::{FormatError, IoContext, Result};
use crate::gguf::kquants::convert_matrix;
use crate::gguf::names::{GgufName, classify_gguf};
use crate::gguf::parse::{GgufMetadata, GgufTensorInfo};
use crate::gguf::spec::{arch_info, spec_from_metadata};
use crate::gguf::tokenizer::export_tokenizer;
use crate::gguf::types::GgmlType;
use crate::roles::{Role, Unit};
use crate::source::{RowPermutation, SourceFile, SourceTensor, TensorSource};
use crate::spec::ModelSpec;

/// How [`GgufSource::read`] produces a tensor's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadKind {
    /// The stored bytes as they are.
    Copy,
    /// Dequantize a ggml type without a codec (Q2_K, Q3_K) and re-encode it.
    Convert(GgmlType, Codec),
    /// A 1-D q/k bias of `elem` bytes per value whose elements llama.cpp permuted
    /// (the writer's row permutation works on matrix rows, so it is undone here).
    UnpermuteBias { heads: usize, elem: usize },
}

#[derive(Clone, Copy, Debug)]
struct Loc {
    start: usize,
    len: usize,
    kind: ReadKind,
}

/// A GGUF model file opened for sharding: metadata parsed, the file memory-mapped
/// (never read whole), every tensor assigned a unit and role and checked against
/// the spec.
///
/// - Shapes are in PyTorch order (GGUF's `ne` reversed).
/// - F32/F16/BF16 tensors are offered dense; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
///   Q4_K, Q5_K and Q6_K as the codec of the same layout (bytes copied);
///   Q2_K and Q3_K converted, and reported by
///   [`TensorSource::re_encoded_from`] (see [`GgmlType::offered_as`]).
/// - Llama-architecture Q and K rows carry
///   [`RowPermutation::UnpermuteGgufQk`], so the shards hold Hugging Face row
///   order and the spec keeps [`RopeStyle::HalfRotation`](crate::RopeStyle).
/// - Stacked 3-D expert tensors (`ffn_*_exps`) are offered as one tensor per expert.
/// - The tokenizer is exported as Hugging Face files ([`TensorSource::tokenizer_files`]).
pub struct GgufSource {
    path: PathBuf,
    map: Mmap,
    meta: GgufMetadata,
    spec: ModelSpec,
    files: Vec<SourceFile>,
    tensors: Vec<SourceTensor>,
    locs: Vec<Loc>,
    tokenizer: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for GgufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufSource").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

fn map_file(path: &Path) -> Result<(Mmap, u64)> {
    let file = File::open(path).at("opening", path)?;
    let size = file.metadata().at("reading metadata of", path)?.len();
    // SAFETY: a read-only map; the file must not be truncated or rewritten while it is
    // mapped (the documented requirement of every tool here, as for other mmap users).
    let map = unsafe { Mmap::map(&file) }.at("memory-mapping", path)?;
    Ok((map, size))
}

/// Parse a GGUF file's header, metadata and tensor infos (the file is mapped,
/// not read; tensor data is never touched).
pub fn read_metadata(path: &Path) -> Result<GgufMetadata> {
    let (map, _) = map_file(path)?;
    GgufMetadata::parse(&map, path)
}

impl GgufSource {
    /// Open a GGUF file: parse it, build the [`ModelSpec`], classify every tensor and
    /// check that each one the spec needs is present with the right shape.
    pub fn open(path: &Path) -> Result<GgufSource> {
        let (map, size) = map_file(path)?;
        let meta = GgufMetadata::parse(&map, path)?;
        let (_, arch) = arch_info(&meta)?;
        let rope_freqs = match meta.tensor("rope_freqs.weight") {
            Some(t) if t.ggml_type == Some(GgmlType::F32) => {
                let b = slice(&map, t, path)?;
                Some(dense_to_f32(DType::F32, b))
            }
            Some(t) => {
                return Err(meta.err(format!("rope_freqs.weight has type {}; expected F32", t.type_name())));
            }
            None => None,
        };
        let spec = spec_from_metadata(&meta, rope_freqs.as_deref())?;
        let mut pairs: Vec<(SourceTensor, Loc)> = Vec::new();
        for info in &meta.tensors {
            let Some(class) = classify_gguf(&info.name) else {
                if info.name.starts_with("rope_factors") {
                    return Err(meta.err(format!(
                        "tensor {:?}: LongRoPE (per-frequency long/short factors) is not supported",
                        info.name
                    )));
                }
                return Err(FormatError::UnknownTensor {
                    path: path.to_owned(),
                    tensor: info.name.clone(),
                    family: spec.family.to_string(),
                });
            };
            let t = info.ggml_type.ok_or_else(|| {
                meta.err(format!(
                    "tensor {:?} has unknown ggml type {}; is the file from a newer llama.cpp?",
                    info.name, info.type_id
                ))
            })?;
            let format = t.offered_as().ok_or_else(|| {
                meta.err(format!(
                    "tensor {:?} has type {t}, which cannot be read; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, \
                     Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (streamed as stored), Q2_K, Q3_K (re-encoded). Pick another \
                     quantization of the model (e.g. Q4_K_M or Q8_0)",
                    info.name
                ))
            })?;
            let kind = match format {
                StorageFormat::Quant(c) if t.is_transcoded() => ReadKind::Convert(t, c),
                _ => ReadKind::Copy,
            };
            let whole = Loc { start: info.file_offset as usize, len: info.byte_len as usize, kind };
            match class {
                GgufName::Ignored => {}
                GgufName::Plain(unit, role) => {
                    let role = if arch.fused_gate_up && role == Role::Up { Role::GateUp } else { role };
                    let mut loc = whole;
                    let mut row_perm = None;
                    if arch.permuted_qk && matches!(role, Role::Q | Role::K | Role::QBias | Role::KBias) {
                        let heads =
                            if matches!(role, Role::Q | Role::QBias) { spec.num_heads } else { spec.num_kv_heads };
                        let rows = info.shape().first().copied().unwrap_or(0);
                        if rows % (2 * heads) != 0 {
                            return Err(meta.err(format!(
                                "tensor {:?} has {rows} rows, not a multiple of 2 x {heads} heads",
                                info.name
                            )));
                        }
                        if info.ne.len() == 1 {
                            let Some(d) = format.dense() else {
                                return Err(
                                    meta.err(format!("bias {:?} is quantized ({t}); expected F32/F16", info.name))
                                );
                            };
                            loc.kind = ReadKind::UnpermuteBias { heads, elem: d.size() };
                        } else {
                            row_perm = Some(RowPermutation::UnpermuteGgufQk { heads });
                        }
                    }
                    pairs.push((tensor(info.name.clone(), unit, role, format, info.shape(), row_perm), loc));
                }
                GgufName::Experts(unit, kind) => {
                    let shape = info.shape();
                    let want = spec.moe.map(|m| m.num_experts);
                    let [experts, rows, cols] = shape[..] else {
                        return Err(meta.err(format!(
                            "expert tensor {:?} has shape {shape:?}; expected [experts, rows, cols]",
                            info.name
                        )));
                    };
                    if Some(experts) != want {
                        return Err(meta.err(format!(
                            "expert tensor {:?} stacks {experts} experts, the metadata says {want:?}",
                            info.name
                        )));
                    }
                    let each = format.byte_len(&[rows, cols]);
                    for e in 0..experts {
                        let loc = Loc { start: whole.start + e * each, len: each, kind: whole.kind };
                        let name = format!("{}[{e}]", info.name);
                        pairs.push((tensor(name, unit, kind.role(e as u32), format, vec![rows, cols], None), loc));
                    }
                }
            }
        }
        // Forward order, as for safetensors checkpoints.
        pairs.sort_by_key(|(t, _)| (t.unit, t.role));
        for w in pairs.windows(2) {
            if (w[0].0.unit, w[0].0.role) == (w[1].0.unit, w[1].0.role) {
                return Err(meta.err(format!(
                    "tensors {:?} and {:?} both hold {} {}",
                    w[0].0.name, w[1].0.name, w[0].0.unit, w[0].0.role
                )));
            }
        }
        let mut tensors = Vec::with_capacity(pairs.len());
        let mut locs = Vec::with_capacity(pairs.len());
        for (i, (t, l)) in pairs.into_iter().enumerate() {
            tensors.push(SourceTensor { index: i, ..t });
            locs.push(l);
        }
        check_tensors(&spec, &tensors, path)?;
        // Built now so that a broken tokenizer fails before any shard is written.
        let tokenizer = match export_tokenizer(&meta)? {
            Some(t) => t.to_files(),
            None => {
                tracing::warn!("{}: no tokenizer in the GGUF metadata; none will be written", path.display());
                Vec::new()
            }
        };
        let files = vec![SourceFile { path: path.to_owned(), size }];
        Ok(GgufSource { path: path.to_owned(), map, meta, spec, files, tensors, locs, tokenizer })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed metadata and tensor infos.
    pub fn metadata(&self) -> &GgufMetadata {
        &self.meta
    }

    /// How many bytes of the file `tensor` (one of [`TensorSource::tensors`])
    /// occupies, as stored (before any conversion).
    pub fn stored_len(&self, tensor: &SourceTensor) -> Option<usize> {
        self.locs.get(tensor.index).map(|l| l.len)
    }

    /// The stored bytes of a GGUF tensor by its GGUF name (no conversion, no permutation).
    pub fn raw_bytes(&self, name: &str) -> Option<&[u8]> {
        let t = self.meta.tensor(name)?;
        slice(&self.map, t, &self.path).ok()
    }
}

fn tensor(
    name: String,
    unit: Unit,
    role: Role,
    format: StorageFormat,
    shape: Vec<usize>,
    row_perm: Option<RowPermutation>,
) -> SourceTensor {
    SourceTensor { name, unit, role, format, shape, file: Some(0), row_perm, index: 0 }
}

fn slice<'a>(map: &'a [u8], t: &GgufTensorInfo, path: &Path) -> Result<&'a [u8]> {
    let (s, n) = (t.file_offset as usize, t.byte_len as usize);
    s.checked_add(n).and_then(|e| map.get(s..e)).ok_or_else(|| FormatError::Gguf {
        path: path.to_owned(),
        message: format!("tensor {:?} lies outside the file", t.name),
    })
}

impl TensorSource for GgufSource {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }

    fn files(&self) -> &[SourceFile] {
        &self.files
    }

    fn read(&self, tensor: &SourceTensor) -> Result<Cow<'_, [u8]>> {
        let loc = self
            .locs
            .get(tensor.index)
            .filter(|_| self.tensors.get(tensor.index).is_some_and(|t| t.name == tensor.name))
            .ok_or_else(|| FormatError::MissingTensor {
                path: self.path.clone(),
                tensor: tensor.name.clone(),
                why: "not in this GGUF file".into(),
            })?;
        let raw = loc.start.checked_add(loc.len).and_then(|e| self.map.get(loc.start..e)).ok_or_else(|| {
            FormatError::Gguf {
                path: self.path.clone(),
                message: format!("tensor {:?} lies outside the file", tensor.name),
            }
        })?;
        match loc.kind {
            ReadKind::Copy => Ok(Cow::Borrowed(raw)),
            ReadKind::Convert(from, to) => {
                let cols = tensor.shape.last().copied().unwrap_or(1);
                let rows = tensor.shape.iter().product::<usize>().checked_div(cols).unwrap_or(0);
                convert_matrix(from, raw, rows, cols, to).map(Cow::Owned).map_err(|m| FormatError::Gguf {
                    path: self.path.clone(),
                    message: format!("tensor {:?} ({from} -> {to}): {m}", tensor.name),
                })
            }
            ReadKind::UnpermuteBias { heads, elem } => {
                let n = raw.len() / elem;
                let perm = RowPermutation::UnpermuteGgufQk { heads };
                let mut out = vec![0u8; raw.len()];
                for r in 0..n {
                    let s = perm.source_row(r, n);
                    out[r * elem..(r + 1) * elem].copy_from_slice(&raw[s * elem..(s + 1) * elem]);
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    fn describe(&self) -> String {
        format!("gguf file {}", self.path.display())
    }

    fn identity(&self) -> Result<Option<crate::source_identity::SourceIdentity>> {
        crate::source_identity::SourceIdentity::of_gguf(&self.path).map(Some)
    }

    fn re_encoded_from(&self, tensor: &SourceTensor) -> Option<String> {
        match self.locs.get(tensor.index)?.kind {
            ReadKind::Convert(from, _) => Some(from.name().to_ascii_lowercase()),
            _ => None,
        }
    }

    /// `tokenizer.json` and `tokenizer_config.json` exported from the metadata
    /// (see [`export_tokenizer`]); empty when the file has no tokenizer.
    fn tokenizer_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.tokenizer.clone())
    }
}

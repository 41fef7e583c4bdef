//! Hugging Face checkpoints: `config.json` plus a single `model.safetensors` or
//! shards listed in `model.safetensors.index.json`. Files are memory-mapped;
//! nothing is read into RAM until a tensor's bytes are asked for.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use crate::dtype::{DType, StorageFormat};
use crate::error::{FormatError, IoContext, Result};
use crate::roles::{Role, Unit, classify_hf_for, hf_ignored_for};
use crate::source::{SourceFile, SourceTensor, TensorSource};
use crate::spec::ModelSpec;

/// Tokenizer-related files copied next to the manifest when present.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// One tensor of a safetensors header: dtype, shape, and its `[begin, end)` byte
/// range relative to the data start.
pub type HeaderTensor = (safetensors::Dtype, Vec<usize>, (usize, usize));

/// The parsed header of one safetensors file.
#[derive(Clone, Debug)]
pub struct SafetensorsHeader {
    /// Byte offset where tensor data begins (8 + header length).
    pub data_start: usize,
    /// Tensors: name -> (dtype name, shape, [begin, end) relative to data_start).
    pub tensors: BTreeMap<String, HeaderTensor>,
}

/// Parse a safetensors header from the file's bytes (validated: offsets in bounds,
/// contiguous, sizes consistent with shapes). Never panics on garbage.
pub fn parse_safetensors_header(bytes: &[u8], path: &Path) -> Result<SafetensorsHeader> {
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| FormatError::Safetensors { path: path.to_owned(), reason: e.to_string() })?;
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, (info.dtype, info.shape.clone(), info.data_offsets)))
        .collect();
    Ok(SafetensorsHeader { data_start: 8 + n, tensors })
}

struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

/// A Hugging Face checkpoint opened for reading.
pub struct Checkpoint {
    dir: PathBuf,
    spec: ModelSpec,
    files: Vec<SourceFile>,
    maps: Vec<Option<MappedFile>>,
    tensors: Vec<SourceTensor>,
    /// (file index, absolute byte range) per tensor, parallel to `tensors`.
    ranges: Vec<(usize, usize, usize)>,
    /// DeepSeek-V3: per layer, the checkpoint tensors the absorbed MLA
    /// projections are computed from (they are not offered themselves), with
    /// their byte ranges.
    mla_inputs: BTreeMap<u32, (crate::mla::AbsorbInputs, [(usize, usize, usize); 3])>,
    /// Tensors offered as f32 whose stored dtype is this (DeepSeek's router bias).
    widened: BTreeMap<String, DType>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("dir", &self.dir).field("tensors", &self.tensors.len()).finish()
    }
}

impl Checkpoint {
    /// Open a checkpoint directory: parse config.json, map every weight file and
    /// check every tensor the spec needs is present with the right shape.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        Checkpoint::open_with(dir, false)
    }

    /// Like [`Checkpoint::open`], but with `allow_missing` weight files listed in the
    /// index may be absent (removed by an interrupted `--delete-original` run); their
    /// tensors are then simply not offered, and the completeness check is left to the
    /// shard writer, which can keep the shards already made from them.
    pub fn open_with(dir: &Path, allow_missing: bool) -> Result<Checkpoint> {
        let spec = ModelSpec::from_config_file(&dir.join("config.json"))?;
        let weight_files = weight_files(dir, allow_missing)?;
        let partial = weight_files.iter().any(|p| !p.is_file());
        let mut files = Vec::new();
        let mut maps = Vec::new();
        let mut tensors = Vec::new();
        let mut ranges = Vec::new();
        for (fi, path) in weight_files.iter().enumerate() {
            if !path.is_file() {
                files.push(SourceFile { path: path.clone(), size: 0 });
                maps.push(None);
                continue;
            }
            let file = File::open(path).at("opening", path)?;
            let size = file.metadata().at("reading metadata of", path)?.len();
            // SAFETY: the map is read-only; the file must not be truncated while we
            // hold it (a documented requirement of the shard tool, as for every mmap user).
            let map = unsafe { Mmap::map(&file) }.at("memory-mapping", path)?;
            let header = parse_safetensors_header(&map, path)?;
            for (name, (dtype, shape, (b, e))) in header.tensors {
                if hf_ignored_for(spec.family, &name) || crate::roles::beyond_layers(&spec, &name) {
                    continue;
                }
                let Some((unit, role)) = classify_hf_for(spec.family, &name) else {
                    return Err(FormatError::UnknownTensor {
                        path: path.clone(),
                        tensor: name,
                        family: spec.family.to_string(),
                    });
                };
                let dt = DType::from_safetensors(dtype).ok_or_else(|| FormatError::UnsupportedDtype {
                    path: path.clone(),
                    tensor: name.clone(),
                    dtype: format!("{dtype:?}"),
                })?;
                tensors.push(SourceTensor {
                    name,
                    unit,
                    role,
                    format: StorageFormat::Dense(dt),
                    shape,
                    file: Some(fi),
                    row_perm: None,
                    index: 0,
                });
                ranges.push((fi, header.data_start + b, header.data_start + e));
            }
            files.push(SourceFile { path: path.clone(), size });
            maps.push(Some(MappedFile { path: path.clone(), map }));
        }
        // DeepSeek-V3: the query, kv_b and output projections become the absorbed pair.
        let mut mla_inputs = BTreeMap::new();
        if let Some(mla) = spec.mla {
            let range_of: BTreeMap<String, (usize, usize, usize)> =
                tensors.iter().zip(&ranges).map(|(t, r)| (t.name.clone(), *r)).collect();
            let inputs = crate::mla::replace_with_absorbed(&spec, &mla, &mut tensors, dir)?;
            ranges = tensors.iter().map(|t| range_of.get(&t.name).copied().unwrap_or((0, 0, 0))).collect();
            for (l, inp) in inputs {
                let r = |t: &SourceTensor| range_of.get(&t.name).copied().unwrap_or((0, 0, 0));
                let rs = [r(&inp.q), r(&inp.kv_b), r(&inp.o)];
                mla_inputs.insert(l, (inp, rs));
            }
        }
        // The router's correction bias is read as f32 by the routing kernels;
        // bf16/f16 checkpoints store it in their dtype: it is widened when read.
        let mut widened = BTreeMap::new();
        for t in &mut tensors {
            if let (Role::RouterBias, StorageFormat::Dense(d)) = (t.role, t.format)
                && d != DType::F32
            {
                widened.insert(t.name.clone(), d);
                t.format = StorageFormat::Dense(DType::F32);
            }
        }
        let mut ck = Checkpoint { dir: dir.to_owned(), spec, files, maps, tensors, ranges, mla_inputs, widened };
        ck.sort()?;
        if !partial {
            check_tensors(&ck.spec, &ck.tensors, &ck.dir)?;
        }
        Ok(ck)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sort(&mut self) -> Result<()> {
        // Forward order: unit, then role, so shard contents are deterministic.
        let tied = self.spec.tie_word_embeddings;
        let mut pairs: Vec<(SourceTensor, (usize, usize, usize))> = std::mem::take(&mut self.tensors)
            .into_iter()
            .zip(std::mem::take(&mut self.ranges))
            // Some tied checkpoints still store lm_head.weight; it duplicates the embedding.
            .filter(|(t, _)| !(tied && t.role == Role::LmHead))
            .collect();
        pairs.sort_by_key(|(t, _)| (t.unit, t.role));
        for (i, (t, r)) in pairs.into_iter().enumerate() {
            self.tensors.push(SourceTensor { index: i, ..t });
            self.ranges.push(r);
        }
        Ok(())
    }
}

/// Check that every tensor the spec needs exists with the expected shape.
pub fn check_tensors(spec: &ModelSpec, tensors: &[SourceTensor], origin: &Path) -> Result<()> {
    // Count first, without building the list: a config that claims 10^9 layers must be
    // refused here, not by running out of memory listing what it needs.
    // (A few missing are named one by one below.)
    let need = spec.expected_tensor_count();
    if need > tensors.len().saturating_add(4096) {
        return Err(FormatError::Config {
            path: origin.to_owned(),
            message: format!(
                "a {} model with {} layers needs {need} tensors, the checkpoint holds {}; is num_hidden_layers \
                 (or the expert count) right for these weights?",
                spec.family,
                spec.num_layers,
                tensors.len()
            ),
        });
    }
    let have: BTreeMap<(Unit, Role), &SourceTensor> = tensors.iter().map(|t| ((t.unit, t.role), t)).collect();
    for (unit, role, shape) in expected_tensors(spec) {
        match have.get(&(unit, role)) {
            None => {
                return Err(FormatError::MissingTensor {
                    path: origin.to_owned(),
                    tensor: format!("{unit} {role}"),
                    why: format!("a {} model needs it", spec.family),
                });
            }
            Some(t) if t.shape != shape => {
                return Err(FormatError::Shape {
                    path: origin.to_owned(),
                    tensor: t.name.clone(),
                    found: t.shape.clone(),
                    expected: shape,
                });
            }
            Some(_) => {}
        }
    }
    let layers: BTreeSet<u32> =
        tensors.iter().filter_map(|t| if let Unit::Layer(i) = t.unit { Some(i) } else { None }).collect();
    if let Some(&max) = layers.iter().next_back()
        && max as usize >= spec.num_layers
    {
        return Err(FormatError::Config {
            path: origin.to_owned(),
            message: format!("tensors exist for layer {max} but num_hidden_layers is {}", spec.num_layers),
        });
    }
    Ok(())
}

/// Every (unit, role, shape) the spec requires, in forward order.
pub fn expected_tensors(spec: &ModelSpec) -> Vec<(Unit, Role, Vec<usize>)> {
    let h = spec.hidden_size;
    let (q, kv, i) = (spec.q_dim(), spec.kv_dim(), spec.intermediate_size);
    let mut out = vec![(Unit::Embedding, Role::Embedding, vec![spec.vocab_size, h])];
    for l in 0..spec.num_layers as u32 {
        let u = Unit::Layer(l);
        out.push((u, Role::AttnNorm, vec![h]));
        if let Some(mla) = spec.mla {
            deepseek_layer(spec, &mla, u, &mut out);
            continue;
        }
        if spec.family == crate::spec::Family::Phi3 {
            out.push((u, Role::Qkv, vec![q + 2 * kv, h]));
        } else {
            out.push((u, Role::Q, vec![q, h]));
            out.push((u, Role::K, vec![kv, h]));
            out.push((u, Role::V, vec![kv, h]));
            if spec.qkv_bias {
                out.push((u, Role::QBias, vec![q]));
                out.push((u, Role::KBias, vec![kv]));
                out.push((u, Role::VBias, vec![kv]));
            }
        }
        out.push((u, Role::O, vec![h, q]));
        if spec.o_bias {
            out.push((u, Role::OBias, vec![h]));
        }
        if spec.qk_norm {
            out.push((u, Role::QNorm, vec![spec.head_dim]));
            out.push((u, Role::KNorm, vec![spec.head_dim]));
        }
        let sandwich = spec.layer(l as usize).sandwich_norms;
        if sandwich {
            out.push((u, Role::PostAttnNorm, vec![h]));
        }
        out.push((u, Role::MlpNorm, vec![h]));
        if let Some(m) = spec.moe {
            out.push((u, Role::Router, vec![m.num_experts, h]));
            for e in 0..m.num_experts as u32 {
                out.push((u, Role::ExpertGate(e), vec![i, h]));
                out.push((u, Role::ExpertUp(e), vec![i, h]));
                out.push((u, Role::ExpertDown(e), vec![h, i]));
            }
        } else if matches!(spec.family, crate::spec::Family::Phi3 | crate::spec::Family::Glm) {
            out.push((u, Role::GateUp, vec![2 * i, h]));
            out.push((u, Role::Down, vec![h, i]));
        } else {
            out.push((u, Role::Gate, vec![i, h]));
            out.push((u, Role::Up, vec![i, h]));
            out.push((u, Role::Down, vec![h, i]));
        }
        if sandwich {
            out.push((u, Role::PostMlpNorm, vec![h]));
        }
    }
    out.push((Unit::FinalNorm, Role::FinalNorm, vec![h]));
    if !spec.tie_word_embeddings {
        out.push((Unit::LmHead, Role::LmHead, vec![spec.vocab_size, h]));
    }
    out
}

/// The rest of a DeepSeek-V3 layer (after its attention norm): absorbed latent
/// attention, then a dense MLP or routed experts with a router bias and shared experts.
fn deepseek_layer(spec: &ModelSpec, mla: &crate::spec::MlaSpec, u: Unit, out: &mut Vec<(Unit, Role, Vec<usize>)>) {
    let h = spec.hidden_size;
    for (role, shape) in crate::mla::attention_tensors(spec, mla) {
        out.push((u, role, shape));
    }
    out.push((u, Role::MlpNorm, vec![h]));
    let Unit::Layer(l) = u else { return };
    match spec.layer(l as usize).mlp {
        crate::layers::MlpSpec::Dense { intermediate: i } => {
            out.push((u, Role::Gate, vec![i, h]));
            out.push((u, Role::Up, vec![i, h]));
            out.push((u, Role::Down, vec![h, i]));
        }
        crate::layers::MlpSpec::Moe(m) => {
            let i = spec.intermediate_size;
            out.push((u, Role::Router, vec![m.num_experts, h]));
            out.push((u, Role::RouterBias, vec![m.num_experts]));
            for e in 0..m.num_experts as u32 {
                out.push((u, Role::ExpertGate(e), vec![i, h]));
                out.push((u, Role::ExpertUp(e), vec![i, h]));
                out.push((u, Role::ExpertDown(e), vec![h, i]));
            }
            if let Some(s) = m.shared_intermediate {
                out.push((u, Role::SharedGate, vec![s, h]));
                out.push((u, Role::SharedUp, vec![s, h]));
                out.push((u, Role::SharedDown, vec![h, s]));
            }
        }
    }
}

/// The weight files of a checkpoint directory: those named by the index, or
/// `model.safetensors`, or every `*.safetensors` file.
fn weight_files(dir: &Path, allow_missing: bool) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).at("reading", &index)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| FormatError::Config { path: index.clone(), message: format!("not valid JSON ({e})") })?;
        let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| FormatError::Config {
            path: index.clone(),
            message: "field `weight_map` (tensor name -> file) is missing".into(),
        })?;
        let names: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        let mut out = Vec::new();
        for n in names {
            if n.contains('/') || n.contains('\\') || n.contains("..") {
                return Err(FormatError::Config {
                    path: index.clone(),
                    message: format!("weight_map names file {n:?} outside the checkpoint directory"),
                });
            }
            let p = dir.join(n);
            if !p.is_file() && !allow_missing {
                return Err(FormatError::ModelNotFound {
                    model: dir.display().to_string(),
                    message: format!(
                        "{} lists {n} but {} does not exist; the download is incomplete",
                        index.display(),
                        p.display()
                    ),
                });
            }
            out.push(p);
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .at("listing", dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    all.sort();
    if all.is_empty() {
        let has_bin = dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists();
        return Err(FormatError::ModelNotFound {
            model: dir.display().to_string(),
            message: if has_bin {
                "only PyTorch .bin weights found; convert them to safetensors first".into()
            } else {
                "no model.safetensors, model.safetensors.index.json or *.safetensors file".into()
            },
        });
    }
    Ok(all)
}

impl TensorSource for Checkpoint {
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
        if let (Some(mla), Role::QAbsorbed | Role::OAbsorbed, Unit::Layer(l)) =
            (self.spec.mla, tensor.role, tensor.unit)
        {
            let (inputs, ranges) = self.mla_inputs.get(&l).ok_or_else(|| FormatError::MissingTensor {
                path: self.dir.clone(),
                tensor: tensor.name.clone(),
                why: "its input projections are not in this checkpoint".into(),
            })?;
            let names = [&inputs.q.name, &inputs.kv_b.name, &inputs.o.name];
            let mut raw: [&[u8]; 3] = [&[], &[], &[]];
            for (k, &(fi, b, e)) in ranges.iter().enumerate() {
                let m = self.maps.get(fi).and_then(Option::as_ref).ok_or_else(|| FormatError::MissingTensor {
                    path: self.dir.clone(),
                    tensor: names[k].clone(),
                    why: "its file was deleted".into(),
                })?;
                raw[k] = m.map.get(b..e).ok_or_else(|| FormatError::Safetensors {
                    path: m.path.clone(),
                    reason: format!("tensor {} lies outside the file", names[k]),
                })?;
            }
            return crate::mla::absorb(&self.spec, &mla, tensor.role, inputs, raw).map(Cow::Owned);
        }
        let &(fi, b, e) = self
            .ranges
            .get(tensor.index)
            .filter(|_| self.tensors.get(tensor.index).is_some_and(|t| t.name == tensor.name))
            .ok_or_else(|| FormatError::MissingTensor {
                path: self.dir.clone(),
                tensor: tensor.name.clone(),
                why: "not in this checkpoint".into(),
            })?;
        let Some(m) = &self.maps[fi] else {
            return Err(FormatError::MissingTensor {
                path: self.files[fi].path.clone(),
                tensor: tensor.name.clone(),
                why: "its file was deleted".into(),
            });
        };
        let bytes = m.map.get(b..e).ok_or_else(|| FormatError::Safetensors {
            path: m.path.clone(),
            reason: format!("tensor {} lies outside the file", tensor.name),
        })?;
        if let Some(&d) = self.widened.get(&tensor.name) {
            let v = crate::dtype::dense_to_f32(d, bytes);
            return Ok(Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
        Ok(Cow::Borrowed(bytes))
    }
    fn describe(&self) -> String {
        format!("safetensors checkpoint {}", self.dir.display())
    }
    fn identity(&self) -> Result<Option<crate::source_identity::SourceIdentity>> {
        crate::source_identity::SourceIdentity::of_checkpoint_dir(&self.dir).map(Some)
    }
    fn tokenizer_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for name in TOKENIZER_FILES {
            let p = self.dir.join(name);
            if p.is_file() {
                out.push((name.to_string(), std::fs::read(&p).at("reading", &p)?));
            }
        }
        Ok(out)
    }
}

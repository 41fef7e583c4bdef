//! Helpers for `airllm inspect`: shard sizes a checkpoint would get, and the plan.

use airllm_format::{ModelLocation, ModelSpec, TensorSource, Unit};
use airllm_quant::Compression;
use serde::Serialize;

use crate::engine::EngineConfig;
use crate::error::{EngineError, Result};
use crate::planner::Plan;

/// (unit, file, bytes, tensors) per shard.
pub type ShardSizes = Vec<(Unit, String, u64, usize)>;

/// Spec and planned shard sizes of a checkpoint or GGUF file (nothing written).
pub fn planned_shard_sizes(loc: &ModelLocation, compression: Compression) -> Result<(ModelSpec, ShardSizes)> {
    match loc {
        ModelLocation::HfDir(d) => {
            let ck = airllm_format::Checkpoint::open(d)?;
            Ok((ck.spec().clone(), airllm_format::writer::dry_run(&ck, compression)?))
        }
        ModelLocation::Gguf(p) => {
            let src = airllm_format::gguf::GgufSource::open(p)?;
            Ok((src.spec().clone(), airllm_format::writer::dry_run(&src, compression)?))
        }
        ModelLocation::ShardDir(d) => {
            let m = airllm_format::Manifest::load(d)?;
            let v = m.shards.iter().map(|s| (s.unit, s.file.clone(), s.bytes, s.tensors.len())).collect();
            Ok((m.spec, v))
        }
    }
}

/// What the shards hold (or would hold) of the source's tensors.
#[derive(Clone, Debug, Serialize)]
pub struct TensorStats {
    /// Tensors in the shards (a split lm_head counts once per part).
    pub tensors: usize,
    /// Their bytes (no headers or alignment padding).
    pub tensor_bytes: u64,
    /// Bytes those tensors occupy in the source file(s), when known (GGUF
    /// files and checkpoints; not recorded in shard directories).
    pub source_bytes: Option<u64>,
    /// Tensors decoded from a quantized source type and encoded again: (name,
    /// source type, shard format). `None` when a manifest predates the record.
    pub re_encoded: Option<Vec<(String, String, String)>>,
}

/// [`TensorStats`] of a checkpoint or GGUF file as it would be sharded with
/// `compression`, or of a shard directory as it was.
pub fn tensor_stats(loc: &ModelLocation, compression: Compression) -> Result<TensorStats> {
    fn planned(src: &dyn TensorSource, compression: Compression, stored: &dyn Fn(usize) -> u64) -> TensorStats {
        let ts = src.tensors();
        let re = airllm_format::writer::planned_re_encoded(src, compression);
        TensorStats {
            tensors: ts.len(),
            tensor_bytes: ts
                .iter()
                .map(|t| airllm_format::writer::output_format(t, compression).byte_len(&t.shape) as u64)
                .sum(),
            source_bytes: Some((0..ts.len()).map(stored).sum()),
            re_encoded: Some(re.into_iter().map(|(n, from, to)| (n, from, to.to_string())).collect()),
        }
    }
    match loc {
        ModelLocation::HfDir(d) => {
            let ck = airllm_format::Checkpoint::open(d)?;
            let ts = ck.tensors();
            Ok(planned(&ck, compression, &|i| ts[i].byte_len() as u64))
        }
        ModelLocation::Gguf(p) => {
            let src = airllm_format::gguf::GgufSource::open(p)?;
            let ts = src.tensors();
            Ok(planned(&src, compression, &|i| src.stored_len(&ts[i]).unwrap_or(0) as u64))
        }
        ModelLocation::ShardDir(d) => {
            let m = airllm_format::Manifest::load(d)?;
            let re = m.re_encoded.map(|_| {
                m.re_encoded_tensors()
                    .map(|(_, t)| (t.name.clone(), t.re_encoded_from.clone().unwrap_or_default(), t.format.to_string()))
                    .collect()
            });
            Ok(TensorStats {
                tensors: m.shards.iter().map(|s| s.tensors.len()).sum(),
                tensor_bytes: m.tensor_bytes(),
                source_bytes: None,
                re_encoded: re,
            })
        }
    }
}

/// The plan for a budget, from the same planning call the engine makes
/// ([`crate::engine::plan_units`]), so `inspect` and `generate` agree.
pub fn plan_for(
    spec: &ModelSpec,
    shards: &ShardSizes,
    cfg: &EngineConfig,
    ctx: Option<&airllm_gpu::GpuContext>,
) -> Result<Plan> {
    let find = |u: Unit| shards.iter().find(|s| s.0 == u).map(|s| s.2);
    let mut units = Vec::new();
    for l in 0..spec.num_layers as u32 {
        units.push((
            Unit::Layer(l),
            find(Unit::Layer(l)).ok_or_else(|| EngineError::invalid("shards", format!("no layer {l}")))?,
        ));
    }
    units.push((Unit::FinalNorm, find(Unit::FinalNorm).unwrap_or(4096)));
    let parts: Vec<(Unit, u64)> =
        shards.iter().filter(|s| matches!(s.0, Unit::LmHeadPart(_))).map(|s| (s.0, s.2)).collect();
    if parts.is_empty() {
        let head = find(Unit::LmHead).or_else(|| find(Unit::Embedding)).unwrap_or(0);
        units.push((Unit::LmHead, head));
    } else {
        units.extend(parts);
    }
    crate::engine::plan_for_device(spec, units, cfg, ctx)
}

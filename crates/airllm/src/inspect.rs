//! Helpers for `airllm inspect`: shard sizes a checkpoint would get, and the plan.

use airllm_format::{ModelLocation, ModelSpec, TensorSource, Unit};
use airllm_quant::Compression;

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

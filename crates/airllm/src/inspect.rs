//! Helpers for `airllm inspect`: shard sizes a checkpoint would get, and the plan.

use airllm_format::{ModelLocation, ModelSpec, TensorSource, Unit};
use airllm_quant::Compression;

use crate::error::{EngineError, Result};
use crate::planner::{PlanInput, ResidencyPlan};
use crate::sizing;

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

/// The residency plan for a budget (None when neither a budget nor a layer count is given).
pub fn plan_for(
    spec: &ModelSpec,
    shards: &ShardSizes,
    max_vram: Option<u64>,
    resident_layers: Option<usize>,
    max_context: usize,
) -> Result<Option<ResidencyPlan>> {
    if max_vram.is_none() && resident_layers.is_none() {
        return Ok(None);
    }
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
    let chunk = 512.min(max_context);
    Ok(Some(crate::planner::plan(&PlanInput {
        units,
        kv_bytes: sizing::kv_bytes(spec, max_context, 1),
        activation_bytes: sizing::activation_bytes(spec, chunk, 1),
        staging_in_vram: true,
        prefetch_depth: 4,
        budget: max_vram.unwrap_or(u64::MAX),
        resident_layers,
    })?))
}

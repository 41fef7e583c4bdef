//! The engine: a set of sequences sharing a paged KV cache, and ragged steps
//! that run one pass over the weights for any mix of work (prompt chunks,
//! decode tokens) of any number of sequences.
//!
//! ```text
//! scheduler (crate::scheduler) --items--> Engine::step
//!   for each unit, in order, where the plan placed it:
//!     Resident -> its VRAM buffer          \
//!     Streamed -> a ring slot (airllm-gpu)  }-> graph (graph.rs) on an executor (exec/)
//!   logits rows --> sampler
//! KV: a pool of blocks (kv/), one table per sequence; kernels read tables.
//! ```
//!
//! Sequences are added and removed between steps without touching the
//! others' cache; the pool and every buffer are allocated once, by the plan
//! ([`crate::planner`]) with the sizes of [`crate::sizing`], so the VRAM
//! budget holds at every batch.

pub mod calibrate;
pub mod embedding;
pub mod exec;
pub mod graph;
pub mod kv;
pub mod pass_times;
pub mod step;
pub mod weights;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use airllm_format::{LayerSpec, ModelSpec, RopeSpec, ShardDir, Unit};
use airllm_gpu::kernels::kv_compact::{self, KvCompact, SlotMove};
use airllm_gpu::kernels::paged::{StepLayout, StepViews};
use airllm_gpu::{BufView, GpuContext, KvCache, KvLayout, Ring, wgpu};
use airllm_io::{ReadMode, ReaderOptions, ShardSpec};

use self::embedding::EmbeddingTable;
use self::exec::Buf;
use self::exec::cpu::{CpuActivations, CpuExec, CpuKv, CpuUnit};
use self::exec::gpu::{GpuActivations, GpuExec, GpuKv};
use self::kv::BlockPool;
pub use self::pass_times::PassTimes;
pub use self::step::{Logits, ROOT, SeqId, StepItem, Tree};

/// Nodes a draft tree may have below its root (the kernels' tree limit, less
/// the root).
pub const MAX_TREE_NODES: usize = airllm_gpu::kernels::paged::MAX_TREE as usize - 1;
use self::weights::UnitWeights;
use crate::error::{EngineError, Result};
use crate::options::KvDtype;
use crate::planner::{Placement, Plan, PlanInput};
use crate::sizing::{self, StepCapacity};

/// Engine settings (the facade's [`Options`](crate::Options) map onto these).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// VRAM budget in bytes (None: the adapter's size minus a margin, if it reports one).
    pub max_vram: Option<u64>,
    /// Forced number of resident decoder layers.
    pub resident_layers: Option<usize>,
    /// Shards read ahead.
    pub prefetch_depth: usize,
    /// Longest sequence in slots.
    pub max_context: usize,
    /// Slots of the KV pool, shared by all sequences (None: `max_context`).
    pub kv_tokens: Option<usize>,
    /// Sequences one step may carry.
    pub max_sequences: usize,
    /// Token rows per step.
    pub max_batch_tokens: usize,
    /// Logit rows per step (None: at least 64 and `max_sequences`).
    pub max_logit_rows: Option<usize>,
    /// Slots per KV block.
    pub kv_block: usize,
    /// KV element type.
    pub kv_dtype: KvDtype,
    /// How the reader reads.
    pub read_mode: Option<ReadMode>,
    /// Reader threads (None: one per core, at most 16).
    pub read_threads: Option<usize>,
    /// Decoder layers to run on the CPU (with a GPU): overrides the cost model.
    pub cpu_layers: Option<usize>,
    /// Let the planner move streamed units to the CPU when it reads them faster
    /// (measured once per machine, see [`calibrate`]).
    pub cost_model: bool,
    /// Activation precision of the CPU executor's quantized matmuls.
    pub cpu_precision: airllm_quant::dot::Precision,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let o = crate::Options::default();
        EngineConfig {
            max_vram: o.max_vram,
            resident_layers: o.resident_layers,
            prefetch_depth: o.prefetch_depth,
            max_context: 4096,
            kv_tokens: o.kv_tokens,
            max_sequences: o.max_sequences,
            max_batch_tokens: o.max_batch_tokens,
            max_logit_rows: None,
            kv_block: 16,
            kv_dtype: o.kv_dtype,
            read_mode: o.read_mode,
            read_threads: None,
            cpu_layers: o.cpu_layers,
            cost_model: false,
            cpu_precision: o.cpu_precision,
        }
    }
}

impl EngineConfig {
    /// The step and KV capacity this configuration allocates.
    pub fn capacity(&self) -> StepCapacity {
        let sequences = self.max_sequences.max(1);
        StepCapacity {
            rows: self.max_batch_tokens.max(sequences),
            logit_rows: self.max_logit_rows.unwrap_or(64.max(sequences)).max(1),
            sequences,
            max_context: self.max_context.max(1),
            kv_tokens: self.kv_tokens.unwrap_or(self.max_context).max(1),
            kv_block: self.kv_block.max(1),
            kv_dtype: self.kv_dtype,
        }
    }
}

/// What a unit of the plan is and where its bytes are.
struct PlanUnit {
    unit: Unit,
    shard: usize,
    placement: Placement,
    /// The VRAM copy of a resident unit.
    resident: Option<wgpu::Buffer>,
    /// The mapped shard of a CPU unit.
    cpu: Option<CpuUnit>,
}

/// KV blocks in use ([`Engine::kv_blocks`]): the global pool (every layer
/// that keeps its whole context) and the sliding layers' pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvBlocks {
    /// Global blocks owned by some sequence.
    pub used: usize,
    /// Global blocks in all.
    pub total: usize,
    /// Sliding blocks owned by some sequence.
    pub sliding_used: usize,
    /// Sliding blocks in all (0: no layer slides).
    pub sliding_total: usize,
    /// Slots per block (both pools).
    pub block: usize,
}

/// Time and bytes spent so far.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    /// Passes over the weights (steps).
    pub passes: u64,
    /// Token rows processed.
    pub rows: u64,
    /// Wall time inside `step`.
    pub forward: Duration,
    /// Time waiting for shards from the reader.
    pub io_wait: Duration,
    /// Time waiting for staging buffers to be re-mapped.
    pub remap_wait: Duration,
    /// GPU copies of streamed units into slots (only measured with profiling on).
    pub upload: Duration,
    /// Time gathering embeddings and uploading inputs.
    pub host: Duration,
    /// Time waiting for the GPU to finish the pass and reading logits back (GPU work
    /// runs asynchronously, so most compute time of a resident pass lands here).
    pub readback: Duration,
    /// Bytes of weights streamed.
    pub streamed_bytes: u64,
    /// Time loading resident units.
    pub load: Duration,
    /// Time moving activations between the CPU and the GPU (at placement boundaries).
    pub transfer: Duration,
    /// Bytes moved between the CPU and the GPU.
    pub transfer_bytes: u64,
    /// Time computing CPU-placed units.
    pub cpu: Duration,
    /// Early-exit passes (self-drafting through the resident layers; not in `passes`).
    pub early_passes: u64,
    /// Host and device time of the passes that ran on the GPU, split.
    pub gpu_passes: PassTimes,
    /// The same for decode passes alone (one token row per item).
    pub decode_passes: PassTimes,
}

impl EngineStats {
    /// The counters accumulated between `self` (earlier) and `later`.
    pub fn since(&self, later: &EngineStats) -> EngineStats {
        EngineStats {
            passes: later.passes - self.passes,
            rows: later.rows - self.rows,
            forward: later.forward.saturating_sub(self.forward),
            io_wait: later.io_wait.saturating_sub(self.io_wait),
            remap_wait: later.remap_wait.saturating_sub(self.remap_wait),
            upload: later.upload.saturating_sub(self.upload),
            host: later.host.saturating_sub(self.host),
            readback: later.readback.saturating_sub(self.readback),
            streamed_bytes: later.streamed_bytes - self.streamed_bytes,
            load: later.load,
            transfer: later.transfer.saturating_sub(self.transfer),
            transfer_bytes: later.transfer_bytes - self.transfer_bytes,
            cpu: later.cpu.saturating_sub(self.cpu),
            early_passes: later.early_passes - self.early_passes,
            gpu_passes: self.gpu_passes.since(&later.gpu_passes),
            decode_passes: self.decode_passes.since(&later.decode_passes),
        }
    }
}

/// A sequence's cache state.
#[derive(Debug, Default)]
struct SeqState {
    /// Slots filled.
    len: usize,
    /// Its blocks.
    table: Vec<u32>,
    /// Its blocks in the sliding layers' pool, indexed like `table` (entries of
    /// slots outside every future row's window are [`kv::DEAD`]).
    swa: Vec<u32>,
    /// The first position of its last plain (non-tree) step: tree steps trim
    /// the sliding blocks no further than this, so the caller can still cut
    /// the sequence back to it (drop a draft tree, keep a verified path).
    anchor: usize,
}

/// The step-input buffers.
struct StepBuffers {
    positions: wgpu::Buffer,
    rows: wgpu::Buffer,
    seqs: wgpu::Buffer,
    block_table: wgpu::Buffer,
    tree_masks: wgpu::Buffer,
    kv_moves: wgpu::Buffer,
    /// The sliding layers' block tables (same offsets as `block_table`).
    sliding_block_table: wgpu::Buffer,
}

impl StepBuffers {
    fn new(ctx: &GpuContext, spec: &ModelSpec, cap: &StepCapacity) -> Self {
        let [p, r, s, b, t, m, w] =
            sizing::step_input_buffers(spec, cap).map(|(name, bytes)| ctx.create_storage_buffer(name, bytes));
        StepBuffers {
            positions: p,
            rows: r,
            seqs: s,
            block_table: b,
            tree_masks: t,
            kv_moves: m,
            sliding_block_table: w,
        }
    }

    fn bytes(&self) -> u64 {
        [
            &self.positions,
            &self.rows,
            &self.seqs,
            &self.block_table,
            &self.tree_masks,
            &self.kv_moves,
            &self.sliding_block_table,
        ]
        .iter()
        .map(|b| b.size())
        .sum()
    }

    /// The step as a layer reads it: a sliding layer reads its own block tables.
    fn views(&self, sliding: bool) -> StepViews<'_> {
        StepViews {
            rows: BufView::whole(&self.rows),
            seqs: BufView::whole(&self.seqs),
            block_table: BufView::whole(if sliding { &self.sliding_block_table } else { &self.block_table }),
            tree_masks: BufView::whole(&self.tree_masks),
        }
    }
}

/// The GPU side: the context and every buffer the engine holds in VRAM.
struct GpuSide {
    /// Shared so a pass can record on it while the side's buffers change.
    ctx: std::sync::Arc<GpuContext>,
    ring: Option<Ring>,
    /// KV buffers of the GPU-placed global and sliding layers, and each
    /// layer's index in its cache (`kv_sliding` when the layer slides).
    kv: Option<KvCache>,
    kv_sliding: Option<KvCache>,
    kv_index: Vec<Option<usize>>,
    act: GpuActivations,
    inputs: StepBuffers,
    ropes: Vec<(RopeSpec, wgpu::Buffer)>,
    /// Where the logits come back (host memory, double-buffered).
    readback: airllm_gpu::LogitsReadback,
    /// The step inputs go up through these (host memory, reused).
    belt: airllm_gpu::UploadBelt,
}

/// The CPU side: host activations, RAM KV of CPU-placed layers, threads.
struct CpuSide {
    act: CpuActivations,
    kv: Vec<Option<CpuKv>>,
    ropes: Vec<(RopeSpec, Vec<f32>)>,
    pool: &'static airllm_quant::pool::ThreadPool,
    scratch: airllm_quant::dot::Scratch,
}

/// Where the live activation of a pass is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Gpu,
    Cpu,
}

/// The engine.
pub struct Engine {
    gpu: Option<GpuSide>,
    cpu: Option<CpuSide>,
    dir: ShardDir,
    spec: ModelSpec,
    layers: Vec<LayerSpec>,
    plan: Plan,
    units: Vec<PlanUnit>,
    kv_layout: KvLayout,
    pool: BlockPool,
    /// The sliding layers' pool and layout (None when no layer slides).
    swa: Option<(kv::window::SlidingKv, KvLayout)>,
    /// Per decoder layer: whether its KV lives in the sliding pool.
    layer_sliding: Vec<bool>,
    seqs: BTreeMap<SeqId, SeqState>,
    next_seq: u64,
    embed: EmbeddingTable,
    cfg: EngineConfig,
    cap: StepCapacity,
    stats: EngineStats,
    peak_vram: u64,
    /// Reader options, to rebuild the ring after an aborted pass.
    read_opts: ReaderOptions,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("dir", &self.dir.dir()).field("plan", &self.plan).finish()
    }
}

/// The units run per pass: layers, final norm, head (the embedding shard when
/// tied), as (unit, shard index, bytes).
pub fn pass_units(dir: &ShardDir) -> Result<Vec<(Unit, usize, u64)>> {
    let m = dir.manifest();
    let mut out = Vec::new();
    for l in 0..m.spec.num_layers as u32 {
        let i = m
            .shard_index(Unit::Layer(l))
            .ok_or_else(|| EngineError::invalid("manifest", format!("no shard for layer {l}")))?;
        out.push((Unit::Layer(l), i, m.shards[i].bytes));
    }
    let norm = m.shard_index(Unit::FinalNorm).ok_or_else(|| EngineError::invalid("manifest", "no final norm shard"))?;
    out.push((Unit::FinalNorm, norm, m.shards[norm].bytes));
    let heads = m.head_units();
    if heads.is_empty() {
        return Err(EngineError::invalid("manifest", "no lm_head shard"));
    }
    for (i, unit) in heads {
        out.push((unit, i, m.shards[i].bytes));
    }
    Ok(out)
}

/// The plan for units of these sizes under `cfg`: the one planning call the
/// engine and `inspect` share.
pub fn plan_units(
    spec: &ModelSpec,
    units: Vec<(Unit, u64)>,
    cfg: &EngineConfig,
    staging_in_vram: bool,
) -> Result<Plan> {
    crate::planner::plan(&PlanInput {
        // Buffers are allocated in 16-byte multiples; plan with what is allocated.
        units: units.into_iter().map(|(u, b)| (u, airllm_gpu::ring::slot_size(b))).collect(),
        fixed: sizing::fixed_bytes(spec, &cfg.capacity()),
        staging_in_vram,
        prefetch_depth: cfg.prefetch_depth,
        budget: cfg.max_vram.unwrap_or(u64::MAX),
        resident_layers: cfg.resident_layers,
    })
}

/// The whole plan for a device: everything on the CPU without a GPU context;
/// else the VRAM plan, with units moved to the CPU by `cfg.cpu_layers` or
/// (when `cfg.cost_model`) the measured cost model. `cfg.max_vram` must be
/// resolved already ([`effective_budget`]). The engine and `inspect` both
/// plan with this.
pub fn plan_for_device(
    spec: &ModelSpec,
    sizes: Vec<(Unit, u64)>,
    cfg: &EngineConfig,
    ctx: Option<&GpuContext>,
) -> Result<Plan> {
    match ctx {
        None => Ok(crate::planner::all_cpu(sizes)),
        Some(ctx) => {
            let mut plan = plan_units(spec, sizes, cfg, staging_in_vram(ctx))?;
            let cost = (cfg.cost_model && cfg.cpu_layers.is_none())
                .then(|| calibrate::cost_model(ctx, airllm_quant::pool::global()));
            crate::planner::place_cpu(&mut plan, cfg.cpu_layers, cost.as_ref());
            Ok(plan)
        }
    }
}

/// Whether mapped staging buffers live in VRAM on this adapter (discrete GPUs
/// map them through the BAR; integrated and software adapters use host memory).
pub fn staging_in_vram(ctx: &GpuContext) -> bool {
    !ctx.caps().is_software() && ctx.caps().device_type != wgpu::DeviceType::IntegratedGpu
}

/// The budget `cfg` asks for, or the adapter's default.
pub fn effective_budget(ctx: &GpuContext, cfg: &EngineConfig) -> Option<u64> {
    cfg.max_vram.or_else(|| ctx.caps().vram_bytes.map(default_budget))
}

/// Read a whole shard file into a new GPU buffer (mapped at creation: one copy
/// from the page cache into memory the driver uploads from).
fn load_resident(ctx: &GpuContext, dir: &ShardDir, shard: usize) -> Result<wgpu::Buffer> {
    let entry = dir.entry(shard);
    let path = dir.shard_path(shard);
    // Checks the length and header before trusting the file.
    drop(dir.map(shard)?);
    let size = airllm_gpu::ring::slot_size(entry.bytes);
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(&entry.file),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    });
    {
        let mut view = buffer
            .slice(..)
            .get_mapped_range_mut()
            .map_err(|e| EngineError::invalid(entry.file.clone(), format!("cannot map the upload buffer: {e}")))?;
        let ptr = view.slice(..).as_raw_element_ptr();
        // SAFETY: `ptr` points at `size` >= entry.bytes mapped bytes that stay mapped
        // while `view` lives; nothing else accesses the buffer before it is unmapped below.
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), entry.bytes as usize) };
        let mut f = File::open(&path).map_err(|e| airllm_format::FormatError::Io {
            op: "opening shard",
            path: path.clone(),
            source: e,
        })?;
        f.read_exact(dst).map_err(|e| airllm_format::FormatError::Io {
            op: "reading shard",
            path: path.clone(),
            source: e,
        })?;
        drop(view);
    }
    buffer.unmap();
    Ok(buffer)
}

impl Engine {
    /// Places a shard directory by the plan for `cfg`: on the GPU of `ctx`
    /// (units that do not fit stream, or run on the CPU where the plan says),
    /// or, with no context, entirely on the CPU executor.
    pub fn new(ctx: Option<GpuContext>, dir: ShardDir, mut cfg: EngineConfig) -> Result<Engine> {
        let t0 = Instant::now();
        let spec = dir.manifest().spec.clone();
        let listed = pass_units(&dir)?;
        let sizes: Vec<(Unit, u64)> = listed.iter().map(|(u, _, b)| (*u, *b)).collect();
        let cpu_pool = airllm_quant::pool::global();
        if let Some(ctx) = &ctx {
            cfg.max_vram = effective_budget(ctx, &cfg);
        }
        let plan = plan_for_device(&spec, sizes, &cfg, ctx.as_ref())?;
        if let Some(ctx) = &ctx {
            // Each GPU unit lives in one buffer (resident, or a ring slot and a staging buffer).
            let max_buffer = ctx.caps().max_buffer;
            let too_big =
                listed.iter().zip(&plan.placement).find(|((_, _, b), p)| **p != Placement::Cpu && *b > max_buffer);
            if let Some(((_, shard, bytes), _)) = too_big {
                return Err(EngineError::invalid(
                    dir.entry(*shard).file.clone(),
                    format!(
                        "{} is larger than the largest buffer {} allows ({}); re-shard with --compression 8bit or \
                         4bit, use another adapter (--adapter), or run it on the CPU (--device cpu)",
                        airllm_format::human_bytes(*bytes),
                        ctx.caps().adapter_name,
                        airllm_format::human_bytes(max_buffer)
                    ),
                ));
            }
        }
        let cap = cfg.capacity();
        let kv_layout = sizing::kv_layout(&spec, &cap);
        let swa_layout = sizing::sliding_kv_layout(&spec, &cap);
        let layer_sliding: Vec<bool> =
            spec.layer_specs().iter().map(|l| swa_layout.is_some() && sizing::kv_sliding(l, &cap)).collect();
        let mut units = Vec::new();
        for (i, (unit, shard, _)) in listed.iter().enumerate() {
            let placement = plan.placement[i];
            let resident = match (&ctx, placement) {
                (Some(ctx), Placement::Resident) => Some(load_resident(ctx, &dir, *shard)?),
                _ => None,
            };
            let cpu = match placement {
                Placement::Cpu => Some(CpuUnit::open(dir.map(*shard)?, dir.entry(*shard))?),
                _ => None,
            };
            units.push(PlanUnit { unit: *unit, shard: *shard, placement, resident, cpu });
        }
        let mut read_opts = ReaderOptions::default();
        if let Some(m) = cfg.read_mode {
            read_opts.mode = m;
        }
        if let Some(t) = cfg.read_threads {
            read_opts.threads = t.max(1);
        }
        let on = |p: Placement, l: usize| {
            units
                .iter()
                .any(|u| u.unit == Unit::Layer(l as u32) && (u.placement == Placement::Cpu) == (p == Placement::Cpu))
        };
        let gpu = match ctx {
            None => None,
            Some(ctx) => {
                let ring = new_ring(&ctx, &dir, &units, &plan, &read_opts)?;
                let mut kv_index = Vec::new();
                // Layers in the global cache, and in the sliding one.
                let mut n = [0usize; 2];
                for (l, &sl) in layer_sliding.iter().enumerate() {
                    kv_index.push(on(Placement::Resident, l).then(|| {
                        n[usize::from(sl)] += 1;
                        n[usize::from(sl)] - 1
                    }));
                }
                let kv = if n[0] > 0 { Some(KvCache::new(&ctx, n[0], kv_layout)?) } else { None };
                let kv_sliding = match swa_layout {
                    Some(sl) if n[1] > 0 => Some(KvCache::new(&ctx, n[1], sl)?),
                    _ => None,
                };
                let act = GpuActivations::new(&ctx, &spec, cap.rows as u32, cap.logit_rows as u32);
                let inputs = StepBuffers::new(&ctx, &spec, &cap);
                let ropes =
                    spec.distinct_ropes().into_iter().map(|r| (r, ctx.upload_f32("inv_freq", &r.inv_freq()))).collect();
                // Every buffer a pass binds lives as long as the engine: cache their bind groups.
                ctx.set_bind_group_cache(true);
                let (readback, belt) = (airllm_gpu::LogitsReadback::new(), airllm_gpu::UploadBelt::new(2));
                Some(GpuSide {
                    ctx: std::sync::Arc::new(ctx),
                    ring,
                    kv,
                    kv_sliding,
                    kv_index,
                    act,
                    inputs,
                    ropes,
                    readback,
                    belt,
                })
            }
        };
        let cpu = units.iter().any(|u| u.placement == Placement::Cpu).then(|| CpuSide {
            act: CpuActivations::new(&spec, cap.rows, cap.logit_rows),
            kv: (0..spec.num_layers)
                .map(|l| on(Placement::Cpu, l).then(|| CpuKv::new(&sizing::layer_kv_layout(&spec, &cap, l))))
                .collect(),
            ropes: spec.distinct_ropes().into_iter().map(|r| (r, r.inv_freq())).collect(),
            pool: cpu_pool,
            scratch: airllm_quant::dot::Scratch::new(),
        });
        let embed = EmbeddingTable::open(&dir)?;
        let swa = swa_layout
            .zip(sizing::kv_window(&spec, &cap))
            .map(|(l, w)| (kv::window::SlidingKv::new(l.num_blocks as usize, l.block as usize, w), l));
        let layers = spec.layer_specs();
        let mut e = Engine {
            gpu,
            cpu,
            dir,
            spec,
            layers,
            plan,
            units,
            kv_layout,
            pool: BlockPool::new(kv_layout.num_blocks as usize, kv_layout.block as usize),
            swa,
            layer_sliding,
            seqs: BTreeMap::new(),
            next_seq: 0,
            embed,
            cfg,
            cap,
            stats: EngineStats::default(),
            peak_vram: 0,
            read_opts,
        };
        e.stats.load = t0.elapsed();
        e.peak_vram = e.vram_bytes();
        // The plan and the allocation use the same sizes; check it holds.
        if e.peak_vram > e.plan.budget {
            return Err(EngineError::invalid(
                "--max-vram",
                format!(
                    "the engine allocated {} against a budget of {} (planned {}); this is a bug, please report it",
                    airllm_format::human_bytes(e.peak_vram),
                    airllm_format::human_bytes(e.plan.budget),
                    airllm_format::human_bytes(e.plan.vram_bytes())
                ),
            ));
        }
        Ok(e)
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    /// The plan in effect.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// The GPU context (None when everything runs on the CPU).
    pub fn ctx(&self) -> Option<&GpuContext> {
        self.gpu.as_ref().map(|g| &*g.ctx)
    }
    /// Where the engine runs, for people: the adapter, the CPU executor, or both.
    pub fn device_name(&self) -> String {
        let cpu = self.cpu.as_ref().map(|c| {
            format!("CPU ({}, {} threads)", airllm_quant::dot::Kernels::best().level().name(), c.pool.threads())
        });
        match (self.gpu.as_ref().map(|g| g.ctx.caps().adapter_name.clone()), cpu) {
            (Some(g), Some(c)) => format!("{g} + {c}"),
            (Some(g), None) => g,
            (None, Some(c)) => c,
            (None, None) => "nothing".into(),
        }
    }
    /// The shard directory.
    pub fn dir(&self) -> &ShardDir {
        &self.dir
    }
    /// The configuration in effect (budget resolved).
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    /// What one step may carry.
    pub fn capacity(&self) -> StepCapacity {
        self.cap
    }
    /// Counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        if let Some(r) = self.gpu.as_ref().and_then(|g| g.ring.as_ref()) {
            let rs = r.stats();
            s.io_wait = rs.io_wait;
            s.remap_wait = rs.remap_wait;
            s.upload = rs.upload;
            s.streamed_bytes = rs.bytes;
        }
        s
    }
    /// The reader's statistics, when streaming.
    pub fn reader_stats(&self) -> Option<airllm_io::ReaderStats> {
        self.gpu.as_ref().and_then(|g| g.ring.as_ref()).and_then(|s| s.reader_stats())
    }
    /// Longest sequence in slots.
    pub fn max_context(&self) -> usize {
        self.cap.max_context
    }
    /// Where each unit runs: (unit, bytes, placement).
    pub fn placements(&self) -> Vec<(Unit, u64, Placement)> {
        self.plan.units.iter().zip(&self.plan.placement).map(|((u, b), p)| (*u, *b, *p)).collect()
    }

    /// GPU bytes allocated by the engine now.
    pub fn vram_bytes(&self) -> u64 {
        let Some(g) = &self.gpu else { return 0 };
        let resident: u64 = self.units.iter().filter_map(|u| u.resident.as_ref()).map(|b| b.size()).sum();
        let (ring, staging) = g.ring.as_ref().map(|s| s.bytes()).unwrap_or((0, 0));
        let staging = if self.plan.staging_in_vram { staging } else { 0 };
        let kv: u64 = [&g.kv, &g.kv_sliding]
            .iter()
            .filter_map(|k| k.as_ref())
            .map(|k| k.layers() as u64 * sizing::storage_size(k.layout().layer_bytes()))
            .sum();
        let ropes: u64 = g.ropes.iter().map(|(_, b)| b.size()).sum();
        resident + ring + staging + kv + g.act.bytes() + g.inputs.bytes() + ropes
    }
    /// The largest [`Engine::vram_bytes`] seen.
    pub fn peak_vram(&self) -> u64 {
        self.peak_vram
    }

    // ---- sequences -------------------------------------------------------

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_seq);
        self.next_seq += 1;
        self.seqs.insert(id, SeqState::default());
        id
    }

    /// Ends a sequence and frees its KV blocks (unknown ids are ignored).
    pub fn remove_sequence(&mut self, id: SeqId) {
        if let Some(mut s) = self.seqs.remove(&id) {
            self.pool.release_all(&mut s.table);
            if let Some((w, _)) = &mut self.swa {
                w.pool.release_all(&mut s.swa);
            }
        }
    }

    /// Slots a sequence has filled.
    pub fn sequence_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    /// Sequences alive.
    pub fn sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Forgets a sequence's slots from `len` on (blocks past it are freed), e.g.
    /// to re-use a conversation's prefix or drop rejected proposals.
    ///
    /// With sliding-window layers a cut is refused (an error, the sequence
    /// unchanged) when their blocks before `len` were already given back (a cut
    /// further back than the last step's first token, see [`kv::window`]); the
    /// caller then re-reads the prefix into a new sequence.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let s = self.seqs.get_mut(&id).ok_or_else(|| EngineError::invalid("sequence", format!("no {id}")))?;
        let len = s.len.min(len);
        if let Some((w, _)) = &mut self.swa {
            w.cut(&mut s.swa, len).map_err(|e| {
                EngineError::invalid(
                    "truncate",
                    format!(
                        "{id} cannot be cut to {len} tokens: its sliding-window layers hold slots from {} on, and a \
                         row at {len} sees slots from {}; re-read the prefix into a new sequence",
                        e.first_held, e.needed
                    ),
                )
            })?;
        }
        s.len = len;
        s.anchor = s.anchor.min(len);
        self.pool.shrink(&mut s.table, s.len);
        Ok(())
    }

    /// KV blocks in use and in all, global and sliding pools.
    pub fn kv_blocks(&self) -> KvBlocks {
        let (sliding_used, sliding_total) =
            self.swa.as_ref().map(|(w, _)| (w.pool.used_blocks(), w.pool.num_blocks())).unwrap_or((0, 0));
        KvBlocks {
            used: self.pool.used_blocks(),
            total: self.pool.num_blocks(),
            sliding_used,
            sliding_total,
            block: self.pool.block_size(),
        }
    }

    /// Keeps one path of a token tree scored at slots `base..` (see
    /// [`Tree`]) and drops the other nodes: node `path[k]`'s keys and values
    /// move to slot `base + k` in every layer's cache, and the sequence ends
    /// at `base + path.len()`. `path` lists node indices in increasing order,
    /// each the parent of the next (a root-to-node path of the tree); an
    /// empty path drops the whole tree.
    pub fn keep_tree_path(&mut self, id: SeqId, base: usize, path: &[usize]) -> Result<()> {
        let block = self.pool.block_size();
        let s = self.seqs.get(&id).ok_or_else(|| EngineError::invalid("sequence", format!("no {id}")))?;
        if base > s.len {
            return Err(EngineError::invalid("tree", format!("{id}: tree base {base} is past its length {}", s.len)));
        }
        if path.len() > airllm_gpu::kernels::paged::MAX_TREE as usize {
            return Err(EngineError::invalid(
                "tree",
                format!("{id}: a path of {} nodes is longer than any tree", path.len()),
            ));
        }
        for (k, &node) in path.iter().enumerate() {
            let prev = if k == 0 { None } else { Some(path[k - 1]) };
            if node < k || prev.is_some_and(|p| p >= node) || base + node >= s.len {
                return Err(EngineError::invalid(
                    "tree",
                    format!("{id}: path {path:?} is not increasing within the {} tree nodes", s.len - base),
                ));
            }
        }
        // The same moves through each pool's table (the sliding one holds every
        // tree slot: a tree step trims no further than its base).
        let moves_in = |table: &[u32]| -> Result<Vec<SlotMove>> {
            let locate = |slot: usize| match table.get(slot / block) {
                Some(&b) if b != kv::DEAD => Ok([b, (slot % block) as u32]),
                _ => Err(EngineError::invalid("tree", format!("{id}: slot {slot} is not in its KV cache"))),
            };
            path.iter()
                .enumerate()
                .filter(|&(k, &node)| node != k)
                .map(|(k, &node)| {
                    let (src, dst) = (locate(base + node)?, locate(base + k)?);
                    Ok([src[0], src[1], dst[0], dst[1]])
                })
                .collect()
        };
        let moves = moves_in(&s.table)?;
        let swa_moves = if self.swa.is_some() { moves_in(&s.swa)? } else { Vec::new() };
        if !moves.is_empty() {
            self.move_slots(&moves, &swa_moves)?;
        }
        self.truncate(id, base + path.len())
    }

    /// Applies slot moves to every layer's KV cache, on the side it lives on
    /// (`swa_moves`, the same moves located in the sliding pool, to the
    /// sliding layers).
    fn move_slots(&mut self, moves: &[SlotMove], swa_moves: &[SlotMove]) -> Result<()> {
        let swa_layout = self.swa.as_ref().map(|(_, l)| *l);
        let pick = |sliding: bool| match (sliding, swa_layout) {
            (true, Some(l)) => (l, swa_moves),
            _ => (self.kv_layout, moves),
        };
        if let Some(c) = &mut self.cpu {
            for (l, kv) in c.kv.iter_mut().enumerate() {
                let Some(kv) = kv else { continue };
                let (layout, m) = pick(self.layer_sliding[l]);
                kv_compact::reference(&layout, m, &mut kv.k);
                if !layout.k_only {
                    kv_compact::reference(&layout, m, &mut kv.v);
                }
            }
        }
        if let Some(g) = &self.gpu {
            // Moves come from a tree of at most MAX_TREE nodes: the buffer holds
            // both lists (the global layers' moves, then the sliding layers').
            let half = u64::from(airllm_gpu::kernels::paged::MAX_TREE) * 16;
            let buf = &g.inputs.kv_moves;
            for (i, m) in [moves, swa_moves].iter().enumerate() {
                if !m.is_empty() {
                    g.ctx.queue().write_buffer(buf, i as u64 * half, bytemuck::cast_slice(m));
                }
            }
            let mut rec = g.ctx.recorder("kv_compact");
            for (l, i) in g.kv_index.iter().enumerate() {
                let Some(i) = *i else { continue };
                let sliding = self.layer_sliding[l];
                let (cache, (_, m)) = (if sliding { &g.kv_sliding } else { &g.kv }, pick(sliding));
                let Some(cache) = cache else { continue };
                let (Some(k_cache), Some(v_cache)) = (cache.k(i), cache.v(i)) else { continue };
                if m.is_empty() {
                    continue;
                }
                kv_compact::launch(
                    &mut rec,
                    &KvCompact {
                        layout: cache.layout(),
                        moves: BufView::new(buf, u64::from(sliding) * half, half),
                        n_moves: m.len() as u32,
                        k_cache,
                        v_cache,
                    },
                )?;
            }
            rec.submit()?;
        }
        Ok(())
    }

    /// KV blocks free in the pool.
    pub fn free_blocks(&self) -> usize {
        self.pool.free_blocks()
    }

    /// KV blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Blocks sequence `id` must still take to grow by `extra` tokens (all of a
    /// new sequence's when `id` is None).
    pub fn blocks_needed(&self, id: Option<SeqId>, extra: usize) -> usize {
        let (len, have) = id.and_then(|i| self.seqs.get(&i)).map(|s| (s.len, s.table.len())).unwrap_or((0, 0));
        self.pool.blocks_for(len + extra).saturating_sub(have)
    }

    // ---- steps ------------------------------------------------------------

    /// Runs one pass over the weights for `items` (each sequence at most once):
    /// appends every item's tokens to its sequence and returns, per item, the
    /// logits it asked for (`[rows, vocab]` row-major). On error no sequence
    /// advances.
    pub fn step(&mut self, items: &[StepItem<'_>]) -> Result<Vec<Vec<f32>>> {
        self.step_until(items, None)
    }

    /// Decoder layers an early-exit pass may run ([`Engine::step_early_exit`]):
    /// the leading layers that are not streamed, when the final norm and the
    /// head are not streamed either (else 0).
    pub fn early_exit_layers(&self) -> usize {
        let streamed = |u: &PlanUnit| u.placement == Placement::Streamed;
        if self
            .units
            .iter()
            .any(|u| matches!(u.unit, Unit::FinalNorm | Unit::LmHead | Unit::LmHeadPart(_)) && streamed(u))
        {
            return 0;
        }
        let mut n = 0;
        for u in &self.units {
            match u.unit {
                Unit::Layer(l) if l as usize == n && !streamed(u) => n += 1,
                Unit::Layer(_) => break,
                _ => {}
            }
        }
        n
    }

    /// Like [`Engine::step`], but the pass runs only decoder layers
    /// `0..layers`, then the final norm and the head (an early exit, for
    /// self-drafting). Layers past `layers` keep no KV for these tokens, so
    /// the caller truncates the sequences back before a full step reads them.
    /// `layers` must be at most [`Engine::early_exit_layers`] (nothing streams).
    pub fn step_early_exit(&mut self, items: &[StepItem<'_>], layers: usize) -> Result<Vec<Vec<f32>>> {
        let max = self.early_exit_layers();
        if layers == 0 || layers > max {
            return Err(EngineError::invalid(
                "--self-draft",
                format!(
                    "an early exit after {layers} layers needs that many leading non-streamed layers and a \
                     non-streamed head; this plan has {max} (raise --resident-layers or --max-vram)"
                ),
            ));
        }
        self.step_until(items, Some(layers))
    }

    fn step_until(&mut self, items: &[StepItem<'_>], exit: Option<usize>) -> Result<Vec<Vec<f32>>> {
        let t0 = Instant::now();
        self.check_step(items)?;
        // Take the blocks the new tokens need (on failure the blocks taken stay
        // with their sequences, which is harmless: they are theirs to use).
        for it in items {
            let s = self.seqs.get_mut(&it.seq).ok_or_else(|| EngineError::invalid("step", format!("no {}", it.seq)))?;
            let slots = s.len + it.tokens.len();
            self.pool.grow(&mut s.table, slots).map_err(|e| EngineError::KvFull {
                needed: e.needed,
                free: e.free,
                total: self.pool.num_blocks(),
                block: self.pool.block_size(),
            })?;
        }
        self.grow_sliding(items)?;
        let lens: Vec<usize> = items.iter().map(|it| self.seqs[&it.seq].len).collect();
        let tables: Vec<&[u32]> = items.iter().map(|it| self.seqs[&it.seq].table.as_slice()).collect();
        let mut built = step::build(items, &lens, &tables)?;
        if self.swa.is_some() {
            for it in items {
                let s = &self.seqs[&it.seq];
                if s.swa.len() != s.table.len() {
                    return Err(EngineError::invalid(
                        "kv",
                        format!("{}: sliding and global block tables disagree; this is a bug", it.seq),
                    ));
                }
                built.sliding_block_table.extend_from_slice(&s.swa);
            }
        }
        let logits = self.pass(&built, exit)?;
        for it in items {
            if let Some(s) = self.seqs.get_mut(&it.seq) {
                s.len += it.tokens.len();
            }
        }
        let v = self.spec.vocab_size;
        let mut out = Vec::with_capacity(items.len());
        let mut k = 0;
        for &n in &built.logits_per_item {
            out.push(logits[k * v..(k + n) * v].to_vec());
            k += n;
        }
        self.stats.forward += t0.elapsed();
        Ok(out)
    }

    /// Gives the sliding layers' blocks that no row of this step (nor later)
    /// can see back to their pool, then takes the blocks the new tokens need;
    /// when the pool is short, sequences outside the step are trimmed to the
    /// window of their next token first (see [`kv::window`] for the bound).
    fn grow_sliding(&mut self, items: &[StepItem<'_>]) -> Result<()> {
        let Some((w, _)) = &mut self.swa else { return Ok(()) };
        for it in items {
            if let Some(s) = self.seqs.get_mut(&it.seq) {
                // A plain step's rows sit at `len..`; a tree's at `base + depth`,
                // and its caller cuts back to the base or to the last plain step.
                let at = match it.tree {
                    None => {
                        s.anchor = s.len;
                        s.len
                    }
                    Some(t) => t.base.min(s.anchor).min(s.len),
                };
                w.trim(&mut s.swa, at);
            }
        }
        let need: usize = items
            .iter()
            .filter_map(|it| self.seqs.get(&it.seq).map(|s| w.needed(&s.swa, s.len + it.tokens.len())))
            .sum();
        if need > w.pool.free_blocks() {
            for s in self.seqs.values_mut() {
                w.trim(&mut s.swa, s.len);
            }
        }
        for it in items {
            let s = self.seqs.get_mut(&it.seq).ok_or_else(|| EngineError::invalid("step", format!("no {}", it.seq)))?;
            w.grow(&mut s.swa, s.len + it.tokens.len()).map_err(|e| EngineError::KvFull {
                needed: e.needed,
                free: e.free,
                total: w.pool.num_blocks(),
                block: w.pool.block_size(),
            })?;
        }
        Ok(())
    }

    fn check_step(&self, items: &[StepItem<'_>]) -> Result<()> {
        if items.is_empty() {
            return Err(EngineError::invalid("step", "no work items"));
        }
        let rows: usize = items.iter().map(|i| i.tokens.len()).sum();
        let logit_rows: usize = items.iter().map(|i| i.logits.rows(i.tokens.len())).sum();
        let too = |what: &str, n: usize, cap: usize, opt: &str| {
            Err(EngineError::invalid(
                opt,
                format!("a step of {n} {what} exceeds the engine's {cap} (raise {opt} or split the work)"),
            ))
        };
        if items.len() > self.cap.sequences {
            return too("sequences", items.len(), self.cap.sequences, "--max-sequences");
        }
        if rows > self.cap.rows {
            return too("token rows", rows, self.cap.rows, "--max-batch-tokens");
        }
        if logit_rows > self.cap.logit_rows {
            return too("logit rows", logit_rows, self.cap.logit_rows, "max_logit_rows");
        }
        for (i, it) in items.iter().enumerate() {
            let s = self.seqs.get(&it.seq).ok_or_else(|| EngineError::invalid("step", format!("no {}", it.seq)))?;
            if items[..i].iter().any(|o| o.seq == it.seq) {
                return Err(EngineError::invalid("step", format!("{} appears twice in one step", it.seq)));
            }
            if s.len + it.tokens.len() > self.cap.max_context {
                return Err(EngineError::invalid(
                    "--max-context",
                    format!(
                        "{} + {} tokens exceed the context of {} (raise --max-context)",
                        s.len,
                        it.tokens.len(),
                        self.cap.max_context
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One pass over the units for a built step; returns the selected logit rows.
    ///
    /// Units run in order where the plan placed them. The live activation (the
    /// residual `X` before the final norm, the normed rows `LastH` after it)
    /// crosses between host and GPU only where consecutive units sit on
    /// different sides; each head part writes its logit columns on its side and
    /// the columns are gathered at the end.
    fn pass(&mut self, s: &step::BuiltStep, exit: Option<usize>) -> Result<Vec<f32>> {
        let t0 = Instant::now();
        let cpu0 = pass_times::thread_cpu_time();
        let h = self.spec.hidden_size;
        let v = self.spec.vocab_size;
        let rows = s.tokens.len() as u32;
        let n_logits = s.logit_rows.len();
        // Inputs: embedding rows gathered on the host, positions and the step layout.
        let mut x = Vec::with_capacity(s.tokens.len() * h);
        self.embed.gather(&s.tokens, &mut x)?;
        let first_side = match self.units.first().map(|u| u.placement) {
            Some(Placement::Cpu) => Side::Cpu,
            _ => Side::Gpu,
        };
        let ctx = self.gpu.as_ref().map(|g| g.ctx.clone());
        // The pass's first recording starts with the input copies (through the
        // reused upload buffers); it stays open for the resident units that follow.
        let mut pending: Option<airllm_gpu::Recorder<'_>> = None;
        if let (Some(g), Some(c)) = (self.gpu.as_mut(), ctx.as_deref()) {
            let mut rec = c.recorder("pass");
            let mut writes: Vec<(&wgpu::Buffer, &[u8])> = vec![
                (&g.inputs.positions, bytemuck::cast_slice(&s.positions)),
                (&g.inputs.rows, bytemuck::cast_slice(&s.layout.rows)),
                (&g.inputs.seqs, bytemuck::cast_slice(&s.layout.seqs)),
                (&g.inputs.block_table, bytemuck::cast_slice(&s.layout.block_table)),
            ];
            if first_side == Side::Gpu {
                writes.push((g.act.buffer(Buf::X), bytemuck::cast_slice(&x)));
            }
            if !s.sliding_block_table.is_empty() {
                writes.push((&g.inputs.sliding_block_table, bytemuck::cast_slice(&s.sliding_block_table)));
            }
            if !s.layout.tree_masks.is_empty() {
                writes.push((&g.inputs.tree_masks, bytemuck::cast_slice(&s.layout.tree_masks)));
            }
            g.belt.upload(c, rec.encoder(), &writes)?;
            pending = Some(rec);
        }
        if first_side == Side::Cpu {
            if let Some(c) = &mut self.cpu {
                c.act.get_mut(Buf::X)[..x.len()].copy_from_slice(&x);
            }
        }
        let host = t0.elapsed();

        if let Some(g) = &mut self.gpu {
            if g.ring.as_ref().is_some_and(|r| !r.at_pass_start()) {
                // An earlier pass failed half way: restart the reader at the first unit.
                g.ring = None;
                // Bind groups of the old ring's slots would keep them alive.
                g.ctx.clear_bind_groups();
                g.ring = new_ring(&g.ctx, &self.dir, &self.units, &self.plan, &self.read_opts)?;
            }
        }
        let head_parts = self.units.iter().filter(|u| matches!(u.unit, Unit::LmHead | Unit::LmHeadPart(_))).count();
        let mut heads_done = 0;
        // (first column, columns, side) of each head part's logits.
        let mut head_cols: Vec<(usize, usize, Side)> = Vec::new();
        let mut side = first_side;
        let mut after_norm = false;
        // Host-time split of the pass (see pass_times.rs): what is not submitting,
        // waiting for shards, the CPU executor or transfers is recording.
        let t_loop = Instant::now();
        let compile_before = ctx.as_ref().map(|c| c.pipeline_compile_time()).unwrap_or_default();
        let mut submit_t = Duration::ZERO;
        let side_before = (self.stats.cpu, self.stats.transfer, self.ring_waits());
        // What a CPU-placed sliding layer reads: the step with its block tables.
        let sliding_layout = (!s.sliding_block_table.is_empty() && self.cpu.is_some())
            .then(|| StepLayout { block_table: s.sliding_block_table.clone(), ..s.layout.clone() });
        for ui in 0..self.units.len() {
            let sliding = matches!(self.units[ui].unit, Unit::Layer(l) if self.layer_sliding[l as usize]);
            let layer_kv = match (&self.swa, sliding) {
                (Some((_, l)), true) => *l,
                _ => self.kv_layout,
            };
            let (unit, shard, placement) = (self.units[ui].unit, self.units[ui].shard, self.units[ui].placement);
            let want = if placement == Placement::Cpu { Side::Cpu } else { Side::Gpu };
            // A pass in which no row wants logits (a prefill chunk of a long prompt)
            // skips the final norm and the head; a streamed head unit still takes its
            // ring slot, so the reader stays in step with the units.
            let skip = n_logits == 0 && matches!(unit, Unit::FinalNorm | Unit::LmHead | Unit::LmHeadPart(_));
            if skip && placement != Placement::Streamed {
                continue;
            }
            // An early exit skips the later layers (none of them streamed is
            // touched: checked by `step_early_exit`, so the reader stays in step).
            if let (Some(n), Unit::Layer(l)) = (exit, unit) {
                if l as usize >= n {
                    continue;
                }
            }
            if want != side && !skip {
                // Move the live activation across.
                if let Some(r) = pending.take() {
                    submit_timed(r, &mut submit_t)?;
                }
                let (buf, n) = if after_norm { (Buf::LastH, n_logits * h) } else { (Buf::X, rows as usize * h) };
                self.transfer(buf, n, want)?;
                side = want;
            }
            let entry = self.dir.entry(shard);
            let row_start = entry.tensors.first().and_then(|t| t.row_start).unwrap_or(0);
            if matches!(unit, Unit::LmHead | Unit::LmHeadPart(_)) && !skip {
                heads_done += 1;
                let cols = entry.tensors.first().and_then(|t| t.shape.first().copied()).unwrap_or(v);
                head_cols.push((row_start, cols.min(v - row_start.min(v)), want));
            }
            let last_part = heads_done == head_parts && matches!(unit, Unit::LmHead | Unit::LmHeadPart(_));
            if placement == Placement::Cpu {
                let t = Instant::now();
                let cpu = self.cpu.as_mut().ok_or_else(|| EngineError::invalid("engine", "no CPU executor"))?;
                let cu =
                    self.units[ui].cpu.as_ref().ok_or_else(|| EngineError::invalid("engine", "CPU unit not mapped"))?;
                let kv = match unit {
                    Unit::Layer(l) => Some((
                        cpu.kv[l as usize]
                            .as_mut()
                            .ok_or_else(|| EngineError::invalid("kv", "no RAM cache for layer"))?,
                        layer_kv,
                    )),
                    _ => None,
                };
                let mut ex = CpuExec {
                    spec: &self.spec,
                    entry,
                    unit: cu,
                    act: &mut cpu.act,
                    step: match (&sliding_layout, sliding) {
                        (Some(sl), true) => sl,
                        _ => &s.layout,
                    },
                    positions: &s.positions,
                    ropes: &cpu.ropes,
                    kv,
                    rows,
                    pool: cpu.pool,
                    scratch: &mut cpu.scratch,
                    precision: self.cfg.cpu_precision,
                };
                run_unit(&mut ex, &self.spec, &self.layers, unit, &s.logit_rows, row_start as u32, last_part)?;
                self.stats.cpu += t.elapsed();
            } else {
                let g = self.gpu.as_mut().ok_or_else(|| EngineError::invalid("engine", "no GPU"))?;
                let ctx = ctx.as_deref().ok_or_else(|| EngineError::invalid("engine", "no GPU"))?;
                let streamed = placement == Placement::Streamed;
                if streamed {
                    if let Some(r) = pending.take() {
                        submit_timed(r, &mut submit_t)?;
                    }
                }
                let mut rec = pending.take().unwrap_or_else(|| ctx.recorder(&unit.to_string()));
                let buffer: &wgpu::Buffer = match &self.units[ui].resident {
                    Some(b) => b,
                    None => {
                        let r = g.ring.as_mut().ok_or_else(|| EngineError::invalid("engine", "no streaming ring"))?;
                        r.acquire(ctx, rec.encoder(), shard)?
                    }
                };
                let kv = match unit {
                    Unit::Layer(l) => {
                        let cache = if sliding { &g.kv_sliding } else { &g.kv };
                        let k = g.kv_index[l as usize]
                            .and_then(|i| cache.as_ref().map(|c| (c, i)))
                            .ok_or_else(|| EngineError::invalid("kv", "no VRAM cache for layer"))?;
                        Some(GpuKv {
                            layout: layer_kv,
                            k: k.0.k(k.1).ok_or_else(|| EngineError::invalid("kv", "layer"))?,
                            v: k.0.v(k.1).ok_or_else(|| EngineError::invalid("kv", "layer"))?,
                        })
                    }
                    _ => None,
                };
                let mut ex = GpuExec {
                    rec: &mut rec,
                    spec: &self.spec,
                    w: UnitWeights { buffer, entry },
                    act: &g.act,
                    step: g.inputs.views(sliding),
                    positions: BufView::whole(&g.inputs.positions),
                    ropes: &g.ropes,
                    kv,
                    rows,
                };
                if !skip {
                    run_unit(&mut ex, &self.spec, &self.layers, unit, &s.logit_rows, row_start as u32, last_part)?;
                }
                if streamed {
                    submit_timed(rec, &mut submit_t)?;
                    if let Some(r) = g.ring.as_mut() {
                        r.submitted();
                    }
                } else {
                    pending = Some(rec);
                }
            }
            if unit == Unit::FinalNorm {
                after_norm = true;
            }
        }
        // The GPU's logit columns are copied into a readback buffer inside the
        // pass's last command buffer and mapped right after its submit.
        let mut ticket = None;
        if n_logits > 0 && head_cols.iter().any(|p| p.2 == Side::Gpu) {
            let g = self.gpu.as_mut().ok_or_else(|| EngineError::invalid("engine", "no GPU"))?;
            let c = ctx.as_deref().ok_or_else(|| EngineError::invalid("engine", "no GPU"))?;
            let mut rec = pending.take().unwrap_or_else(|| c.recorder("logits"));
            let bytes = (n_logits * v * 4) as u64;
            let mut p = g.readback.copy(c, rec.encoder(), g.act.buffer(Buf::Logits), bytes)?;
            let index = submit_timed(rec, &mut submit_t)?;
            g.readback.map(&mut p, index);
            ticket = Some(p);
        }
        if let Some(r) = pending.take() {
            submit_timed(r, &mut submit_t)?;
        }
        if let Some(g) = self.gpu.as_mut() {
            // Everything this pass recorded is submitted: re-map its upload buffer.
            g.belt.submitted();
        }
        let side_after = (self.stats.cpu, self.stats.transfer, self.ring_waits());
        let elsewhere =
            (side_after.0 - side_before.0) + (side_after.1 - side_before.1) + (side_after.2 - side_before.2);
        let compile =
            ctx.as_ref().map(|c| c.pipeline_compile_time()).unwrap_or_default().saturating_sub(compile_before);
        let record = t_loop.elapsed().saturating_sub(submit_t + elsewhere + compile);
        let t1 = Instant::now();
        if let (Some(p), Some(g)) = (&ticket, &self.gpu) {
            g.readback.wait(&g.ctx, p)?;
        }
        let wait = t1.elapsed();
        // Kernel timestamps (profiling only) are read after the wait, outside the host times.
        let gpu_ns = match &ctx {
            Some(c) if c.profiling() => c.collect_timings()?,
            _ => 0.0,
        };
        let t2 = Instant::now();
        let mut from_gpu = None;
        if let (Some(p), Some(g)) = (ticket, self.gpu.as_mut()) {
            let mut out = Vec::new();
            g.readback.read(p, &mut out)?;
            from_gpu = Some(out);
        }
        let logits = self.gather_logits(n_logits, &head_cols, from_gpu)?;
        let read = t2.elapsed();
        self.stats.readback += t1.elapsed();
        self.stats.host += host;
        if ctx.is_some() {
            let p = PassTimes {
                passes: 1,
                wall: t0.elapsed(),
                inputs: host,
                record,
                submit: submit_t,
                wait,
                read,
                gpu: Duration::from_nanos(gpu_ns as u64),
                compile,
                host_cpu: match (cpu0, pass_times::thread_cpu_time()) {
                    (Some(a), Some(b)) => b.saturating_sub(a).saturating_sub(compile + elsewhere),
                    _ => Duration::ZERO,
                },
            };
            self.stats.gpu_passes.add(&p);
            if s.tokens.len() == s.layout.seqs.len() {
                self.stats.decode_passes.add(&p);
            }
        }
        if exit.is_some() {
            self.stats.early_passes += 1;
        } else {
            self.stats.passes += 1;
        }
        self.stats.rows += u64::from(rows);
        self.peak_vram = self.peak_vram.max(self.vram_bytes());
        Ok(logits)
    }

    /// Time the ring has waited for shards and staging so far.
    fn ring_waits(&self) -> Duration {
        self.gpu
            .as_ref()
            .and_then(|g| g.ring.as_ref())
            .map(|r| r.stats())
            .map(|r| r.io_wait + r.remap_wait)
            .unwrap_or_default()
    }

    /// Copies the first `n` values of `buf` to side `to`.
    fn transfer(&mut self, buf: Buf, n: usize, to: Side) -> Result<()> {
        let t = Instant::now();
        let (g, c) = match (self.gpu.as_mut(), self.cpu.as_mut()) {
            (Some(g), Some(c)) => (g, c),
            _ => return Err(EngineError::invalid("engine", "a placement boundary without both executors")),
        };
        match to {
            Side::Cpu => {
                let vals = airllm_gpu::read_buffer_f32(&g.ctx, g.act.buffer(buf), 0, n)?;
                c.act.get_mut(buf)[..n].copy_from_slice(&vals);
            }
            Side::Gpu => {
                g.ctx.queue().write_buffer(g.act.buffer(buf), 0, bytemuck::cast_slice(&c.act.get(buf)[..n]));
            }
        }
        self.stats.transfer += t.elapsed();
        self.stats.transfer_bytes += n as u64 * 4;
        Ok(())
    }

    /// The `[n, vocab]` logits, each head part's columns from the side that
    /// computed them (`from_gpu`: the GPU's logits buffer, read back).
    fn gather_logits(&self, n: usize, parts: &[(usize, usize, Side)], from_gpu: Option<Vec<f32>>) -> Result<Vec<f32>> {
        let v = self.spec.vocab_size;
        if parts.iter().all(|p| p.2 == Side::Gpu) {
            return Ok(from_gpu.unwrap_or_default());
        }
        let cpu = self.cpu.as_ref().map(|c| &c.act.get(Buf::Logits)[..n * v]).unwrap_or(&[]);
        if parts.iter().all(|p| p.2 == Side::Cpu) {
            return Ok(cpu.to_vec());
        }
        let mut out = cpu.to_vec();
        if let Some(gl) = from_gpu {
            for &(start, cols, side) in parts {
                if side == Side::Gpu {
                    for r in 0..n {
                        out[r * v + start..r * v + start + cols]
                            .copy_from_slice(&gl[r * v + start..r * v + start + cols]);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Submits a recording, adding the time it took to `t`.
fn submit_timed(r: airllm_gpu::Recorder<'_>, t: &mut Duration) -> Result<wgpu::SubmissionIndex> {
    let t0 = Instant::now();
    let index = r.submit()?;
    *t += t0.elapsed();
    Ok(index)
}

/// Runs one unit's graph on an executor.
fn run_unit<E: exec::Exec>(
    ex: &mut E,
    spec: &ModelSpec,
    layers: &[LayerSpec],
    unit: Unit,
    logit_rows: &[u32],
    row_start: u32,
    last_part: bool,
) -> Result<()> {
    match unit {
        Unit::Layer(l) => graph::decoder_layer(ex, spec, &layers[l as usize]),
        Unit::FinalNorm => graph::final_norm(ex, spec, logit_rows),
        // A part of a split lm_head writes its columns of the logits.
        Unit::LmHead | Unit::LmHeadPart(_) => graph::lm_head(ex, spec, logit_rows.len() as u32, row_start, last_part),
        Unit::Embedding => Ok(()),
    }
}

/// The ring for the units the plan streams (None if none is).
fn new_ring(
    ctx: &GpuContext,
    dir: &ShardDir,
    units: &[PlanUnit],
    plan: &Plan,
    opts: &ReaderOptions,
) -> Result<Option<Ring>> {
    let streamed: Vec<usize> = units.iter().filter(|u| u.placement == Placement::Streamed).map(|u| u.shard).collect();
    if streamed.is_empty() {
        return Ok(None);
    }
    let specs: Vec<ShardSpec> =
        (0..dir.manifest().shards.len()).map(|i| ShardSpec::new(dir.shard_path(i), dir.entry(i).bytes)).collect();
    Ok(Some(Ring::new(ctx, specs, streamed, plan.ring_slots, plan.slot_bytes, plan.staging_buffers, opts.clone())?))
}

/// The default budget: the adapter's device memory minus a margin for the
/// driver, the display and other programs (10%, at least 512 MiB).
pub fn default_budget(vram: u64) -> u64 {
    vram.saturating_sub((vram / 10).max(512 << 20))
}

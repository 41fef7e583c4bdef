//! The streaming engine: places units on the GPU by the residency plan, streams
//! the rest through the ring, and runs forward passes over a batch.

pub mod activations;
pub mod embedding;
pub mod layer;
pub mod stream;
pub mod weights;

use airllm_gpu::wgpu;
use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use airllm_format::{ModelSpec, ShardDir, Unit};
use airllm_gpu::{BufView, GpuContext, KvCache, KvLayout};
use airllm_io::{ReadMode, ReaderOptions, ShardSpec};

use self::activations::Activations;
use self::embedding::EmbeddingTable;
use self::layer::PassShape;
use self::stream::Streamer;
use self::weights::UnitWeights;
use crate::error::{EngineError, Result};
use crate::planner::{PlanInput, ResidencyPlan};
use crate::sizing;

/// Engine settings (the facade's `Options` map onto these).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// VRAM budget in bytes (None: unlimited unless the adapter reports its size).
    pub max_vram: Option<u64>,
    /// Forced number of resident decoder layers.
    pub resident_layers: Option<usize>,
    /// Shards read ahead.
    pub prefetch_depth: usize,
    /// KV cache slots per sequence.
    pub max_context: usize,
    /// Sequences the KV cache is first sized for (grows on demand).
    pub max_batch: usize,
    /// Token rows per forward pass (longer prompts are processed in chunks).
    pub prefill_chunk: usize,
    /// How the reader reads.
    pub read_mode: Option<ReadMode>,
    /// Reader threads (None: one per core, at most 16).
    pub read_threads: Option<usize>,
    /// Keep the KV cache in f16 (half the memory; logits move by a few 1e-3).
    pub kv_f16: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_vram: None,
            resident_layers: None,
            prefetch_depth: 4,
            max_context: 4096,
            max_batch: 1,
            prefill_chunk: 512,
            read_mode: None,
            read_threads: None,
            kv_f16: false,
        }
    }
}

/// What a unit of the plan is and where its bytes are.
struct PlanUnit {
    unit: Unit,
    shard: usize,
    resident: Option<wgpu::Buffer>,
}

/// Time and bytes spent so far.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    /// Forward passes (one per chunk or decode step).
    pub passes: u64,
    /// Token rows processed.
    pub rows: u64,
    /// Wall time inside `forward`.
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
}

/// The engine.
pub struct Engine {
    ctx: GpuContext,
    dir: ShardDir,
    spec: ModelSpec,
    plan: ResidencyPlan,
    units: Vec<PlanUnit>,
    streamer: Option<Streamer>,
    kv: KvCache,
    act: Activations,
    embed: EmbeddingTable,
    cfg: EngineConfig,
    stats: EngineStats,
    peak_vram: u64,
    /// Reader options, to rebuild the streamer after an aborted pass.
    read_opts: ReaderOptions,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("dir", &self.dir.dir()).field("plan", &self.plan).finish()
    }
}

/// The units run on the GPU per pass: layers, final norm, head (the embedding
/// shard when tied), as (unit, shard index, bytes).
pub fn gpu_units(dir: &ShardDir) -> Result<Vec<(Unit, usize, u64)>> {
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

/// Plan for a shard directory under `cfg`.
pub fn plan_for_dir(dir: &ShardDir, cfg: &EngineConfig, staging_in_vram: bool) -> Result<ResidencyPlan> {
    let spec = &dir.manifest().spec;
    let units = gpu_units(dir)?;
    let rows = cfg.max_batch * cfg.prefill_chunk.min(cfg.max_context);
    crate::planner::plan(&PlanInput {
        units: units.iter().map(|(u, _, b)| (*u, *b)).collect(),
        kv_bytes: sizing::kv_bytes(spec, cfg.max_context, cfg.max_batch) / if cfg.kv_f16 { 2 } else { 1 },
        activation_bytes: sizing::activation_bytes(spec, rows, cfg.max_batch),
        staging_in_vram,
        prefetch_depth: cfg.prefetch_depth,
        budget: cfg.max_vram.unwrap_or(u64::MAX),
        resident_layers: cfg.resident_layers,
    })
}

/// Read a whole shard file into a new GPU buffer (mapped at creation: one copy
/// from the page cache into memory the driver uploads from).
fn load_resident(ctx: &GpuContext, dir: &ShardDir, shard: usize) -> Result<wgpu::Buffer> {
    let entry = dir.entry(shard);
    let path = dir.shard_path(shard);
    // Checks the length and header before trusting the file.
    drop(dir.map(shard)?);
    let size = entry.bytes.max(4).div_ceil(4) * 4;
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
        // SAFETY: `ptr` points at `size` mapped bytes that stay mapped while `view` lives;
        // nothing else accesses the buffer before it is unmapped below.
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
    /// Place a shard directory on the GPU.
    pub fn new(ctx: GpuContext, dir: ShardDir, mut cfg: EngineConfig) -> Result<Engine> {
        let t0 = Instant::now();
        if cfg.max_vram.is_none() {
            cfg.max_vram = ctx.caps().vram_bytes.map(default_budget);
        }
        let spec = dir.manifest().spec.clone();
        let staging_in_vram = !ctx.caps().is_software() && ctx.caps().device_type != wgpu::DeviceType::IntegratedGpu;
        let plan = plan_for_dir(&dir, &cfg, staging_in_vram)?;
        let listed = gpu_units(&dir)?;
        // Each unit lives in one buffer (resident, or a ring slot and a staging buffer).
        let max_buffer = ctx.caps().max_buffer;
        if let Some((_, shard, bytes)) = listed.iter().find(|(_, _, b)| *b > max_buffer) {
            return Err(EngineError::invalid(
                dir.entry(*shard).file.clone(),
                format!(
                    "{} is larger than the largest buffer {} allows ({}); re-shard with --compression 8bit or 4bit, \
                     or use another adapter (--adapter)",
                    airllm_format::human_bytes(*bytes),
                    ctx.caps().adapter_name,
                    airllm_format::human_bytes(max_buffer)
                ),
            ));
        }
        let mut units = Vec::new();
        for (i, (unit, shard, _)) in listed.iter().enumerate() {
            let resident = if plan.resident[i] { Some(load_resident(&ctx, &dir, *shard)?) } else { None };
            units.push(PlanUnit { unit: *unit, shard: *shard, resident });
        }
        let mut read_opts = ReaderOptions::default();
        if let Some(m) = cfg.read_mode {
            read_opts.mode = m;
        }
        if let Some(t) = cfg.read_threads {
            read_opts.threads = t.max(1);
        }
        let streamer = new_streamer(&ctx, &dir, &units, &plan, &read_opts)?;
        let kv = KvCache::new(&ctx, spec.num_layers, kv_layout(&spec, cfg.max_batch, cfg.max_context, cfg.kv_f16))?;
        let rows = (cfg.max_batch * cfg.prefill_chunk.min(cfg.max_context)) as u32;
        let act = Activations::new(&ctx, &spec, rows, logit_capacity(rows, cfg.max_batch), cfg.max_batch as u32);
        let embed = EmbeddingTable::open(&dir)?;
        let mut e = Engine {
            ctx,
            dir,
            spec,
            plan,
            units,
            streamer,
            kv,
            act,
            embed,
            cfg,
            stats: EngineStats::default(),
            peak_vram: 0,
            read_opts,
        };
        e.stats.load = t0.elapsed();
        e.peak_vram = e.vram_bytes();
        Ok(e)
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    /// The residency plan in effect.
    pub fn plan(&self) -> &ResidencyPlan {
        &self.plan
    }
    /// The GPU context.
    pub fn ctx(&self) -> &GpuContext {
        &self.ctx
    }
    /// The shard directory.
    pub fn dir(&self) -> &ShardDir {
        &self.dir
    }
    /// Counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        if let Some(st) = &self.streamer {
            let ss = st.stats();
            s.io_wait = ss.io_wait;
            s.remap_wait = ss.remap_wait;
            s.upload = ss.upload;
            s.streamed_bytes = ss.bytes;
        }
        s
    }
    /// The reader's statistics, when streaming.
    pub fn reader_stats(&self) -> Option<airllm_io::ReaderStats> {
        self.streamer.as_ref().and_then(|s| s.reader_stats())
    }
    /// KV cache capacity in slots per sequence.
    pub fn max_context(&self) -> usize {
        self.cfg.max_context
    }

    /// GPU bytes allocated by the engine now.
    pub fn vram_bytes(&self) -> u64 {
        let resident: u64 = self.units.iter().filter_map(|u| u.resident.as_ref()).map(|b| b.size()).sum();
        let (ring, staging) = self.streamer.as_ref().map(|s| s.bytes()).unwrap_or((0, 0));
        let staging = if self.plan.staging_in_vram { staging } else { 0 };
        let kv = 2 * self.kv.layout().tensor_bytes() * self.kv.layers() as u64;
        resident + ring + staging + kv + self.act.bytes()
    }
    /// The largest [`Engine::vram_bytes`] seen.
    pub fn peak_vram(&self) -> u64 {
        self.peak_vram
    }

    /// Make room for `batch` sequences (reallocates the KV cache and activations).
    fn ensure_batch(&mut self, batch: usize) -> Result<()> {
        // The kernels take the batch from the cache layout, so it must match exactly.
        if batch == self.kv.layout().batch as usize {
            return Ok(());
        }
        self.cfg.max_batch = batch;
        self.kv = KvCache::new(
            &self.ctx,
            self.spec.num_layers,
            kv_layout(&self.spec, batch, self.cfg.max_context, self.cfg.kv_f16),
        )?;
        let rows = (batch * self.cfg.prefill_chunk.min(self.cfg.max_context)) as u32;
        self.act = Activations::new(&self.ctx, &self.spec, rows, logit_capacity(rows, batch), batch as u32);
        self.peak_vram = self.peak_vram.max(self.vram_bytes());
        Ok(())
    }

    /// Run `t` new tokens of each of `batch` sequences through the model.
    ///
    /// `tokens` is `[batch, t]` row-major; `past` slots are already filled;
    /// `first_valid[b]` is sequence b's first non-padding slot. Returns the logits
    /// of the token rows in `logit_rows` (indices `b * t + i`), `[len, vocab]`.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        batch: usize,
        past: usize,
        first_valid: &[u32],
        logit_rows: &[usize],
    ) -> Result<Vec<f32>> {
        let t = tokens.len() / batch.max(1);
        if batch == 0 || t == 0 || tokens.len() != batch * t || first_valid.len() != batch {
            return Err(EngineError::invalid("forward", "tokens must be [batch, t] with one first_valid per sequence"));
        }
        if past + t > self.cfg.max_context {
            return Err(EngineError::invalid(
                "--max-context",
                format!("{} tokens do not fit the context of {} (raise --max-context)", past + t, self.cfg.max_context),
            ));
        }
        self.ensure_batch(batch)?;
        // Rows per pass are bounded by the activation buffers and, when many logit
        // rows are wanted (all positions), by the logit buffer.
        let mut chunk = (self.act.rows as usize / batch).max(1);
        if logit_rows.len() > self.act.logit_rows as usize {
            chunk = chunk.min((self.act.logit_rows as usize / batch).max(1));
        }
        let mut out = vec![0f32; logit_rows.len() * self.spec.vocab_size];
        let mut start = 0;
        while start < t {
            let c = chunk.min(t - start);
            let toks: Vec<u32> =
                (0..batch).flat_map(|b| tokens[b * t + start..b * t + start + c].iter().copied()).collect();
            // Logit rows inside this chunk, and where they go in `out`.
            let mut sel = Vec::new();
            for (j, &r) in logit_rows.iter().enumerate() {
                let (b, i) = (r / t, r % t);
                if i >= start && i < start + c {
                    sel.push((b * c + (i - start), j));
                }
            }
            let logits =
                self.pass(&toks, batch, c, past + start, first_valid, &sel.iter().map(|s| s.0).collect::<Vec<_>>())?;
            let v = self.spec.vocab_size;
            for (k, &(_, j)) in sel.iter().enumerate() {
                out[j * v..(j + 1) * v].copy_from_slice(&logits[k * v..(k + 1) * v]);
            }
            start += c;
        }
        Ok(out)
    }

    /// One forward pass over `[batch, t]` rows.
    fn pass(
        &mut self,
        tokens: &[u32],
        batch: usize,
        t: usize,
        past: usize,
        first_valid: &[u32],
        logit_rows: &[usize],
    ) -> Result<Vec<f32>> {
        let t0 = Instant::now();
        let spec = self.spec.clone();
        let h = spec.hidden_size;
        // Inputs: embedding rows gathered on the host, positions, padding offsets.
        let mut x = Vec::with_capacity(tokens.len() * h);
        self.embed.gather(tokens, &mut x)?;
        let positions: Vec<u32> =
            (0..batch).flat_map(|b| (0..t).map(move |i| ((past + i) as u32).saturating_sub(first_valid[b]))).collect();
        let q = self.ctx.queue();
        q.write_buffer(self.act.x_buffer(), 0, bytemuck::cast_slice(&x));
        q.write_buffer(self.act.positions_buffer(), 0, bytemuck::cast_slice(&positions));
        q.write_buffer(self.act.first_valid_buffer(), 0, bytemuck::cast_slice(first_valid));
        let host = t0.elapsed();

        if self.streamer.as_ref().is_some_and(|s| !s.at_pass_start()) {
            // An earlier pass failed half way: restart the reader at the first unit.
            self.streamer = None;
            self.streamer = new_streamer(&self.ctx, &self.dir, &self.units, &self.plan, &self.read_opts)?;
        }
        let pass = PassShape { batch: batch as u32, t: t as u32, past: past as u32 };
        let layout = self.kv.layout();
        let rows_sel = logit_rows.len() as u32;
        // Consecutive resident units share one submission; before a streamed unit
        // the pending work is submitted, so the GPU runs while we wait for its bytes.
        let mut pending: Option<airllm_gpu::Recorder<'_>> = None;
        for ui in 0..self.units.len() {
            let (unit, shard) = (self.units[ui].unit, self.units[ui].shard);
            let streamed = self.units[ui].resident.is_none();
            if streamed {
                if let Some(r) = pending.take() {
                    r.submit()?;
                }
            }
            let mut rec = pending.take().unwrap_or_else(|| self.ctx.recorder(&unit.to_string()));
            let buffer: &wgpu::Buffer = match &self.units[ui].resident {
                Some(b) => b,
                None => {
                    let s = self.streamer.as_mut().ok_or_else(|| EngineError::invalid("engine", "no streamer"))?;
                    s.acquire(&self.ctx, rec.encoder(), shard)?
                }
            };
            let w = UnitWeights { buffer, entry: self.dir.entry(shard) };
            match unit {
                Unit::Layer(l) => {
                    let kvb = (
                        self.kv.k(l as usize).ok_or_else(|| EngineError::invalid("kv", "layer"))?,
                        self.kv.v(l as usize).ok_or_else(|| EngineError::invalid("kv", "layer"))?,
                    );
                    layer::decoder_layer(&mut rec, &spec, &w, &self.act, kvb, layout, pass)?;
                }
                Unit::FinalNorm => {
                    let row_bytes = (h * 4) as u64;
                    for (j, &r) in logit_rows.iter().enumerate() {
                        rec.encoder().copy_buffer_to_buffer(
                            self.act.x_buffer(),
                            r as u64 * row_bytes,
                            &self.act.last_x,
                            j as u64 * row_bytes,
                            row_bytes,
                        );
                    }
                    layer::final_norm(
                        &mut rec,
                        &spec,
                        &w,
                        rows_sel,
                        BufView::whole(&self.act.last_x),
                        BufView::whole(&self.act.last_h),
                    )?;
                }
                Unit::LmHead | Unit::LmHeadPart(_) => {
                    let head = w
                        .get(airllm_format::Role::LmHead)
                        .or_else(|| w.get(airllm_format::Role::Embedding))
                        .ok_or_else(|| EngineError::invalid(w.entry.file.clone(), "no lm_head weight"))?;
                    // A part of a split lm_head writes its columns of the logits.
                    let row_start = w.entry.tensors.first().and_then(|t| t.row_start).unwrap_or(0) as u32;
                    let vocab = spec.vocab_size as u32;
                    let mm = airllm_gpu::kernels::matmul::Matmul {
                        shape: airllm_gpu::kernels::matmul::MatmulShape {
                            y_stride: vocab,
                            y_off: row_start,
                            ..airllm_gpu::kernels::matmul::MatmulShape::new(rows_sel, head.rows, head.cols)
                        },
                        format: head.format,
                        weight: head.view,
                        x: BufView::whole(&self.act.last_h),
                        y: BufView::whole(&self.act.logits),
                        bias: None,
                    };
                    airllm_gpu::kernels::matmul::launch(&mut rec, &mm)?;
                }
                Unit::Embedding => {}
            }
            if streamed {
                rec.submit()?;
                if let Some(s) = self.streamer.as_mut() {
                    s.submitted();
                }
            } else {
                pending = Some(rec);
            }
        }
        if let Some(r) = pending.take() {
            r.submit()?;
        }
        let t1 = Instant::now();
        let logits = airllm_gpu::read_buffer_f32(&self.ctx, &self.act.logits, 0, logit_rows.len() * spec.vocab_size)?;
        self.stats.readback += t1.elapsed();
        self.stats.host += host;
        self.stats.passes += 1;
        self.stats.rows += (batch * t) as u64;
        self.stats.forward += t0.elapsed();
        self.peak_vram = self.peak_vram.max(self.vram_bytes());
        Ok(logits)
    }
}

/// The streamer for the units the plan does not keep resident (None if all are).
fn new_streamer(
    ctx: &GpuContext,
    dir: &ShardDir,
    units: &[PlanUnit],
    plan: &ResidencyPlan,
    opts: &ReaderOptions,
) -> Result<Option<Streamer>> {
    let streamed: Vec<usize> = units.iter().filter(|u| u.resident.is_none()).map(|u| u.shard).collect();
    if streamed.is_empty() {
        return Ok(None);
    }
    let specs: Vec<ShardSpec> =
        (0..dir.manifest().shards.len()).map(|i| ShardSpec::new(dir.shard_path(i), dir.entry(i).bytes)).collect();
    Ok(Some(Streamer::new(ctx, specs, streamed, plan.ring_slots, plan.slot_bytes, plan.staging_buffers, opts.clone())?))
}

/// The default budget: the adapter's device memory minus a margin for the
/// driver, the display and other programs (10%, at least 512 MiB).
pub fn default_budget(vram: u64) -> u64 {
    vram.saturating_sub((vram / 10).max(512 << 20))
}

/// Logit rows the buffers hold: every sequence's last row, and up to 64 rows for
/// callers that want logits at every position (tests, perplexity).
fn logit_capacity(rows: u32, batch: usize) -> u32 {
    (batch as u32).max(rows.min(64))
}

fn kv_layout(spec: &ModelSpec, batch: usize, context: usize, f16: bool) -> KvLayout {
    KvLayout {
        // An f16 cache packs pairs, so it needs an even head_dim (all supported models have one).
        f16: f16 && spec.head_dim.is_multiple_of(2),
        batch: batch.max(1) as u32,
        kv_heads: spec.num_kv_heads as u32,
        s_max: context as u32,
        head_dim: spec.head_dim as u32,
    }
}

//! The CPU executor: computes a unit from its memory-mapped shard (the page
//! cache is the RAM tier), with `airllm_quant::dot`'s SIMD matmuls and the
//! ops of [`super::cpu_ops`], into host activation buffers. A CPU-placed
//! decoder layer keeps its KV blocks in RAM, addressed by the same block
//! tables as the GPU's.

use std::collections::HashMap;

use airllm_format::shard_file::MappedShard;
use airllm_format::{
    Activation, AttentionSpec, DType, ModelSpec, MoeRouting, MoeSpec, NormKind, Role, RopeSpec, ShardEntry,
    StorageFormat,
};
use airllm_gpu::KvLayout;
use airllm_gpu::kernels::paged::StepLayout;
use airllm_quant::dot::{Kernels, Matmul, MatmulShape, Scratch, WeightFormat};
use airllm_quant::pool::ThreadPool;

use super::cpu_ops::{self, AttnArgs};
use super::{Buf, Exec, NormShape, View};
use crate::error::{EngineError, Result};

const BUFS: [Buf; 12] = [
    Buf::X,
    Buf::H,
    Buf::Qkv,
    Buf::Attn,
    Buf::Gu,
    Buf::Act,
    Buf::ExpertOut,
    Buf::RouterLogits,
    Buf::RouterWeights,
    Buf::LastX,
    Buf::LastH,
    Buf::Logits,
];

fn slot(b: Buf) -> usize {
    BUFS.iter().position(|x| *x == b).unwrap_or(0)
}

/// Host activation buffers, sized once like the GPU's ([`crate::sizing::activation_buffers`]).
#[derive(Debug, Default)]
pub struct CpuActivations {
    bufs: Vec<Vec<f32>>,
}

impl CpuActivations {
    /// Buffers for `rows` token rows and `logit_rows` logit rows.
    pub fn new(spec: &ModelSpec, rows: usize, logit_rows: usize) -> Self {
        let mut bufs = vec![Vec::new(); BUFS.len()];
        for (b, bytes) in crate::sizing::activation_buffers(spec, rows, logit_rows) {
            bufs[slot(b)] = vec![0f32; (bytes / 4) as usize];
        }
        CpuActivations { bufs }
    }

    /// The values of `b`.
    pub fn get(&self, b: Buf) -> &[f32] {
        &self.bufs[slot(b)]
    }

    /// The values of `b`, writable.
    pub fn get_mut(&mut self, b: Buf) -> &mut [f32] {
        &mut self.bufs[slot(b)]
    }

    fn take(&mut self, b: Buf) -> Vec<f32> {
        std::mem::take(&mut self.bufs[slot(b)])
    }

    fn put(&mut self, b: Buf, v: Vec<f32>) {
        self.bufs[slot(b)] = v;
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bufs.iter().map(|b| b.len() as u64 * 4).sum()
    }
}

/// One layer's KV cache in RAM (f32, the GPU cache's layout).
#[derive(Debug)]
pub struct CpuKv {
    /// K values.
    pub k: Vec<f32>,
    /// V values.
    pub v: Vec<f32>,
}

impl CpuKv {
    /// A zeroed cache of `layout` (f32 whatever `layout.f16` says: RAM is the
    /// plentiful tier, and f32 keeps transformers' numbers).
    pub fn new(layout: &KvLayout) -> Self {
        let n = (layout.tensor_bytes() / layout.elem_bytes()) as usize;
        // A k-only (latent attention) cache reads its values from `k`.
        let nv = if layout.k_only { 0 } else { n };
        CpuKv { k: vec![0.0; n], v: vec![0.0; nv] }
    }
}

/// A CPU-placed unit: its mapped shard, and its vectors (norms, biases)
/// decoded to f32 once.
pub struct CpuUnit {
    shard: MappedShard,
    vectors: HashMap<Role, Vec<f32>>,
}

impl std::fmt::Debug for CpuUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuUnit").field("vectors", &self.vectors.len()).finish()
    }
}

fn weight_format(f: StorageFormat) -> WeightFormat {
    match f {
        StorageFormat::Dense(DType::F32) => WeightFormat::F32,
        StorageFormat::Dense(DType::F16) => WeightFormat::F16,
        StorageFormat::Dense(DType::Bf16) => WeightFormat::Bf16,
        StorageFormat::Quant(c) => WeightFormat::Quant(c),
    }
}

impl CpuUnit {
    /// Maps the unit's shard and decodes its 1-D tensors.
    pub fn open(shard: MappedShard, entry: &ShardEntry) -> Result<Self> {
        let mut vectors = HashMap::new();
        for t in &entry.tensors {
            if t.shape.len() == 1 {
                let bytes = shard.tensor(t)?;
                let v = match t.format {
                    StorageFormat::Dense(d) => airllm_format::dtype::dense_to_f32(d, bytes),
                    StorageFormat::Quant(c) => c
                        .decode(bytes, t.shape[0])
                        .map_err(|e| airllm_format::FormatError::Quant { tensor: t.name.clone(), source: e })?,
                };
                vectors.insert(t.role, v);
            }
        }
        Ok(CpuUnit { shard, vectors })
    }
}

/// The executor for one CPU unit of one step.
pub struct CpuExec<'a> {
    /// The model.
    pub spec: &'a ModelSpec,
    /// The unit's manifest entry.
    pub entry: &'a ShardEntry,
    /// The unit's bytes.
    pub unit: &'a CpuUnit,
    /// Host activations.
    pub act: &'a mut CpuActivations,
    /// The step.
    pub step: &'a StepLayout,
    /// `[rows]` positions.
    pub positions: &'a [u32],
    /// Inverse frequencies per distinct RoPE.
    pub ropes: &'a [(RopeSpec, Vec<f32>)],
    /// The layer's RAM cache and its layout (decoder layers).
    pub kv: Option<(&'a mut CpuKv, KvLayout)>,
    /// Token rows.
    pub rows: u32,
    /// Threads.
    pub pool: &'a ThreadPool,
    /// Matmul scratch (quantized activations), reused across ops.
    pub scratch: &'a mut Scratch,
    /// Activation precision of the quantized matmuls.
    pub precision: airllm_quant::dot::Precision,
}

/// The f32 vector of `role` in a CPU unit.
fn vector<'u>(unit: &'u CpuUnit, entry: &ShardEntry, role: Role) -> Result<&'u [f32]> {
    unit.vectors.get(&role).map(Vec::as_slice).ok_or_else(|| {
        EngineError::invalid(entry.file.clone(), format!("shard has no {role} vector; re-run `airllm shard`"))
    })
}

impl Exec for CpuExec<'_> {
    fn rows(&self) -> u32 {
        self.rows
    }

    fn has(&self, role: Role) -> bool {
        self.entry.tensor(role).is_some()
    }

    fn linear(&mut self, w: Role, bias: Option<Role>, x: View, y: View, accumulate: bool) -> Result<()> {
        let (unit, entry) = (self.unit, self.entry);
        let t = entry.tensor(w).ok_or_else(|| {
            EngineError::invalid(entry.file.clone(), format!("shard has no {w} tensor; re-run `airllm shard`"))
        })?;
        let cols = t.shape.last().copied().unwrap_or(1);
        let rows: usize = t.shape.iter().rev().skip(1).product::<usize>().max(1);
        let weight = unit.shard.tensor(t)?;
        let bias = match bias {
            Some(b) if entry.tensor(b).is_some() => Some(vector(unit, entry, b)?),
            _ => None,
        };
        if x.buf == y.buf || x.off != 0 {
            return Err(EngineError::invalid("graph", format!("linear {w}: x must be another buffer, from column 0")));
        }
        let shape = MatmulShape {
            t: x.rows as usize,
            n: rows,
            k: cols,
            x_stride: x.stride as usize,
            y_stride: y.stride as usize,
            y_off: y.off as usize,
            accumulate,
        };
        let mut ybuf = self.act.take(y.buf);
        let precision = self.precision;
        let m = Matmul { shape, format: weight_format(t.format), weight, x: self.act.get(x.buf), bias, precision };
        let r = Kernels::best().matmul(&m, &mut ybuf, self.scratch, self.pool);
        self.act.put(y.buf, ybuf);
        r.map_err(|e| EngineError::invalid(self.entry.file.clone(), format!("{w}: {e}")))
    }

    fn norm(&mut self, w: Role, shape: NormShape, x: View, y: Option<View>) -> Result<()> {
        let wv = vector(self.unit, self.entry, w)?;
        let (rows, d, heads) = ((x.rows * shape.heads) as usize, shape.d as usize, shape.heads as usize);
        let gemma = self.spec.norm == NormKind::RmsOnePlus;
        let eps = self.spec.norm_eps;
        let pool = self.pool;
        match y {
            None => {
                let xb = self.act.get_mut(x.buf);
                cpu_ops::rmsnorm(pool, rows, d, heads, xb, (x.stride as usize, x.off as usize), None, wv, eps, gemma);
            }
            Some(y) => {
                let mut xb = self.act.take(x.buf);
                let yb = self.act.get_mut(y.buf);
                cpu_ops::rmsnorm(
                    pool,
                    rows,
                    d,
                    heads,
                    &mut xb,
                    (x.stride as usize, x.off as usize),
                    Some((yb, y.stride as usize, y.off as usize)),
                    wv,
                    eps,
                    gemma,
                );
                self.act.put(x.buf, xb);
            }
        }
        Ok(())
    }

    fn rope(&mut self, x: View, heads: u32, r: &RopeSpec) -> Result<()> {
        let inv = self
            .ropes
            .iter()
            .find(|(s, _)| s == r)
            .map(|(_, f)| f.as_slice())
            .ok_or_else(|| EngineError::invalid("graph", "a layer's RoPE has no frequency table"))?;
        let hd = self.spec.head_dim;
        let positions = self.positions;
        cpu_ops::rope(
            self.act.get_mut(x.buf),
            x.rows as usize,
            heads as usize,
            hd,
            x.stride as usize,
            x.off as usize,
            positions,
            inv,
            r.style,
            r.attention_factor(),
        );
        Ok(())
    }

    fn kv_append(&mut self, k: View, v: View) -> Result<()> {
        let (kv, layout) =
            self.kv.as_mut().ok_or_else(|| EngineError::invalid("graph", "kv_append outside a decoder layer"))?;
        if k.buf != v.buf || k.stride != v.stride {
            return Err(EngineError::invalid("graph", "kv_append: k and v must share a buffer"));
        }
        let src = self.act.get(k.buf);
        cpu_ops::kv_append(
            layout,
            self.step,
            src,
            k.stride as usize,
            k.off as usize,
            v.off as usize,
            &mut kv.k,
            &mut kv.v,
        );
        Ok(())
    }

    fn attention(&mut self, q: View, out: View, a: &AttentionSpec) -> Result<()> {
        let (kv, layout) =
            self.kv.as_ref().ok_or_else(|| EngineError::invalid("graph", "attention outside a decoder layer"))?;
        let args = AttnArgs {
            heads: self.spec.num_heads,
            q: (q.stride as usize, q.off as usize),
            out: (out.stride as usize, out.off as usize),
            scale: a.scale,
            window: a.window.unwrap_or(0) as u32,
            softcap: a.softcap.unwrap_or(0.0),
            v_dim: a.v_dim.unwrap_or(self.spec.head_dim),
        };
        let mut ob = self.act.take(out.buf);
        // A k-only (latent attention) cache holds the values inside its k rows.
        let v_cache = if layout.k_only { &kv.k } else { &kv.v };
        cpu_ops::attention(self.pool, layout, self.step, &args, self.act.get(q.buf), &kv.k, v_cache, &mut ob);
        self.act.put(out.buf, ob);
        Ok(())
    }

    fn act_mul(&mut self, activation: Activation, gu: View, out: View) -> Result<()> {
        let i = out.stride.min(gu.stride / 2) as usize;
        let mut ob = self.act.take(out.buf);
        cpu_ops::act_mul(
            activation == Activation::Silu,
            gu.rows as usize,
            i,
            self.act.get(gu.buf),
            (gu.stride as usize, gu.off as usize, gu.off as usize + i),
            &mut ob,
            (out.stride as usize, out.off as usize),
        );
        self.act.put(out.buf, ob);
        Ok(())
    }

    fn add(&mut self, x: View, y: View, cols: u32) -> Result<()> {
        let mut yb = self.act.take(y.buf);
        let xb = self.act.get(x.buf);
        for r in 0..y.rows as usize {
            let (xs, ys) = (r * x.stride as usize + x.off as usize, r * y.stride as usize + y.off as usize);
            for c in 0..cols as usize {
                yb[ys + c] += xb[xs + c];
            }
        }
        self.act.put(y.buf, yb);
        Ok(())
    }

    fn softcap(&mut self, y: View, cols: u32, cap: f32) -> Result<()> {
        let yb = self.act.get_mut(y.buf);
        for r in 0..y.rows as usize {
            for v in &mut yb[r * y.stride as usize + y.off as usize..][..cols as usize] {
                *v = cap * (*v / cap).tanh();
            }
        }
        Ok(())
    }

    fn moe_route(&mut self, logits: View, weights: View, m: &MoeSpec) -> Result<()> {
        let mut wb = self.act.take(weights.buf);
        let ls = (logits.stride as usize, logits.off as usize);
        match m.routing {
            MoeRouting::Softmax => cpu_ops::moe_route(
                logits.rows as usize,
                m.num_experts,
                m.top_k,
                m.renormalize,
                self.act.get(logits.buf),
                ls,
                &mut wb,
            ),
            // DeepSeek-V3: sigmoid scores, the router's correction bias, group-limited top-k.
            MoeRouting::SigmoidGrouped { n_group, topk_group, scaling } => {
                let bias = match vector(self.unit, self.entry, Role::RouterBias) {
                    Ok(b) => b,
                    Err(e) => {
                        self.act.put(weights.buf, wb);
                        return Err(e);
                    }
                };
                let g = cpu_ops::GroupedRoute { n_group, topk_group, scaling, bias };
                cpu_ops::moe_route_grouped(
                    logits.rows as usize,
                    m.num_experts,
                    m.top_k,
                    m.renormalize,
                    &g,
                    self.act.get(logits.buf),
                    ls,
                    &mut wb,
                );
            }
        }
        self.act.put(weights.buf, wb);
        Ok(())
    }

    fn moe_combine(&mut self, expert_out: View, out: View, weights: View, expert: u32, experts: u32) -> Result<()> {
        let mut ob = self.act.take(out.buf);
        let (eb, wb) = (self.act.get(expert_out.buf), self.act.get(weights.buf));
        for r in 0..out.rows as usize {
            let w = wb[r * experts as usize + expert as usize];
            if w == 0.0 {
                continue;
            }
            for c in 0..out.stride as usize {
                ob[r * out.stride as usize + c] += w * eb[r * expert_out.stride as usize + c];
            }
        }
        self.act.put(out.buf, ob);
        Ok(())
    }

    fn gather_rows(&mut self, from: View, to: View, rows: &[u32]) -> Result<()> {
        let mut tb = self.act.take(to.buf);
        let fb = self.act.get(from.buf);
        let w = from.stride as usize;
        for (j, &r) in rows.iter().enumerate() {
            tb[j * w..(j + 1) * w].copy_from_slice(&fb[r as usize * w..(r as usize + 1) * w]);
        }
        self.act.put(to.buf, tb);
        Ok(())
    }
}

//! The GPU executor: records the graph's ops as WGSL kernels on one
//! recorder, reading the unit's weights from the VRAM buffer that holds its
//! shard (resident, or the ring slot it was streamed into).

use airllm_format::{Activation, AttentionSpec, ModelSpec, MoeSpec, NormKind, Role, RopeSpec, RopeStyle};
use airllm_gpu::kernels::act_mul::{self, ActMul};
use airllm_gpu::kernels::attention::{self, Attention};
use airllm_gpu::kernels::elementwise::{self, Mat};
use airllm_gpu::kernels::kv_append::{self, KvAppend};
use airllm_gpu::kernels::matmul::{self, Matmul, MatmulShape};
use airllm_gpu::kernels::moe;
use airllm_gpu::kernels::moe_sparse::{self, Group};
use airllm_gpu::kernels::paged::StepViews;
use airllm_gpu::kernels::rmsnorm::{self, RmsNorm, RowView};
use airllm_gpu::kernels::rope::{self, Rope};
use airllm_gpu::{BufView, KvLayout, LogitsReadback, Recorder, wgpu};

use super::{Buf, Exec, NormShape, View};
use crate::engine::moe::{ExpertGroup, MoeDispatch, MoeStats};
use crate::engine::weights::UnitWeights;
use crate::error::{EngineError, Result};

/// The GPU activation buffers, sized once for the largest step.
#[derive(Debug)]
pub struct GpuActivations {
    /// Token rows the buffers hold.
    pub rows: u32,
    /// Logit rows the head buffers hold.
    pub logit_rows: u32,
    bufs: Vec<(Buf, wgpu::Buffer)>,
}

impl GpuActivations {
    /// Buffers for `rows` token rows and `logit_rows` logit rows, with the
    /// sizes [`crate::sizing::activation_buffers`] gives (the planner's numbers).
    pub fn new(ctx: &airllm_gpu::GpuContext, spec: &ModelSpec, rows: u32, logit_rows: u32) -> Self {
        let bufs = crate::sizing::activation_buffers(spec, rows as usize, logit_rows as usize)
            .into_iter()
            .map(|(b, bytes)| (b, ctx.create_storage_buffer(&format!("{b:?}"), bytes)))
            .collect();
        GpuActivations { rows, logit_rows, bufs }
    }

    /// The buffer behind `b`.
    pub fn buffer(&self, b: Buf) -> &wgpu::Buffer {
        // Every Buf is allocated in `new`.
        &self.bufs.iter().find(|(k, _)| *k == b).unwrap_or(&self.bufs[0]).1
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> u64 {
        self.bufs.iter().map(|(_, b)| b.size()).sum()
    }
}

/// What the GPU executor keeps between MoE layers: the readback buffers of
/// the routing weights and the host copy they are read into (both reused).
#[derive(Default)]
pub struct GpuMoe {
    readback: LogitsReadback,
    host: Vec<f32>,
}

impl std::fmt::Debug for GpuMoe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMoe").field("readback_bytes", &self.readback.bytes()).finish()
    }
}

/// One layer's KV cache on the GPU.
#[derive(Clone, Copy, Debug)]
pub struct GpuKv<'a> {
    /// Shape.
    pub layout: KvLayout,
    /// K tensor.
    pub k: BufView<'a>,
    /// V tensor.
    pub v: BufView<'a>,
}

/// The executor for one unit of one step (`'c`: the recorder's context,
/// `'a`: the unit's buffers, borrowed for this unit only).
pub struct GpuExec<'r, 'c, 'a> {
    /// The recording.
    pub rec: &'r mut Recorder<'c>,
    /// The model.
    pub spec: &'a ModelSpec,
    /// The unit's weights.
    pub w: UnitWeights<'a>,
    /// Activations.
    pub act: &'a GpuActivations,
    /// The step description.
    pub step: StepViews<'a>,
    /// `[rows]` u32 positions (RoPE).
    pub positions: BufView<'a>,
    /// Inverse frequencies per distinct RoPE of the model.
    pub ropes: &'a [(RopeSpec, wgpu::Buffer)],
    /// The layer's cache (decoder layers only).
    pub kv: Option<GpuKv<'a>>,
    /// Token rows of the step.
    pub rows: u32,
    /// Routing readback state (MoE layers).
    pub moe: &'r mut GpuMoe,
    /// Sparse expert counters.
    pub moe_stats: &'r mut MoeStats,
}

fn view(act: &GpuActivations, v: View) -> BufView<'_> {
    BufView::whole(act.buffer(v.buf))
}

fn mat(act: &GpuActivations, v: View) -> Mat<'_> {
    Mat { view: view(act, v), stride: v.stride, off: v.off }
}

impl<'a> GpuExec<'_, '_, 'a> {
    fn kv(&self) -> Result<GpuKv<'a>> {
        self.kv.ok_or_else(|| EngineError::invalid(self.w.entry.file.clone(), "attention outside a decoder layer"))
    }
}

fn gpu_act(a: Activation) -> airllm_gpu::Activation {
    match a {
        Activation::Silu => airllm_gpu::Activation::Silu,
        Activation::GeluTanh => airllm_gpu::Activation::GeluTanh,
    }
}

impl Exec for GpuExec<'_, '_, '_> {
    fn rows(&self) -> u32 {
        self.rows
    }

    fn has(&self, role: Role) -> bool {
        self.w.get(role).is_some()
    }

    fn linear(&mut self, w: Role, bias: Option<Role>, x: View, y: View, accumulate: bool) -> Result<()> {
        let wt = self.w.need(w)?;
        let bias = match bias {
            Some(b) => self.w.get(b).map(|t| t.view),
            None => None,
        };
        if x.off != 0 {
            return Err(EngineError::invalid("graph", format!("linear {w}: x must start at column 0")));
        }
        let shape = MatmulShape {
            t: x.rows,
            n: wt.rows,
            k: wt.cols,
            x_stride: x.stride,
            y_stride: y.stride,
            y_off: y.off,
            accumulate,
        };
        let (xv, yv) = (BufView::whole(self.act.buffer(x.buf)), BufView::whole(self.act.buffer(y.buf)));
        matmul::launch(self.rec, &Matmul { shape, format: wt.format, weight: wt.view, x: xv, y: yv, bias })?;
        Ok(())
    }

    fn norm(&mut self, w: Role, shape: NormShape, x: View, y: Option<View>) -> Result<()> {
        let wt = self.w.need(w)?;
        let rv = |v: View| RowView { d: shape.d, heads: shape.heads, stride: v.stride, off: v.off };
        let xv = BufView::whole(self.act.buffer(x.buf));
        let yv = y.map(|y| (BufView::whole(self.act.buffer(y.buf)), rv(y)));
        rmsnorm::launch(
            self.rec,
            &RmsNorm {
                rows: x.rows * shape.heads,
                x_rows: rv(x),
                x: xv,
                y: yv,
                weight: wt.view,
                weight_format: wt.format,
                eps: self.spec.norm_eps,
                gemma: self.spec.norm == NormKind::RmsOnePlus,
            },
        )?;
        Ok(())
    }

    fn rope(&mut self, x: View, heads: u32, r: &RopeSpec) -> Result<()> {
        let inv = self
            .ropes
            .iter()
            .find(|(s, _)| s == r)
            .map(|(_, b)| b)
            .ok_or_else(|| EngineError::invalid("graph", "a layer's RoPE has no frequency table"))?;
        let style = match r.style {
            RopeStyle::HalfRotation => rope::RopeStyle::Half,
            RopeStyle::Interleaved => rope::RopeStyle::Interleaved,
        };
        let xv = BufView::whole(self.act.buffer(x.buf));
        rope::launch(
            self.rec,
            &Rope {
                x: xv,
                rows: x.rows,
                heads,
                head_dim: self.spec.head_dim as u32,
                rotary_dim: r.rotary_dim as u32,
                stride: x.stride,
                off: x.off,
                pos: self.positions,
                inv_freq: BufView::whole(inv),
                style,
                mscale: 1.0,
            },
        )?;
        Ok(())
    }

    fn kv_append(&mut self, k: View, v: View) -> Result<()> {
        let act = self.act;
        let kv = self.kv()?;
        kv_append::launch(
            self.rec,
            &KvAppend {
                layout: kv.layout,
                rows: k.rows,
                step: self.step,
                k_src: view(act, k),
                k_stride: k.stride,
                k_off: k.off,
                v_src: view(act, v),
                v_stride: v.stride,
                v_off: v.off,
                k_cache: kv.k,
                v_cache: kv.v,
            },
        )?;
        Ok(())
    }

    fn attention(&mut self, q: View, out: View, a: &AttentionSpec) -> Result<()> {
        let act = self.act;
        let kv = self.kv()?;
        attention::launch(
            self.rec,
            &Attention {
                layout: kv.layout,
                rows: q.rows,
                heads: self.spec.num_heads as u32,
                step: self.step,
                q: view(act, q),
                q_stride: q.stride,
                q_off: q.off,
                k_cache: kv.k,
                v_cache: kv.v,
                out: view(act, out),
                out_stride: out.stride,
                out_off: out.off,
                scale: a.scale,
                window: a.window.unwrap_or(0) as u32,
                softcap: a.softcap.unwrap_or(0.0),
            },
        )?;
        Ok(())
    }

    fn act_mul(&mut self, activation: Activation, gu: View, out: View) -> Result<()> {
        let act = self.act;
        let i = out.stride.min(gu.stride / 2);
        act_mul::launch(
            self.rec,
            &ActMul {
                act: gpu_act(activation),
                t: gu.rows,
                i,
                input: view(act, gu),
                in_stride: gu.stride,
                gate_off: gu.off,
                up_off: gu.off + i,
                out: view(act, out),
                out_stride: out.stride,
                out_off: out.off,
            },
        )?;
        Ok(())
    }

    fn add(&mut self, x: View, y: View, cols: u32) -> Result<()> {
        let act = self.act;
        // The kernel computes `first += second`.
        elementwise::add(self.rec, y.rows, cols, mat(act, y), mat(act, x))?;
        Ok(())
    }

    fn softcap(&mut self, y: View, cols: u32, cap: f32) -> Result<()> {
        let act = self.act;
        elementwise::softcap(self.rec, y.rows, cols, mat(act, y), cap)?;
        Ok(())
    }

    fn moe_route(&mut self, logits: View, weights: View, m: &MoeSpec) -> Result<()> {
        let act = self.act;
        moe::route(
            self.rec,
            &moe::Route {
                t: logits.rows,
                experts: m.num_experts as u32,
                top_k: m.top_k as u32,
                renormalize: m.renormalize,
                logits: mat(act, logits),
                weights: view(act, weights),
            },
        )?;
        Ok(())
    }

    fn moe_dispatch(&mut self, weights: View, m: &MoeSpec, layer: usize) -> Result<MoeDispatch> {
        let t0 = std::time::Instant::now();
        if weights.stride as usize != m.num_experts || weights.off != 0 {
            return Err(EngineError::invalid("graph", "moe_dispatch: routing weights must be contiguous [rows, experts]"));
        }
        let ctx = self.rec.ctx();
        let bytes = u64::from(weights.rows) * u64::from(weights.stride) * 4;
        // Submit what is recorded so far (the pass up to this router), with the
        // copy of the routing weights at its end, and record the experts into a
        // fresh recorder that the engine submits as it would have the old one.
        let mut upto_router = std::mem::replace(&mut *self.rec, ctx.recorder("moe.experts"));
        let mut ticket = self.moe.readback.copy(ctx, upto_router.encoder(), self.act.buffer(weights.buf), bytes)?;
        let index = upto_router.submit()?;
        self.moe.readback.map(&mut ticket, index);
        self.moe.readback.wait(ctx, &ticket)?;
        self.moe.readback.read(ticket, &mut self.moe.host)?;
        let d = MoeDispatch::from_dense(&self.moe.host, weights.rows as usize, m.num_experts, m.top_k, layer)?;
        // Lands before the next submit, which carries the gathers and scatters
        // below; every earlier use of these buffers is already done (waited above).
        let queue = ctx.queue();
        queue.write_buffer(self.act.buffer(Buf::MoeRows), 0, bytemuck::cast_slice(&d.rows));
        queue.write_buffer(self.act.buffer(Buf::MoeWeights), 0, bytemuck::cast_slice(&d.weights));
        self.moe_stats.add(&d);
        self.moe_stats.readbacks += 1;
        self.moe_stats.readback_bytes += bytes;
        self.moe_stats.readback += t0.elapsed();
        Ok(d)
    }

    fn moe_gather(&mut self, from: View, to: View, _d: &MoeDispatch, g: &ExpertGroup) -> Result<()> {
        let act = self.act;
        moe_sparse::gather(
            self.rec,
            Group { start: g.start, n: g.rows },
            to.stride - to.off,
            mat(act, from),
            from.rows,
            mat(act, to),
            view(act, View::new(Buf::MoeRows, 0, 0)),
        )?;
        Ok(())
    }

    fn moe_scatter(&mut self, from: View, to: View, _d: &MoeDispatch, g: &ExpertGroup) -> Result<()> {
        let act = self.act;
        moe_sparse::scatter_add(
            self.rec,
            Group { start: g.start, n: g.rows },
            from.stride - from.off,
            mat(act, from),
            mat(act, to),
            to.rows,
            view(act, View::new(Buf::MoeRows, 0, 0)),
            view(act, View::new(Buf::MoeWeights, 0, 0)),
        )?;
        Ok(())
    }

    fn gather_rows(&mut self, from: View, to: View, rows: &[u32]) -> Result<()> {
        let (src, dst) = (self.act.buffer(from.buf), self.act.buffer(to.buf));
        let row_bytes = u64::from(from.stride) * 4;
        if u64::from(to.stride) * 4 != row_bytes {
            return Err(EngineError::invalid("graph", "gather_rows: rows of different widths"));
        }
        // Runs of consecutive rows are one copy each.
        let mut j = 0;
        while j < rows.len() {
            let mut n = 1;
            while j + n < rows.len() && rows[j + n] == rows[j] + n as u32 {
                n += 1;
            }
            self.rec.encoder().copy_buffer_to_buffer(
                src,
                u64::from(rows[j]) * row_bytes,
                dst,
                j as u64 * row_bytes,
                n as u64 * row_bytes,
            );
            j += n;
        }
        Ok(())
    }
}

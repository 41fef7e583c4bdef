//! The GPU executor: records the graph's ops as WGSL kernels on one
//! recorder, reading the unit's weights from the VRAM buffer that holds its
//! shard (resident, or the ring slot it was streamed into).

use airllm_format::{Activation, AttentionSpec, ModelSpec, MoeRouting, MoeSpec, NormKind, Role, RopeSpec, RopeStyle};
use airllm_gpu::kernels::act_mul::{self, ActMul};
use airllm_gpu::kernels::attention::{self, Attention};
use airllm_gpu::kernels::elementwise::{self, Mat};
use airllm_gpu::kernels::kv_append::{self, KvAppend};
use airllm_gpu::kernels::matmul::{self, Matmul, MatmulShape};
use airllm_gpu::kernels::moe;
use airllm_gpu::kernels::paged::StepViews;
use airllm_gpu::kernels::rmsnorm::{self, RmsNorm, RowView};
use airllm_gpu::kernels::rope::{self, Rope};
use airllm_gpu::{BufView, KvLayout, Recorder, WeightFormat, wgpu};

use super::{Buf, Exec, NormShape, View};
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
                // YaRN scales cos and sin (transformers' attention_factor); 1 otherwise.
                mscale: r.attention_factor(),
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
                v_dim: a.v_dim.unwrap_or(self.spec.head_dim) as u32,
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
        let route = moe::Route {
            t: logits.rows,
            experts: m.num_experts as u32,
            top_k: m.top_k as u32,
            renormalize: m.renormalize,
            logits: mat(act, logits),
            weights: view(act, weights),
        };
        match m.routing {
            MoeRouting::Softmax => moe::route(self.rec, &route)?,
            // DeepSeek-V3: the router's correction bias comes with the unit's weights.
            MoeRouting::SigmoidGrouped { n_group, topk_group, scaling } => {
                let bias = self.w.need(Role::RouterBias)?;
                if bias.format != WeightFormat::F32 {
                    return Err(EngineError::invalid(
                        self.w.entry.file.clone(),
                        format!("router bias is stored as {}, not f32; re-run `airllm shard`", bias.format.name()),
                    ));
                }
                moe::route_grouped(
                    self.rec,
                    &moe::RouteGrouped {
                        route,
                        bias: bias.view,
                        n_group: n_group as u32,
                        topk_group: topk_group as u32,
                        scaling,
                    },
                )?
            }
        }
        Ok(())
    }

    fn moe_combine(&mut self, expert_out: View, out: View, weights: View, expert: u32, experts: u32) -> Result<()> {
        let act = self.act;
        moe::combine(
            self.rec,
            out.rows,
            out.stride,
            experts,
            expert,
            mat(act, out),
            mat(act, expert_out),
            view(act, weights),
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

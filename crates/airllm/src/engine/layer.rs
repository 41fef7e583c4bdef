//! One decoder layer as a sequence of kernel launches, for every supported
//! family (the differences are data: fused projections, biases, q/k norm, MoE,
//! norm flavour, activation, rotary layout; see `ModelSpec`).

use airllm_format::{Activation, ModelSpec, NormKind, Role, RopeStyle};
use airllm_gpu::kernels::act_mul::{self, ActMul};
use airllm_gpu::kernels::attention::{self, Attention};
use airllm_gpu::kernels::elementwise::Mat;
use airllm_gpu::kernels::kv_append::{self, KvAppend};
use airllm_gpu::kernels::matmul::{self, Matmul, MatmulShape};
use airllm_gpu::kernels::moe;
use airllm_gpu::kernels::rmsnorm::{self, RmsNorm, RowView};
use airllm_gpu::kernels::rope::{self, Rope};
use airllm_gpu::{BufView, KvLayout, Recorder};

use super::activations::Activations;
use super::weights::{BoundTensor, UnitWeights};
use crate::error::Result;

/// Per-pass values every layer needs.
#[derive(Clone, Copy, Debug)]
pub struct PassShape {
    /// Sequences.
    pub batch: u32,
    /// New tokens per sequence.
    pub t: u32,
    /// Slots filled before this pass.
    pub past: u32,
}

impl PassShape {
    /// Token rows in the activation buffers.
    pub fn rows(&self) -> u32 {
        self.batch * self.t
    }
}

/// Record `y (+)= x · Wᵀ (+ b)`.
#[allow(clippy::too_many_arguments)]
fn linear(
    rec: &mut Recorder<'_>,
    w: BoundTensor<'_>,
    bias: Option<BoundTensor<'_>>,
    rows: u32,
    x: BufView<'_>,
    x_stride: u32,
    y: BufView<'_>,
    y_stride: u32,
    y_off: u32,
    accumulate: bool,
) -> Result<()> {
    let shape = MatmulShape { t: rows, n: w.rows, k: w.cols, x_stride, y_stride, y_off, accumulate };
    matmul::launch(rec, &Matmul { shape, format: w.format, weight: w.view, x, y, bias: bias.map(|b| b.view) })?;
    Ok(())
}

/// RMSNorm of contiguous `[rows, d]` `x` into `y`.
fn norm(
    rec: &mut Recorder<'_>,
    spec: &ModelSpec,
    w: BoundTensor<'_>,
    rows: u32,
    x: BufView<'_>,
    y: BufView<'_>,
) -> Result<()> {
    let d = spec.hidden_size as u32;
    rmsnorm::launch(
        rec,
        &RmsNorm {
            rows,
            x_rows: RowView::contiguous(d),
            x,
            y: Some((y, RowView::contiguous(d))),
            weight: w.view,
            weight_format: w.format,
            eps: spec.norm_eps,
            gemma: spec.norm == NormKind::RmsOnePlus,
        },
    )?;
    Ok(())
}

/// The final norm: `y = norm(x)` over `rows` rows.
pub fn final_norm(
    rec: &mut Recorder<'_>,
    spec: &ModelSpec,
    w: &UnitWeights<'_>,
    rows: u32,
    x: BufView<'_>,
    y: BufView<'_>,
) -> Result<()> {
    norm(rec, spec, w.need(Role::FinalNorm)?, rows, x, y)
}

fn gpu_act(a: Activation) -> airllm_gpu::Activation {
    match a {
        Activation::Silu => airllm_gpu::Activation::Silu,
        Activation::GeluTanh => airllm_gpu::Activation::GeluTanh,
    }
}

/// Record decoder layer `layer` on the activations: `x` is updated in place.
#[allow(clippy::too_many_arguments)]
pub fn decoder_layer(
    rec: &mut Recorder<'_>,
    spec: &ModelSpec,
    w: &UnitWeights<'_>,
    a: &Activations,
    kv: (BufView<'_>, BufView<'_>),
    layout: KvLayout,
    pass: PassShape,
) -> Result<()> {
    let n = pass.rows();
    let h = spec.hidden_size as u32;
    let (q_dim, kv_dim) = (spec.q_dim() as u32, spec.kv_dim() as u32);
    let qkv_w = q_dim + 2 * kv_dim;
    let hd = spec.head_dim as u32;

    // Attention block.
    norm(rec, spec, w.need(Role::AttnNorm)?, n, a.x(), a.h())?;
    if let Some(wqkv) = w.get(Role::Qkv) {
        linear(rec, wqkv, w.get(Role::QkvBias), n, a.h(), h, a.qkv(), qkv_w, 0, false)?;
    } else {
        linear(rec, w.need(Role::Q)?, w.get(Role::QBias), n, a.h(), h, a.qkv(), qkv_w, 0, false)?;
        linear(rec, w.need(Role::K)?, w.get(Role::KBias), n, a.h(), h, a.qkv(), qkv_w, q_dim, false)?;
        linear(rec, w.need(Role::V)?, w.get(Role::VBias), n, a.h(), h, a.qkv(), qkv_w, q_dim + kv_dim, false)?;
    }
    if spec.qk_norm {
        for (role, heads, off) in
            [(Role::QNorm, spec.num_heads as u32, 0), (Role::KNorm, spec.num_kv_heads as u32, q_dim)]
        {
            let wn = w.need(role)?;
            rmsnorm::launch(
                rec,
                &RmsNorm {
                    rows: n * heads,
                    x_rows: RowView { d: hd, heads, stride: qkv_w, off },
                    x: a.qkv(),
                    y: None,
                    weight: wn.view,
                    weight_format: wn.format,
                    eps: spec.norm_eps,
                    gemma: spec.norm == NormKind::RmsOnePlus,
                },
            )?;
        }
    }
    let style = match spec.rope.style {
        RopeStyle::HalfRotation => rope::RopeStyle::Half,
        RopeStyle::Interleaved => rope::RopeStyle::Interleaved,
    };
    for (heads, off) in [(spec.num_heads as u32, 0), (spec.num_kv_heads as u32, q_dim)] {
        rope::launch(
            rec,
            &Rope {
                x: a.qkv(),
                rows: n,
                heads,
                head_dim: hd,
                rotary_dim: spec.rope.rotary_dim as u32,
                stride: qkv_w,
                off,
                pos: a.positions(),
                inv_freq: a.inv_freq(),
                style,
                mscale: 1.0,
            },
        )?;
    }
    kv_append::launch(
        rec,
        &KvAppend {
            layout,
            t: pass.t,
            past: pass.past,
            k_src: a.qkv(),
            k_stride: qkv_w,
            k_off: q_dim,
            v_src: a.qkv(),
            v_stride: qkv_w,
            v_off: q_dim + kv_dim,
            k_cache: kv.0,
            v_cache: kv.1,
        },
    )?;
    attention::launch(
        rec,
        &Attention {
            layout,
            t: pass.t,
            heads: spec.num_heads as u32,
            past: pass.past,
            q: a.qkv(),
            q_stride: qkv_w,
            q_off: 0,
            k_cache: kv.0,
            v_cache: kv.1,
            first_valid: a.first_valid(),
            out: a.attn(),
            out_stride: q_dim,
            out_off: 0,
            scale: 1.0 / (hd as f32).sqrt(),
            window: spec.sliding_window.unwrap_or(0) as u32,
            softcap: 0.0,
        },
    )?;
    linear(rec, w.need(Role::O)?, w.get(Role::OBias), n, a.attn(), q_dim, a.x(), h, 0, true)?;

    // MLP block.
    norm(rec, spec, w.need(Role::MlpNorm)?, n, a.x(), a.h())?;
    let i = spec.intermediate_size as u32;
    let act = gpu_act(spec.activation);
    match spec.moe {
        None => {
            gate_up(rec, w, (Role::GateUp, Role::Gate, Role::Up), n, h, i, a)?;
            act_mul::launch(rec, &ActMul::fused(act, n, i, a.gu(), a.act()))?;
            linear(rec, w.need(Role::Down)?, w.get(Role::DownBias), n, a.act(), i, a.x(), h, 0, true)?;
        }
        Some(m) => {
            let e = m.num_experts as u32;
            linear(rec, w.need(Role::Router)?, None, n, a.h(), h, a.router_logits(), e, 0, false)?;
            moe::route(
                rec,
                &moe::Route {
                    t: n,
                    experts: e,
                    top_k: m.top_k as u32,
                    renormalize: m.renormalize,
                    logits: Mat::contiguous(a.router_logits(), e),
                    weights: a.router_weights(),
                },
            )?;
            for ex in 0..e {
                linear(rec, w.need(Role::ExpertGate(ex))?, None, n, a.h(), h, a.gu(), 2 * i, 0, false)?;
                linear(rec, w.need(Role::ExpertUp(ex))?, None, n, a.h(), h, a.gu(), 2 * i, i, false)?;
                act_mul::launch(rec, &ActMul::fused(act, n, i, a.gu(), a.act()))?;
                linear(rec, w.need(Role::ExpertDown(ex))?, None, n, a.act(), i, a.expert_out(), h, 0, false)?;
                moe::combine(
                    rec,
                    n,
                    h,
                    e,
                    ex,
                    Mat::contiguous(a.x(), h),
                    Mat::contiguous(a.expert_out(), h),
                    a.router_weights(),
                )?;
            }
        }
    }
    Ok(())
}

/// Gate and up projections into the two halves of the `[n, 2i]` buffer.
fn gate_up(
    rec: &mut Recorder<'_>,
    w: &UnitWeights<'_>,
    roles: (Role, Role, Role),
    n: u32,
    h: u32,
    i: u32,
    a: &Activations,
) -> Result<()> {
    if let Some(gu) = w.get(roles.0) {
        return linear(rec, gu, None, n, a.h(), h, a.gu(), 2 * i, 0, false);
    }
    linear(rec, w.need(roles.1)?, w.get(Role::GateBias), n, a.h(), h, a.gu(), 2 * i, 0, false)?;
    linear(rec, w.need(roles.2)?, w.get(Role::UpBias), n, a.h(), h, a.gu(), 2 * i, i, false)
}

//! The activation buffers, sized once for the largest pass and reused: no
//! allocation per token.

use airllm_format::ModelSpec;
use airllm_gpu::wgpu;
use airllm_gpu::{BufView, GpuContext};

/// Activation buffers for up to `rows` token rows and `logit_rows` logit rows.
#[derive(Debug)]
pub struct Activations {
    /// Capacity in token rows.
    pub rows: u32,
    /// Capacity in logit rows.
    pub logit_rows: u32,
    /// Capacity in sequences.
    pub batch: u32,
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    gu: wgpu::Buffer,
    act: wgpu::Buffer,
    expert_out: wgpu::Buffer,
    router_logits: wgpu::Buffer,
    router_weights: wgpu::Buffer,
    positions: wgpu::Buffer,
    first_valid: wgpu::Buffer,
    inv_freq: wgpu::Buffer,
    /// Selected rows of x for the head, then normed.
    pub last_x: wgpu::Buffer,
    /// Normed selected rows.
    pub last_h: wgpu::Buffer,
    /// Logits `[logit_rows, vocab]`.
    pub logits: wgpu::Buffer,
}

fn whole(b: &wgpu::Buffer) -> BufView<'_> {
    BufView::whole(b)
}

impl Activations {
    /// Allocate for `rows` token rows, `logit_rows` logit rows and `batch` sequences.
    pub fn new(ctx: &GpuContext, spec: &ModelSpec, rows: u32, logit_rows: u32, batch: u32) -> Self {
        let r = u64::from(rows.max(1));
        let f = |n: usize| (n as u64).max(1) * 4;
        let h = spec.hidden_size;
        let experts = spec.moe.map(|m| m.num_experts).unwrap_or(1);
        let mk = |name: &str, bytes: u64| ctx.create_storage_buffer(name, bytes);
        let lr = u64::from(logit_rows.max(1));
        Activations {
            rows,
            logit_rows,
            batch,
            x: mk("x", r * f(h)),
            h: mk("h", r * f(h)),
            qkv: mk("qkv", r * f(spec.q_dim() + 2 * spec.kv_dim())),
            attn: mk("attn", r * f(spec.q_dim())),
            gu: mk("gate_up", r * f(2 * spec.intermediate_size)),
            act: mk("act", r * f(spec.intermediate_size)),
            expert_out: mk("expert_out", if spec.moe.is_some() { r * f(h) } else { 16 }),
            router_logits: mk("router_logits", r * f(experts)),
            router_weights: mk("router_weights", r * f(experts)),
            positions: mk("positions", r * 4),
            first_valid: mk("first_valid", u64::from(batch.max(1)) * 4),
            inv_freq: ctx.upload_f32("inv_freq", &spec.rope.inv_freq()),
            last_x: mk("last_x", lr * f(h)),
            last_h: mk("last_h", lr * f(h)),
            logits: mk("logits", lr * f(spec.vocab_size)),
        }
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> u64 {
        [
            &self.x,
            &self.h,
            &self.qkv,
            &self.attn,
            &self.gu,
            &self.act,
            &self.expert_out,
            &self.router_logits,
            &self.router_weights,
            &self.positions,
            &self.first_valid,
            &self.inv_freq,
            &self.last_x,
            &self.last_h,
            &self.logits,
        ]
        .iter()
        .map(|b| b.size())
        .sum()
    }

    /// Residual stream `[rows, hidden]`.
    pub fn x(&self) -> BufView<'_> {
        whole(&self.x)
    }
    /// The x buffer itself (for uploads and row copies).
    pub fn x_buffer(&self) -> &wgpu::Buffer {
        &self.x
    }
    /// Normed hidden `[rows, hidden]`.
    pub fn h(&self) -> BufView<'_> {
        whole(&self.h)
    }
    /// Fused q|k|v `[rows, q+2kv]`.
    pub fn qkv(&self) -> BufView<'_> {
        whole(&self.qkv)
    }
    /// Attention output `[rows, q]`.
    pub fn attn(&self) -> BufView<'_> {
        whole(&self.attn)
    }
    /// Gate|up `[rows, 2i]`.
    pub fn gu(&self) -> BufView<'_> {
        whole(&self.gu)
    }
    /// Activated MLP `[rows, i]`.
    pub fn act(&self) -> BufView<'_> {
        whole(&self.act)
    }
    /// One expert's output `[rows, hidden]`.
    pub fn expert_out(&self) -> BufView<'_> {
        whole(&self.expert_out)
    }
    /// Router logits `[rows, experts]`.
    pub fn router_logits(&self) -> BufView<'_> {
        whole(&self.router_logits)
    }
    /// Routing weights `[rows, experts]`.
    pub fn router_weights(&self) -> BufView<'_> {
        whole(&self.router_weights)
    }
    /// Positions `[rows]` u32.
    pub fn positions(&self) -> BufView<'_> {
        whole(&self.positions)
    }
    /// The positions buffer.
    pub fn positions_buffer(&self) -> &wgpu::Buffer {
        &self.positions
    }
    /// First valid slot per sequence `[batch]` u32.
    pub fn first_valid(&self) -> BufView<'_> {
        whole(&self.first_valid)
    }
    /// The first_valid buffer.
    pub fn first_valid_buffer(&self) -> &wgpu::Buffer {
        &self.first_valid
    }
    /// Inverse RoPE frequencies.
    pub fn inv_freq(&self) -> BufView<'_> {
        whole(&self.inv_freq)
    }
}

//! The executor interface the layer graphs are written against.
//!
//! A graph ([`super::graph`]) says *what* a unit computes in terms of weight
//! roles and activation views; an executor says *how*: the GPU executor
//! ([`gpu::GpuExec`]) records WGSL kernels on the unit's VRAM buffer, a CPU
//! executor computes from the memory-mapped shard. One graph per family
//! feature, written once, serves every executor.
//!
//! Activations live in named buffers ([`Buf`]) of the executor, one row per
//! token of the step (or per selected row for the head). A [`View`] is a
//! strided window of one: `rows` rows of `stride` values, starting at column
//! `off`. All activations are f32.

pub mod cpu;
pub mod cpu_ops;
pub mod gpu;

use airllm_format::{Activation, AttentionSpec, MoeSpec, Role, RopeSpec};

use crate::engine::moe::{ExpertGroup, MoeDispatch};
use crate::error::Result;

/// The activation buffers every executor has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// Residual stream `[rows, hidden]`.
    X,
    /// Normed hidden / temporary `[rows, hidden]`.
    H,
    /// Fused q|k|v `[rows, q + 2 kv]`.
    Qkv,
    /// Attention output `[rows, q]`.
    Attn,
    /// Gate|up `[rows, 2 * inter]`.
    Gu,
    /// Activated MLP `[rows, inter]`.
    Act,
    /// One expert's output `[rows, hidden]` (its rows only: the first `n` rows
    /// for an expert chosen by `n` tokens).
    ExpertOut,
    /// The rows of the tokens routed to one expert, gathered `[rows, hidden]`.
    ExpertIn,
    /// Token row of each (row, expert) pair of a MoE layer, grouped by expert
    /// `[rows * top_k]` (u32; written by [`Exec::moe_dispatch`] on the GPU).
    MoeRows,
    /// Routing weight of each pair, aligned with `MoeRows` `[rows * top_k]`.
    MoeWeights,
    /// Router logits `[rows, experts]`.
    RouterLogits,
    /// Routing weights `[rows, experts]`.
    RouterWeights,
    /// Rows of the residual selected for logits `[logit rows, hidden]`.
    LastX,
    /// Those rows normed `[logit rows, hidden]`.
    LastH,
    /// Logits `[logit rows, vocab]`.
    Logits,
}

/// A strided window of an activation buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The buffer.
    pub buf: Buf,
    /// Rows.
    pub rows: u32,
    /// Values between rows.
    pub stride: u32,
    /// Column of the window's first value.
    pub off: u32,
}

impl View {
    /// `rows` contiguous rows of `width` values.
    pub fn new(buf: Buf, rows: u32, width: u32) -> Self {
        View { buf, rows, stride: width, off: 0 }
    }

    /// The same rows from column `off` of a buffer whose rows are `stride` wide.
    pub fn cols(buf: Buf, rows: u32, stride: u32, off: u32) -> Self {
        View { buf, rows, stride, off }
    }
}

/// A per-head norm: `heads` consecutive groups of `d` values per row.
#[derive(Clone, Copy, Debug)]
pub struct NormShape {
    /// Values per group.
    pub d: u32,
    /// Groups per row.
    pub heads: u32,
}

/// What a graph asks of an executor. The executor is bound to one unit (its
/// weights, and for a decoder layer its KV cache) and one step.
pub trait Exec {
    /// Token rows of the step.
    fn rows(&self) -> u32;

    /// Whether the unit has a tensor with this role.
    fn has(&self, role: Role) -> bool;

    /// `y (+)= x · Wᵀ (+ b)` with `W = role` (`[n, k]`): x has k columns
    /// (`x.off` must be 0), y gets n columns at `y.off`.
    fn linear(&mut self, w: Role, bias: Option<Role>, x: View, y: View, accumulate: bool) -> Result<()>;

    /// RMSNorm with weight `w` of every `shape.d`-group of `x` (in place when
    /// `y` is `None`), the model's norm flavour and epsilon.
    fn norm(&mut self, w: Role, shape: NormShape, x: View, y: Option<View>) -> Result<()>;

    /// Rotates `heads` heads of `x` in place at each row's position.
    fn rope(&mut self, x: View, heads: u32, rope: &RopeSpec) -> Result<()>;

    /// Appends each row's k and v (kv heads at `k.off`, `v.off`) to the
    /// layer's cache at the row's slot.
    fn kv_append(&mut self, k: View, v: View) -> Result<()>;

    /// Attention of `q` over the layer's cache into `out`.
    fn attention(&mut self, q: View, out: View, spec: &AttentionSpec) -> Result<()>;

    /// `out = act(gate) * up` with gate|up the two halves of `gu`'s rows.
    fn act_mul(&mut self, act: Activation, gu: View, out: View) -> Result<()>;

    /// `y += x` (both `cols` wide).
    fn add(&mut self, x: View, y: View, cols: u32) -> Result<()>;

    /// `y = cap * tanh(y / cap)` in place.
    fn softcap(&mut self, y: View, cols: u32, cap: f32) -> Result<()>;

    /// Top-k routing weights from router logits (softmax, keep top-k, renormalise if asked).
    fn moe_route(&mut self, logits: View, weights: View, moe: &MoeSpec) -> Result<()>;

    /// Brings the dense routing `weights` (`[rows, experts]`, from
    /// [`moe_route`](Exec::moe_route)) of MoE layer `layer` to the host and
    /// groups each row's `top_k` experts by expert ([`MoeDispatch::from_dense`]),
    /// so that only the chosen experts run. The GPU executor submits the work
    /// recorded so far, reads the weights back (one readback per MoE layer and
    /// pass) and uploads the grouped rows and weights for
    /// [`moe_gather`](Exec::moe_gather) / [`moe_scatter`](Exec::moe_scatter).
    fn moe_dispatch(&mut self, weights: View, moe: &MoeSpec, layer: usize) -> Result<MoeDispatch>;

    /// Row `j` of `to` = row `d.rows[g.start + j]` of `from` (`to.stride` columns),
    /// for the `g.rows` rows of expert group `g`.
    fn moe_gather(&mut self, from: View, to: View, d: &MoeDispatch, g: &ExpertGroup) -> Result<()>;

    /// Row `d.rows[g.start + j]` of `to` += `d.weights[g.start + j]` x row `j`
    /// of `from` (`from.stride` columns), for the rows of group `g`.
    fn moe_scatter(&mut self, from: View, to: View, d: &MoeDispatch, g: &ExpertGroup) -> Result<()>;

    /// Copies rows `rows` of `from` (in order) to the first rows of `to`.
    fn gather_rows(&mut self, from: View, to: View, rows: &[u32]) -> Result<()>;
}

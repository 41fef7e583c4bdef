//! Gated MLP activation (`shaders/act_mul.wgsl`):
//! `out[t, out_off + i] = act(gate[t, i]) * up[t, i]` for `i < I`, gate and up
//! read from row t of one `[T, in_stride]` buffer at columns `gate_off + i` and
//! `up_off + i` (a fused gate_up matmul writes gate first, up second).

use crate::error::Result;
use crate::kernels::{Params, ensure, groups_for};
pub use crate::pipeline::Activation;
use crate::pipeline::PipelineKey;
use crate::pool::BufView;
use crate::recorder::Recorder;

/// Arguments of an act_mul launch.
#[derive(Clone, Copy, Debug)]
pub struct ActMul<'a> {
    /// Activation applied to gate.
    pub act: Activation,
    /// Tokens.
    pub t: u32,
    /// Intermediate size I.
    pub i: u32,
    /// `[T, in_stride]` f32 holding gate and up.
    pub input: BufView<'a>,
    /// f32 values between input rows (2I for a fused buffer).
    pub in_stride: u32,
    /// Column of gate (0 for a fused buffer).
    pub gate_off: u32,
    /// Column of up (I for a fused buffer).
    pub up_off: u32,
    /// Output (a different buffer).
    pub out: BufView<'a>,
    /// f32 values between output rows.
    pub out_stride: u32,
    /// First output column.
    pub out_off: u32,
}

impl<'a> ActMul<'a> {
    /// The usual fused form: input `[T, 2I]` (gate, up), output `[T, I]`.
    pub fn fused(act: Activation, t: u32, i: u32, input: BufView<'a>, out: BufView<'a>) -> Self {
        ActMul { act, t, i, input, in_stride: 2 * i, gate_off: 0, up_off: i, out, out_stride: i, out_off: 0 }
    }
}

const OP: &str = "act_mul";

/// Records the activation.
pub fn launch(rec: &mut Recorder<'_>, a: &ActMul<'_>) -> Result<()> {
    ensure(u64::from(a.gate_off.max(a.up_off)) + u64::from(a.i) <= u64::from(a.in_stride), OP, "in_stride", || {
        format!("gate/up columns exceed in_stride {}", a.in_stride)
    })?;
    ensure(u64::from(a.out_off) + u64::from(a.i) <= u64::from(a.out_stride), OP, "out_stride", || {
        format!("out_off + i exceeds out_stride {}", a.out_stride)
    })?;
    if a.t == 0 || a.i == 0 {
        return Ok(());
    }
    a.input.need_f32(OP, "input", u64::from(a.t) * u64::from(a.in_stride))?;
    a.out.need_f32(OP, "out", u64::from(a.t - 1) * u64::from(a.out_stride) + u64::from(a.out_off) + u64::from(a.i))?;
    ensure(a.input.buffer != a.out.buffer, OP, "out", || "input and out must be different buffers".into())?;
    let key = PipelineKey::ActMul { act: a.act };
    let groups = groups_for(rec.ctx(), u64::from(a.t) * u64::from(a.i), key.workgroup_size())?;
    let params =
        Params::default().u(a.t).u(a.i).u(a.in_stride).u(a.gate_off).u(a.up_off).u(a.out_stride).u(a.out_off).u(0);
    rec.dispatch(&key, params.bytes()?, &[(1, a.input), (2, a.out)], groups)
}

/// SiLU in f64: `x * sigmoid(x)`.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// PyTorch `gelu(approximate='tanh')` in f64.
pub fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// CPU reference with the same layout arguments.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    act: Activation,
    t: u32,
    i: u32,
    input: &[f32],
    in_stride: u32,
    gate_off: u32,
    up_off: u32,
    out: &mut [f32],
    out_stride: u32,
    out_off: u32,
) {
    for r in 0..t as usize {
        for c in 0..i as usize {
            let g = f64::from(input[r * in_stride as usize + gate_off as usize + c]);
            let u = f64::from(input[r * in_stride as usize + up_off as usize + c]);
            let a = match act {
                Activation::Silu => silu(g),
                Activation::GeluTanh => gelu_tanh(g),
            };
            out[r * out_stride as usize + out_off as usize + c] = (a * u) as f32;
        }
    }
}

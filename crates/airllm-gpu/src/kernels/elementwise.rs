//! Element-wise kernels over `[rows, cols]` views of f32 buffers (row `r`
//! starts at `r * stride + off`): [`add`] (residual, `x += y`), [`bias_add`]
//! (`y[r, :] += b`), [`scale`] (`x *= s`) and [`softcap`] (`x = cap * tanh(x / cap)`). Copies of whole rows need no
//! kernel: use `copy_buffer_to_buffer` on [`Recorder::encoder`].

use crate::error::Result;
use crate::kernels::{Params, ensure, groups_for};
use crate::pipeline::PipelineKey;
use crate::pool::BufView;
use crate::recorder::Recorder;

/// A `[rows, cols]` window of an f32 buffer.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    /// The buffer.
    pub view: BufView<'a>,
    /// f32 values between rows.
    pub stride: u32,
    /// Column of the first value.
    pub off: u32,
}

impl<'a> Mat<'a> {
    /// Contiguous rows of `cols` values.
    pub fn contiguous(view: BufView<'a>, cols: u32) -> Self {
        Mat { view, stride: cols, off: 0 }
    }

    fn check(&self, op: &'static str, arg: &'static str, rows: u32, cols: u32) -> Result<()> {
        ensure(u64::from(self.off) + u64::from(cols) <= u64::from(self.stride), op, arg, || {
            format!("off {} + cols {cols} exceeds stride {}", self.off, self.stride)
        })?;
        if rows > 0 {
            self.view.need_f32(
                op,
                arg,
                u64::from(rows - 1) * u64::from(self.stride) + u64::from(self.off) + u64::from(cols),
            )?;
        }
        Ok(())
    }
}

/// Residual add: `x[r, c] += y[r, c]` (x and y in different buffers).
pub fn add(rec: &mut Recorder<'_>, rows: u32, cols: u32, x: Mat<'_>, y: Mat<'_>) -> Result<()> {
    x.check("add", "x", rows, cols)?;
    y.check("add", "y", rows, cols)?;
    ensure(x.view.buffer != y.view.buffer, "add", "y", || "x and y must be different buffers".into())?;
    let key = PipelineKey::Add;
    let groups = groups_for(rec.ctx(), u64::from(rows) * u64::from(cols), key.workgroup_size())?;
    let p = Params::default().u(rows).u(cols).u(x.stride).u(x.off).u(y.stride).u(y.off).u(0).u(0);
    rec.dispatch(&key, p.bytes()?, &[(1, x.view), (2, y.view)], groups)
}

/// Bias add: `y[r, c] += b[c]`.
pub fn bias_add(rec: &mut Recorder<'_>, rows: u32, cols: u32, y: Mat<'_>, b: BufView<'_>) -> Result<()> {
    y.check("bias_add", "y", rows, cols)?;
    b.need_f32("bias_add", "b", u64::from(cols))?;
    ensure(y.view.buffer != b.buffer, "bias_add", "b", || "y and b must be different buffers".into())?;
    let key = PipelineKey::BiasAdd;
    let groups = groups_for(rec.ctx(), u64::from(rows) * u64::from(cols), key.workgroup_size())?;
    let p = Params::default().u(rows).u(cols).u(y.stride).u(y.off);
    rec.dispatch(&key, p.bytes()?, &[(1, y.view), (2, b)], groups)
}

/// Scale in place: `x[r, c] *= s`.
pub fn scale(rec: &mut Recorder<'_>, rows: u32, cols: u32, x: Mat<'_>, s: f32) -> Result<()> {
    x.check("scale", "x", rows, cols)?;
    let key = PipelineKey::Scale;
    let groups = groups_for(rec.ctx(), u64::from(rows) * u64::from(cols), key.workgroup_size())?;
    let p = Params::default().u(rows).u(cols).u(x.stride).u(x.off).f(s).u(0).u(0).u(0);
    rec.dispatch(&key, p.bytes()?, &[(1, x.view)], groups)
}

/// Soft-cap in place: `x[r, c] = cap * tanh(x[r, c] / cap)` (Gemma 2's
/// final logits).
pub fn softcap(rec: &mut Recorder<'_>, rows: u32, cols: u32, x: Mat<'_>, cap: f32) -> Result<()> {
    x.check("softcap", "x", rows, cols)?;
    ensure(cap.is_finite() && cap > 0.0, "softcap", "cap", || format!("{cap} must be a positive number"))?;
    let key = PipelineKey::Softcap;
    let groups = groups_for(rec.ctx(), u64::from(rows) * u64::from(cols), key.workgroup_size())?;
    let p = Params::default().u(rows).u(cols).u(x.stride).u(x.off).f(cap).u(0).u(0).u(0);
    rec.dispatch(&key, p.bytes()?, &[(1, x.view)], groups)
}

/// CPU references, on plain slices with the same (stride, off) layouts.
pub mod reference {
    /// `x[r, c] += y[r, c]`.
    #[allow(clippy::too_many_arguments)]
    pub fn add(rows: u32, cols: u32, x: &mut [f32], xs: u32, xo: u32, y: &[f32], ys: u32, yo: u32) {
        for r in 0..rows as usize {
            for c in 0..cols as usize {
                x[r * xs as usize + xo as usize + c] += y[r * ys as usize + yo as usize + c];
            }
        }
    }

    /// `y[r, c] += b[c]`.
    pub fn bias_add(rows: u32, cols: u32, y: &mut [f32], ys: u32, yo: u32, b: &[f32]) {
        for r in 0..rows as usize {
            for c in 0..cols as usize {
                y[r * ys as usize + yo as usize + c] += b[c];
            }
        }
    }

    /// `x[r, c] = cap * tanh(x[r, c] / cap)` (tanh in f64).
    pub fn softcap(rows: u32, cols: u32, x: &mut [f32], xs: u32, xo: u32, cap: f32) {
        for r in 0..rows as usize {
            for c in 0..cols as usize {
                let v = &mut x[r * xs as usize + xo as usize + c];
                *v = (f64::from(cap) * (f64::from(*v) / f64::from(cap)).tanh()) as f32;
            }
        }
    }

    /// `x[r, c] *= s`.
    pub fn scale(rows: u32, cols: u32, x: &mut [f32], xs: u32, xo: u32, s: f32) {
        for r in 0..rows as usize {
            for c in 0..cols as usize {
                x[r * xs as usize + xo as usize + c] *= s;
            }
        }
    }
}

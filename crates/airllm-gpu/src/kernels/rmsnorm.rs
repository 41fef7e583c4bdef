//! RMSNorm (`shaders/rmsnorm.wgsl`), as transformers computes it in f32:
//! `y = x / sqrt(mean(x²) + eps) * w`, or Gemma's `* (1 + w)`.
//!
//! Rows are addressed through a `[rows / heads, heads, d]` view: row `r` starts
//! at `(r / heads) * stride + off + (r % heads) * d`. With `heads = 1` this is
//! the hidden-state norm; with `heads = H` over the q (or k) columns of a
//! fused qkv buffer it is the per-head q/k norm (weight of `head_dim`).

use crate::error::Result;
use crate::kernels::{Params, WeightFormat, ensure, rebase, u32_arg};
use crate::pipeline::PipelineKey;
use crate::pool::BufView;
use crate::recorder::{Recorder, grid};

/// Row layout of a norm input or output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowView {
    /// Values per row (`d`).
    pub d: u32,
    /// Rows per "token row" (1, or the number of heads).
    pub heads: u32,
    /// f32 values between token rows.
    pub stride: u32,
    /// Column of the first row's first value in a token row.
    pub off: u32,
}

impl RowView {
    /// Contiguous rows of `d` values.
    pub fn contiguous(d: u32) -> Self {
        RowView { d, heads: 1, stride: d, off: 0 }
    }

    fn start(&self, r: usize) -> usize {
        (r / self.heads as usize) * self.stride as usize
            + self.off as usize
            + (r % self.heads as usize) * self.d as usize
    }
}

/// Arguments of an RMSNorm launch.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm<'a> {
    /// Rows to normalize (tokens x heads).
    pub rows: u32,
    /// Layout of x.
    pub x_rows: RowView,
    /// Input, f32.
    pub x: BufView<'a>,
    /// Output and its layout; `None` normalizes x in place.
    pub y: Option<(BufView<'a>, RowView)>,
    /// `[d]` weight.
    pub weight: BufView<'a>,
    /// Its format: F32, F16 or Bf16.
    pub weight_format: WeightFormat,
    /// Epsilon inside the square root.
    pub eps: f32,
    /// Gemma's `(1 + w)` scaling.
    pub gemma: bool,
}

const OP: &str = "rmsnorm";

fn need(v: &RowView, rows: u32) -> u64 {
    if rows == 0 {
        return 0;
    }
    let r = u64::from(rows - 1);
    let h = u64::from(v.heads.max(1));
    (r / h) * u64::from(v.stride) + u64::from(v.off) + (r % h) * u64::from(v.d) + u64::from(v.d)
}

/// The variant a launch uses on `caps`: the workgroup reduction
/// (`shaders/lib/reduce.wgsl`) takes subgroups whenever the device has them,
/// for any subgroup size.
pub(crate) fn key(caps: &crate::caps::Caps, weight: WeightFormat, gemma: bool, in_place: bool) -> PipelineKey {
    PipelineKey::RmsNorm { weight, gemma, in_place, subgroup: caps.subgroup }
}

/// Records the norm.
pub fn launch(rec: &mut Recorder<'_>, a: &RmsNorm<'_>) -> Result<()> {
    let d = a.x_rows.d;
    ensure(a.weight_format.is_dense(), OP, "weight_format", || {
        format!("{} norm weights are not supported", a.weight_format)
    })?;
    ensure(d > 0 && a.x_rows.heads > 0, OP, "x_rows", || format!("d and heads must be positive: {:?}", a.x_rows))?;
    let fits = |v: &RowView| u64::from(v.off) + u64::from(v.heads) * u64::from(v.d) <= u64::from(v.stride);
    // a single token row needs no stride
    ensure(a.rows <= a.x_rows.heads || fits(&a.x_rows), OP, "x_rows", || {
        format!("off + heads x d exceeds the stride: {:?}", a.x_rows)
    })?;
    a.x.need_f32(OP, "x", need(&a.x_rows, a.rows))?;
    let eb = a.weight_format.elem_bytes().unwrap_or(4);
    ensure(a.weight.offset.is_multiple_of(eb), OP, "weight", || {
        format!("offset {} not a multiple of {eb}", a.weight.offset)
    })?;
    ensure(a.weight.size >= u64::from(d) * eb, OP, "weight", || {
        format!("{} bytes for {d} {} values", a.weight.size, a.weight_format)
    })?;
    if let Some((y, yr)) = &a.y {
        ensure(yr.d == d && yr.heads == a.x_rows.heads, OP, "y", || {
            format!("layout {yr:?} does not match x {:?}", a.x_rows)
        })?;
        ensure(a.rows <= yr.heads || fits(yr), OP, "y", || format!("off + heads x d exceeds the stride: {yr:?}"))?;
        y.need_f32(OP, "y", need(yr, a.rows))?;
        ensure(y.buffer != a.x.buffer, OP, "y", || {
            "x and y must be different buffers (use y: None for in place)".into()
        })?;
    }
    let out = a.y.map_or(a.x.buffer, |(y, _)| y.buffer);
    ensure(a.weight.buffer != out, OP, "weight", || "the weight must be in a different buffer from the output".into())?;
    let ctx = rec.ctx();
    let key = key(ctx.caps(), a.weight_format, a.gemma, a.y.is_none());
    let w = rebase(ctx, BufView::new(a.weight.buffer, a.weight.offset, u64::from(d) * eb));
    let (yr, ybind) = match a.y {
        Some((y, yr)) => (yr, Some(y)),
        None => (a.x_rows, None),
    };
    let params = Params::default()
        .u(a.rows)
        .u(d)
        .u(a.x_rows.heads)
        .u(a.x_rows.stride)
        .u(a.x_rows.off)
        .u(yr.stride)
        .u(yr.off)
        .u(u32_arg(OP, "weight", w.skip / eb)?)
        .f(a.eps)
        .u(0)
        .u(0)
        .u(0);
    let groups = grid(ctx, u64::from(a.rows))?;
    match ybind {
        Some(y) => rec.dispatch(&key, params.bytes()?, &[(1, w.view), (2, a.x), (3, y)], groups),
        None => rec.dispatch(&key, params.bytes()?, &[(1, w.view), (2, a.x)], groups),
    }
}

/// CPU reference (f64 sums): normalizes `rows` rows of `x` into `y` (which
/// may be a copy of x for the in-place form), weight already decoded to f32.
#[allow(clippy::too_many_arguments)]
pub fn reference(rows: u32, xr: &RowView, x: &[f32], yr: &RowView, y: &mut [f32], w: &[f32], eps: f32, gemma: bool) {
    let d = xr.d as usize;
    for r in 0..rows as usize {
        let xs = &x[xr.start(r)..xr.start(r) + d];
        let ms: f64 = xs.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + f64::from(eps)).sqrt();
        let ys = yr.start(r);
        for i in 0..d {
            let g = if gemma { 1.0 + f64::from(w[i]) } else { f64::from(w[i]) };
            y[ys + i] = (f64::from(xs[i]) * inv * g) as f32;
        }
    }
}

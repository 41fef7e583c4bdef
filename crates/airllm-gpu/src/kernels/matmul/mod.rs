//! `y[T, N] (+)= x[T, K] · W[N, K]ᵀ (+ bias[N])` for every [`WeightFormat`].
//!
//! W is row-major `[out, in]` like a PyTorch Linear weight; x, y and bias are
//! f32. [`launch`] picks the kernel by T: [`gemv`] (1-8 tokens, weights read
//! once for all tokens) or [`gemm`] (prefill, shared-memory tiles). A weight
//! tensor larger than the adapter's largest storage binding is split by rows
//! over several dispatches (each binding starts at an aligned offset at or
//! before its first row; the remainder is passed to the kernel).

pub mod gemm;
pub mod gemv;

use half::{bf16, f16};

use crate::caps::Caps;
use crate::error::{GpuError, Result};
use crate::kernels::{WeightFormat, ensure, rebase, u32_arg};
use crate::pool::BufView;
use crate::recorder::Recorder;

/// Largest T the GEMV kernel serves; above it [`launch`] uses the GEMM.
pub const GEMV_MAX_TOKENS: u32 = 8;

/// Shape and layout of one matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    /// Tokens (rows of x and y).
    pub t: u32,
    /// Output features (rows of W).
    pub n: u32,
    /// Input features (columns of W, before block padding).
    pub k: u32,
    /// f32 values between token rows of x (>= k).
    pub x_stride: u32,
    /// f32 values between token rows of y.
    pub y_stride: u32,
    /// First column of y written (so q, k and v can share one buffer).
    pub y_off: u32,
    /// `y += x · Wᵀ` instead of `y = x · Wᵀ` (fuses the residual add).
    pub accumulate: bool,
}

impl MatmulShape {
    /// Contiguous x and y (`x_stride = k`, `y_stride = n`, `y_off = 0`), overwrite.
    pub fn new(t: u32, n: u32, k: u32) -> Self {
        MatmulShape { t, n, k, x_stride: k, y_stride: n, y_off: 0, accumulate: false }
    }
}

/// Arguments of a matmul launch.
#[derive(Clone, Copy, Debug)]
pub struct Matmul<'a> {
    /// Shape and layout.
    pub shape: MatmulShape,
    /// Weight storage format.
    pub format: WeightFormat,
    /// `[n, k]` weights, row r at byte `r * format.row_bytes(k)` of the view.
    pub weight: BufView<'a>,
    /// `[t, x_stride]` f32 activations.
    pub x: BufView<'a>,
    /// `[t, y_stride]` f32 output (a different buffer from x).
    pub y: BufView<'a>,
    /// Optional `[n]` f32 bias.
    pub bias: Option<BufView<'a>>,
}

const OP: &str = "matmul";

/// Records the matmul (GEMV for t <= 8, GEMM above), split by rows when the
/// weights exceed the largest binding.
pub fn launch(rec: &mut Recorder<'_>, m: &Matmul<'_>) -> Result<()> {
    let s = m.shape;
    check(rec, m)?;
    let row_bytes = m.format.row_bytes(u64::from(s.k));
    let splits = row_splits(rec.ctx().caps(), m.format, s.n, s.k)?;
    let wide = m.format.is_dense() && row_bytes.is_multiple_of(16) && m.weight.offset.is_multiple_of(16);
    // vec4 activations: rows 16-byte aligned, and the binding rounded up to
    // whole vec4s (a partial last vec4 would be out of bounds)
    let x16 = m.x.size.div_ceil(16) * 16;
    let x_vec4 = s.x_stride.is_multiple_of(4) && m.x.offset + x16 <= m.x.buffer.size();
    let x = if x_vec4 { BufView::new(m.x.buffer, m.x.offset, x16) } else { m.x };
    for (r0, rows) in splits {
        let part = m.weight.slice(u64::from(r0) * row_bytes, u64::from(rows) * row_bytes)?;
        let rb = rebase(rec.ctx(), part);
        let split = Split {
            weight: rb.view,
            w_off: u32_arg(OP, "weight", rb.skip)?,
            row0: r0,
            rows,
            row_bytes: u32_arg(OP, "k", row_bytes)?,
            wide,
            x,
            x_vec4,
        };
        if s.t <= GEMV_MAX_TOKENS {
            gemv::dispatch(rec, m, &split)?;
        } else {
            gemm::dispatch(rec, m, &split)?;
        }
    }
    Ok(())
}

/// The row ranges `(first row, rows)` a `[n, k]` weight of `format` is
/// split into so that each fits one storage binding of `caps` (one range
/// when it fits). Each binding starts at an aligned offset at or before its
/// first row, so a range may use up to the alignment less than the maximum.
pub fn row_splits(caps: &Caps, format: WeightFormat, n: u32, k: u32) -> Result<Vec<(u32, u32)>> {
    let row_bytes = format.row_bytes(u64::from(k));
    let align = caps.storage_align.max(256);
    // the kernels address a binding with u32 byte offsets
    let max_bind = caps.max_binding.min(1 << 31);
    let rows_per = (max_bind.saturating_sub(align) / row_bytes.max(1)).min(u64::from(n)) as u32;
    if rows_per == 0 {
        return Err(GpuError::arg(
            OP,
            "weight",
            format!("one row is {row_bytes} bytes, more than the adapter's largest binding ({max_bind} bytes)"),
        ));
    }
    Ok((0..n.div_ceil(rows_per)).map(|i| (i * rows_per, rows_per.min(n - i * rows_per))).collect())
}

/// One row range of the weights, as bound.
pub(crate) struct Split<'a> {
    pub weight: BufView<'a>,
    pub w_off: u32,
    pub row0: u32,
    pub rows: u32,
    pub row_bytes: u32,
    pub wide: bool,
    pub x: BufView<'a>,
    pub x_vec4: bool,
}

impl Split<'_> {
    /// The kernel parameters shared by GEMV and GEMM.
    pub(crate) fn params(&self, m: &Matmul<'_>) -> crate::kernels::Params {
        let s = m.shape;
        let chunks = m.format.padded_cols(u64::from(s.k)).div_ceil(8) as u32;
        let flags = u32::from(s.accumulate) | (u32::from(m.bias.is_some()) << 1);
        crate::kernels::Params::default()
            .u(s.t)
            .u(self.rows)
            .u(s.k)
            .u(s.x_stride)
            .u(s.y_stride)
            .u(s.y_off)
            .u(self.row_bytes)
            .u(self.w_off)
            .u(self.row0)
            .u(flags)
            .u(chunks)
            .u(0)
    }
}

fn check(rec: &Recorder<'_>, m: &Matmul<'_>) -> Result<()> {
    let s = m.shape;
    ensure(s.t > 0 && s.n > 0 && s.k > 0, OP, "shape", || format!("t, n, k must be positive: {s:?}"))?;
    ensure(s.x_stride >= s.k, OP, "x_stride", || format!("{} < k = {}", s.x_stride, s.k))?;
    ensure(u64::from(s.y_off) + u64::from(s.n) <= u64::from(s.y_stride), OP, "y_stride", || {
        format!("y_off {} + n {} exceeds y_stride {}", s.y_off, s.n, s.y_stride)
    })?;
    let t1 = u64::from(s.t - 1);
    m.x.need_f32(OP, "x", t1 * u64::from(s.x_stride) + u64::from(s.k))?;
    m.y.need_f32(OP, "y", t1 * u64::from(s.y_stride) + u64::from(s.y_off) + u64::from(s.n))?;
    if let Some(b) = m.bias {
        b.need_f32(OP, "bias", u64::from(s.n))?;
    }
    m.weight.check(OP, "weight")?;
    let need = u64::from(s.n) * m.format.row_bytes(u64::from(s.k));
    ensure(m.weight.size >= need, OP, "weight", || {
        format!("{} weights of [{}, {}] need {need} bytes, the view has {}", m.format, s.n, s.k, m.weight.size)
    })?;
    ensure(m.weight.offset.is_multiple_of(m.format.offset_align()), OP, "weight", || {
        format!("offset {} is not a multiple of {} ({})", m.weight.offset, m.format.offset_align(), m.format)
    })?;
    let y = m.y.buffer;
    ensure(m.x.buffer != y && m.weight.buffer != y && m.bias.is_none_or(|b| b.buffer != y), OP, "y", || {
        "y must be a different buffer from x, weight and bias".to_string()
    })?;
    for (arg, v) in [("x", m.x), ("y", m.y)] {
        let a = rec.ctx().caps().storage_align;
        ensure(v.offset % a == 0, OP, arg, || format!("offset {} is not a multiple of {a}", v.offset))?;
    }
    Ok(())
}

/// Decodes weights stored as `format` into f32 `[n, k]` on the CPU: the
/// reference the kernels are tested against (quantized formats through
/// `airllm_quant`).
pub fn decode_weights(format: WeightFormat, bytes: &[u8], n: usize, k: usize) -> Result<Vec<f32>> {
    let bad = |reason: String| GpuError::arg("decode_weights", "bytes", reason);
    match format {
        WeightFormat::Quant(codec) => codec.decode_matrix(bytes, n, k).map_err(|e| bad(e.to_string())),
        _ => {
            let eb = format.elem_bytes().unwrap_or(4) as usize;
            if bytes.len() < n * k * eb {
                return Err(bad(format!("{} bytes for [{n}, {k}] {format}", bytes.len())));
            }
            let b = &bytes[..n * k * eb];
            Ok(match format {
                WeightFormat::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                WeightFormat::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                _ => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            })
        }
    }
}

/// Encodes f32 `[n, k]` weights as `format` (dense: rounding to nearest;
/// quantized: through `airllm_quant`). For tests and benches.
pub fn encode_weights(format: WeightFormat, w: &[f32], n: usize, k: usize) -> Result<Vec<u8>> {
    match format {
        WeightFormat::F32 => Ok(w.iter().flat_map(|v| v.to_le_bytes()).collect()),
        WeightFormat::F16 => Ok(w.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
        WeightFormat::Bf16 => Ok(w.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()),
        WeightFormat::Quant(codec) => codec
            .encode_matrix(airllm_quant::Floats::F32(w), n, k)
            .map_err(|e| GpuError::arg("encode_weights", "w", e.to_string())),
    }
}

/// CPU reference: `y[t, y_off + n] (+)= Σ_k x[t, k] · w[n, k] (+ bias[n])`
/// with `w` already decoded to f32 `[n, k]`; sums in f64.
pub fn reference(s: &MatmulShape, w: &[f32], x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (k, xs, ys) = (s.k as usize, s.x_stride as usize, s.y_stride as usize);
    for t in 0..s.t as usize {
        let xr = &x[t * xs..t * xs + k];
        for n in 0..s.n as usize {
            let wr = &w[n * k..(n + 1) * k];
            let mut acc: f64 = xr.iter().zip(wr).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            if let Some(b) = bias {
                acc += f64::from(b[n]);
            }
            let yi = t * ys + s.y_off as usize + n;
            y[yi] = if s.accumulate { (f64::from(y[yi]) + acc) as f32 } else { acc as f32 };
        }
    }
}

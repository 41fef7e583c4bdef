//! Rotary position embedding (`shaders/rope.wgsl`), in place.
//!
//! Acts on a `[rows, heads, head_dim]` view: head `h` of row `r` starts at
//! `r * stride + off + h * head_dim` (the q or k columns of a fused qkv
//! buffer). Row `r` has position `pos[r]` (u32; with left padding the facade
//! passes `slot - first_valid`). `inv_freq` holds `rotary_dim / 2` host-computed
//! inverse frequencies (already scaled for llama3, linear, ...). Only the first
//! `rotary_dim` values of each head rotate. Angle `f32(pos) * inv_freq[i]` in
//! f32, then sin/cos accurate to ~2e-7 (the kernel reduces the angle itself),
//! times `mscale`.

use crate::error::Result;
use crate::kernels::{Params, ensure, groups_for};
use crate::pipeline::PipelineKey;
use crate::pool::BufView;
use crate::recorder::Recorder;

/// Which values pair up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// HF `rotate_half`: `(i, i + rotary_dim / 2)`.
    Half,
    /// Adjacent pairs `(2i, 2i + 1)` (GLM, ggml).
    Interleaved,
}

/// Arguments of a RoPE launch.
#[derive(Clone, Copy, Debug)]
pub struct Rope<'a> {
    /// The `[rows, stride]` f32 buffer rotated in place.
    pub x: BufView<'a>,
    /// Token rows.
    pub rows: u32,
    /// Heads per row.
    pub heads: u32,
    /// Values per head.
    pub head_dim: u32,
    /// Leading values of each head that rotate (even, <= head_dim).
    pub rotary_dim: u32,
    /// f32 values between rows.
    pub stride: u32,
    /// Column of head 0.
    pub off: u32,
    /// `[rows]` u32 positions.
    pub pos: BufView<'a>,
    /// `[rotary_dim / 2]` f32 inverse frequencies.
    pub inv_freq: BufView<'a>,
    /// Pairing.
    pub style: RopeStyle,
    /// Factor on cos and sin (1.0 unless the scaling scheme has one).
    pub mscale: f32,
}

const OP: &str = "rope";

/// Records the rotation.
pub fn launch(rec: &mut Recorder<'_>, a: &Rope<'_>) -> Result<()> {
    ensure(
        a.rotary_dim >= 2 && a.rotary_dim.is_multiple_of(2) && a.rotary_dim <= a.head_dim,
        OP,
        "rotary_dim",
        || format!("{} must be even, >= 2 and <= head_dim {}", a.rotary_dim, a.head_dim),
    )?;
    ensure(u64::from(a.off) + u64::from(a.heads) * u64::from(a.head_dim) <= u64::from(a.stride), OP, "stride", || {
        format!("off {} + heads {} x head_dim {} exceeds stride {}", a.off, a.heads, a.head_dim, a.stride)
    })?;
    if a.rows == 0 || a.heads == 0 {
        return Ok(());
    }
    a.x.need_f32(OP, "x", u64::from(a.rows) * u64::from(a.stride))?;
    a.pos.need_f32(OP, "pos", u64::from(a.rows))?;
    a.inv_freq.need_f32(OP, "inv_freq", u64::from(a.rotary_dim / 2))?;
    ensure(a.x.buffer != a.pos.buffer && a.x.buffer != a.inv_freq.buffer, OP, "x", || {
        "x must be a different buffer from pos and inv_freq".into()
    })?;
    let key = PipelineKey::Rope { interleaved: a.style == RopeStyle::Interleaved };
    let half = a.rotary_dim / 2;
    let threads = u64::from(a.rows) * u64::from(a.heads) * u64::from(half);
    let groups = groups_for(rec.ctx(), threads, key.workgroup_size())?;
    let params = Params::default().u(a.rows).u(a.heads).u(a.head_dim).u(half).u(a.stride).u(a.off).f(a.mscale).u(0);
    rec.dispatch(&key, params.bytes()?, &[(1, a.x), (2, a.pos), (3, a.inv_freq)], groups)
}

/// CPU reference on the same view (cos/sin in f64 of the f32 angle).
#[allow(clippy::too_many_arguments)]
pub fn reference(
    x: &mut [f32],
    rows: u32,
    heads: u32,
    head_dim: u32,
    rotary_dim: u32,
    stride: u32,
    off: u32,
    pos: &[u32],
    inv_freq: &[f32],
    style: RopeStyle,
    mscale: f32,
) {
    let half = (rotary_dim / 2) as usize;
    for (r, &p) in pos.iter().enumerate().take(rows as usize) {
        for h in 0..heads as usize {
            let base = r * stride as usize + off as usize + h * head_dim as usize;
            for (i, &f) in inv_freq.iter().enumerate().take(half) {
                let angle = f64::from(p as f32 * f);
                let (s, c) = angle.sin_cos();
                let (s, c) = (s * f64::from(mscale), c * f64::from(mscale));
                let (ia, ib) = match style {
                    RopeStyle::Half => (base + i, base + i + half),
                    RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                };
                let (a, b) = (f64::from(x[ia]), f64::from(x[ib]));
                x[ia] = (a * c - b * s) as f32;
                x[ib] = (b * c + a * s) as f32;
            }
        }
    }
}

/// Standard inverse frequencies `1 / base^(2i / rotary_dim)` (unscaled), in
/// f32 as transformers computes them.
pub fn default_inv_freq(base: f32, rotary_dim: u32) -> Vec<f32> {
    (0..rotary_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / rotary_dim as f32)).collect()
}

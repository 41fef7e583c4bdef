//! What the K-quant codecs (`q4_k`, `q5_k`, `q6_k`) share: ggml's rounding,
//! its two sub-block scale searches (`make_qkx2_quants` for the affine
//! `q4_k`/`q5_k` sub-blocks, `make_qx_quants` for the symmetric `q6_k` ones),
//! each with a guard on the largest error, and the packing of the 6-bit
//! (scale, min) pairs of `q4_k`/`q5_k`.
//!
//! The searches are written from ggml's `ggml-quants.c` with the same f32
//! operations in the same order, so that, where the guard does not step in,
//! the codes and scales are the ones ggml's reference quantizer picks.
//!
//! **The guard.** ggml's searches minimise a weighted squared error, which
//! on unusual blocks can leave single values far from the grid (a value
//! with a small weight clipped by a fitted range). Every search here checks
//! the largest error of the candidate it ends with against one step of the
//! plain grid (`(max - min) / nmax` for the affine sub-blocks, `amax / 32`
//! for the symmetric ones) and, when it is larger, or when the fitted scale
//! is negative, falls back to that plain grid (the search's own starting
//! point). That caps every sub-block's error before scale quantization at
//! one plain step, which the documented bounds build on.

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// ggml's `GROUP_MAX_EPS`: sub-blocks with a smaller largest magnitude are zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even via the 1.5 * 2^23 trick (exact
/// for |v| <= 4194303); larger magnitudes, infinities included, saturate to
/// +-4194303 (callers clamp to their code range). Branch-free, so the
/// searches' loops vectorise. Never called with NaN: every caller's operands
/// are finite or a finite value over a non-zero one.
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 {
    debug_assert!(!v.is_nan());
    let v = v.clamp(-4_194_303.0, 4_194_303.0);
    let t = v + 12_582_912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// One affine sub-block grid, `value = scale * code - min`, before its scale
/// and minimum are quantized.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Affine {
    /// Step of the grid (>= 0).
    pub scale: f32,
    /// Offset subtracted (>= 0: the grid starts at or below zero).
    pub min: f32,
    /// Guaranteed largest `|x - (scale * code - min)|` of this candidate.
    pub cap: f32,
}

/// ggml's `make_qkx2_quants` (`use_mad = false`) with the guard: codes in
/// `0..=nmax` into `l`, weights `w`, search `rmin + rdelta * is`, `is` in
/// `0..=nstep`. `laux` is scratch of `x.len()` bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    x: &[f32],
    w: &[f32],
    nmax: u8,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    l: &mut [u8],
    laux: &mut [u8],
) -> Affine {
    let n = x.len();
    // equal lengths up front, so the loops below carry no bounds checks
    let (w, l, laux) = (&w[..n], &mut l[..n], &mut laux[..n]);
    let top = i32::from(nmax);
    let nmaxf = f32::from(nmax);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let wi = w[i];
        sum_w += wi;
        sum_x += wi * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return Affine { scale: 0.0, min: -min, cap: 0.0 };
    }
    let (min0, range0) = (min, max - min);
    let iscale0 = nmaxf / range0;
    if !iscale0.is_finite() {
        // A range too small for f32 to invert: a constant grid at `min`.
        l.fill(0);
        return Affine { scale: 0.0, min: -min, cap: range0 };
    }
    let scale0 = 1.0 / iscale0;
    let mut scale = scale0;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let li = nearest_int(iscale0 * (x[i] - min)).clamp(0, top);
        l[i] = li as u8;
        let diff = scale * li as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    for is in 0..=nstep {
        // ggml divides by the current (possibly refitted) range.
        let iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, top);
            laux[i] = li as u8;
            let (lf, wi) = (li as f32, w[i]);
            sum_l += wi * lf;
            sum_l2 += wi * lf * lf;
            sum_xl += wi * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += w[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    let worst = (0..n).fold(0.0f32, |m, i| m.max((scale * f32::from(l[i]) + min - x[i]).abs()));
    // `!(a <= b)` also catches NaN from a degenerate fit.
    if !(scale >= 0.0 && worst <= scale0) {
        for i in 0..n {
            l[i] = nearest_int(iscale0 * (x[i] - min0)).clamp(0, top) as u8;
        }
        scale = scale0;
        min = min0;
    }
    Affine { scale, min: -min, cap: scale0 }
}

/// One symmetric sub-block grid, `value = scale * (code - nmax)`, before its
/// scale is quantized.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Symmetric {
    /// Step (signed, like ggml's).
    pub scale: f32,
    /// Guaranteed largest `|x - scale * (code - nmax)|` of this candidate.
    pub cap: f32,
}

/// ggml's `make_qx_quants` with `rmse_type = 1` (weights `x^2`) and no
/// importance weights, plus the guard: codes `l + nmax` in `0..2 nmax` into
/// `l`, `l` in `-nmax..nmax`.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> Symmetric {
    let n = x.len();
    let l = &mut l[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return Symmetric { scale: 0.0, cap: amax };
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let iscale0 = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let li = code(iscale0, x[i]);
        l[i] = (li + nmax) as u8;
        let (lf, w) = (li as f32, x[i] * x[i]);
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let (lf, w) = (code(iscale, v) as f32, v * v);
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = (code(iscale, x[i]) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    let step0 = amax / nmax as f32;
    let worst = (0..n).fold(0.0f32, |m, i| m.max((scale * (i32::from(l[i]) - nmax) as f32 - x[i]).abs()));
    if worst.is_nan() || worst > step0 {
        for i in 0..n {
            l[i] = (code(iscale0, x[i]) + nmax) as u8;
        }
        scale = 1.0 / iscale0;
    }
    Symmetric { scale, cap: step0 }
}

/// The 6-bit (scale, min) pair `j` (0..8) of a `q4_k` / `q5_k` super-block
/// (ggml's `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Packs eight 6-bit scales and mins into the 12 bytes [`scale_min_k4`] reads.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], q: &mut [u8]) {
    q[..12].fill(0);
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// A `q4_k` / `q5_k` super-block as the encoder plans it: per sub-block of
/// 32 the searched grid, then the 6-bit quantized scales and mins and the
/// two f16 super-block factors.
pub(crate) struct AffinePlan {
    pub sub: [Affine; 8],
    /// Codes from the search (kept where a quantized scale is zero, as ggml does).
    pub l: [u8; QK_K],
    pub ls: [u8; 8],
    pub lm: [u8; 8],
    /// f16 bits and value of `d` and `dmin`.
    pub d: ([u8; 2], f32),
    pub dmin: ([u8; 2], f32),
}

/// Plans a super-block the way ggml's `quantize_row_q4_K_ref` /
/// `quantize_row_q5_K_ref` do: weights `av_x + |x|` per sub-block, the
/// search, scales and mins quantized to 6 bits against their maxima.
/// `Err` when `d` or `dmin` overflows f16.
pub(crate) fn plan_affine(
    x: &[f32],
    nmax: u8,
    rmin: f32,
    nstep: i32,
) -> Result<AffinePlan, crate::codec::ScaleOverflow> {
    let mut sub = [Affine::default(); 8];
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut w = [0.0f32; 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, s) in sub.iter_mut().enumerate() {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (wi, &v) in w.iter_mut().zip(xs) {
            *wi = av_x + v.abs();
        }
        *s = make_qkx2_quants(xs, &w, nmax, rmin, 0.1, nstep, &mut l[32 * j..32 * j + 32], &mut laux);
        if s.scale > max_scale {
            max_scale = s.scale;
        }
        if s.min > max_min {
            max_min = s.min;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = nearest_int(inv_scale * sub[j].scale).clamp(0, 63) as u8;
        lm[j] = nearest_int(inv_min * sub[j].min).clamp(0, 63) as u8;
    }
    let d = crate::codec::to_f16(max_scale / 63.0)?;
    let dmin = crate::codec::to_f16(max_min / 63.0)?;
    Ok(AffinePlan { sub, l, ls, lm, d, dmin })
}

impl AffinePlan {
    /// Final codes (0..=nmax) of `x` on the quantized grids (ggml's last pass).
    pub(crate) fn codes(&self, x: &[f32], nmax: u8) -> [u8; QK_K] {
        let mut l = self.l;
        for j in 0..8 {
            let d = self.d.1 * f32::from(self.ls[j]);
            if d == 0.0 {
                continue;
            }
            let dm = self.dmin.1 * f32::from(self.lm[j]);
            for ii in 0..32 {
                let i = 32 * j + ii;
                l[i] = nearest_int((x[i] + dm) / d).clamp(0, i32::from(nmax)) as u8;
            }
        }
        l
    }

    /// The documented error bound of the super-block (see the crate docs):
    /// per sub-block `cap + nmax |d ls - scale| + |dmin lm - min|`, plus f32 slack.
    pub(crate) fn error_bound(&self, x: &[f32], nmax: u8) -> f32 {
        let amax = crate::codec::max_abs(x);
        let n = f32::from(nmax);
        let mut bound = 0.0f32;
        for (j, s) in self.sub.iter().enumerate() {
            let dq = self.d.1 * f32::from(self.ls[j]);
            let mq = self.dmin.1 * f32::from(self.lm[j]);
            let b = s.cap + n * (dq - s.scale).abs() + (mq - s.min).abs();
            bound = bound.max(b + (amax + mq + n * dq) * crate::codec::SLACK);
        }
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in [(0.5f32, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-3.51, -4), (7.0, 7)] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
        assert_eq!(nearest_int(f32::INFINITY), 4_194_303);
        assert_eq!(nearest_int(f32::NEG_INFINITY), -4_194_303);
        assert_eq!(nearest_int(1e30), 4_194_303);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    }

    #[test]
    fn scale_pairs_pack_and_unpack() {
        let ls = [1u8, 2, 3, 4, 40, 50, 60, 63];
        let lm = [0u8, 2, 4, 6, 33, 17, 48, 63];
        let mut q = [0u8; 12];
        pack_scale_min_k4(&ls, &lm, &mut q);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (ls[j], lm[j]), "pair {j}");
        }
    }

    #[test]
    fn searches_stay_within_one_plain_step() {
        // A spread-out block with an outlier: the guard's cap holds.
        let x: Vec<f32> =
            (0..32).map(|i| ((i * 7 % 32) as f32 - 15.5) * 0.01 + if i == 5 { 1.0 } else { 0.0 }).collect();
        let w: Vec<f32> = x.iter().map(|v| 0.1 + v.abs()).collect();
        let (mut l, mut aux) = ([0u8; 32], [0u8; 32]);
        let a = make_qkx2_quants(&x, &w, 15, -1.0, 0.1, 20, &mut l, &mut aux);
        for (i, &v) in x.iter().enumerate() {
            assert!((a.scale * f32::from(l[i]) - a.min - v).abs() <= a.cap, "{i}");
        }
        let s = make_qx_quants(&x[..16], 32, &mut l);
        for (i, &v) in x[..16].iter().enumerate() {
            assert!((s.scale * (i32::from(l[i]) - 32) as f32 - v).abs() <= s.cap, "{i}");
        }
    }
}

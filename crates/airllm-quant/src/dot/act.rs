//! Quantized activations, the other operand of the quantized kernels, in
//! the three layouts of [`Precision`](super::Precision):
//! - **exact**: two 16-bit terms per value, `x ≈ d (hi + lo / 16384)`,
//!   `d = amax / 32767`: the activations to `amax * 2^-30`, below f32's own
//!   rounding of any sum they enter;
//! - **precise**: one 16-bit term, `x ≈ d q`, `d = amax / 32767`;
//! - **fast**: one 8-bit term, `x ≈ d q`, `d = amax / 127` (ggml's `q8_0` /
//!   `q8_1` idea, our own layout).
//!
//! Each token row of `k` values is padded with zeros to `kp` (a multiple of
//! the weight codec's block) and cut into blocks of [`QK_ACT`]. For block `b`,
//! with `Q` the code range ([`Code::MAX`]: 127 or 32767):
//! `amax = max |x|`, `d = amax / Q`, `q = round_ties_even(x * (1 / d))`
//! (0 when `d == 0`) and `s = d * sum q` (what `q4_1`'s minimum
//! multiplies). `d` and `s` stay f32 (ggml rounds `d` to f16; we need not
//! match a byte layout here), so the only error is the rounding of `q`:
//! `|x - d q| <= d / 2` for every value, plus the f32 rounding of `x / d`
//! (at most `Q * 2^-23 d`: `(1 + 3e-5) d / 2` in all for 8 bits,
//! `(1 + 0.008) d / 2` for 16 bits). The two-term layout adds
//! `lo = round((x - d hi) * 16384 / d)`, the remainder computed with one
//! fused multiply-add, so `|x - d (hi + lo / 16384)| <= 1.01 d / 32768`;
//! its `s` is `d (sum hi + sum lo / 16384)`. A block holding NaN or infinity
//! gets `d = s = NaN` (and codes 0), so the outputs it feeds are NaN instead
//! of silently finite.
//!
//! Every SIMD level computes `d`, `1 / d` and the codes with the same f32
//! operations and ties-to-even rounding, so the quantized activations are
//! bit-identical across levels (the tests check it); only the f32 sums of the
//! kernels differ in order.

use std::ops::Range;

/// Values per activation block.
pub const QK_ACT: usize = 32;

/// The integer type of activation codes: `i8` (fast) or `i16` (precise).
pub(crate) trait Code: Copy + Default + Send + Sync + 'static {
    /// Largest code magnitude (the scale is `amax / MAX`).
    const MAX: f32;
    /// The code of a rounded value already within `[-MAX, MAX]`.
    fn from_i32(v: i32) -> Self;
    /// The code as an i32.
    fn to_i32(self) -> i32;
    /// This code type's buffer of the two in a [`Scratch`].
    fn pick<'a>(q8: &'a mut Vec<i8>, q16: &'a mut Vec<i16>) -> &'a mut Vec<Self>;
}

impl Code for i8 {
    const MAX: f32 = 127.0;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i8
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
    fn pick<'a>(q8: &'a mut Vec<i8>, _: &'a mut Vec<i16>) -> &'a mut Vec<Self> {
        q8
    }
}

impl Code for i16 {
    const MAX: f32 = 32767.0;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i16
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
    fn pick<'a>(_: &'a mut Vec<i8>, q16: &'a mut Vec<i16>) -> &'a mut Vec<Self> {
        q16
    }
}

/// The ratio of the two terms of [`Precision::Exact`](super::Precision)'s
/// codes: `x ≈ d (hi + lo / LO_RATIO)`. A power of two (exact in f32) large
/// enough that the two terms resolve `amax * 2^-30`, far below f32's own
/// rounding of the sums; `|lo| <= 0.504 LO_RATIO = 8257` fits i16.
pub(crate) const LO_RATIO: f32 = 16384.0;

/// The quantized activations of `t` token rows: codes, and `d` and `s` per
/// block (separate arrays, so kernels load 8 blocks' scales at once).
///
/// With `terms == 2` (i16 only) block `b` of a row holds 64 codes, the 32
/// high ones then the 32 low ones: `x_j ≈ d (hi_j + lo_j / LO_RATIO)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QAct<'a, C = i8> {
    /// `t * kp * terms` codes.
    pub q: &'a [C],
    /// `t * kp / 32` block scales `d`.
    pub d: &'a [f32],
    /// `t * kp / 32` block sums `s = sum x̂` (`d * sum q`, or `d * (sum hi +
    /// sum lo / LO_RATIO)`).
    pub s: &'a [f32],
    /// Padded row length (a multiple of 32).
    pub kp: usize,
    /// Codes per value: 1, or 2 (high and low terms).
    pub terms: usize,
}

impl<'a, C> QAct<'a, C> {
    /// Blocks per token row.
    #[inline]
    pub fn nb(&self) -> usize {
        self.kp / QK_ACT
    }

    /// Codes of token `t` (`kp * terms`).
    #[inline]
    pub fn q_row(&self, t: usize) -> &'a [C] {
        let n = self.kp * self.terms;
        &self.q[t * n..(t + 1) * n]
    }

    /// `d` of token `t`'s blocks.
    #[inline]
    pub fn d_row(&self, t: usize) -> &'a [f32] {
        let nb = self.nb();
        &self.d[t * nb..(t + 1) * nb]
    }

    /// `s` of token `t`'s blocks.
    #[inline]
    pub fn s_row(&self, t: usize) -> &'a [f32] {
        let nb = self.nb();
        &self.s[t * nb..(t + 1) * nb]
    }

    /// Checks that tokens `tokens` exist and that the layout has `terms`
    /// codes per value (kernels index without checks after it).
    #[inline]
    pub fn check(&self, tokens: Range<usize>, terms: usize) {
        let nb = self.nb();
        assert!(
            self.terms == terms
                && self.kp.is_multiple_of(QK_ACT)
                && self.q.len() >= tokens.end * self.kp * terms
                && self.d.len() >= tokens.end * nb
                && self.s.len() >= tokens.end * nb,
            "quantized activations hold fewer than {} token rows of {} x {} (want {terms})",
            tokens.end,
            self.kp,
            self.terms
        );
    }
}

/// One row's quantizer: `x` (`k` values, `k <= kp`) into `q` (`kp * terms`
/// codes), `d` and `s` (`kp / 32` each), padding quantized as zeros.
pub(crate) type QuantizeRow<C = i8> = fn(x: &[f32], q: &mut [C], d: &mut [f32], s: &mut [f32]);

/// The block scale and its inverse for codes up to `qmax`, as every level
/// computes them. A scale whose inverse overflows (`amax` below about
/// `qmax * 2^-128`) counts as zero, so such a block quantizes to zeros on
/// every level instead of to saturated codes.
#[inline(always)]
pub(crate) fn scale_of(amax: f32, qmax: f32) -> (f32, f32) {
    let d = amax / qmax;
    let id = 1.0 / d;
    if d != 0.0 && id.is_finite() { (d, id) } else { (0.0, 0.0) }
}

/// A row quantizer: every whole block through `simd` (32 readable floats,
/// `32 * terms` writable codes; `None`, nothing written, when a value is not
/// finite), the partial last block, the padding blocks and non-finite
/// blocks through the scalar `block`.
#[inline(always)]
pub(crate) fn quantize_row_by<C: Code>(
    x: &[f32],
    (q, d, s): (&mut [C], &mut [f32], &mut [f32]),
    terms: usize,
    simd: impl Fn(*const f32, *mut C) -> Option<[f32; 2]>,
    block: fn(&[f32], &mut [C]) -> [f32; 2],
) {
    check_row(x, q, d, s, terms);
    let n = QK_ACT * terms;
    let full = x.len() / QK_ACT;
    for b in 0..full {
        let (xb, qb) = (&x[b * QK_ACT..(b + 1) * QK_ACT], &mut q[b * n..(b + 1) * n]);
        [d[b], s[b]] = simd(xb.as_ptr(), qb.as_mut_ptr()).unwrap_or_else(|| block(xb, qb));
    }
    let mut buf = [0.0f32; QK_ACT];
    for b in full..d.len() {
        let start = (b * QK_ACT).min(x.len());
        let len = (x.len() - start).min(QK_ACT);
        buf[..len].copy_from_slice(&x[start..start + len]);
        buf[len..].fill(0.0);
        [d[b], s[b]] = block(&buf, &mut q[b * n..(b + 1) * n]);
    }
}

/// The portable one-term quantizer (the reference of the SIMD ones).
pub(crate) fn quantize_row_generic<C: Code>(x: &[f32], q: &mut [C], d: &mut [f32], s: &mut [f32]) {
    quantize_row_by(x, (q, d, s), 1, |_, _| None, quantize_block);
}

/// The portable two-term quantizer ([`Precision::Exact`](super::Precision)).
pub(crate) fn quantize_row2_generic(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    quantize_row_by(x, (q, d, s), 2, |_, _| None, quantize_block2);
}

/// Asserts the row sizes every quantizer needs.
#[inline]
pub(crate) fn check_row<C>(x: &[f32], q: &[C], d: &[f32], s: &[f32], terms: usize) {
    assert!(
        x.len() <= d.len() * QK_ACT && q.len() == d.len() * QK_ACT * terms && d.len() == s.len(),
        "activation row sizes"
    );
}

/// Quantizes one block of 32 (the scalar path, also used by the SIMD
/// quantizers for a partial last block and for non-finite blocks).
#[inline]
pub(crate) fn quantize_block<C: Code>(x: &[f32], q: &mut [C]) -> [f32; 2] {
    if x.iter().any(|v| !v.is_finite()) {
        q.fill(C::default());
        return [f32::NAN; 2];
    }
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (d, id) = scale_of(amax, C::MAX);
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        let c = (v * id).round_ties_even().clamp(-C::MAX, C::MAX) as i32;
        *o = C::from_i32(c);
        sum += c;
    }
    // |sum| <= 32 * 32767 < 2^24: exact in f32.
    [d, d * sum as f32]
}

/// Quantizes one block of 32 into two terms (64 codes: `hi` then `lo`):
/// `hi = round(x / d)` as in [`quantize_block`], then the remainder
/// `x - d hi`, computed with one fused multiply-add (exact up to one
/// rounding), as `lo = round(remainder * LO_RATIO / d)`. Every SIMD level
/// does the same f32 operations, so the codes are identical.
#[inline]
pub(crate) fn quantize_block2(x: &[f32], q: &mut [i16]) -> [f32; 2] {
    if x.iter().any(|v| !v.is_finite()) {
        q.fill(0);
        return [f32::NAN; 2];
    }
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (d, id) = scale_of(amax, <i16 as Code>::MAX);
    let idl = id * LO_RATIO;
    let (hi, lo) = q.split_at_mut(QK_ACT);
    let (mut sh, mut sl) = (0i32, 0i32);
    for ((h, l), &v) in hi.iter_mut().zip(lo.iter_mut()).zip(x) {
        // Within range without clamping (see LO_RATIO); the clamps keep the
        // casts defined for any input.
        let ch = (v * id).round_ties_even().clamp(-32767.0, 32767.0);
        let cl = ((-d).mul_add(ch, v) * idl).round_ties_even().clamp(-32767.0, 32767.0);
        *h = ch as i16;
        *l = cl as i16;
        sh += ch as i32;
        sl += cl as i32;
    }
    [d, block_sum2(d, sh, sl)]
}

/// `s` of a two-term block from the integer sums of its terms (every level
/// computes it so).
#[inline(always)]
pub(crate) fn block_sum2(d: f32, sh: i32, sl: i32) -> f32 {
    d * (sh as f32 + sl as f32 * (1.0 / LO_RATIO))
}

/// Reusable buffers for the quantized activations of one matmul at a time.
/// They only grow, so a caller that keeps one `Scratch` per executor
/// allocates nothing after the first call of the largest shape (per
/// precision: the 8-bit and 16-bit codes have their own buffers).
#[derive(Debug, Default)]
pub struct Scratch {
    pub(crate) q: Vec<i8>,
    pub(crate) q16: Vec<i16>,
    pub(crate) d: Vec<f32>,
    pub(crate) s: Vec<f32>,
}

impl Scratch {
    /// Empty buffers (they grow on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held now.
    pub fn capacity_bytes(&self) -> usize {
        self.q.capacity() + self.q16.capacity() * 2 + (self.d.capacity() + self.s.capacity()) * 4
    }

    /// Makes room for `t` rows of `kp` values, `terms` codes of type `C`
    /// each, and returns the buffers.
    pub(crate) fn buffers<C: Code>(&mut self, t: usize, kp: usize, terms: usize) -> (&mut [C], &mut [f32], &mut [f32]) {
        let nb = kp / QK_ACT;
        let Scratch { q, q16, d, s } = self;
        let q = C::pick(q, q16);
        if q.len() < t * kp * terms {
            q.resize(t * kp * terms, C::default());
        }
        if d.len() < t * nb {
            d.resize(t * nb, 0.0);
            s.resize(t * nb, 0.0);
        }
        (&mut q[..t * kp * terms], &mut d[..t * nb], &mut s[..t * nb])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_within_half_a_step_and_pads_with_zeros() {
        let x: Vec<f32> = (0..45).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.37).collect();
        let mut q = vec![0i8; 64];
        let (mut d, mut s) = (vec![0.0f32; 2], vec![0.0f32; 2]);
        quantize_row_generic(&x, &mut q, &mut d, &mut s);
        for (j, &v) in x.iter().enumerate() {
            let d = f64::from(d[j / 32]);
            let err = (f64::from(v) - d * f64::from(q[j])).abs();
            assert!(err <= d * (0.5 + 127.0 * f64::from(f32::EPSILON)), "value {j}: {err} for d = {d}");
        }
        assert!(q[45..].iter().all(|&c| c == 0));
        for b in 0..2 {
            let sum: i32 = q[b * 32..(b + 1) * 32].iter().map(|&c| i32::from(c)).sum();
            assert_eq!(s[b], d[b] * sum as f32);
        }
        assert_eq!(q.iter().map(|c| c.unsigned_abs()).max(), Some(127));
    }

    #[test]
    fn zero_block_has_zero_scale_and_non_finite_gives_nan() {
        let mut q = vec![1i8; 64];
        let (mut d, mut s) = (vec![1.0f32; 2], vec![1.0f32; 2]);
        let mut x = [0.0f32; 64];
        x[40] = f32::INFINITY;
        quantize_row_generic(&x, &mut q, &mut d, &mut s);
        assert!(q.iter().all(|&c| c == 0));
        assert_eq!((d[0], s[0]), (0.0, 0.0));
        assert!(d[1].is_nan() && s[1].is_nan());
    }
}

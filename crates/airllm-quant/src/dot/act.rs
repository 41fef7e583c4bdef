//! Activations quantized to 8 bits per block of 32, the other operand of the
//! quantized kernels (ggml's `q8_0` / `q8_1` idea, our own layout).
//!
//! Each token row of `k` values is padded with zeros to `kp` (a multiple of
//! the weight codec's block) and cut into blocks of [`QK_ACT`]. For block `b`:
//! `amax = max |x|`, `d = amax / 127`, `q = round_ties_even(x * (1 / d))`
//! (0 when `d == 0`) and `s = d * sum q` (what `q4_1`'s minimum
//! multiplies). `d` and `s` stay f32 (ggml rounds `d` to f16; we need not
//! match a byte layout here), so the only error is the rounding of `q`:
//! `|x - d q| <= d / 2` for every value (plus the f32 rounding of `x / d`,
//! at most `127 * 2^-24 d`). A block holding NaN or infinity
//! gets `d = s = NaN` (and codes 0), so the outputs it feeds are NaN instead
//! of silently finite.
//!
//! Every SIMD level computes `d`, `1 / d` and `q` with the same f32
//! operations and ties-to-even rounding, so the quantized activations are
//! bit-identical across levels (the tests check it); only the f32 sums of the
//! kernels differ in order.

use std::ops::Range;

/// Values per activation block.
pub const QK_ACT: usize = 32;

/// The quantized activations of `t` token rows: codes and `[d, s]` per block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QAct<'a> {
    /// `t * kp` codes.
    pub q: &'a [i8],
    /// `t * kp / 32` pairs `[d, d * qsum]`.
    pub ds: &'a [[f32; 2]],
    /// Padded row length (a multiple of 32).
    pub kp: usize,
}

impl<'a> QAct<'a> {
    /// Blocks per token row.
    #[inline]
    pub fn nb(&self) -> usize {
        self.kp / QK_ACT
    }

    /// Codes of token `t`.
    #[inline]
    pub fn q_row(&self, t: usize) -> &'a [i8] {
        &self.q[t * self.kp..(t + 1) * self.kp]
    }

    /// `[d, s]` of token `t`'s blocks.
    #[inline]
    pub fn ds_row(&self, t: usize) -> &'a [[f32; 2]] {
        let nb = self.nb();
        &self.ds[t * nb..(t + 1) * nb]
    }

    /// Checks that tokens `tokens` exist (kernels index without checks after it).
    #[inline]
    pub fn check(&self, tokens: Range<usize>) {
        let nb = self.nb();
        assert!(
            self.kp.is_multiple_of(QK_ACT) && self.q.len() >= tokens.end * self.kp && self.ds.len() >= tokens.end * nb,
            "quantized activations hold fewer than {} token rows of {}",
            tokens.end,
            self.kp
        );
    }
}

/// One row's quantizer: `x` (`k` values, `k <= q.len()`) into `q` (`kp`
/// codes) and `ds` (`kp / 32` pairs), padding quantized as zeros.
pub(crate) type QuantizeRow = fn(x: &[f32], q: &mut [i8], ds: &mut [[f32; 2]]);

/// The block scale and its inverse, as every level computes them.
#[inline(always)]
pub(crate) fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// The portable quantizer (the reference of the SIMD ones).
pub(crate) fn quantize_row_generic(x: &[f32], q: &mut [i8], ds: &mut [[f32; 2]]) {
    let kp = q.len();
    check_row(x, q, ds);
    let mut buf = [0.0f32; QK_ACT];
    for (b, (qb, dsb)) in q.chunks_exact_mut(QK_ACT).zip(ds.iter_mut()).enumerate() {
        let start = (b * QK_ACT).min(x.len());
        let n = (x.len() - start).min(QK_ACT);
        buf[..n].copy_from_slice(&x[start..start + n]);
        buf[n..].fill(0.0);
        *dsb = quantize_block(&buf, qb);
    }
    debug_assert_eq!(kp, ds.len() * QK_ACT);
}

/// Asserts the row sizes every quantizer needs.
#[inline]
pub(crate) fn check_row(x: &[f32], q: &[i8], ds: &[[f32; 2]]) {
    assert!(x.len() <= q.len() && q.len() == ds.len() * QK_ACT, "activation row sizes");
}

/// Quantizes one block of 32 (the scalar path, also used by the SIMD
/// quantizers for a partial last block and for non-finite blocks).
#[inline]
pub(crate) fn quantize_block(x: &[f32], q: &mut [i8]) -> [f32; 2] {
    if x.iter().any(|v| !v.is_finite()) {
        q.fill(0);
        return [f32::NAN; 2];
    }
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (d, id) = scale_of(amax);
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        let c = (v * id).round_ties_even().clamp(-127.0, 127.0) as i32;
        *o = c as i8;
        sum += c;
    }
    [d, d * sum as f32]
}

/// Reusable buffers for the quantized activations of one matmul at a time.
/// They only grow, so a caller that keeps one `Scratch` per executor
/// allocates nothing after the first call of the largest shape.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(crate) q: Vec<i8>,
    pub(crate) ds: Vec<[f32; 2]>,
}

impl Scratch {
    /// Empty buffers (they grow on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held now.
    pub fn capacity_bytes(&self) -> usize {
        self.q.capacity() + self.ds.capacity() * 8
    }

    /// Makes room for `t` rows of `kp` values and returns the buffers.
    pub(crate) fn buffers(&mut self, t: usize, kp: usize) -> (&mut [i8], &mut [[f32; 2]]) {
        let nb = kp / QK_ACT;
        if self.q.len() < t * kp {
            self.q.resize(t * kp, 0);
        }
        if self.ds.len() < t * nb {
            self.ds.resize(t * nb, [0.0; 2]);
        }
        (&mut self.q[..t * kp], &mut self.ds[..t * nb])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_within_half_a_step_and_pads_with_zeros() {
        let x: Vec<f32> = (0..45).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.37).collect();
        let mut q = vec![0i8; 64];
        let mut ds = vec![[0.0f32; 2]; 2];
        quantize_row_generic(&x, &mut q, &mut ds);
        for (j, &v) in x.iter().enumerate() {
            let d = f64::from(ds[j / 32][0]);
            let err = (f64::from(v) - d * f64::from(q[j])).abs();
            assert!(err <= d * (0.5 + 127.0 * f64::from(f32::EPSILON)), "value {j}: {err} for d = {d}");
        }
        assert!(q[45..].iter().all(|&c| c == 0));
        for b in 0..2 {
            let s: i32 = q[b * 32..(b + 1) * 32].iter().map(|&c| i32::from(c)).sum();
            assert_eq!(ds[b][1], ds[b][0] * s as f32);
        }
        assert_eq!(q.iter().map(|c| c.unsigned_abs()).max(), Some(127));
    }

    #[test]
    fn zero_block_has_zero_scale_and_non_finite_gives_nan() {
        let mut q = vec![1i8; 64];
        let mut ds = vec![[1.0f32; 2]; 2];
        let mut x = [0.0f32; 64];
        x[40] = f32::INFINITY;
        quantize_row_generic(&x, &mut q, &mut ds);
        assert!(q.iter().all(|&c| c == 0));
        assert_eq!(ds[0], [0.0, 0.0]);
        assert!(ds[1][0].is_nan() && ds[1][1].is_nan());
    }
}

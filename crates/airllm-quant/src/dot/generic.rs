//! Portable kernels: the test oracle of the SIMD levels and the fallback on
//! CPUs without one. Plain Rust over slices; the integer block sums are the
//! same exact integers every level computes, the f32 sums run block by
//! block in order. One body per codec serves every precision: generic over
//! the code type, with the high and low terms of [`Precision::Exact`]
//! (`terms == 2`) summed apart and joined at the end, as the SIMD levels do.
//!
//! [`Precision::Exact`]: super::Precision::Exact

use std::ops::Range;

use half::{bf16, f16};

use super::act::{self, Code, LO_RATIO, QAct, QK_ACT};
use super::{DenseRows, NF4_I8, NF4_I8_INV, QuantSet};

/// Reads the little-endian f16 at `b[at..at + 2]` widened to f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Checks the shapes shared by every quantized row kernel and returns
/// `(rows, tokens, weight blocks per row)`.
#[inline]
pub(crate) fn check_quant<C>(
    w: &[u8],
    row_bytes: usize,
    block: usize,
    block_bytes: usize,
    act: &QAct<'_, C>,
    terms: usize,
    tokens: &Range<usize>,
    out: &[f32],
) -> (usize, usize, usize) {
    let nt = tokens.len();
    assert!(nt > 0 && out.len().is_multiple_of(nt), "output tile of {} for {nt} tokens", out.len());
    let rows = out.len() / nt;
    let nbw = row_bytes / block_bytes;
    assert!(
        row_bytes == nbw * block_bytes && nbw * block == act.kp && w.len() >= rows * row_bytes,
        "weights: {} bytes for {rows} rows of {row_bytes}, activations padded to {}",
        w.len(),
        act.kp
    );
    act.check(tokens.clone(), terms);
    (rows, nt, nbw)
}

/// Checks the shapes of a dense row kernel and returns `(rows, tokens)`.
#[inline]
pub(crate) fn check_dense(
    w: &[u8],
    elem: usize,
    k: usize,
    x: &[f32],
    x_stride: usize,
    tokens: &Range<usize>,
    out: &[f32],
) -> (usize, usize) {
    let nt = tokens.len();
    assert!(nt > 0 && out.len().is_multiple_of(nt), "output tile of {} for {nt} tokens", out.len());
    let rows = out.len() / nt;
    assert!(w.len() >= rows * k * elem, "weights: {} bytes for {rows} rows of {k}", w.len());
    assert!(x_stride >= k && x.len() >= (tokens.end - 1) * x_stride + k, "activations: {} values", x.len());
    (rows, nt)
}

/// The exact integer dot product of one block: at most `32 * 128 * 32767 <
/// 2^31` in magnitude.
#[inline(always)]
fn isum<C: Code>(w: impl Iterator<Item = i32>, q: &[C]) -> i32 {
    w.zip(q).map(|(a, &b)| a * b.to_i32()).sum()
}

/// `(sum w hi, sum w lo)` over activation block `ab` of a token's codes
/// `q` (`lo` is 0 with one term).
#[inline(always)]
fn block_dots<C: Code>(w: impl Iterator<Item = i32> + Clone, q: &[C], ab: usize, terms: usize) -> (f32, f32) {
    let n = QK_ACT * terms;
    let blk = &q[ab * n..(ab + 1) * n];
    let hi = isum(w.clone(), &blk[..QK_ACT]);
    let lo = if terms == 2 { isum(w, &blk[QK_ACT..]) } else { 0 };
    (hi as f32, lo as f32)
}

/// The sum of the high and low accumulators.
#[inline(always)]
fn join(acc_hi: f32, acc_lo: f32, terms: usize) -> f32 {
    if terms == 2 { acc_hi + acc_lo * (1.0 / LO_RATIO) } else { acc_hi }
}

/// `q8_0` weights: `sum_b (d_w d_x) * sum_j w_j q_j`.
pub(crate) fn q8_0_rows<C: Code, const L: usize>(
    w: &[u8],
    row_bytes: usize,
    act: &QAct<'_, C>,
    tokens: Range<usize>,
    out: &mut [f32],
) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 32, 34, act, L, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let (mut acc, mut acc_lo) = (0.0f32, 0.0f32);
            for b in 0..nbw {
                let blk = &row[b * 34..(b + 1) * 34];
                let (hi, lo) = block_dots(blk[2..34].iter().map(|&v| i32::from(v as i8)), q, b, L);
                let sc = f16_at(blk, 0) * d[b];
                acc += sc * hi;
                acc_lo += sc * lo;
            }
            out[r * nt + j] = join(acc, acc_lo, L);
        }
    }
}

/// Codes of a 4-bit block of 32 (`qs` = 16 bytes): low nibbles are values
/// 0..16, high nibbles 16..32.
#[inline(always)]
fn nibbles32(qs: &[u8]) -> impl Iterator<Item = i32> + Clone + '_ {
    qs.iter().map(|&v| i32::from(v & 15)).chain(qs.iter().map(|&v| i32::from(v >> 4)))
}

/// `q4_0` weights: `sum_b (d_w d_x) * sum_j (code_j - 8) q_j`.
pub(crate) fn q4_0_rows<C: Code, const L: usize>(
    w: &[u8],
    row_bytes: usize,
    act: &QAct<'_, C>,
    tokens: Range<usize>,
    out: &mut [f32],
) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 32, 18, act, L, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let (mut acc, mut acc_lo) = (0.0f32, 0.0f32);
            for b in 0..nbw {
                let blk = &row[b * 18..(b + 1) * 18];
                let (hi, lo) = block_dots(nibbles32(&blk[2..18]).map(|c| c - 8), q, b, L);
                let sc = f16_at(blk, 0) * d[b];
                acc += sc * hi;
                acc_lo += sc * lo;
            }
            out[r * nt + j] = join(acc, acc_lo, L);
        }
    }
}

/// `q4_1` weights: `sum_b (d_w d_x) * sum_j code_j q_j + m_w s_x`.
pub(crate) fn q4_1_rows<C: Code, const L: usize>(
    w: &[u8],
    row_bytes: usize,
    act: &QAct<'_, C>,
    tokens: Range<usize>,
    out: &mut [f32],
) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 32, 20, act, L, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let (mut acc, mut acc_lo) = (0.0f32, 0.0f32);
            for b in 0..nbw {
                let blk = &row[b * 20..(b + 1) * 20];
                let (hi, lo) = block_dots(nibbles32(&blk[4..20]), q, b, L);
                let sc = f16_at(blk, 0) * d[b];
                acc += sc * hi + f16_at(blk, 2) * act.s_row(t)[b];
                acc_lo += sc * lo;
            }
            out[r * nt + j] = join(acc, acc_lo, L);
        }
    }
}

/// `nf4` weights (blocks of 64, two activation blocks each), through the
/// int8 code book [`NF4_I8`]: `sum_b (absmax / 127) sum_h d_x,h sum_j c_j q_j`.
pub(crate) fn nf4_rows<C: Code, const L: usize>(
    w: &[u8],
    row_bytes: usize,
    act: &QAct<'_, C>,
    tokens: Range<usize>,
    out: &mut [f32],
) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 64, 34, act, L, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let (mut acc, mut acc_lo) = (0.0f32, 0.0f32);
            for b in 0..nbw {
                let blk = &row[b * 34..(b + 1) * 34];
                let dw = f16_at(blk, 0) * NF4_I8_INV;
                let qs = &blk[2..34];
                let first = qs.iter().map(|&v| i32::from(NF4_I8[usize::from(v & 15)]));
                let second = qs.iter().map(|&v| i32::from(NF4_I8[usize::from(v >> 4)]));
                let (h0, l0) = block_dots(first, q, 2 * b, L);
                let (h1, l1) = block_dots(second, q, 2 * b + 1, L);
                let (s0, s1) = (dw * d[2 * b], dw * d[2 * b + 1]);
                acc += s0 * h0;
                acc += s1 * h1;
                acc_lo += s0 * l0;
                acc_lo += s1 * l1;
            }
            out[r * nt + j] = join(acc, acc_lo, L);
        }
    }
}

const _: () = assert!(QK_ACT == 32);

/// Lanes of the dense dot products: independent accumulators the compiler
/// can keep in one vector register.
const LANES: usize = 8;

#[inline(always)]
fn dense_dot(w: impl Iterator<Item = f32>, x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (i, (a, &b)) in w.zip(x).enumerate() {
        acc[i % LANES] += a * b;
    }
    acc.iter().sum()
}

#[allow(clippy::too_many_arguments)]
fn dense_rows(
    w: &[u8],
    elem: usize,
    k: usize,
    x: &[f32],
    x_stride: usize,
    tokens: Range<usize>,
    out: &mut [f32],
    get: impl Fn(&[u8]) -> f32 + Copy,
) {
    let (rows, nt) = check_dense(w, elem, k, x, x_stride, &tokens, out);
    for r in 0..rows {
        let row = &w[r * k * elem..(r + 1) * k * elem];
        for (j, t) in tokens.clone().enumerate() {
            let xr = &x[t * x_stride..t * x_stride + k];
            out[r * nt + j] = dense_dot(row.chunks_exact(elem).map(get), xr);
        }
    }
}

/// f32 weights (little endian, any alignment).
pub(crate) fn f32_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows(w, 4, k, x, x_stride, tokens, out, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
}

/// f16 weights.
pub(crate) fn f16_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows(w, 2, k, x, x_stride, tokens, out, |b| f16::from_le_bytes([b[0], b[1]]).to_f32());
}

/// bf16 weights.
pub(crate) fn bf16_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows(w, 2, k, x, x_stride, tokens, out, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32());
}

/// The generic table entries (type-checked against the kernel signatures).
pub(crate) const FAST: QuantSet<i8> = QuantSet {
    terms: 1,
    quantize: act::quantize_row_generic,
    q8_0: q8_0_rows::<i8, 1>,
    q4_0: q4_0_rows::<i8, 1>,
    q4_1: q4_1_rows::<i8, 1>,
    nf4: nf4_rows::<i8, 1>,
};
pub(crate) const PRECISE: QuantSet<i16> = QuantSet {
    terms: 1,
    quantize: act::quantize_row_generic,
    q8_0: q8_0_rows::<i16, 1>,
    q4_0: q4_0_rows::<i16, 1>,
    q4_1: q4_1_rows::<i16, 1>,
    nf4: nf4_rows::<i16, 1>,
};
pub(crate) const EXACT: QuantSet<i16> = QuantSet {
    terms: 2,
    quantize: act::quantize_row2_generic,
    q8_0: q8_0_rows::<i16, 2>,
    q4_0: q4_0_rows::<i16, 2>,
    q4_1: q4_1_rows::<i16, 2>,
    nf4: nf4_rows::<i16, 2>,
};
pub(crate) const F32: DenseRows = f32_rows;
pub(crate) const F16: DenseRows = f16_rows;
pub(crate) const BF16: DenseRows = bf16_rows;

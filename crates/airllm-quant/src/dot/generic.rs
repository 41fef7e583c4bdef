//! Portable kernels: the test oracle of the SIMD levels and the fallback on
//! CPUs without one. Plain Rust over slices; the integer block sums are the
//! same exact integers every level computes, the f32 sums run block by
//! block in order.

use std::ops::Range;

use half::{bf16, f16};

use super::act::{self, Code, QAct, QK_ACT};
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
    act.check(tokens.clone());
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

/// `q8_0` weights: `sum_b (d_w d_x) * sum_j w_j q_j`.
pub(crate) fn q8_0_rows<C: Code>(w: &[u8], row_bytes: usize, act: &QAct<'_, C>, tokens: Range<usize>, out: &mut [f32]) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 32, 34, act, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let mut acc = 0.0f32;
            for b in 0..nbw {
                let blk = &row[b * 34..(b + 1) * 34];
                let s = isum(blk[2..34].iter().map(|&v| i32::from(v as i8)), &q[b * 32..(b + 1) * 32]);
                acc += f16_at(blk, 0) * d[b] * s as f32;
            }
            out[r * nt + j] = acc;
        }
    }
}

/// Codes of a 4-bit block of 32 (`qs` = 16 bytes): low nibbles are values
/// 0..16, high nibbles 16..32.
#[inline(always)]
fn nibbles32(qs: &[u8]) -> impl Iterator<Item = i32> + '_ {
    qs.iter().map(|&v| i32::from(v & 15)).chain(qs.iter().map(|&v| i32::from(v >> 4)))
}

/// `q4_0` weights: `sum_b (d_w d_x) * sum_j (code_j - 8) q_j`.
pub(crate) fn q4_0_rows<C: Code>(w: &[u8], row_bytes: usize, act: &QAct<'_, C>, tokens: Range<usize>, out: &mut [f32]) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 32, 18, act, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let mut acc = 0.0f32;
            for b in 0..nbw {
                let blk = &row[b * 18..(b + 1) * 18];
                let s = isum(nibbles32(&blk[2..18]).map(|c| c - 8), &q[b * 32..(b + 1) * 32]);
                acc += f16_at(blk, 0) * d[b] * s as f32;
            }
            out[r * nt + j] = acc;
        }
    }
}

/// `q4_1` weights: `sum_b (d_w d_x) * sum_j code_j q_j + m_w s_x`.
pub(crate) fn q4_1_rows<C: Code>(w: &[u8], row_bytes: usize, act: &QAct<'_, C>, tokens: Range<usize>, out: &mut [f32]) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 32, 20, act, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let mut acc = 0.0f32;
            for b in 0..nbw {
                let blk = &row[b * 20..(b + 1) * 20];
                let s = isum(nibbles32(&blk[4..20]), &q[b * 32..(b + 1) * 32]);
                acc += f16_at(blk, 0) * d[b] * s as f32 + f16_at(blk, 2) * act.s_row(t)[b];
            }
            out[r * nt + j] = acc;
        }
    }
}

/// `nf4` weights (blocks of 64, two activation blocks each), through the
/// int8 code book [`NF4_I8`]: `sum_b (absmax / 127) sum_h d_x,h sum_j c_j q_j`.
pub(crate) fn nf4_rows<C: Code>(w: &[u8], row_bytes: usize, act: &QAct<'_, C>, tokens: Range<usize>, out: &mut [f32]) {
    let (rows, nt, nbw) = check_quant(w, row_bytes, 64, 34, act, &tokens, out);
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, t) in tokens.clone().enumerate() {
            let (q, d) = (act.q_row(t), act.d_row(t));
            let mut acc = 0.0f32;
            for b in 0..nbw {
                let blk = &row[b * 34..(b + 1) * 34];
                let dw = f16_at(blk, 0) * NF4_I8_INV;
                let qs = &blk[2..34];
                let lo = isum(qs.iter().map(|&v| i32::from(NF4_I8[usize::from(v & 15)])), &q[b * 64..b * 64 + 32]);
                let hi = isum(qs.iter().map(|&v| i32::from(NF4_I8[usize::from(v >> 4)])), &q[b * 64 + 32..b * 64 + 64]);
                acc += dw * d[2 * b] * lo as f32;
                acc += dw * d[2 * b + 1] * hi as f32;
            }
            out[r * nt + j] = acc;
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
pub(crate) const FAST: QuantSet<i8> =
    QuantSet { quantize: act::quantize_row_generic, q8_0: q8_0_rows, q4_0: q4_0_rows, q4_1: q4_1_rows, nf4: nf4_rows };
pub(crate) const PRECISE: QuantSet<i16> =
    QuantSet { quantize: act::quantize_row_generic, q8_0: q8_0_rows, q4_0: q4_0_rows, q4_1: q4_1_rows, nf4: nf4_rows };
pub(crate) const F32: DenseRows = f32_rows;
pub(crate) const F16: DenseRows = f16_rows;
pub(crate) const BF16: DenseRows = bf16_rows;

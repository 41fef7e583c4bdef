#![allow(unused_unsafe)] // NEON intrinsics are safe or not depending on the Rust version
//! NEON kernels against 16-bit activations, one term
//! ([`Precision::Precise`](super::Precision)) or two
//! ([`Precision::Exact`](super::Precision)), for NEON with and without the
//! dot-product extension (`sdot` multiplies bytes only).
//!
//! The structure of the 8-bit kernels in [`super::aarch64`], with the codes
//! of each weight block widened once to four vectors of 8 i16 (`uxtl` /
//! `sxtl`, `nf4` after its `tbl` lookup into [`NF4_I8`]) and the integer dot
//! product of a block computed with `smlal` / `smlal2` (i16 x i16 products
//! widened and accumulated in i32, 8 instructions per block, two
//! independent accumulators). Exact: a block sums at most
//! `32 * 128 * 32767 < 2^28`. With two terms the same widened weights meet
//! the low codes too, into a second f32 accumulator joined at the end
//! (`hi + lo / LO_RATIO`).
//!
//! Not run on aarch64 hardware: the tests pass under `qemu-aarch64` (cross
//! built with `--target aarch64-unknown-linux-gnu`, both `neon` and
//! `neon-dotprod` levels), which checks results, not speed.

use std::arch::aarch64::*;
use std::ops::Range;

use super::aarch64::{block_codes, by_tokens, f16_at, nibbles, quantize_row_with, token_ptrs};
use super::act::{Code, QAct, QK_ACT};
use super::generic::check_quant;
use super::{NF4_I8, NF4_I8_INV, QuantSet};

/// The NEON set (every aarch64 CPU).
pub(super) const NEON: QuantSet<i16> =
    QuantSet { quantize: quantize_row, q8_0: q8_0_rows, q4_0: q4_0_rows, q4_1: q4_1_rows, nf4: nf4_rows };

/// `acc + w * x` over 8 i16 lanes, widened into 4 i32 lanes.
#[inline(always)]
unsafe fn mlal8(acc: int32x4_t, w: int16x8_t, x: int16x8_t) -> int32x4_t {
    // SAFETY: register arithmetic (NEON is baseline on aarch64).
    unsafe { vmlal_high_s16(vmlal_s16(acc, vget_low_s16(w), vget_low_s16(x)), w, x) }
}

/// One block of 32: the integer dot product of the weights `w` (values
/// 0..8, 8..16, 16..24, 24..32) with the 32 codes at `x`, as f32 lanes.
#[inline(always)]
unsafe fn block(w: &[int16x8_t; 4], x: *const i16) -> float32x4_t {
    // SAFETY: the caller passes 32 readable codes.
    unsafe {
        let a0 = mlal8(vdupq_n_s32(0), w[0], vld1q_s16(x));
        let a1 = mlal8(vdupq_n_s32(0), w[1], vld1q_s16(x.add(8)));
        let a0 = mlal8(a0, w[2], vld1q_s16(x.add(16)));
        let a1 = mlal8(a1, w[3], vld1q_s16(x.add(24)));
        vcvtq_f32_s32(vaddq_s32(a0, a1))
    }
}

/// 16 unsigned bytes as two vectors of 8 i16 (values < 256).
#[inline(always)]
unsafe fn widen_u8(v: uint8x16_t) -> [int16x8_t; 2] {
    // SAFETY: register arithmetic.
    unsafe { [vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(v))), vreinterpretq_s16_u16(vmovl_high_u8(v))] }
}

/// 16 signed bytes as two vectors of 8 i16.
#[inline(always)]
unsafe fn widen_s8(v: int8x16_t) -> [int16x8_t; 2] {
    // SAFETY: register arithmetic.
    unsafe { [vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v)] }
}

/// Two 16-byte halves of a block as its four i16 vectors.
#[inline(always)]
fn halves([a, b]: [int16x8_t; 2], [c, d]: [int16x8_t; 2]) -> [int16x8_t; 4] {
    [a, b, c, d]
}

/// Adds one activation block's products (codes at `x`: the high ones, then
/// with two terms the low ones) times `sc` to a token's `(hi, lo)` accumulators.
#[inline(always)]
unsafe fn add_block<L: Terms>(acc: &mut [float32x4_t; 2], w: &[int16x8_t; 4], x: *const i16, sc: float32x4_t) {
    // SAFETY: the caller passes 32 * L::N readable codes.
    unsafe {
        acc[0] = vfmaq_f32(acc[0], block(w, x), sc);
        if L::N == 2 {
            acc[1] = vfmaq_f32(acc[1], block(w, x.add(QK_ACT)), sc);
        }
    }
}

/// A token's result from its accumulators.
#[inline(always)]
unsafe fn join<L: Terms>(acc: &[float32x4_t; 2]) -> f32 {
    // SAFETY: register arithmetic.
    unsafe { if L::N == 2 { vaddvq_f32(acc[0]) + vaddvq_f32(acc[1]) * (1.0 / LO_RATIO) } else { vaddvq_f32(acc[0]) } }
}

/// Defines the row kernels `$name` over `$body` for `$terms` codes per value.
macro_rules! quant_kernels {
    ($terms:ty, $($name:ident = $body:ident($block:expr, $bytes:expr)),+ $(,)?) => {$(
        fn $name(w: &[u8], row_bytes: usize, act: &QAct<'_, i16>, tokens: Range<usize>, out: &mut [f32]) {
            let terms = <$terms as Terms>::N;
            let (rows, nt, nbw) = check_quant(w, row_bytes, $block, $bytes, act, terms, &tokens, out);
            // SAFETY: `check_quant` checked every length the body reads and writes.
            unsafe {
                by_tokens!(nt, $body::<$terms>(w.as_ptr(), row_bytes, rows, nbw, act, tokens.start, out.as_mut_ptr()))
            }
        }
    )+};
}

quant_kernels!(
    One,
    q8_0_rows = q8_0_tile(32, 34),
    q4_0_rows = q4_0_tile(32, 18),
    q4_1_rows = q4_1_tile(32, 20),
    nf4_rows = nf4_tile(64, 34),
);

quant_kernels!(
    Two,
    q8_0_rows2 = q8_0_tile(32, 34),
    q4_0_rows2 = q4_0_tile(32, 18),
    q4_1_rows2 = q4_1_tile(32, 20),
    nf4_rows2 = nf4_tile(64, 34),
);

// The tile bodies. Safety contract of each: rows of `row_bytes` = `nbw`
// blocks, activation rows of `L::N` codes per value matching `nbw` weight
// blocks for tokens `t0..t0 + T`, `rows * T` writable outputs.

unsafe fn q4_1_tile<const T: usize, L: Terms>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, sx) = token_ptrs::<T, i16>(act, t0);
    let n = QK_ACT * L::N;
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 20 bytes).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            let mut accm = [0.0f32; T];
            for b in 0..nbw {
                let blk = row.add(b * 20);
                let (d, m) = (f16_at(blk), f16_at(blk.add(2)));
                let (lo, hi) = nibbles(blk.add(4));
                let wv = halves(widen_u8(lo), widen_u8(hi));
                for j in 0..T {
                    add_block::<L>(&mut acc[j], &wv, q[j].add(b * n), vdupq_n_f32(d * *dx[j].add(b)));
                    accm[j] += m * *sx[j].add(b);
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = join::<L>(&acc[j]) + accm[j];
            }
        }
    }
}

unsafe fn q4_0_tile<const T: usize, L: Terms>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i16>(act, t0);
    let n = QK_ACT * L::N;
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 18 bytes).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            let eight = vdupq_n_s8(8);
            for b in 0..nbw {
                let blk = row.add(b * 18);
                let d = f16_at(blk);
                let (lo, hi) = nibbles(blk.add(2));
                let w0 = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
                let w1 = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
                let wv = halves(widen_s8(w0), widen_s8(w1));
                for j in 0..T {
                    add_block::<L>(&mut acc[j], &wv, q[j].add(b * n), vdupq_n_f32(d * *dx[j].add(b)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = join::<L>(&acc[j]);
            }
        }
    }
}

unsafe fn q8_0_tile<const T: usize, L: Terms>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i16>(act, t0);
    let n = QK_ACT * L::N;
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 34 bytes).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            for b in 0..nbw {
                let blk = row.add(b * 34);
                let d = f16_at(blk);
                let wv = halves(widen_s8(vld1q_s8(blk.add(2).cast())), widen_s8(vld1q_s8(blk.add(18).cast())));
                for j in 0..T {
                    add_block::<L>(&mut acc[j], &wv, q[j].add(b * n), vdupq_n_f32(d * *dx[j].add(b)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = join::<L>(&acc[j]);
            }
        }
    }
}

unsafe fn nf4_tile<const T: usize, L: Terms>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i16>(act, t0);
    let n = QK_ACT * L::N;
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 34 bytes, 64 values, two
        // activation blocks each); NF4_I8 is 16 bytes.
        unsafe {
            let table = vld1q_s8(NF4_I8.as_ptr());
            let row = w.add(r * row_bytes);
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            for b in 0..nbw {
                let blk = row.add(b * 34);
                let dw = f16_at(blk) * NF4_I8_INV;
                // Low nibbles of the 32 bytes are values 0..32, high nibbles 32..64.
                let (lo0, hi0) = nibbles(blk.add(2));
                let (lo1, hi1) = nibbles(blk.add(18));
                let [w0, w1, w2, w3] = [lo0, lo1, hi0, hi1].map(|c| widen_s8(vqtbl1q_s8(table, c)));
                let (first, second) = (halves(w0, w1), halves(w2, w3));
                for j in 0..T {
                    let x = q[j].add(b * 2 * n);
                    add_block::<L>(&mut acc[j], &first, x, vdupq_n_f32(dw * *dx[j].add(2 * b)));
                    add_block::<L>(&mut acc[j], &second, x.add(n), vdupq_n_f32(dw * *dx[j].add(2 * b + 1)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = join::<L>(&acc[j]);
            }
        }
    }
}

// ---- activations ----------------------------------------------------------

fn quantize_row(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    // SAFETY: `quantize_row_by` passes 32 readable floats and 32 writable codes.
    quantize_row_by(x, (q, d, s), 1, |x, q| unsafe { quantize_block_neon(x, q) }, quantize_block);
}

fn quantize_row2(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    // SAFETY: as above, 64 writable codes.
    quantize_row_by(x, (q, d, s), 2, |x, q| unsafe { quantize_block2_neon(x, q) }, quantize_block2);
}

/// 32 i32 lanes (8 vectors, each within i16) as 32 i16 codes at `q`.
#[inline(always)]
unsafe fn store_i16(i: &[int32x4_t; 8], q: *mut i16) {
    for k in 0..4 {
        // SAFETY: the caller passes 32 writable codes.
        unsafe { vst1q_s16(q.add(8 * k), vcombine_s16(vqmovn_s32(i[2 * k]), vqmovn_s32(i[2 * k + 1]))) };
    }
}

/// One block of 32 values to i16 codes; `None` (nothing written) when one is
/// not finite.
unsafe fn quantize_block_neon(x: *const f32, q: *mut i16) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 32 writable codes.
    unsafe {
        let (v, amax) = block_amax(x)?;
        let (d, id) = scale_of(amax, <i16 as Code>::MAX);
        // |x * (1 / d)| <= 32767 (1 + 2^-22): the narrowing never saturates.
        let (i, s) = block_codes(&v, id);
        store_i16(&i, q);
        Some([d, d * s as f32])
    }
}

/// One block of 32 values to two terms of i16 codes (64 at `q`, as
/// [`quantize_block2`] computes them); `None` (nothing written) when one is
/// not finite.
unsafe fn quantize_block2_neon(x: *const f32, q: *mut i16) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 64 writable codes.
    unsafe {
        let (v, amax) = block_amax(x)?;
        let (d, id) = scale_of(amax, <i16 as Code>::MAX);
        let (hi, sh) = block_codes(&v, id);
        // The remainders x - d hi, one rounding each (FMLS, as `mul_add`).
        let dv = vdupq_n_f32(d);
        let r: [float32x4_t; 8] = std::array::from_fn(|k| vfmsq_f32(v[k], vcvtq_f32_s32(hi[k]), dv));
        let (lo, sl) = block_codes(&r, id * LO_RATIO);
        store_i16(&hi, q);
        store_i16(&lo, q.add(QK_ACT));
        Some([d, block_sum2(d, sh, sl)])
    }
}

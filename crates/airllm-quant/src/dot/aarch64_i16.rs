#![allow(unused_unsafe)] // NEON intrinsics are safe or not depending on the Rust version
//! NEON kernels against 16-bit activations ([`Precision::Precise`](super::Precision)),
//! for NEON with and without the dot-product extension (`sdot` multiplies
//! bytes only).
//!
//! The structure of the 8-bit kernels in [`super::aarch64`], with the codes
//! of each weight block widened once to four vectors of 8 i16 (`uxtl` /
//! `sxtl`, `nf4` after its `tbl` lookup into [`NF4_I8`]) and the integer dot
//! product of a block computed with `smlal` / `smlal2` (i16 x i16 products
//! widened and accumulated in i32, 8 instructions per block, two
//! independent accumulators). Exact: a block sums at most
//! `32 * 128 * 32767 < 2^28`.
//!
//! Written against the same intrinsics as the 8-bit kernels; checked with
//! `cargo check --target aarch64-unknown-linux-gnu` on the x86-64
//! development machine (see the report of issue 14 for what ran where).

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
fn join([a, b]: [int16x8_t; 2], [c, d]: [int16x8_t; 2]) -> [int16x8_t; 4] {
    [a, b, c, d]
}

/// Defines the row kernels `$name` over `$body`.
macro_rules! quant_kernels {
    ($($name:ident = $body:ident($block:expr, $bytes:expr)),+ $(,)?) => {$(
        fn $name(w: &[u8], row_bytes: usize, act: &QAct<'_, i16>, tokens: Range<usize>, out: &mut [f32]) {
            let (rows, nt, nbw) = check_quant(w, row_bytes, $block, $bytes, act, &tokens, out);
            // SAFETY: `check_quant` checked every length the body reads and writes.
            unsafe { by_tokens!(nt, $body::<i16>(w.as_ptr(), row_bytes, rows, nbw, act, tokens.start, out.as_mut_ptr())) }
        }
    )+};
}

quant_kernels!(
    q8_0_rows = q8_0_tile(32, 34),
    q4_0_rows = q4_0_tile(32, 18),
    q4_1_rows = q4_1_tile(32, 20),
    nf4_rows = nf4_tile(64, 34),
);

// The tile bodies (`C` is always i16; the parameter fits `by_tokens!`).
// Safety contract of each: rows of `row_bytes` = `nbw` blocks, activation
// rows matching `nbw` weight blocks for tokens `t0..t0 + T`, `rows * T`
// writable outputs.

unsafe fn q4_1_tile<const T: usize, C>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, sx) = token_ptrs::<T, i16>(act, t0);
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 20 bytes).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [vdupq_n_f32(0.0); T];
            let mut accm = [0.0f32; T];
            for b in 0..nbw {
                let blk = row.add(b * 20);
                let (d, m) = (f16_at(blk), f16_at(blk.add(2)));
                let (lo, hi) = nibbles(blk.add(4));
                let wv = join(widen_u8(lo), widen_u8(hi));
                for j in 0..T {
                    let p = block(&wv, q[j].add(b * QK_ACT));
                    acc[j] = vfmaq_f32(acc[j], p, vdupq_n_f32(d * *dx[j].add(b)));
                    accm[j] += m * *sx[j].add(b);
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = vaddvq_f32(acc[j]) + accm[j];
            }
        }
    }
}

unsafe fn q4_0_tile<const T: usize, C>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i16>(act, t0);
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 18 bytes).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [vdupq_n_f32(0.0); T];
            let eight = vdupq_n_s8(8);
            for b in 0..nbw {
                let blk = row.add(b * 18);
                let d = f16_at(blk);
                let (lo, hi) = nibbles(blk.add(2));
                let w0 = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
                let w1 = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
                let wv = join(widen_s8(w0), widen_s8(w1));
                for j in 0..T {
                    let p = block(&wv, q[j].add(b * QK_ACT));
                    acc[j] = vfmaq_f32(acc[j], p, vdupq_n_f32(d * *dx[j].add(b)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = vaddvq_f32(acc[j]);
            }
        }
    }
}

unsafe fn q8_0_tile<const T: usize, C>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i16>(act, t0);
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 34 bytes).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [vdupq_n_f32(0.0); T];
            for b in 0..nbw {
                let blk = row.add(b * 34);
                let d = f16_at(blk);
                let wv = join(widen_s8(vld1q_s8(blk.add(2).cast())), widen_s8(vld1q_s8(blk.add(18).cast())));
                for j in 0..T {
                    let p = block(&wv, q[j].add(b * QK_ACT));
                    acc[j] = vfmaq_f32(acc[j], p, vdupq_n_f32(d * *dx[j].add(b)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = vaddvq_f32(acc[j]);
            }
        }
    }
}

unsafe fn nf4_tile<const T: usize, C>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i16>(act, t0);
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 34 bytes, 64 values, two
        // activation blocks each); NF4_I8 is 16 bytes.
        unsafe {
            let table = vld1q_s8(NF4_I8.as_ptr());
            let row = w.add(r * row_bytes);
            let mut acc = [vdupq_n_f32(0.0); T];
            for b in 0..nbw {
                let blk = row.add(b * 34);
                let dw = f16_at(blk) * NF4_I8_INV;
                // Low nibbles of the 32 bytes are values 0..32, high nibbles 32..64.
                let (lo0, hi0) = nibbles(blk.add(2));
                let (lo1, hi1) = nibbles(blk.add(18));
                let [w0, w1, w2, w3] = [lo0, lo1, hi0, hi1].map(|c| widen_s8(vqtbl1q_s8(table, c)));
                let (first, second) = (join(w0, w1), join(w2, w3));
                for j in 0..T {
                    let p0 = block(&first, q[j].add(b * 64));
                    let p1 = block(&second, q[j].add(b * 64 + 32));
                    acc[j] = vfmaq_f32(acc[j], p0, vdupq_n_f32(dw * *dx[j].add(2 * b)));
                    acc[j] = vfmaq_f32(acc[j], p1, vdupq_n_f32(dw * *dx[j].add(2 * b + 1)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = vaddvq_f32(acc[j]);
            }
        }
    }
}

// ---- activations ----------------------------------------------------------

fn quantize_row(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    // SAFETY: the closure gets 32 readable floats and 32 writable codes.
    quantize_row_with(x, q, d, s, |x, q| unsafe { quantize_block_neon(x, q) });
}

/// One block of 32 values to i16 codes; `None` (nothing written) when one is
/// not finite.
unsafe fn quantize_block_neon(x: *const f32, q: *mut i16) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 32 writable codes.
    unsafe {
        // |x * (1 / d)| <= 32767 (1 + 2^-22): the narrowing never saturates.
        let (i, s, d) = block_codes(x, <i16 as Code>::MAX)?;
        for k in 0..4 {
            vst1q_s16(q.add(8 * k), vcombine_s16(vqmovn_s32(i[2 * k]), vqmovn_s32(i[2 * k + 1])));
        }
        Some([d, d * s as f32])
    }
}

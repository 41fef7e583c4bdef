#![allow(unused_unsafe)] // NEON intrinsics are safe or not depending on the Rust version
//! NEON kernels (aarch64: Apple silicon, Graviton, ...), with and without the
//! dot-product extension.
//!
//! The same structure as the x86 kernels: 4-bit codes unpacked to bytes
//! (`nf4` through `vqtbl1q_s8` into [`NF4_I8`]), an exact integer dot product
//! per block of 32 (signed x signed: `sdot`, or `smull` + `sadalp` without
//! the extension), converted once per block and accumulated with FMA against
//! the block's scale; each weight block is used for every token of the tile.
//!
//! `sdot` is written as its encoding (`.inst`) on fixed registers because its
//! intrinsic (`vdotq_s32`) is not stable Rust and an assembler may reject the
//! mnemonic without the feature. f16 weights use the generic kernel (the f16
//! conversion intrinsics are not stable either).
//!
//! Not compiled on the development machine (x86-64 without the aarch64
//! target); see the report of issue 14.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::act::{Code, QAct, QK_ACT, quantize_block, quantize_row_by, scale_of};
use super::generic::{self, check_dense, check_quant};
use super::{Kernels, NF4_I8, NF4_I8_INV, QuantSet, SimdLevel, TOKEN_TILE, aarch64_i16};

/// Whether the CPU has the dot-product extension (`sdot`).
pub(super) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// NEON (every aarch64 CPU has it).
pub(super) const NEON: Kernels = Kernels {
    level: SimdLevel::Neon,
    fast: QuantSet {
        terms: 1,
        quantize: quantize_row,
        q8_0: q8_0_mull,
        q4_0: q4_0_mull,
        q4_1: q4_1_mull,
        nf4: nf4_mull,
    },
    precise: aarch64_i16::NEON,
    exact: aarch64_i16::NEON_EXACT,
    f32: f32_rows,
    f16: generic::F16,
    bf16: bf16_rows,
    decode_only: false,
};

/// NEON with `sdot` for 8-bit activations (16-bit ones use the NEON
/// kernels: `sdot` multiplies bytes only). Only handed out after [`has_dotprod`].
pub(super) const NEON_DOTPROD: Kernels = Kernels {
    level: SimdLevel::NeonDotprod,
    fast: QuantSet {
        terms: 1,
        quantize: quantize_row,
        q8_0: q8_0_sdot,
        q4_0: q4_0_sdot,
        q4_1: q4_1_sdot,
        nf4: nf4_sdot,
    },
    ..NEON
};

const _: () = assert!(TOKEN_TILE == 4);

/// Calls `$f::<T, ..>(args)` with `T` = the token count (1..=4).
macro_rules! by_tokens {
    ($nt:expr, $f:ident :: <$($g:ty),+> ($($arg:expr),*)) => {
        match $nt {
            1 => $f::<1, $($g),+>($($arg),*),
            2 => $f::<2, $($g),+>($($arg),*),
            3 => $f::<3, $($g),+>($($arg),*),
            4 => $f::<4, $($g),+>($($arg),*),
            n => unreachable!("token tile of {n}"),
        }
    };
}
pub(super) use by_tokens;

/// `acc + sum w * x` over 16 signed bytes, 4 products per i32 lane.
trait Dot {
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t;
}

/// `smull` / `smull2` (i8 x i8 fits i16) then pairwise add into i32.
struct Mull;
/// `sdot`.
struct Sdot;

impl Dot for Mull {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        // SAFETY: register arithmetic (NEON is baseline on aarch64).
        unsafe {
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
            let hi = vmull_high_s8(w, x);
            vpadalq_s16(vpadalq_s16(acc, lo), hi)
        }
    }
}

impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: `sdot v0.4s, v1.16b, v2.16b` (encoding 0x4e829420) only reads
        // and writes the three named registers; callers checked the dotprod
        // feature at run time (`has_dotprod`).
        unsafe {
            asm!(
                ".inst 0x4e829420",
                inout("v0") acc,
                in("v1") w,
                in("v2") x,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }
}

/// The f16 at `p` widened to f32.
#[inline(always)]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller passes 2 readable bytes.
    half::f16::from_bits(unsafe { p.cast::<u16>().read_unaligned() }).to_f32()
}

/// The 32 codes of a 4-bit block of 16 bytes at `p`: (values 0..16, values 16..32).
#[inline(always)]
pub(super) unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: the caller passes 16 readable bytes.
    unsafe {
        let v = vld1q_u8(p);
        (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
    }
}

/// One block of 32: the integer dot product of `(w0, w1)` with the
/// activation codes at `x`, as f32 lanes.
#[inline(always)]
unsafe fn block<D: Dot>(w0: int8x16_t, w1: int8x16_t, x: *const i8) -> float32x4_t {
    // SAFETY: the caller passes 32 readable codes.
    unsafe {
        let acc = D::dot(D::dot(vdupq_n_s32(0), w0, vld1q_s8(x)), w1, vld1q_s8(x.add(16)));
        vcvtq_f32_s32(acc)
    }
}

/// Defines the row kernels `$name` for dot-product flavour `$d` over `$body`.
macro_rules! quant_kernels {
    ($($name:ident = $body:ident::<$d:ty>($block:expr, $bytes:expr)),+ $(,)?) => {$(
        fn $name(w: &[u8], row_bytes: usize, act: &QAct<'_>, tokens: Range<usize>, out: &mut [f32]) {
            let (rows, nt, nbw) = check_quant(w, row_bytes, $block, $bytes, act, 1, &tokens, out);
            // SAFETY: `check_quant` checked every length the body reads and writes;
            // the `Sdot` kernels are only handed out after `has_dotprod`.
            unsafe { by_tokens!(nt, $body::<$d>(w.as_ptr(), row_bytes, rows, nbw, act, tokens.start, out.as_mut_ptr())) }
        }
    )+};
}

quant_kernels!(
    q8_0_mull = q8_0_tile::<Mull>(32, 34),
    q4_0_mull = q4_0_tile::<Mull>(32, 18),
    q4_1_mull = q4_1_tile::<Mull>(32, 20),
    nf4_mull = nf4_tile::<Mull>(64, 34),
    q8_0_sdot = q8_0_tile::<Sdot>(32, 34),
    q4_0_sdot = q4_0_tile::<Sdot>(32, 18),
    q4_1_sdot = q4_1_tile::<Sdot>(32, 20),
    nf4_sdot = nf4_tile::<Sdot>(64, 34),
);

/// Pointers to the codes and scales of tokens `t0..t0 + T`.
#[inline(always)]
pub(super) fn token_ptrs<const T: usize, C>(
    act: &QAct<'_, C>,
    t0: usize,
) -> ([*const C; T], [*const f32; T], [*const f32; T]) {
    (
        std::array::from_fn(|j| act.q_row(t0 + j).as_ptr()),
        std::array::from_fn(|j| act.d_row(t0 + j).as_ptr()),
        std::array::from_fn(|j| act.s_row(t0 + j).as_ptr()),
    )
}

// The tile bodies. Safety contract of each: rows of `row_bytes` = `nbw`
// blocks, activation rows matching `nbw` weight blocks for tokens
// `t0..t0 + T`, `rows * T` writable outputs.

unsafe fn q4_1_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, sx) = token_ptrs::<T, i8>(act, t0);
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
                let (w0, w1) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
                for j in 0..T {
                    let p = block::<D>(w0, w1, q[j].add(b * QK_ACT));
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

unsafe fn q4_0_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i8>(act, t0);
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
                for j in 0..T {
                    let p = block::<D>(w0, w1, q[j].add(b * QK_ACT));
                    acc[j] = vfmaq_f32(acc[j], p, vdupq_n_f32(d * *dx[j].add(b)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = vaddvq_f32(acc[j]);
            }
        }
    }
}

unsafe fn q8_0_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i8>(act, t0);
    for r in 0..rows {
        // SAFETY: the function's contract (blocks of 34 bytes).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [vdupq_n_f32(0.0); T];
            for b in 0..nbw {
                let blk = row.add(b * 34);
                let d = f16_at(blk);
                let w0 = vld1q_s8(blk.add(2).cast());
                let w1 = vld1q_s8(blk.add(18).cast());
                for j in 0..T {
                    let p = block::<D>(w0, w1, q[j].add(b * QK_ACT));
                    acc[j] = vfmaq_f32(acc[j], p, vdupq_n_f32(d * *dx[j].add(b)));
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = vaddvq_f32(acc[j]);
            }
        }
    }
}

unsafe fn nf4_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i8>(act, t0);
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
                let [w0, w1, w2, w3] = [lo0, lo1, hi0, hi1].map(|c| vqtbl1q_s8(table, c));
                for j in 0..T {
                    let p0 = block::<D>(w0, w1, q[j].add(b * 64));
                    let p1 = block::<D>(w2, w3, q[j].add(b * 64 + 32));
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

fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    // SAFETY: `quantize_row_by` passes 32 readable floats and 32 writable codes.
    quantize_row_by(x, (q, d, s), 1, |x, q| unsafe { quantize_block_neon(x, q) }, quantize_block);
}

/// The 32 values at `x` and their largest magnitude; `None` when one is
/// not finite.
///
/// # Safety
/// 32 readable floats at `x`.
#[inline(always)]
pub(super) unsafe fn block_amax(x: *const f32) -> Option<([float32x4_t; 8], f32)> {
    // SAFETY: the caller's contract.
    unsafe {
        let v: [float32x4_t; 8] = std::array::from_fn(|i| vld1q_f32(x.add(4 * i)));
        let mut m = vabsq_f32(v[0]);
        for &vi in &v[1..] {
            m = vmaxq_f32(m, vabsq_f32(vi));
        }
        // FMAX propagates NaN, so a non-finite block shows in amax.
        let amax = vmaxvq_f32(m);
        amax.is_finite().then_some((v, amax))
    }
}

/// The rounded codes `round(v * id)` of 32 values (8 x 4 i32 lanes) and their sum.
#[inline(always)]
pub(super) unsafe fn block_codes(v: &[float32x4_t; 8], id: f32) -> ([int32x4_t; 8], i32) {
    // SAFETY: register arithmetic (NEON is baseline on aarch64).
    unsafe {
        // FCVTNS: round to nearest, ties to even, like `round_ties_even`.
        let i: [int32x4_t; 8] = std::array::from_fn(|k| vcvtnq_s32_f32(vmulq_n_f32(v[k], id)));
        let mut sum = i[0];
        for &ik in &i[1..] {
            sum = vaddq_s32(sum, ik);
        }
        (i, vaddvq_s32(sum))
    }
}

/// One block of 32 values; `None` (nothing written) when one is not finite.
unsafe fn quantize_block_neon(x: *const f32, q: *mut i8) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 32 writable bytes.
    unsafe {
        let (v, amax) = block_amax(x)?;
        let (d, id) = scale_of(amax, <i8 as Code>::MAX);
        let (i, s) = block_codes(&v, id);
        let h: [int16x8_t; 4] = std::array::from_fn(|k| vcombine_s16(vqmovn_s32(i[2 * k]), vqmovn_s32(i[2 * k + 1])));
        vst1q_s8(q, vcombine_s8(vqmovn_s16(h[0]), vqmovn_s16(h[1])));
        vst1q_s8(q.add(16), vcombine_s8(vqmovn_s16(h[2]), vqmovn_s16(h[3])));
        Some([d, d * s as f32])
    }
}

// ---- dense ----------------------------------------------------------------

/// Loads 4 weights of a dense row as f32.
trait Dense {
    const BYTES: usize;
    unsafe fn load4(p: *const u8) -> float32x4_t;
    fn scalar(b: &[u8]) -> f32;
}

struct F32;
struct Bf16;

impl Dense for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        // SAFETY: 16 readable bytes (loaded as bytes: any alignment).
        unsafe { vreinterpretq_f32_u8(vld1q_u8(p)) }
    }
    fn scalar(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Dense for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        // SAFETY: 8 readable bytes (loaded as bytes: any alignment).
        unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(vld1_u8(p)))) }
    }
    fn scalar(b: &[u8]) -> f32 {
        half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
    }
}

fn f32_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows::<F32>(w, k, x, x_stride, tokens, out);
}

fn bf16_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows::<Bf16>(w, k, x, x_stride, tokens, out);
}

fn dense_rows<D: Dense>(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    let (rows, nt) = check_dense(w, D::BYTES, k, x, x_stride, &tokens, out);
    let xs = &x[tokens.start * x_stride..];
    // SAFETY: `check_dense` checked the lengths.
    unsafe { by_tokens!(nt, dense_tile::<D>(w, rows, k, xs, x_stride, out)) }
}

unsafe fn dense_tile<const T: usize, D: Dense>(
    w: &[u8],
    rows: usize,
    k: usize,
    x: &[f32],
    x_stride: usize,
    out: &mut [f32],
) {
    let xp: [*const f32; T] = std::array::from_fn(|j| x[j * x_stride..].as_ptr());
    let main = k / 8 * 8;
    for r in 0..rows {
        let row = &w[r * k * D::BYTES..(r + 1) * k * D::BYTES];
        let wp = row.as_ptr();
        // SAFETY: register arithmetic (NEON is baseline on aarch64).
        let (mut acc0, mut acc1) = unsafe { ([vdupq_n_f32(0.0); T], [vdupq_n_f32(0.0); T]) };
        let mut i = 0;
        // SAFETY: i + 8 <= k, within the row and every token's k values.
        unsafe {
            while i < main {
                let w0 = D::load4(wp.add(i * D::BYTES));
                let w1 = D::load4(wp.add((i + 4) * D::BYTES));
                for j in 0..T {
                    acc0[j] = vfmaq_f32(acc0[j], w0, vld1q_f32(xp[j].add(i)));
                    acc1[j] = vfmaq_f32(acc1[j], w1, vld1q_f32(xp[j].add(i + 4)));
                }
                i += 8;
            }
        }
        for j in 0..T {
            // SAFETY: register arithmetic.
            let mut s = unsafe { vaddvq_f32(vaddq_f32(acc0[j], acc1[j])) };
            for (e, b) in row[i * D::BYTES..].chunks_exact(D::BYTES).enumerate() {
                s += D::scalar(b) * x[j * x_stride + i + e];
            }
            out[r * T + j] = s;
        }
    }
}

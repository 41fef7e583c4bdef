//! AVX2 + FMA + F16C kernels (x86-64).
//!
//! Quantized blocks: 4-bit codes are unpacked to 32 bytes per block (low
//! nibbles then high nibbles, the value order of the layouts), `nf4` codes
//! go through `vpshufb` into [`NF4_I8`]. The integer dot product of a block
//! is `vpmaddubsw` (unsigned x signed bytes, pairs summed to i16) then
//! `vpmaddwd` against ones (i32 lanes); signed weights use the sign trick
//! (`|w|` times `x` with `w`'s sign), unsigned `q4_1` codes go in directly.
//! The 8 i32 lanes are converted once per block and accumulated with FMA
//! against the block's scale `d_w * d_x`. Each weight block is unpacked
//! once per row and used for every token of the tile (const `T` tokens,
//! unrolled, accumulators in registers).

use std::arch::x86_64::*;
use std::ops::Range;

use super::act::{QAct, QK_ACT, check_row, quantize_block, scale_of};
use super::generic::{check_dense, check_quant};
use super::{Kernels, NF4_I8, NF4_I8_INV, SimdLevel, TOKEN_TILE};

/// Whether the CPU has what every kernel here needs.
pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// The AVX2 table. Only handed out by [`Kernels::for_level`] after
/// [`has_avx2`]: every entry relies on it.
pub(super) const AVX2: Kernels = Kernels {
    level: SimdLevel::Avx2,
    quantize: quantize_row,
    q8_0: q8_0_rows,
    q4_0: q4_0_rows,
    q4_1: q4_1_rows,
    nf4: nf4_rows,
    f32: f32_rows,
    f16: f16_rows,
    bf16: bf16_rows,
    decode_only: false,
};

/// Calls `$f::<T>(args)` with `T` = the token count `$nt` (1..=TOKEN_TILE).
macro_rules! by_tokens {
    ($nt:expr, $f:ident $(::<$($g:ty),+>)? ($($arg:expr),*)) => {
        match $nt {
            1 => $f::<1 $($(, $g)+)?>($($arg),*),
            2 => $f::<2 $($(, $g)+)?>($($arg),*),
            3 => $f::<3 $($(, $g)+)?>($($arg),*),
            4 => $f::<4 $($(, $g)+)?>($($arg),*),
            n => unreachable!("token tile of {n}"),
        }
    };
}
pub(super) use by_tokens;
const _: () = assert!(TOKEN_TILE == 4);

/// Sum of the 8 lanes.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: plain register arithmetic; callers have AVX enabled.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }
}

/// The little-endian u16 at `p`, as the low lane of an xmm (for `vcvtph2ps`).
#[inline(always)]
unsafe fn load_u16(p: *const u8) -> __m128i {
    // SAFETY: the caller passes a pointer to 2 readable bytes.
    unsafe { _mm_cvtsi32_si128(i32::from(p.cast::<u16>().read_unaligned())) }
}

/// The 32 codes of a 4-bit block (16 bytes at `p`): low nibbles, then high.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 16 readable bytes.
    unsafe {
        let qs = _mm_loadu_si128(p.cast());
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs), _mm256_set1_epi8(0x0F))
    }
}

/// The byte dot product of one block: 8 i32 lanes whose sum is `sum w * x`.
pub(super) trait Dot {
    /// Unsigned `w` (< 128) times signed `x`.
    unsafe fn unsigned(w: __m256i, x: __m256i) -> __m256i;
    /// Signed `w` (`aw = |w|`) times signed `x` (> -128): `|w| * x` with `w`'s sign.
    unsafe fn signed(aw: __m256i, w: __m256i, x: __m256i) -> __m256i;
}

/// AVX2: `vpmaddubsw` (pairs to i16, no saturation at these magnitudes:
/// 2 * 128 * 127 < 2^15) then `vpmaddwd` against ones.
pub(super) struct Maddubs;

impl Dot for Maddubs {
    #[inline(always)]
    unsafe fn unsigned(w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: register arithmetic; callers have AVX2 enabled.
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)) }
    }
    #[inline(always)]
    unsafe fn signed(aw: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: as above.
        unsafe { Self::unsigned(aw, _mm256_sign_epi8(x, w)) }
    }
}

/// Defines safe row kernels `$name` (the [`QuantRows`](super::QuantRows)
/// signature) over the tile bodies, compiled with `$features` and `$dot`.
macro_rules! quant_kernels {
    ($features:literal, $dot:ty, $($name:ident = $body:ident($block:expr, $bytes:expr)),+ $(,)?) => {$(
        fn $name(w: &[u8], row_bytes: usize, act: &QAct<'_>, tokens: Range<usize>, out: &mut [f32]) {
            let (rows, nt, nbw) = check_quant(w, row_bytes, $block, $bytes, act, &tokens, out);
            #[target_feature(enable = $features)]
            unsafe fn entry<const T: usize>(
                w: *const u8,
                row_bytes: usize,
                rows: usize,
                nbw: usize,
                act: &QAct<'_>,
                t0: usize,
                out: *mut f32,
            ) {
                // SAFETY: the caller's contract, forwarded.
                unsafe { $body::<T, $dot>(w, row_bytes, rows, nbw, act, t0, out) }
            }
            // SAFETY: this table is only handed out on CPUs with `$features` (see
            // `Kernels::for_level`); `check_quant` checked every length the body reads
            // and writes.
            unsafe { by_tokens!(nt, entry(w.as_ptr(), row_bytes, rows, nbw, act, tokens.start, out.as_mut_ptr())) }
        }
    )+};
}
pub(super) use quant_kernels;

quant_kernels!(
    "avx2,fma,f16c",
    Maddubs,
    q8_0_rows = q8_0_tile(32, 34),
    q4_0_rows = q4_0_tile(32, 18),
    q4_1_rows = q4_1_tile(32, 20),
    nf4_rows = nf4_tile(64, 34),
);

/// Pointers to the codes and scales of tokens `t0..t0 + T`.
#[inline(always)]
fn token_ptrs<const T: usize>(act: &QAct<'_>, t0: usize) -> ([*const i8; T], [*const [f32; 2]; T]) {
    (std::array::from_fn(|j| act.q_row(t0 + j).as_ptr()), std::array::from_fn(|j| act.ds_row(t0 + j).as_ptr()))
}

// ---- q4_1 -----------------------------------------------------------------

/// The tile body of `q4_1` (see the module docs).
///
/// # Safety
/// The features of the caller's level; rows of `row_bytes` = `nbw` blocks,
/// activation rows of `nbw` weight blocks for tokens `t0..t0 + T`, and
/// `rows * T` writable outputs.
#[inline(always)]
pub(super) unsafe fn q4_1_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, ds) = token_ptrs::<T>(act, t0);
    for r in 0..rows {
        // SAFETY (whole loop): rows of `row_bytes` = `nbw` blocks of 20 bytes, and
        // activation rows of `nbw` blocks, as `check_quant` verified; `out` holds
        // `rows * T` values.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [_mm256_setzero_ps(); T];
            let mut accm = [_mm_setzero_ps(); T];
            for b in 0..nbw {
                let blk = row.add(b * 20);
                // [d, m] of the block in one conversion.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned()));
                let wv = nibbles(blk.add(4));
                for j in 0..T {
                    let x = _mm256_loadu_si256(q[j].add(b * QK_ACT).cast());
                    let p = _mm256_cvtepi32_ps(D::unsigned(wv, x));
                    // [d_w d_x, m_w s_x]
                    let sc = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(ds[j].add(b).cast())));
                    acc[j] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(sc), acc[j]);
                    accm[j] = _mm_add_ps(accm[j], sc);
                }
            }
            for j in 0..T {
                let m = _mm_cvtss_f32(_mm_shuffle_ps::<1>(accm[j], accm[j]));
                *out.add(r * T + j) = hsum(acc[j]) + m;
            }
        }
    }
}

// ---- q4_0 -----------------------------------------------------------------

/// The tile body of `q4_0` (see the module docs).
///
/// # Safety
/// The features of the caller's level; rows of `row_bytes` = `nbw` blocks,
/// activation rows of `nbw` weight blocks for tokens `t0..t0 + T`, and
/// `rows * T` writable outputs.
#[inline(always)]
pub(super) unsafe fn q4_0_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, ds) = token_ptrs::<T>(act, t0);
    for r in 0..rows {
        // SAFETY: as in `q4_1_tile`, blocks of 18 bytes.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nbw {
                let blk = row.add(b * 18);
                let d = _mm_cvtph_ps(load_u16(blk));
                let wv = _mm256_sub_epi8(nibbles(blk.add(2)), _mm256_set1_epi8(8));
                let aw = _mm256_sign_epi8(wv, wv);
                for j in 0..T {
                    let x = _mm256_loadu_si256(q[j].add(b * QK_ACT).cast());
                    let p = _mm256_cvtepi32_ps(D::signed(aw, wv, x));
                    let sc = _mm_mul_ss(d, _mm_load_ss(ds[j].add(b).cast()));
                    acc[j] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(sc), acc[j]);
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = hsum(acc[j]);
            }
        }
    }
}

// ---- q8_0 -----------------------------------------------------------------

/// The tile body of `q8_0` (see the module docs).
///
/// # Safety
/// The features of the caller's level; rows of `row_bytes` = `nbw` blocks,
/// activation rows of `nbw` weight blocks for tokens `t0..t0 + T`, and
/// `rows * T` writable outputs.
#[inline(always)]
pub(super) unsafe fn q8_0_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, ds) = token_ptrs::<T>(act, t0);
    for r in 0..rows {
        // SAFETY: as in `q4_1_tile`, blocks of 34 bytes.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nbw {
                let blk = row.add(b * 34);
                let d = _mm_cvtph_ps(load_u16(blk));
                let wv = _mm256_loadu_si256(blk.add(2).cast());
                let aw = _mm256_sign_epi8(wv, wv);
                for j in 0..T {
                    let x = _mm256_loadu_si256(q[j].add(b * QK_ACT).cast());
                    let p = _mm256_cvtepi32_ps(D::signed(aw, wv, x));
                    let sc = _mm_mul_ss(d, _mm_load_ss(ds[j].add(b).cast()));
                    acc[j] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(sc), acc[j]);
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = hsum(acc[j]);
            }
        }
    }
}

// ---- nf4 ------------------------------------------------------------------

/// The tile body of `nf4` (see the module docs).
///
/// # Safety
/// The features of the caller's level; rows of `row_bytes` = `nbw` blocks,
/// activation rows of `nbw` weight blocks for tokens `t0..t0 + T`, and
/// `rows * T` writable outputs.
#[inline(always)]
pub(super) unsafe fn nf4_tile<const T: usize, D: Dot>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, ds) = token_ptrs::<T>(act, t0);
    // SAFETY: NF4_I8 is 16 bytes; the caller has AVX2 enabled.
    let (table, mask, inv) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(NF4_I8.as_ptr().cast())),
            _mm256_set1_epi8(0x0F),
            _mm_set_ss(NF4_I8_INV),
        )
    };
    for r in 0..rows {
        // SAFETY: as in `q4_1_tile`, blocks of 34 bytes holding 64 values (two
        // activation blocks each).
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nbw {
                let blk = row.add(b * 34);
                let dw = _mm_mul_ss(_mm_cvtph_ps(load_u16(blk)), inv);
                let codes = _mm256_loadu_si256(blk.add(2).cast());
                let w0 = _mm256_shuffle_epi8(table, _mm256_and_si256(codes, mask));
                let w1 = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(codes), mask));
                let (a0, a1) = (_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(w1, w1));
                for j in 0..T {
                    let x0 = _mm256_loadu_si256(q[j].add(b * 64).cast());
                    let x1 = _mm256_loadu_si256(q[j].add(b * 64 + 32).cast());
                    let p0 = _mm256_cvtepi32_ps(D::signed(a0, w0, x0));
                    let p1 = _mm256_cvtepi32_ps(D::signed(a1, w1, x1));
                    let s0 = _mm_mul_ss(dw, _mm_load_ss(ds[j].add(2 * b).cast()));
                    let s1 = _mm_mul_ss(dw, _mm_load_ss(ds[j].add(2 * b + 1).cast()));
                    acc[j] = _mm256_fmadd_ps(p0, _mm256_broadcastss_ps(s0), acc[j]);
                    acc[j] = _mm256_fmadd_ps(p1, _mm256_broadcastss_ps(s1), acc[j]);
                }
            }
            for j in 0..T {
                *out.add(r * T + j) = hsum(acc[j]);
            }
        }
    }
}

// ---- activations ----------------------------------------------------------

fn quantize_row(x: &[f32], q: &mut [i8], ds: &mut [[f32; 2]]) {
    check_row(x, q, ds);
    let full = x.len() / QK_ACT;
    for b in 0..full {
        let (xb, qb) = (&x[b * QK_ACT..(b + 1) * QK_ACT], &mut q[b * QK_ACT..(b + 1) * QK_ACT]);
        // SAFETY: AVX2 (see `AVX2`); both slices hold 32 values.
        ds[b] = unsafe { quantize_block_avx2(xb.as_ptr(), qb.as_mut_ptr()) }.unwrap_or_else(|| quantize_block(xb, qb));
    }
    // The partial last block and the padding blocks, zero-padded.
    let mut buf = [0.0f32; QK_ACT];
    for b in full..ds.len() {
        let start = (b * QK_ACT).min(x.len());
        let n = (x.len() - start).min(QK_ACT);
        buf[..n].copy_from_slice(&x[start..start + n]);
        buf[n..].fill(0.0);
        ds[b] = quantize_block(&buf, &mut q[b * QK_ACT..(b + 1) * QK_ACT]);
    }
}

/// One block of 32 values; `None` (nothing written) when one is not finite.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_avx2(x: *const f32, q: *mut i8) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 32 writable bytes.
    unsafe {
        let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(x.add(i)));
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let a = v.map(|v| _mm256_and_ps(v, abs_mask));
        // Not finite: |x| >= inf or unordered (NaN).
        let inf = _mm256_set1_ps(f32::INFINITY);
        let bad = a.iter().fold(_mm256_setzero_ps(), |m, &a| _mm256_or_ps(m, _mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf)));
        if _mm256_movemask_ps(bad) != 0 {
            return None;
        }
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
        let (d, id) = scale_of(amax);
        let idv = _mm256_set1_ps(id);
        // Round to nearest even (the default MXCSR mode), like `round_ties_even`.
        let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, idv)));
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
        // Packing works per 128-bit lane; the permute restores element order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.cast(), p);
        Some([d, d * s as f32])
    }
}

// ---- dense ----------------------------------------------------------------

/// Loads 8 weights at element `i` of a dense row as f32.
trait Dense {
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    fn scalar(b: &[u8]) -> f32;
}

struct F32;
struct F16;
struct Bf16;

impl Dense for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller passes 32 readable bytes; AVX is enabled in every caller.
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
    fn scalar(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Dense for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: 16 readable bytes; F16C is enabled in every caller.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    fn scalar(b: &[u8]) -> f32 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f32()
    }
}

impl Dense for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: 16 readable bytes; AVX2 is enabled in every caller.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
    }
    fn scalar(b: &[u8]) -> f32 {
        half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
    }
}

fn f32_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows::<F32>(w, k, x, x_stride, tokens, out);
}

fn f16_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows::<F16>(w, k, x, x_stride, tokens, out);
}

fn bf16_rows(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    dense_rows::<Bf16>(w, k, x, x_stride, tokens, out);
}

#[inline(always)]
fn dense_rows<D: Dense>(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    let (rows, nt) = check_dense(w, D::BYTES, k, x, x_stride, &tokens, out);
    let xs = &x[tokens.start * x_stride..];
    // SAFETY: AVX2/FMA/F16C (see `AVX2`); `check_dense` checked the lengths.
    unsafe { by_tokens!(nt, dense_tile::<D>(w, rows, k, xs, x_stride, out)) }
}

/// Generic over the token count `T` and the element type; `by_tokens!` passes `T` first.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_tile<const T: usize, D: Dense>(
    w: &[u8],
    rows: usize,
    k: usize,
    x: &[f32],
    x_stride: usize,
    out: &mut [f32],
) {
    let xp: [*const f32; T] = std::array::from_fn(|j| x[j * x_stride..].as_ptr());
    let main = k / 16 * 16;
    for r in 0..rows {
        let row = &w[r * k * D::BYTES..(r + 1) * k * D::BYTES];
        let wp = row.as_ptr();
        let mut acc0 = [_mm256_setzero_ps(); T];
        let mut acc1 = [_mm256_setzero_ps(); T];
        let mut i = 0;
        // SAFETY: i + 16 <= k, within the row and every token's k values.
        unsafe {
            while i < main {
                let w0 = D::load8(wp.add(i * D::BYTES));
                let w1 = D::load8(wp.add((i + 8) * D::BYTES));
                for j in 0..T {
                    acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[j].add(i)), acc0[j]);
                    acc1[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp[j].add(i + 8)), acc1[j]);
                }
                i += 16;
            }
            if i + 8 <= k {
                let w0 = D::load8(wp.add(i * D::BYTES));
                for j in 0..T {
                    acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[j].add(i)), acc0[j]);
                }
                i += 8;
            }
        }
        for j in 0..T {
            // SAFETY: register arithmetic.
            let mut s = unsafe { hsum(_mm256_add_ps(acc0[j], acc1[j])) };
            for (e, b) in row[i * D::BYTES..].chunks_exact(D::BYTES).enumerate() {
                s += D::scalar(b) * x[j * x_stride + i + e];
            }
            out[r * T + j] = s;
        }
    }
}

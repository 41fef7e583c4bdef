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

use super::act::{Code, QAct, QK_ACT, quantize_block, quantize_row_by, scale_of};
use super::generic::{check_dense, check_quant};
use super::{Kernels, NF4_I8, NF4_I8_INV, QuantSet, SimdLevel, TOKEN_TILE, x86_i16};

/// Whether the CPU has what every kernel here needs.
pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// The AVX2 table. Only handed out by [`Kernels::for_level`] after
/// [`has_avx2`]: every entry relies on it.
pub(super) const AVX2: Kernels = Kernels {
    level: SimdLevel::Avx2,
    fast: QuantSet {
        terms: 1,
        quantize: quantize_row,
        q8_0: q8_0_rows,
        q4_0: q4_0_rows,
        q4_1: q4_1_rows,
        nf4: nf4_rows,
    },
    precise: x86_i16::AVX2,
    exact: x86_i16::AVX2_EXACT,
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
pub(super) unsafe fn load_u16(p: *const u8) -> __m128i {
    // SAFETY: the caller passes a pointer to 2 readable bytes.
    unsafe { _mm_cvtsi32_si128(i32::from(p.cast::<u16>().read_unaligned())) }
}

/// The 32 codes of a 4-bit block (16 bytes at `p`): low nibbles, then high.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 16 readable bytes.
    unsafe {
        // Both halves from one broadcast load; the high half shifted by 4.
        let qs = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        _mm256_and_si256(_mm256_srlv_epi64(qs, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F))
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
/// signature, activation codes of type `$code`, `$terms` per value) over
/// the tile bodies, compiled with `$features` and `$dot`.
macro_rules! quant_kernels {
    (
        $features:literal, $dot:ty, $code:ty, $terms:expr,
        $($name:ident = $body:ident($block:expr, $bytes:expr)),+ $(,)?
    ) => {$(
        fn $name(w: &[u8], row_bytes: usize, act: &QAct<'_, $code>, tokens: Range<usize>, out: &mut [f32]) {
            let (rows, nt, nbw) = check_quant(w, row_bytes, $block, $bytes, act, $terms, &tokens, out);
            #[target_feature(enable = $features)]
            unsafe fn entry<const T: usize>(
                w: *const u8,
                row_bytes: usize,
                rows: usize,
                nbw: usize,
                act: &QAct<'_, $code>,
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
    i8,
    1,
    q8_0_rows = q8_0_tile(32, 34),
    q4_0_rows = q4_0_tile(32, 18),
    q4_1_rows = q4_1_tile(32, 20),
    nf4_rows = nf4_tile(64, 34),
);

/// Pointers to the codes, scales and sums of tokens `t0..t0 + T`.
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

/// Independent FMA chains per token: with one or two tokens a single
/// chain per token would wait on the FMA latency (4 cycles) every block.
#[inline(always)]
pub(super) const fn chains(t: usize) -> usize {
    if t <= 2 { 2 } else { 1 }
}

/// The u32 at the start of 8 consecutive blocks of `stride` bytes from `p`
/// (a block's f16 scale in the low half, the next f16 in the high half).
#[inline(always)]
pub(super) unsafe fn gather8<const STRIDE: i32>(p: *const u8) -> __m256i {
    // SAFETY: the caller passes 8 blocks of STRIDE >= 4 bytes.
    unsafe {
        let idx = _mm256_setr_epi32(0, STRIDE, 2 * STRIDE, 3 * STRIDE, 4 * STRIDE, 5 * STRIDE, 6 * STRIDE, 7 * STRIDE);
        _mm256_i32gather_epi32::<1>(p.cast(), idx)
    }
}

/// The low and high f16 halves of 8 u32 lanes, as two vectors of 8 f32.
#[inline(always)]
pub(super) unsafe fn halves(v: __m256i) -> (__m256, __m256) {
    // SAFETY: register arithmetic; callers have AVX2 and F16C enabled.
    unsafe {
        #[rustfmt::skip]
        let split = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
        );
        // [lo0..3 hi0..3 | lo4..7 hi4..7] -> [lo0..7 | hi0..7]
        let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, split));
        (_mm256_cvtph_ps(_mm256_castsi256_si128(v)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v)))
    }
}

/// Lane `i` of `v` in every lane.
#[inline(always)]
pub(super) unsafe fn lane(v: __m256, i: i32) -> __m256 {
    // SAFETY: register arithmetic; callers have AVX2 enabled.
    unsafe { _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)) }
}

/// Sums the chains of each token into `out[r * T..][..T]`, plus `extra[j]`.
#[inline(always)]
pub(super) unsafe fn store<const T: usize>(acc: &[[__m256; 2]; T], extra: [f32; T], out: *mut f32) {
    for j in 0..T {
        // SAFETY: the caller passes T writable outputs; AVX is enabled.
        unsafe { *out.add(j) = hsum(_mm256_add_ps(acc[j][0], acc[j][1])) + extra[j] };
    }
}

// ---- q4_1 -----------------------------------------------------------------

/// The tile body of `q4_1` (see the module docs): 8 blocks at a time share
/// one gather of their `[d, m]` and one conversion; the rest one by one.
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
    let (q, dx, sx) = token_ptrs::<T, i8>(act, t0);
    let u = chains(T);
    for r in 0..rows {
        // SAFETY: rows of `row_bytes` = `nbw` blocks of 20 bytes, and activation
        // rows of `nbw` blocks, as `check_quant` verified; `out` holds `rows * T`
        // values.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[_mm256_setzero_ps(); 2]; T];
            let mut accm = [_mm256_setzero_ps(); T];
            // The 8 blocks' scales times each token's (see `signed_tile`).
            let mut sc = [[0.0f32; 8]; T];
            let mut b = 0;
            while b + 8 <= nbw {
                let (d8, m8) = halves(gather8::<20>(row.add(b * 20)));
                for j in 0..T {
                    accm[j] = _mm256_fmadd_ps(m8, _mm256_loadu_ps(sx[j].add(b)), accm[j]);
                    _mm256_storeu_ps(sc[j].as_mut_ptr(), _mm256_mul_ps(d8, _mm256_loadu_ps(dx[j].add(b))));
                }
                for i in 0..8 {
                    let wv = nibbles(row.add((b + i) * 20 + 4));
                    for j in 0..T {
                        let x = _mm256_loadu_si256(q[j].add((b + i) * QK_ACT).cast());
                        let p = _mm256_cvtepi32_ps(D::unsigned(wv, x));
                        acc[j][i % u] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(&sc[j][i]), acc[j][i % u]);
                    }
                }
                b += 8;
            }
            let mut extra: [f32; T] = std::array::from_fn(|j| hsum(accm[j]));
            while b < nbw {
                let blk = row.add(b * 20);
                // [d, m] of the block in one conversion.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned()));
                let wv = nibbles(blk.add(4));
                for j in 0..T {
                    let x = _mm256_loadu_si256(q[j].add(b * QK_ACT).cast());
                    let p = _mm256_cvtepi32_ps(D::unsigned(wv, x));
                    let sc = _mm_mul_ss(dm, _mm_load_ss(dx[j].add(b)));
                    acc[j][0] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(sc), acc[j][0]);
                    extra[j] += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * *sx[j].add(b);
                }
                b += 1;
            }
            store::<T>(&acc, extra, out.add(r * T));
        }
    }
}

// ---- q4_0 and q8_0 --------------------------------------------------------

/// Signed 32-code blocks of `BYTES` bytes whose f16 scale comes first.
pub(super) trait SignedBlock {
    const BYTES: usize;
    /// A constant added to every code returned by [`Self::codes`], folded
    /// into a block-sum term instead (`q4_0`: the nibbles go into the
    /// unsigned `vpmaddubsw` operand as they are, `d (q - 8) · x = d q · x -
    /// 8 d sum x` with the activations' block sum `s`; no subtraction and no
    /// sign trick per block).
    const OFFSET: f32;
    /// The 32 signed codes of the block at `p`.
    unsafe fn codes(p: *const u8) -> __m256i;
}

/// `q4_0`: nibbles minus 8.
pub(super) struct Q4_0;
/// `q8_0`: bytes.
pub(super) struct Q8_0;

impl SignedBlock for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: f32 = -8.0;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // SAFETY: 18 readable bytes; AVX2 is enabled in every caller.
        unsafe { nibbles(p.add(2)) }
    }
}

impl SignedBlock for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: f32 = 0.0;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        // SAFETY: 34 readable bytes; AVX is enabled in every caller.
        unsafe { _mm256_loadu_si256(p.add(2).cast()) }
    }
}

/// The tile body of `q4_0` / `q8_0`: like [`q4_1_tile`], signed codes, no minimum.
///
/// # Safety
/// As [`q4_1_tile`], blocks of `B::BYTES`.
#[inline(always)]
pub(super) unsafe fn signed_tile<const T: usize, D: Dot, B: SignedBlock>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, sx) = token_ptrs::<T, i8>(act, t0);
    let u = chains(T);
    // The block dot of codes `wv` (`aw = |wv|`, signed codes only) with `x`.
    let dot = |aw: __m256i, wv: __m256i, x: __m256i| {
        // SAFETY: register arithmetic; the caller's features.
        unsafe { if B::OFFSET != 0.0 { D::unsigned(wv, x) } else { D::signed(aw, wv, x) } }
    };
    let abs = |wv: __m256i| {
        // SAFETY: register arithmetic; AVX2 enabled in every caller.
        unsafe { if B::OFFSET != 0.0 { wv } else { _mm256_sign_epi8(wv, wv) } }
    };
    for r in 0..rows {
        // SAFETY: as in `q4_1_tile`, blocks of B::BYTES bytes.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[_mm256_setzero_ps(); 2]; T];
            let mut acco = [_mm256_setzero_ps(); T];
            // The 8 blocks' scales times each token's, read back by broadcast
            // loads (no lane shuffles, no registers held).
            let mut sc = [[0.0f32; 8]; T];
            let mut b = 0;
            while b + 8 <= nbw {
                let (d8, _) = halves(if B::BYTES == 18 {
                    gather8::<18>(row.add(b * 18))
                } else {
                    gather8::<34>(row.add(b * 34))
                });
                for j in 0..T {
                    if B::OFFSET != 0.0 {
                        acco[j] = _mm256_fmadd_ps(d8, _mm256_loadu_ps(sx[j].add(b)), acco[j]);
                    }
                    _mm256_storeu_ps(sc[j].as_mut_ptr(), _mm256_mul_ps(d8, _mm256_loadu_ps(dx[j].add(b))));
                }
                for i in 0..8 {
                    let wv = B::codes(row.add((b + i) * B::BYTES));
                    let aw = abs(wv);
                    for j in 0..T {
                        let x = _mm256_loadu_si256(q[j].add((b + i) * QK_ACT).cast());
                        let p = _mm256_cvtepi32_ps(dot(aw, wv, x));
                        acc[j][i % u] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(&sc[j][i]), acc[j][i % u]);
                    }
                }
                b += 8;
            }
            let mut extra: [f32; T] = std::array::from_fn(|j| B::OFFSET * hsum(acco[j]));
            while b < nbw {
                let blk = row.add(b * B::BYTES);
                let d = _mm_cvtph_ps(load_u16(blk));
                let wv = B::codes(blk);
                let aw = abs(wv);
                for j in 0..T {
                    let x = _mm256_loadu_si256(q[j].add(b * QK_ACT).cast());
                    let p = _mm256_cvtepi32_ps(dot(aw, wv, x));
                    let sc = _mm_mul_ss(d, _mm_load_ss(dx[j].add(b)));
                    acc[j][0] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(sc), acc[j][0]);
                    if B::OFFSET != 0.0 {
                        extra[j] += B::OFFSET * _mm_cvtss_f32(d) * *sx[j].add(b);
                    }
                }
                b += 1;
            }
            store::<T>(&acc, extra, out.add(r * T));
        }
    }
}

/// [`signed_tile`] for `q4_0`.
///
/// # Safety
/// As [`signed_tile`].
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
    // SAFETY: forwarded.
    unsafe { signed_tile::<T, D, Q4_0>(w, row_bytes, rows, nbw, act, t0, out) }
}

/// [`signed_tile`] for `q8_0`.
///
/// # Safety
/// As [`signed_tile`].
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
    // SAFETY: forwarded.
    unsafe { signed_tile::<T, D, Q8_0>(w, row_bytes, rows, nbw, act, t0, out) }
}

// ---- nf4 ------------------------------------------------------------------

/// The tile body of `nf4`: 4 weight blocks (8 activation blocks) share one
/// gather and conversion of their absmax.
///
/// # Safety
/// As [`q4_1_tile`], blocks of 34 bytes holding 64 values (two activation
/// blocks each).
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
    let (q, dx, _) = token_ptrs::<T, i8>(act, t0);
    let u = chains(T);
    // SAFETY: NF4_I8 is 16 bytes; the caller has AVX2 enabled.
    let (table, mask, inv, inv8) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(NF4_I8.as_ptr().cast())),
            _mm256_set1_epi8(0x0F),
            _mm_set_ss(NF4_I8_INV),
            _mm256_set1_ps(NF4_I8_INV),
        )
    };
    for r in 0..rows {
        // SAFETY: as in `q4_1_tile`, blocks of 34 bytes.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[_mm256_setzero_ps(); 2]; T];
            let mut b = 0;
            while b + 4 <= nbw {
                // Each absmax twice: scale of activation blocks 2i and 2i + 1.
                let idx = _mm256_setr_epi32(0, 0, 34, 34, 68, 68, 102, 102);
                let (a8, _) = halves(_mm256_i32gather_epi32::<1>(row.add(b * 34).cast(), idx));
                let a8 = _mm256_mul_ps(a8, inv8);
                let sc: [__m256; T] = std::array::from_fn(|j| _mm256_mul_ps(a8, _mm256_loadu_ps(dx[j].add(2 * b))));
                for i in 0..4 {
                    let codes = _mm256_loadu_si256(row.add((b + i) * 34 + 2).cast());
                    let w0 = _mm256_shuffle_epi8(table, _mm256_and_si256(codes, mask));
                    let w1 = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(codes), mask));
                    let (a0, a1) = (_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(w1, w1));
                    for j in 0..T {
                        let x0 = _mm256_loadu_si256(q[j].add((b + i) * 64).cast());
                        let x1 = _mm256_loadu_si256(q[j].add((b + i) * 64 + 32).cast());
                        let p0 = _mm256_cvtepi32_ps(D::signed(a0, w0, x0));
                        let p1 = _mm256_cvtepi32_ps(D::signed(a1, w1, x1));
                        acc[j][0] = _mm256_fmadd_ps(p0, lane(sc[j], 2 * i as i32), acc[j][0]);
                        acc[j][1 % u] = _mm256_fmadd_ps(p1, lane(sc[j], 2 * i as i32 + 1), acc[j][1 % u]);
                    }
                }
                b += 4;
            }
            while b < nbw {
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
                    let s0 = _mm_mul_ss(dw, _mm_load_ss(dx[j].add(2 * b)));
                    let s1 = _mm_mul_ss(dw, _mm_load_ss(dx[j].add(2 * b + 1)));
                    acc[j][0] = _mm256_fmadd_ps(p0, _mm256_broadcastss_ps(s0), acc[j][0]);
                    acc[j][0] = _mm256_fmadd_ps(p1, _mm256_broadcastss_ps(s1), acc[j][0]);
                }
                b += 1;
            }
            store::<T>(&acc, [0.0; T], out.add(r * T));
        }
    }
}

// ---- activations ----------------------------------------------------------

fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    // SAFETY: AVX2 (see `AVX2`); `quantize_row_by` passes 32 readable floats
    // and 32 writable codes.
    quantize_row_by(x, (q, d, s), 1, |x, q| unsafe { quantize_block_avx2(x, q) }, quantize_block);
}

/// The 32 values at `x` and their largest magnitude; `None` when one is not finite.
///
/// # Safety
/// 32 readable floats; AVX2 enabled in the caller.
#[inline(always)]
pub(super) unsafe fn block_amax(x: *const f32) -> Option<([__m256; 4], f32)> {
    // SAFETY: the caller's contract.
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
        Some((v, _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))))
    }
}

/// The rounded codes `round(v * id)` of 32 values (4 x 8 i32 lanes) and their sum.
///
/// # Safety
/// AVX2 enabled in the caller.
#[inline(always)]
pub(super) unsafe fn block_codes(v: [__m256; 4], id: f32) -> ([__m256i; 4], i32) {
    // SAFETY: register arithmetic.
    unsafe {
        let idv = _mm256_set1_ps(id);
        // Round to nearest even (the default MXCSR mode), like `round_ties_even`.
        let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, idv)));
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        (i, _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s))))
    }
}

/// One block of 32 values; `None` (nothing written) when one is not finite.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_avx2(x: *const f32, q: *mut i8) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 32 writable bytes.
    unsafe {
        let (v, amax) = block_amax(x)?;
        let (d, id) = scale_of(amax, <i8 as Code>::MAX);
        let (i, s) = block_codes(v, id);
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

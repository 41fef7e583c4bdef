//! x86-64 kernels against 16-bit activations, one term
//! ([`Precision::Precise`](super::Precision)) or two
//! ([`Precision::Exact`](super::Precision)): AVX2 (`vpmaddwd`) and AVX-512
//! VNNI (`vpdpwssd`).
//!
//! The structure of the 8-bit bodies in [`super::x86`] (8 blocks' scales
//! gathered and converted at once, each weight block unpacked once per row
//! and used for every token of the tile, the same f32 accumulation), with
//! the weight codes of a block widened to two vectors of 16 i16 instead of
//! one of 32 bytes: 4-bit codes straight from their 16 bytes (`vpmovzxbw`,
//! then mask / shift: no wider than the 8-bit unpacking), `q8_0` bytes
//! sign-extended, `nf4` looked up in [`NF4_I8`] and sign-extended. The integer
//! dot product of a block is then `vpmaddwd` (i16 x i16 pairs summed to i32)
//! twice and one add, or with VNNI one `vpmaddwd` and one `vpdpwssd`; it is
//! exact: a pair is at most `2 * 128 * 32767 < 2^31`, a block at most
//! `32 * 128 * 32767 < 2^28`. Signed codes need no sign trick (both operands
//! are signed), so only one more load per block and token than the 8-bit
//! kernels, and one more multiply. With two terms each weight block meets
//! both the high and the low codes of the activation block (the same
//! widened weights, one more dot product per token), accumulated in two
//! f32 chains against the same scale and joined at the end
//! (`hi + lo / LO_RATIO`).

use std::arch::x86_64::*;
use std::ops::Range;

use super::act::{
    Code, LO_RATIO, QAct, QK_ACT, block_sum2, quantize_block, quantize_block2, quantize_row_by, scale_of,
};
use super::generic::check_quant;
use super::x86::{block_amax, block_codes, by_tokens, chains, gather8, halves, hsum, lane, load_u16, token_ptrs};
use super::{NF4_I8, NF4_I8_INV, QuantSet};

/// The AVX2 sets. Only reachable through the AVX2 and AVX-512 tables (see
/// [`super::x86::AVX2`]): every entry relies on AVX2, FMA and F16C.
pub(super) const AVX2: QuantSet<i16> =
    QuantSet { terms: 1, quantize: quantize_row, q8_0: q8_0_rows, q4_0: q4_0_rows, q4_1: q4_1_rows, nf4: nf4_rows };
pub(super) const AVX2_EXACT: QuantSet<i16> = QuantSet {
    terms: 2,
    quantize: quantize_row2,
    q8_0: q8_0_rows2,
    q4_0: q4_0_rows2,
    q4_1: q4_1_rows2,
    nf4: nf4_rows2,
};

/// The AVX-512 VNNI sets. Only reachable through the VNNI table.
pub(super) const AVX512_VNNI: QuantSet<i16> =
    QuantSet { terms: 1, quantize: quantize_row, q8_0: q8_0_vnni, q4_0: q4_0_vnni, q4_1: q4_1_vnni, nf4: nf4_vnni };
pub(super) const AVX512_VNNI_EXACT: QuantSet<i16> = QuantSet {
    terms: 2,
    quantize: quantize_row2,
    q8_0: q8_0_vnni2,
    q4_0: q4_0_vnni2,
    q4_1: q4_1_vnni2,
    nf4: nf4_vnni2,
};

/// The i16 dot product of one block of 32: 8 i32 lanes whose sum is
/// `sum_i wa_i xa_i + wb_i xb_i` (16 values in each of the four vectors),
/// for activations of `TERMS` codes per value.
pub(super) trait Dot16 {
    const TERMS: usize;
    unsafe fn dot(wa: __m256i, xa: __m256i, wb: __m256i, xb: __m256i) -> __m256i;
}

/// AVX2: two `vpmaddwd` and an add.
pub(super) struct Madd<const L: usize>;
/// AVX-512 VNNI (256-bit through VL): `vpmaddwd`, then `vpdpwssd` adds the
/// second half's products into it.
pub(super) struct Vnni<const L: usize>;

impl<const L: usize> Dot16 for Madd<L> {
    const TERMS: usize = L;
    #[inline(always)]
    unsafe fn dot(wa: __m256i, xa: __m256i, wb: __m256i, xb: __m256i) -> __m256i {
        // SAFETY: register arithmetic; callers have AVX2 enabled.
        unsafe { _mm256_add_epi32(_mm256_madd_epi16(wa, xa), _mm256_madd_epi16(wb, xb)) }
    }
}

impl<const L: usize> Dot16 for Vnni<L> {
    const TERMS: usize = L;
    #[inline(always)]
    unsafe fn dot(wa: __m256i, xa: __m256i, wb: __m256i, xb: __m256i) -> __m256i {
        // SAFETY: register arithmetic; callers have AVX512-VNNI/VL enabled.
        unsafe { _mm256_dpwssd_epi32(_mm256_madd_epi16(wa, xa), wb, xb) }
    }
}

/// The block dot product of weight halves `(wa, wb)` with the 32 codes at `x`.
#[inline(always)]
unsafe fn dot<D: Dot16>(wa: __m256i, wb: __m256i, x: *const i16) -> __m256i {
    // SAFETY: the caller passes 32 readable codes.
    unsafe { D::dot(wa, _mm256_loadu_si256(x.cast()), wb, _mm256_loadu_si256(x.add(16).cast())) }
}

/// Adds one activation block's products to a token's accumulators: the
/// high codes at `x` (into chain `chain`) and, with two terms, the low
/// codes at `x + 32` (into chain 1; the high ones then use chain 0), each
/// times the block scale `sc`.
#[inline(always)]
unsafe fn add_block<D: Dot16>(
    acc: &mut [__m256; 2],
    chain: usize,
    wa: __m256i,
    wb: __m256i,
    x: *const i16,
    sc: __m256,
) {
    // SAFETY: the caller passes 32 * TERMS readable codes; AVX2 and FMA enabled.
    unsafe {
        let p = _mm256_cvtepi32_ps(dot::<D>(wa, wb, x));
        if D::TERMS == 2 {
            acc[0] = _mm256_fmadd_ps(p, sc, acc[0]);
            let lo = _mm256_cvtepi32_ps(dot::<D>(wa, wb, x.add(QK_ACT)));
            acc[1] = _mm256_fmadd_ps(lo, sc, acc[1]);
        } else {
            acc[chain] = _mm256_fmadd_ps(p, sc, acc[chain]);
        }
    }
}

/// Sums each token's chains into `out[r * T..][..T]`, plus `extra[j]`
/// (two terms: chain 0 high, chain 1 low, joined as `hi + lo / LO_RATIO`).
#[inline(always)]
unsafe fn store<const T: usize, D: Dot16>(acc: &[[__m256; 2]; T], extra: [f32; T], out: *mut f32) {
    for j in 0..T {
        // SAFETY: the caller passes T writable outputs; AVX is enabled.
        unsafe {
            *out.add(j) = if D::TERMS == 2 {
                hsum(acc[j][0]) + hsum(acc[j][1]) * (1.0 / LO_RATIO) + extra[j]
            } else {
                hsum(_mm256_add_ps(acc[j][0], acc[j][1])) + extra[j]
            };
        }
    }
}

super::x86::quant_kernels!(
    "avx2,fma,f16c",
    Madd<1>,
    i16,
    1,
    q8_0_rows = q8_0_tile(32, 34),
    q4_0_rows = q4_0_tile(32, 18),
    q4_1_rows = q4_1_tile(32, 20),
    nf4_rows = nf4_tile(64, 34),
);

super::x86::quant_kernels!(
    "avx2,fma,f16c",
    Madd<2>,
    i16,
    2,
    q8_0_rows2 = q8_0_tile(32, 34),
    q4_0_rows2 = q4_0_tile(32, 18),
    q4_1_rows2 = q4_1_tile(32, 20),
    nf4_rows2 = nf4_tile(64, 34),
);

super::x86::quant_kernels!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    Vnni<1>,
    i16,
    1,
    q8_0_vnni = q8_0_tile(32, 34),
    q4_0_vnni = q4_0_tile(32, 18),
    q4_1_vnni = q4_1_tile(32, 20),
    nf4_vnni = nf4_tile(64, 34),
);

super::x86::quant_kernels!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    Vnni<2>,
    i16,
    2,
    q8_0_vnni2 = q8_0_tile(32, 34),
    q4_0_vnni2 = q4_0_tile(32, 18),
    q4_1_vnni2 = q4_1_tile(32, 20),
    nf4_vnni2 = nf4_tile(64, 34),
);

/// The 16 bytes at `p` in both 128-bit lanes, each lane's half (bytes 0..8
/// in the low lane, 8..16 in the high lane) spread to 16-bit lanes: byte `i`
/// at the low byte of lane `i` (`HIGH = false`, zero above it) or at the
/// high byte (`HIGH = true`, zero below). In-lane `vpshufb` after a
/// broadcast load instead of `vpmovzxbw` / `vpmovsxbw` from xmm to ymm, which
/// cross lanes (on Zen 3 about three times the cost, and the widening was
/// what bounded the 16-bit kernels).
#[inline(always)]
unsafe fn spread16<const HIGH: bool>(p: *const u8) -> __m256i {
    // SAFETY: the caller passes 16 readable bytes; AVX2 is enabled in every caller.
    unsafe {
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        #[rustfmt::skip]
        let ctl = if HIGH {
            _mm256_setr_epi8(
                -1, 0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7,
                -1, 8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15,
            )
        } else {
            _mm256_setr_epi8(
                0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7, -1,
                8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1,
            )
        };
        _mm256_shuffle_epi8(v, ctl)
    }
}

/// The 32 codes of a 4-bit block (16 bytes at `p`) as i16: (values 0..16,
/// values 16..32), i.e. (low nibbles, high nibbles).
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the caller passes 16 readable bytes; AVX2 is enabled in every caller.
    unsafe {
        let v = spread16::<false>(p);
        (_mm256_and_si256(v, _mm256_set1_epi16(0x0F)), _mm256_srli_epi16::<4>(v))
    }
}

// ---- q4_1 -----------------------------------------------------------------

/// The tile body of `q4_1` (see [`super::x86`]'s `q4_1_tile`).
///
/// # Safety
/// The features of the caller's level; rows of `row_bytes` = `nbw` blocks,
/// activation rows of `nbw` weight blocks for tokens `t0..t0 + T`, and
/// `rows * T` writable outputs.
#[inline(always)]
unsafe fn q4_1_tile<const T: usize, D: Dot16>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, sx) = token_ptrs::<T, i16>(act, t0);
    let (u, n) = (chains(T), QK_ACT * D::TERMS);
    for r in 0..rows {
        // SAFETY: rows of `row_bytes` = `nbw` blocks of 20 bytes, and activation
        // rows of `nbw` blocks, as `check_quant` verified; `out` holds `rows * T`
        // values.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[_mm256_setzero_ps(); 2]; T];
            let mut accm = [_mm256_setzero_ps(); T];
            // The 8 blocks' scales times each token's, read back by broadcast
            // loads (no lane shuffles, no registers held).
            let mut sc = [[0.0f32; 8]; T];
            let mut b = 0;
            while b + 8 <= nbw {
                let (d8, m8) = halves(gather8::<20>(row.add(b * 20)));
                for j in 0..T {
                    accm[j] = _mm256_fmadd_ps(m8, _mm256_loadu_ps(sx[j].add(b)), accm[j]);
                    _mm256_storeu_ps(sc[j].as_mut_ptr(), _mm256_mul_ps(d8, _mm256_loadu_ps(dx[j].add(b))));
                }
                #[allow(clippy::needless_range_loop)] // `i` also picks the block
                for i in 0..8 {
                    let (wa, wb) = nibbles16(row.add((b + i) * 20 + 4));
                    for j in 0..T {
                        let s = _mm256_broadcast_ss(&sc[j][i]);
                        add_block::<D>(&mut acc[j], i % u, wa, wb, q[j].add((b + i) * n), s);
                    }
                }
                b += 8;
            }
            let mut extra: [f32; T] = std::array::from_fn(|j| hsum(accm[j]));
            while b < nbw {
                let blk = row.add(b * 20);
                // [d, m] of the block in one conversion.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned()));
                let (wa, wb) = nibbles16(blk.add(4));
                for j in 0..T {
                    let sc = _mm256_broadcastss_ps(_mm_mul_ss(dm, _mm_load_ss(dx[j].add(b))));
                    add_block::<D>(&mut acc[j], 0, wa, wb, q[j].add(b * n), sc);
                    extra[j] += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * *sx[j].add(b);
                }
                b += 1;
            }
            store::<T, D>(&acc, extra, out.add(r * T));
        }
    }
}

// ---- q4_0 and q8_0 --------------------------------------------------------

/// Signed 32-code blocks of `BYTES` bytes whose f16 scale comes first.
trait SignedBlock16 {
    const BYTES: usize;
    /// A constant added to every code returned by [`Self::codes`], folded
    /// into a block-sum term instead (`q4_0`: the nibbles are used as they
    /// are, `d (q - 8) · x = d q · x - 8 d sum x`, the sum being the
    /// activations' block sum `s`): two fewer vector ops per block.
    const OFFSET: f32;
    /// The 32 signed codes of the block at `p` as i16: (values 0..16, values 16..32).
    unsafe fn codes(p: *const u8) -> (__m256i, __m256i);
}

/// `q4_0`: nibbles minus 8.
struct Q4_0;
/// `q8_0`: bytes.
struct Q8_0;

impl SignedBlock16 for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: f32 = -8.0;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> (__m256i, __m256i) {
        // SAFETY: 18 readable bytes; AVX2 is enabled in every caller.
        unsafe { nibbles16(p.add(2)) }
    }
}

impl SignedBlock16 for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: f32 = 0.0;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> (__m256i, __m256i) {
        // SAFETY: 34 readable bytes; AVX2 is enabled in every caller.
        unsafe {
            // Each byte in the high half of its lane, shifted down with its sign.
            (_mm256_srai_epi16::<8>(spread16::<true>(p.add(2))), _mm256_srai_epi16::<8>(spread16::<true>(p.add(18))))
        }
    }
}

/// The tile body of `q4_0` / `q8_0`: like [`q4_1_tile`], signed codes, no minimum.
///
/// # Safety
/// As [`q4_1_tile`], blocks of `B::BYTES`.
#[inline(always)]
unsafe fn signed_tile<const T: usize, D: Dot16, B: SignedBlock16>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, sx) = token_ptrs::<T, i16>(act, t0);
    let (u, n) = (chains(T), QK_ACT * D::TERMS);
    for r in 0..rows {
        // SAFETY: as in `q4_1_tile`, blocks of B::BYTES bytes.
        unsafe {
            let row = w.add(r * row_bytes);
            let mut acc = [[_mm256_setzero_ps(); 2]; T];
            let mut acco = [_mm256_setzero_ps(); T];
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
                #[allow(clippy::needless_range_loop)] // `i` also picks the block
                for i in 0..8 {
                    let (wa, wb) = B::codes(row.add((b + i) * B::BYTES));
                    for j in 0..T {
                        let s = _mm256_broadcast_ss(&sc[j][i]);
                        add_block::<D>(&mut acc[j], i % u, wa, wb, q[j].add((b + i) * n), s);
                    }
                }
                b += 8;
            }
            let mut extra: [f32; T] = std::array::from_fn(|j| B::OFFSET * hsum(acco[j]));
            while b < nbw {
                let blk = row.add(b * B::BYTES);
                let d = _mm_cvtph_ps(load_u16(blk));
                let (wa, wb) = B::codes(blk);
                for j in 0..T {
                    let sc = _mm256_broadcastss_ps(_mm_mul_ss(d, _mm_load_ss(dx[j].add(b))));
                    add_block::<D>(&mut acc[j], 0, wa, wb, q[j].add(b * n), sc);
                    if B::OFFSET != 0.0 {
                        extra[j] += B::OFFSET * _mm_cvtss_f32(d) * *sx[j].add(b);
                    }
                }
                b += 1;
            }
            store::<T, D>(&acc, extra, out.add(r * T));
        }
    }
}

/// [`signed_tile`] for `q4_0`.
///
/// # Safety
/// As [`signed_tile`].
#[inline(always)]
unsafe fn q4_0_tile<const T: usize, D: Dot16>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
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
unsafe fn q8_0_tile<const T: usize, D: Dot16>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
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
unsafe fn nf4_tile<const T: usize, D: Dot16>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    nbw: usize,
    act: &QAct<'_, i16>,
    t0: usize,
    out: *mut f32,
) {
    let (q, dx, _) = token_ptrs::<T, i16>(act, t0);
    let (u, n) = (chains(T), QK_ACT * D::TERMS);
    // SAFETY: NF4_I8 is 16 bytes; the caller has AVX2 enabled.
    let (table, mask, inv, inv8) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(NF4_I8.as_ptr().cast())),
            _mm256_set1_epi8(0x0F),
            _mm_set_ss(NF4_I8_INV),
            _mm256_set1_ps(NF4_I8_INV),
        )
    };
    // The 64 weights of the block at `p` as four vectors of 16 i16.
    // SAFETY (of each call): 34 readable bytes at `p`; AVX2 enabled.
    let codes = |p: *const u8| unsafe {
        let c = _mm256_loadu_si256(p.add(2).cast());
        let w0 = _mm256_shuffle_epi8(table, _mm256_and_si256(c, mask));
        let w1 = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(c), mask));
        let wide = |v: __m256i| {
            (_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v)))
        };
        (wide(w0), wide(w1))
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
                    let ((w0a, w0b), (w1a, w1b)) = codes(row.add((b + i) * 34));
                    for j in 0..T {
                        let x = q[j].add((b + i) * 2 * n);
                        add_block::<D>(&mut acc[j], 0, w0a, w0b, x, lane(sc[j], 2 * i as i32));
                        add_block::<D>(&mut acc[j], 1 % u, w1a, w1b, x.add(n), lane(sc[j], 2 * i as i32 + 1));
                    }
                }
                b += 4;
            }
            while b < nbw {
                let blk = row.add(b * 34);
                let dw = _mm_mul_ss(_mm_cvtph_ps(load_u16(blk)), inv);
                let ((w0a, w0b), (w1a, w1b)) = codes(blk);
                for j in 0..T {
                    let x = q[j].add(b * 2 * n);
                    let s0 = _mm256_broadcastss_ps(_mm_mul_ss(dw, _mm_load_ss(dx[j].add(2 * b))));
                    let s1 = _mm256_broadcastss_ps(_mm_mul_ss(dw, _mm_load_ss(dx[j].add(2 * b + 1))));
                    add_block::<D>(&mut acc[j], 0, w0a, w0b, x, s0);
                    add_block::<D>(&mut acc[j], 0, w1a, w1b, x.add(n), s1);
                }
                b += 1;
            }
            store::<T, D>(&acc, [0.0; T], out.add(r * T));
        }
    }
}

// ---- activations ----------------------------------------------------------

fn quantize_row(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    // SAFETY: AVX2 (these sets are only in AVX2-or-better tables);
    // `quantize_row_by` passes 32 readable floats and 32 writable codes.
    quantize_row_by(x, (q, d, s), 1, |x, q| unsafe { quantize_block_avx2(x, q) }, quantize_block);
}

fn quantize_row2(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    // SAFETY: as above, 64 writable codes.
    quantize_row_by(x, (q, d, s), 2, |x, q| unsafe { quantize_block2_avx2(x, q) }, quantize_block2);
}

/// 32 i32 lanes (4 vectors) as 32 i16 codes at `q`, in order.
///
/// # Safety
/// 32 writable codes; AVX2 enabled in the caller; every lane within i16.
#[inline(always)]
unsafe fn store_i16(i: [__m256i; 4], q: *mut i16) {
    // SAFETY: the caller's contract.
    unsafe {
        // Packing works per 128-bit lane; the permute restores element order.
        let lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(i[0], i[1]));
        let hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256(q.cast(), lo);
        _mm256_storeu_si256(q.add(16).cast(), hi);
    }
}

/// One block of 32 values to i16 codes; `None` (nothing written) when one is
/// not finite.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_avx2(x: *const f32, q: *mut i16) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 32 writable codes.
    unsafe {
        let (v, amax) = block_amax(x)?;
        let (d, id) = scale_of(amax, <i16 as Code>::MAX);
        // |v * id| <= 32767 (1 + 2^-22): the codes fit i16 without saturating.
        let (i, s) = block_codes(v, id);
        store_i16(i, q);
        Some([d, d * s as f32])
    }
}

/// One block of 32 values to two terms of i16 codes (64 at `q`, as
/// [`quantize_block2`] computes them); `None` (nothing written) when one is
/// not finite.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block2_avx2(x: *const f32, q: *mut i16) -> Option<[f32; 2]> {
    // SAFETY: the caller passes 32 readable floats and 64 writable codes.
    unsafe {
        let (v, amax) = block_amax(x)?;
        let (d, id) = scale_of(amax, <i16 as Code>::MAX);
        let (hi, sh) = block_codes(v, id);
        // The remainders x - d hi, one rounding each (vfmadd, as `mul_add`).
        let nd = _mm256_set1_ps(-d);
        let r: [__m256; 4] = std::array::from_fn(|k| _mm256_fmadd_ps(nd, _mm256_cvtepi32_ps(hi[k]), v[k]));
        let (lo, sl) = block_codes(r, id * LO_RATIO);
        store_i16(hi, q);
        store_i16(lo, q.add(QK_ACT));
        Some([d, block_sum2(d, sh, sl)])
    }
}

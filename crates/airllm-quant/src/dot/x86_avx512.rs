//! AVX-512 kernels (x86-64): 16-lane dense kernels (AVX-512 F/BW/VL), and
//! with VNNI the quantized tile bodies of [`super::x86`] with `vpdpbusd`
//! (one instruction for `vpmaddubsw` + `vpmaddwd`, 256-bit through VL) and,
//! for 16-bit activations, those of [`super::x86_i16`] with `vpdpwssd`.
//!
//! Not run on the development machine (a Zen 3 without AVX-512): the tests
//! cover these levels wherever the CPU has them (`cargo test --release -p
//! airllm-quant` runs every level the CPU supports against the generic oracle).

use std::arch::x86_64::*;
use std::ops::Range;

use super::act::QAct;
use super::generic::{check_dense, check_quant};
use super::x86::{self, Dot, by_tokens, nf4_tile, q4_0_tile, q4_1_tile, q8_0_tile, quant_kernels};
use super::{Kernels, QuantSet, SimdLevel, x86_i16};

/// AVX-512 F, BW and VL.
pub(super) fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")
}

/// AVX-512 VNNI (on top of [`has_avx512`]).
pub(super) fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512vnni")
}

/// AVX2 quantized kernels, AVX-512 dense kernels. Only handed out after
/// [`has_avx512`] and [`x86::has_avx2`].
pub(super) const AVX512: Kernels =
    Kernels { level: SimdLevel::Avx512, f32: f32_rows, f16: f16_rows, bf16: bf16_rows, ..x86::AVX2 };

/// VNNI quantized kernels, AVX-512 dense kernels. Only handed out after
/// [`has_vnni`] too.
pub(super) const AVX512_VNNI: Kernels = Kernels {
    level: SimdLevel::Avx512Vnni,
    fast: QuantSet { q8_0: q8_0_rows, q4_0: q4_0_rows, q4_1: q4_1_rows, nf4: nf4_rows, ..x86::AVX2.fast },
    precise: x86_i16::AVX512_VNNI,
    exact: x86_i16::AVX512_VNNI_EXACT,
    ..AVX512
};

/// `vpdpbusd`: unsigned x signed bytes, 4 products per i32 lane, no
/// intermediate saturation.
struct Vnni;

impl Dot for Vnni {
    #[inline(always)]
    unsafe fn unsigned(w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: register arithmetic; callers have AVX512-VNNI/VL enabled.
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x) }
    }
    #[inline(always)]
    unsafe fn signed(aw: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: as above.
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, _mm256_sign_epi8(x, w)) }
    }
}

quant_kernels!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    Vnni,
    i8,
    1,
    q8_0_rows = q8_0_tile(32, 34),
    q4_0_rows = q4_0_tile(32, 18),
    q4_1_rows = q4_1_tile(32, 20),
    nf4_rows = nf4_tile(64, 34),
);

/// Loads 16 weights of a dense row as f32.
trait Dense16 {
    const BYTES: usize;
    unsafe fn load16(p: *const u8) -> __m512;
    fn scalar(b: &[u8]) -> f32;
}

struct F32;
struct F16;
struct Bf16;

impl Dense16 for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        // SAFETY: 64 readable bytes; AVX-512F is enabled in every caller.
        unsafe { _mm512_loadu_ps(p.cast()) }
    }
    fn scalar(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Dense16 for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        // SAFETY: 32 readable bytes; AVX-512F is enabled in every caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    fn scalar(b: &[u8]) -> f32 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f32()
    }
}

impl Dense16 for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        // SAFETY: 32 readable bytes; AVX-512F is enabled in every caller.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
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
fn dense_rows<D: Dense16>(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]) {
    let (rows, nt) = check_dense(w, D::BYTES, k, x, x_stride, &tokens, out);
    let xs = &x[tokens.start * x_stride..];
    // SAFETY: AVX-512 F/BW/VL (see `AVX512`); `check_dense` checked the lengths.
    unsafe { by_tokens!(nt, dense_tile::<D>(w, rows, k, xs, x_stride, out)) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn dense_tile<const T: usize, D: Dense16>(
    w: &[u8],
    rows: usize,
    k: usize,
    x: &[f32],
    x_stride: usize,
    out: &mut [f32],
) {
    let xp: [*const f32; T] = std::array::from_fn(|j| x[j * x_stride..].as_ptr());
    let main = k / 32 * 32;
    for r in 0..rows {
        let row = &w[r * k * D::BYTES..(r + 1) * k * D::BYTES];
        let wp = row.as_ptr();
        let mut acc0 = [_mm512_setzero_ps(); T];
        let mut acc1 = [_mm512_setzero_ps(); T];
        let mut i = 0;
        // SAFETY: i + 32 <= k (then i + 16 <= k), within the row and every token's k values.
        unsafe {
            while i < main {
                let w0 = D::load16(wp.add(i * D::BYTES));
                let w1 = D::load16(wp.add((i + 16) * D::BYTES));
                for j in 0..T {
                    acc0[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp[j].add(i)), acc0[j]);
                    acc1[j] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp[j].add(i + 16)), acc1[j]);
                }
                i += 32;
            }
            if i + 16 <= k {
                let w0 = D::load16(wp.add(i * D::BYTES));
                for j in 0..T {
                    acc0[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp[j].add(i)), acc0[j]);
                }
                i += 16;
            }
        }
        for j in 0..T {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[j], acc1[j]));
            for (e, b) in row[i * D::BYTES..].chunks_exact(D::BYTES).enumerate() {
                s += D::scalar(b) * x[j * x_stride + i + e];
            }
            out[r * T + j] = s;
        }
    }
}

//! Fast CPU matmul over the stored weight bytes:
//! `y[t, n] (+)= x[t, k] · W[n, k]ᵀ (+ bias[n])`, with the semantics of the
//! GPU launcher (`airllm_gpu::kernels::matmul`): the same [`MatmulShape`]
//! fields, bias added before the optional accumulation into `y`.
//!
//! ```
//! use airllm_quant::dot::{Kernels, Matmul, MatmulShape, Precision, Scratch, WeightFormat};
//! use airllm_quant::{Codec, pool};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (n, k) = (3, 40);
//! let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.1).sin()).collect();
//! let weight = Codec::Q4_1.encode_matrix(w.as_slice().into(), n, k)?;
//! let x: Vec<f32> = (0..k).map(|i| i as f32 / k as f32).collect();
//! let mut y = vec![0.0; n];
//! let m = Matmul {
//!     shape: MatmulShape::new(1, n, k),
//!     format: WeightFormat::Quant(Codec::Q4_1),
//!     weight: &weight,
//!     x: &x,
//!     bias: None,
//!     precision: Precision::Exact,
//! };
//! Kernels::best().matmul(&m, &mut y, &mut Scratch::new(), pool::global())?;
//! for r in 0..n {
//!     let exact: f32 = (0..k).map(|j| w[r * k + j] * x[j]).sum();
//!     assert!((y[r] - exact).abs() < 0.2, "row {r}: {} vs {exact}", y[r]);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! **How.** Quantized weights are multiplied against activations quantized
//! per block of 32 ([`act`]): per block an exact integer dot product of the
//! codes, scaled once in f32, as ggml does. The activation codes are chosen
//! per call by [`Matmul::precision`]:
//! - [`Precision::Exact`] (the default): two 16-bit codes per value (a high
//!   and a low term), two i16 x i16 block dots; matches an f32 matmul;
//! - [`Precision::Precise`]: one 16-bit code; the block dot is
//!   i16 x i16 (`pmaddwd` on AVX2, `vpdpwssd` with AVX-512 VNNI, `smlal` on
//!   aarch64), the weight codes widened to i16 once per block and reused for
//!   every token of the tile;
//! - [`Precision::Fast`]: 8-bit codes (ggml's `q8_0` / `q8_1` scheme); the
//!   block dot is u8/i8 x i8 (`pmaddubsw` / `vpdpbusd` on x86, `sdot` on
//!   aarch64).
//!
//! `nf4` codes go through a 16-entry int8 code book ([`NF4_I8`],
//! `round(127 * NF4_TABLE)`, a table lookup per 32 codes) in both. Dense
//! f32/f16/bf16 weights use f32 FMA against the f32 activations (the
//! precision does not apply). Codecs without a fast kernel (any added to
//! [`Codec`] later) are decoded row by row with [`Codec::decode_row`] and
//! multiplied as f32, so they work, slowly, with no change here.
//!
//! Why two: 8-bit activations err by up to `amax / 254` per value, and on a
//! whole model that adds up. On SmolLM2-135M (Q4_1 GGUF, every matmul in
//! this crate) the fast mode moves the last-position logits by 0.5-0.9 (logit
//! rms 4-11) against transformers and its greedy text leaves transformers'
//! after 19 tokens; the precise mode keeps them within the figures of the
//! issue-14 report and its greedy ids identical. The cost is about one more
//! load and one more multiply per block and token (see "Speed").
//!
//! **Tiling.** Rows are cut into blocks of [`ROW_BLOCK`], handed to the pool's
//! threads; within a block every tile of up to [`TOKEN_TILE`] tokens is
//! computed with the weight block loaded once per row and reused for all
//! tokens of the tile (registers), while the row block stays in L1/L2
//! across tiles. Decode (t <= 4) is one tile: a GEMV that reads each weight
//! once; prefill is the same loop over many tiles: a GEMM whose weights
//! are read from memory once per pass.
//!
//! **Accuracy.** Exact up to f32 rounding except for the activations'
//! rounding to `Q`-bit codes (`Q` = 32767 precise, 127 fast; and, for
//! `nf4`, the code book's rounding to int8). For one output, with `ŵ` the
//! decoded weight row and `x` the activation row, the error against `ŵ · x`
//! in f64 is at most `sum_b (amax_b / 2Q) (1 + Q 2^-21) sum_{j in b} |ŵ_j|`
//! (`amax_b` the largest `|x|` of activation block `b`; the last factor
//! covers the f32 rounding of `x / d`), which is at most
//! `sqrt(32) / 2Q ||x|| ||ŵ||`: `8.6e-5 ||x|| ||ŵ||` precise, `0.0223 ||x||
//! ||ŵ||` fast. `nf4` adds at most `0.0037 sum_b absmax_b sum_{j in b}
//! |x_j|`. Typical errors are far smaller (random rounding: about `||x||
//! ||ŵ|| / (2Q sqrt(3 k / 32))`; on the tests' data the relative rms error is
//! 1.2e-5 precise against 3.4e-3 fast). The tests check the per-output bound
//! for every codec, level and precision.
//!
//! **Speed** (`cargo bench -p airllm-benches --bench cpu`; 2-core AMD EPYC
//! Zen 3 KVM sandbox, AVX2, shared with other jobs: load average 11-13
//! throughout, so every figure below is a lower bound and medians swing
//! 2x). Best of many runs, one thread, weights hot in cache: GEMV 576x576
//! `q4_1` 8-10 GB/s of weights, `q4_0` 6-8, `nf4` 8, `q8_0` 14, f16/bf16
//! 24-30, f32 40-50; GEMM 1536x576 x 128 tokens, `q4_1`, 26 GFLOP/s. The
//! matmuls of one SmolLM2-135M Q4_1 decode step (210 GEMVs, 66 MB, plus the
//! 30 MB `q8_0` head) take 13-15 ms + 2.5 ms at best on one thread; ggml-cpu
//! (llama.cpp's CPU backend) on the same matmul graph in the same minutes:
//! 16-21 ms at best, and its two-thread median collapses to 120-350 ms on
//! this oversubscribed machine where [`ThreadPool`](crate::pool::ThreadPool)
//! stays at 24-30 ms (a late worker never stalls a job).
//!
//! Per block, on the same Zen 3 (throughput of the innermost 8-block loops
//! of the AVX2 kernels under `llvm-mca-14 -mcpu=znver3`, cycles per row,
//! token and block of 32; deterministic where the shared machine's timings
//! swing 2x), one token (decode): `q4_0` exact 5.4, precise 3.8, fast 3.2;
//! `q4_1` 5.4 / 4.0 / 3.4; `q8_0` 5.7 / 4.7 / 3.0; two tokens: `q4_0` 3.0
//! precise, 3.2 fast. Before 2026-12-02 the 16-bit kernels widened codes
//! with `vpmovzxbw` / `vpmovsxbw` from xmm to ymm, which cross 128-bit lanes
//! (three cycles of Zen 3's two shuffle pipes each, two per block: the
//! bound), and `q4_0` subtracted its 8 per block: decode `q4_0` exact was
//! 7.0, precise 5.6, fast 4.1. Now the codes are spread in-lane with one
//! `vpshufb` after a broadcast load, `q4_0`'s nibbles enter the dot products
//! unsigned with `-8 d sum x` added from the activations' block sums, and the
//! 8 blocks' scales are read back by broadcast loads instead of lane
//! shuffles. The 16-bit kernels are bound by arithmetic: `exact` does four
//! `vpmaddwd` per block and token, `precise` two, where llama.cpp's 8-bit
//! scheme (`fast`) does one `vpmaddubsw` and one `vpmaddwd`.
//!
//! **SIMD.** [`SimdLevel::detect`] picks the best level once ([`Kernels::best`]);
//! the kernels are function pointers in a [`Kernels`] table, never re-checked
//! per call. [`Kernels::for_level`] builds the table of any level the CPU
//! supports, for tests and benches.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
mod aarch64_i16;
pub mod act;
mod gemm;
pub(crate) mod generic;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_i16;

use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

pub use act::Scratch;
pub use gemm::{ROW_BLOCK, TOKEN_TILE};

use crate::Codec;
use crate::pool::Parallel;
use act::{QAct, QuantizeRow};

/// The int8 code book of the `nf4` kernels: `round(127 * NF4_TABLE[c])`.
/// Its largest rounding error is 0.0037 of a block's absmax.
pub const NF4_I8: [i8; 16] = [-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127];
/// Scale of [`NF4_I8`]: a weight is `absmax * NF4_I8[c] * NF4_I8_INV`.
pub const NF4_I8_INV: f32 = 1.0 / 127.0;

/// How the weights of a matmul are stored (the CPU twin of the GPU crate's
/// `WeightFormat`, same variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit floats, little endian.
    F32,
    /// IEEE half floats, little endian.
    F16,
    /// bfloat16, little endian.
    Bf16,
    /// Block-quantized rows in a [`Codec`]'s layout.
    Quant(Codec),
}

impl WeightFormat {
    /// Bytes of one row of `cols` values (quantized: whole blocks).
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => cols * 4,
            WeightFormat::F16 | WeightFormat::Bf16 => cols * 2,
            WeightFormat::Quant(c) => c.row_bytes(cols),
        }
    }

    /// Lower-case name (`f32`, `f16`, `bf16`, or the codec's).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Quant(c) => c.name(),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shape and layout of one matmul (the GPU launcher's fields, as `usize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    /// Tokens (rows of x and y).
    pub t: usize,
    /// Output features (rows of W).
    pub n: usize,
    /// Input features (columns of W, before block padding).
    pub k: usize,
    /// f32 values between token rows of x (>= k).
    pub x_stride: usize,
    /// f32 values between token rows of y.
    pub y_stride: usize,
    /// First column of y written (so q, k and v can share one buffer).
    pub y_off: usize,
    /// `y += x · Wᵀ (+ bias)` instead of `y = x · Wᵀ (+ bias)` (fuses the residual add).
    pub accumulate: bool,
}

impl MatmulShape {
    /// Contiguous x and y (`x_stride = k`, `y_stride = n`, `y_off = 0`), overwrite.
    pub fn new(t: usize, n: usize, k: usize) -> Self {
        MatmulShape { t, n, k, x_stride: k, y_stride: n, y_off: 0, accumulate: false }
    }
}

/// The inputs of one matmul; the output `y` is passed separately.
#[derive(Clone, Copy, Debug)]
pub struct Matmul<'a> {
    /// Shape and layout.
    pub shape: MatmulShape,
    /// How `weight` is stored.
    pub format: WeightFormat,
    /// `[n, k]` weights, row r at byte `r * format.row_bytes(k)` (any alignment;
    /// typically a memory-mapped shard).
    pub weight: &'a [u8],
    /// `[t, x_stride]` activations.
    pub x: &'a [f32],
    /// Optional `[n]` bias.
    pub bias: Option<&'a [f32]>,
    /// How finely quantized weights see the activations (dense weights
    /// always use f32 activations).
    pub precision: Precision,
}

/// The activation precision of the quantized kernels. Every one keeps
/// exact integer SIMD dot products per block of 32; they differ in the codes
/// the activations are rounded to (see "Accuracy" in the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Two 16-bit codes per value, `x ≈ d (hi + lo / 16384)` with `d = amax /
    /// 32767` per block of 32: two i16 dot products per block (`pmaddwd`
    /// on AVX2, `vpdpwssd` with AVX-512 VNNI, `smlal` on NEON) over weight
    /// codes widened once. The activations are kept to `amax * 2^-30`, below
    /// the f32 rounding of the sums, so results match an f32 matmul over the
    /// decoded weights (SmolLM2-135M: last logits within 4e-5 of
    /// transformers', as with f32). The default.
    #[default]
    Exact,
    /// One 16-bit code per value, `d = amax / 32767` (258 times finer than
    /// [`Precision::Fast`]), one i16 dot product per block. SmolLM2-135M:
    /// greedy ids of transformers, last logits within 6e-3.
    Precise,
    /// One 8-bit code per value, `d = amax / 127` (ggml's `q8_0` / `q8_1`
    /// scheme), `pmaddubsw` / `vpdpbusd` / `sdot`: the fastest, but the
    /// rounding of every matmul's input adds up over a model (SmolLM2-135M:
    /// last logits off by 0.5-0.9, greedy text leaving transformers' after
    /// 19 tokens).
    Fast,
}

impl Precision {
    /// All, the default first, then by speed.
    pub const ALL: [Precision; 3] = [Precision::Exact, Precision::Precise, Precision::Fast];

    /// Lower-case name (`exact`, `precise`, `fast`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Precise => "precise",
            Precision::Fast => "fast",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A matmul whose arguments do not fit its shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MatmulError {
    /// The shape itself is inconsistent.
    #[error("cpu matmul: bad shape {shape:?}: {reason}")]
    Shape {
        /// The shape given.
        shape: MatmulShape,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A buffer is shorter than the shape needs.
    #[error("cpu matmul: {what} holds {got} {unit}, the shape {shape:?} needs {need}")]
    TooShort {
        /// Which argument (`weight`, `x`, `y`, `bias`).
        what: &'static str,
        /// `bytes` or `values`.
        unit: &'static str,
        /// Length needed.
        need: usize,
        /// Length given.
        got: usize,
        /// The shape.
        shape: MatmulShape,
    },
}

/// A set of CPU instructions the kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable Rust (the test oracle).
    Generic,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL (16-lane dense kernels).
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd` in the quantized kernels).
    Avx512Vnni,
    /// aarch64 NEON (Advanced SIMD).
    Neon,
    /// NEON with the dot-product extension (`sdot`).
    NeonDotprod,
}

impl SimdLevel {
    /// Every level, weakest first.
    pub const ALL: [SimdLevel; 6] = [
        SimdLevel::Generic,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Avx512Vnni,
        SimdLevel::Neon,
        SimdLevel::NeonDotprod,
    ];

    /// Lower-case name (`generic`, `avx2`, `avx512`, `avx512vnni`, `neon`, `neon-dotprod`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Generic => "generic",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Avx512Vnni => "avx512vnni",
            SimdLevel::Neon => "neon",
            SimdLevel::NeonDotprod => "neon-dotprod",
        }
    }

    /// Whether this CPU runs the level (checked at run time).
    pub fn is_available(self) -> bool {
        match self {
            SimdLevel::Generic => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => x86::has_avx2() && x86_avx512::has_avx512(),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Vnni => x86::has_avx2() && x86_avx512::has_avx512() && x86_avx512::has_vnni(),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => true,
            #[cfg(target_arch = "aarch64")]
            SimdLevel::NeonDotprod => aarch64::has_dotprod(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The levels this CPU runs, weakest first.
    pub fn available() -> Vec<SimdLevel> {
        SimdLevel::ALL.into_iter().filter(|l| l.is_available()).collect()
    }

    /// The best level this CPU runs.
    pub fn detect() -> SimdLevel {
        SimdLevel::ALL.into_iter().rev().find(|l| l.is_available()).unwrap_or(SimdLevel::Generic)
    }
}

impl fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quantized row kernel: `out[r * nt + j] = W[r] · x[tokens.start + j]` for
/// the rows of `w` (`out.len() / nt` rows of `row_bytes`), `nt = tokens.len()
/// <= TOKEN_TILE`, against activation codes of type `C` (`i8` or `i16`).
pub(crate) type QuantRows<C = i8> =
    fn(w: &[u8], row_bytes: usize, act: &QAct<'_, C>, tokens: Range<usize>, out: &mut [f32]);
/// A dense row kernel: like [`QuantRows`], rows of `k` values, f32
/// activations `x[t * x_stride..][..k]`.
pub(crate) type DenseRows = fn(w: &[u8], k: usize, x: &[f32], x_stride: usize, tokens: Range<usize>, out: &mut [f32]);

/// The quantizer and quantized kernels of one activation precision
/// (codes of type `C`, `terms` per value).
#[derive(Clone, Copy)]
pub(crate) struct QuantSet<C> {
    pub(crate) terms: usize,
    pub(crate) quantize: QuantizeRow<C>,
    pub(crate) q8_0: QuantRows<C>,
    pub(crate) q4_0: QuantRows<C>,
    pub(crate) q4_1: QuantRows<C>,
    pub(crate) nf4: QuantRows<C>,
}

impl<C> QuantSet<C> {
    /// The kernel of `codec`, if it has one.
    pub(crate) fn get(&self, codec: Codec) -> Option<QuantRows<C>> {
        match codec {
            Codec::Q8_0 => Some(self.q8_0),
            Codec::Q4_0 => Some(self.q4_0),
            Codec::Q4_1 => Some(self.q4_1),
            Codec::Nf4 => Some(self.nf4),
            // Codecs added later run through their decoder until they get a kernel.
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// The kernels of one [`SimdLevel`], chosen once.
#[derive(Clone, Copy)]
pub struct Kernels {
    level: SimdLevel,
    /// 8-bit activations ([`Precision::Fast`]).
    pub(crate) fast: QuantSet<i8>,
    /// 16-bit activations ([`Precision::Precise`]).
    pub(crate) precise: QuantSet<i16>,
    /// Two 16-bit terms ([`Precision::Exact`]).
    pub(crate) exact: QuantSet<i16>,
    pub(crate) f32: DenseRows,
    pub(crate) f16: DenseRows,
    pub(crate) bf16: DenseRows,
    /// Tests only: run every quantized format through the decode fallback.
    pub(crate) decode_only: bool,
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels").field("level", &self.level).finish()
    }
}

const GENERIC: Kernels = Kernels {
    level: SimdLevel::Generic,
    fast: generic::FAST,
    precise: generic::PRECISE,
    exact: generic::EXACT,
    f32: generic::F32,
    f16: generic::F16,
    bf16: generic::BF16,
    decode_only: false,
};

impl Kernels {
    /// The kernels of the best level this CPU runs, detected on first use.
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<&'static Kernels> = OnceLock::new();
        BEST.get_or_init(|| Kernels::for_level(SimdLevel::detect()).unwrap_or(&GENERIC))
    }

    /// The kernels of `level`, or `None` when this CPU does not run it.
    pub fn for_level(level: SimdLevel) -> Option<&'static Kernels> {
        if !level.is_available() {
            return None;
        }
        match level {
            SimdLevel::Generic => Some(&GENERIC),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Some(&x86::AVX2),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => Some(&x86_avx512::AVX512),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Vnni => Some(&x86_avx512::AVX512_VNNI),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => Some(&aarch64::NEON),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::NeonDotprod => Some(&aarch64::NEON_DOTPROD),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The level these kernels are built for.
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// Whether `format` has a fast kernel here in both precisions (else it
    /// is decoded row by row into f32 first: correct, several times slower).
    pub fn is_fast(&self, format: WeightFormat) -> bool {
        match format {
            WeightFormat::Quant(c) => !self.decode_only && self.fast.get(c).is_some() && self.precise.get(c).is_some(),
            _ => true,
        }
    }

    /// Computes `y[t, y_off + n] (+)= x[t] · W[n] (+ bias[n])` for every token
    /// `t` and row `n` of `m.shape`, on `pool`'s threads (rows split among
    /// them). `scratch` holds the quantized activations (reused across calls).
    pub fn matmul<P: Parallel>(
        &self,
        m: &Matmul<'_>,
        y: &mut [f32],
        scratch: &mut Scratch,
        pool: &P,
    ) -> Result<(), MatmulError> {
        gemm::run(self, m, y, scratch, pool)
    }
}

/// [`Kernels::best`]`().matmul(..)`: the matmul with the best kernels of this CPU.
pub fn matmul<P: Parallel>(m: &Matmul<'_>, y: &mut [f32], scratch: &mut Scratch, pool: &P) -> Result<(), MatmulError> {
    Kernels::best().matmul(m, y, scratch, pool)
}

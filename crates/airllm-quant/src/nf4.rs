//! `nf4`: 4-bit NormalFloat blocks of 64 with an f16 absmax (the QLoRA /
//! bitsandbytes code book; our own byte layout).
//!
//! ```text
//! byte  0        2                                  34
//!       +--------+----------------------------------+
//!       | absmax | qs[0] qs[1] ...          qs[31]  |
//!       | f16    | u8 each: two 4-bit codes         |
//!       +--------+----------------------------------+
//! qs[j] = code[j] | code[j + 32] << 4        (j = 0..32)
//! value j = NF4_TABLE[code[j]] * f32(absmax)
//! ```
//!
//! bitsandbytes packs neighbours into a byte and keeps absmax in f32; this
//! layout splits the block in halves like ggml's 4-bit formats (so one
//! unpack routine serves all 4-bit kernels) and stores absmax as f16.
//!
//! Encoding: `absmax = max |x|` (f32), stored rounded to f16 (`ah`); each
//! value is scaled by `1 / absmax`, as bitsandbytes does, and mapped to the
//! nearest code by comparing against the midpoints between codes, exactly as
//! bitsandbytes' `dQuantizeNF4` decision tree does (`x > midpoint` picks the
//! upper code, so a tie goes to the lower code). When `ah` is zero the codes
//! are written as 7 (the code of 0.0).
//!
//! Why the f32 absmax and not `ah`: scaling by `ah` picks, for each value,
//! the nearest value the decoder can produce, so in theory it errs less; in
//! practice the two differ only for values within `2^-12` of a midpoint and
//! measured the same to six digits (relative RMSE 0.091982 on N(0,1),
//! 0.110971 on Student-t(4), 0.106886 on SmolLM2's token embedding, either
//! way). Scaling by the f32 absmax always maps the absmax value to code 0 or
//! 15, which makes re-encoding decoded data give the same bytes for every
//! input; scaling by `ah` breaks that when `ah` is an f16 subnormal (f16
//! rounding there is coarser than the gap between the top two codes).

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, SLACK, ScaleOverflow, max_abs, read_f16, to_f16};

/// Values per `nf4` block.
pub const QK_NF4: usize = 64;

/// The 16 NormalFloat4 values of QLoRA, as in bitsandbytes
/// (`get_4bit_type("nf4")` and the CUDA kernels), ascending; code 7 is 0.0.
#[allow(clippy::excessive_precision)]
pub const NF4_TABLE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Decision thresholds of bitsandbytes' `dQuantizeNF4` (the midpoints
/// between neighbouring codes, as f32 literals): the code of `v` is the
/// number of thresholds `t` with `v > t`.
#[allow(clippy::excessive_precision)]
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

/// Largest gap between neighbouring codes (between -1.0 and -0.696).
pub const NF4_MAX_GAP: f32 = NF4_TABLE[1] - NF4_TABLE[0];

/// One `nf4` block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockNf4 {
    /// Largest magnitude of the block, f16 little endian.
    pub absmax: [u8; 2],
    /// Codes: low nibble of byte `j` is element `j`, high nibble element `j + 32`.
    pub qs: [u8; QK_NF4 / 2],
}
const _: () = assert!(size_of::<BlockNf4>() == 34);
const A: usize = offset_of!(BlockNf4, absmax);
const QS: usize = offset_of!(BlockNf4, qs);
const HALF: usize = QK_NF4 / 2;

/// Nearest code of a value in `[-1, 1]` (branch-free, vectorises).
#[inline(always)]
pub fn nf4_code(v: f32) -> u8 {
    NF4_THRESHOLDS.iter().fold(0u8, |n, &t| n + u8::from(v > t))
}

impl BlockCodec for BlockNf4 {
    const BLOCK: usize = QK_NF4;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 65504.0;
    const CODEC: Codec = Codec::Nf4;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK_NF4];
        let amax = max_abs(x);
        let (bits, ah) = to_f16(amax)?;
        out[A..A + 2].copy_from_slice(&bits);
        let qs = &mut out[QS..QS + HALF];
        if ah == 0.0 {
            qs.fill(0x77);
            return Ok(());
        }
        // Scale by the f32 absmax, not its f16 value: see the module docs.
        let id = 1.0 / amax;
        let (lo, hi) = x.split_at(HALF);
        for ((q, &a), &b) in qs.iter_mut().zip(lo).zip(hi) {
            *q = nf4_code(a * id) | (nf4_code(b * id) << 4);
        }
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let a = read_f16(b, A);
        let (lo, hi) = out[..QK_NF4].split_at_mut(HALF);
        for ((&q, l), h) in b[QS..QS + HALF].iter().zip(lo).zip(hi) {
            *l = NF4_TABLE[usize::from(q & 0x0F)] * a;
            *h = NF4_TABLE[usize::from(q >> 4)] * a;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let a = read_f16(b, A);
        let (lo, hi) = x[..QK_NF4].split_at(HALF);
        let mut s = 0.0f32;
        for (j, &q) in b[QS..QS + HALF].iter().enumerate() {
            s += NF4_TABLE[usize::from(q & 0x0F)] * lo[j];
        }
        for (j, &q) in b[QS..QS + HALF].iter().enumerate() {
            s += NF4_TABLE[usize::from(q >> 4)] * hi[j];
        }
        s * a
    }

    fn error_bound(x: &[f32]) -> f32 {
        let amax = max_abs(x);
        let ah = half::f16::from_f32(amax).to_f32();
        if ah == 0.0 {
            return amax; // everything decodes to 0
        }
        0.5 * NF4_MAX_GAP * amax + (amax - ah).abs() + amax * SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_the_midpoints_and_codes_are_nearest() {
        for (k, &t) in NF4_THRESHOLDS.iter().enumerate() {
            let mid = (f64::from(NF4_TABLE[k]) + f64::from(NF4_TABLE[k + 1])) / 2.0;
            assert!((f64::from(t) - mid).abs() < 1e-7, "threshold {k}: {t} vs {mid}");
            // A tie goes to the lower code, as in bitsandbytes.
            assert_eq!(usize::from(nf4_code(t)), k);
        }
        for (k, &v) in NF4_TABLE.iter().enumerate() {
            assert_eq!(usize::from(nf4_code(v)), k);
        }
        let gap = NF4_TABLE.windows(2).map(|w| w[1] - w[0]).fold(0.0f32, f32::max);
        assert_eq!(gap, NF4_MAX_GAP);
        assert_eq!(nf4_code(0.0), 7);
    }
}

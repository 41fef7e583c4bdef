//! `q4_0`: 4-bit symmetric blocks of 32, byte-identical to GGUF/ggml `Q4_0`.
//!
//! ```text
//! byte  0      2                                  18
//!       +------+----------------------------------+
//!       | d    | qs[0] qs[1] ...          qs[15]  |
//!       | f16  | u8 each: two 4-bit codes         |
//!       +------+----------------------------------+
//! qs[j] = code[j] | code[j + 16] << 4        (j = 0..16)
//! value j = (code[j] - 8) * f32(d)
//! ```
//!
//! Encoding follows ggml's `quantize_row_q4_0_ref`: `max` is the value of
//! largest magnitude, sign kept (the first one on ties); `d = max / -8`;
//! `code = min(15, trunc(x * (1 / d) + 8.5))`. So the extreme value maps
//! exactly to code 0 (`-8 * d = max`) and the code book `-8..=7` is one step
//! short on the other side: values beyond `7.5 |d|` opposite to `max` clamp
//! to code 15. When `d` rounds to zero in f16 the block is written exactly
//! as ggml writes an all-zero block (`d` = f16 -0.0, codes 8), whatever the
//! sign of the tiny `d`.

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, SLACK, ScaleOverflow, max_abs, read_f16, to_f16};

/// Values per `q4_0` block.
pub const QK4_0: usize = 32;

/// One `q4_0` block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale, f16 little endian.
    pub d: [u8; 2],
    /// Codes: low nibble of byte `j` is element `j`, high nibble element `j + 16`.
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const D: usize = offset_of!(BlockQ4_0, d);
const QS: usize = offset_of!(BlockQ4_0, qs);
const HALF: usize = QK4_0 / 2;
/// f16 -0.0, the scale ggml writes for an all-zero block.
const ZERO_D: [u8; 2] = [0x00, 0x80];

/// The signed value of largest magnitude, first on ties (what ggml's loop
/// finds; 0.0 for a zero block), in two passes that vectorise.
#[inline]
fn signed_max(x: &[f32]) -> f32 {
    let amax = max_abs(x);
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

#[inline(always)]
fn code(v: f32) -> u8 {
    // C's (int8_t) truncates; v >= 0.5 here except for rounding noise.
    (v as i32).clamp(0, 15) as u8
}

impl BlockCodec for BlockQ4_0 {
    const BLOCK: usize = QK4_0;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 8.0 * 65504.0;
    const CODEC: Codec = Codec::Q4_0;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK4_0];
        let d = signed_max(x) / -8.0;
        let (bits, dh) = to_f16(d)?;
        if dh == 0.0 {
            // ggml's all-zero block: d = 0.0 / -8 = -0.0, codes 8.
            out[D..D + 2].copy_from_slice(&ZERO_D);
            out[QS..QS + HALF].fill(0x88);
            return Ok(());
        }
        out[D..D + 2].copy_from_slice(&bits);
        let qs = &mut out[QS..QS + HALF];
        let id = 1.0 / d;
        let (lo, hi) = x.split_at(HALF);
        for ((q, &a), &b) in qs.iter_mut().zip(lo).zip(hi) {
            *q = code(a * id + 8.5) | (code(b * id + 8.5) << 4);
        }
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let d = read_f16(b, D);
        let (lo, hi) = out[..QK4_0].split_at_mut(HALF);
        for ((&q, a), c) in b[QS..QS + HALF].iter().zip(lo).zip(hi) {
            *a = (i32::from(q & 0x0F) - 8) as f32 * d;
            *c = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = read_f16(b, D);
        let (lo, hi) = x[..QK4_0].split_at(HALF);
        let mut s = 0.0f32;
        for (j, &q) in b[QS..QS + HALF].iter().enumerate() {
            s += (i32::from(q & 0x0F) - 8) as f32 * lo[j];
        }
        for (j, &q) in b[QS..QS + HALF].iter().enumerate() {
            s += (i32::from(q >> 4) - 8) as f32 * hi[j];
        }
        s * d
    }

    fn error_bound(x: &[f32]) -> f32 {
        let max = signed_max(x);
        let d = max / -8.0;
        let dh = half::f16::from_f32(d).to_f32();
        if dh == 0.0 {
            return max.abs(); // everything decodes to 0
        }
        // Half a step, or more for values clamped to code 15 (x / d in (7.5, 8]).
        let id = 1.0 / d;
        let t = x.iter().fold(0.0f32, |m, &v| m.max(v * id));
        let steps = (t - 7.0).max(0.5);
        d.abs() * steps + (d - dh).abs() * 8.0 + max.abs() * SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_is_ggmls() {
        // ggml: max = 0.0, d = 0.0 / -8 = -0.0 (f16 0x8000), codes 8.
        let mut out = [0u8; 18];
        BlockQ4_0::encode_block(&[0.0; 32], &mut out).expect("finite");
        assert_eq!(&out[..2], &[0x00, 0x80]);
        assert!(out[2..].iter().all(|&b| b == 0x88));
    }

    #[test]
    fn opposite_extreme_clamps_to_seven_steps() {
        let mut x = [0.0f32; 32];
        x[0] = 8.0; // d = -1
        x[17] = -8.0; // 8 steps the other way: clamps to code 15 -> -7
        let mut out = [0u8; 18];
        BlockQ4_0::encode_block(&x, &mut out).expect("finite");
        let mut y = [0.0f32; 32];
        BlockQ4_0::decode_block(&out, &mut y);
        assert_eq!(y[0], 8.0);
        assert_eq!(y[17], -7.0);
        assert!(BlockQ4_0::error_bound(&x) >= 1.0);
    }
}

//! `q5_0`: 5-bit symmetric blocks of 32, byte-identical to GGUF/ggml `Q5_0`.
//!
//! ```text
//! byte  0      2              6                                  22
//!       +------+--------------+----------------------------------+
//!       | d    | qh           | qs[0] qs[1] ...          qs[15]  |
//!       | f16  | u32 LE       | u8 each: two low 4-bit codes     |
//!       +------+--------------+----------------------------------+
//! code[j]      = qs[j] & 15 | ((qh >> j) & 1) << 4              (j = 0..16)
//! code[j + 16] = qs[j] >> 4 | ((qh >> (j + 16)) & 1) << 4
//! value j = (code[j] - 16) * f32(d)
//! ```
//!
//! Encoding follows ggml's `quantize_row_q5_0_ref`, `q4_0` with 32 levels:
//! `max` the value of largest magnitude (sign kept, first on ties),
//! `d = max / -16`, `code = min(31, trunc(x * (1 / d) + 16.5))`; so `max`
//! maps exactly to code 0 and values beyond `15.5 |d|` on the other side clamp
//! to code 31. When `d` rounds to zero in f16 the block is written as ggml
//! writes an all-zero block (`d` = f16 -0.0, codes 16).

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, SLACK, ScaleOverflow, max_abs, read_f16, to_f16};

/// Values per `q5_0` block.
pub const QK5_0: usize = 32;

/// One `q5_0` block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// Scale, f16 little endian.
    pub d: [u8; 2],
    /// Fifth bits, u32 little endian: bit `j` belongs to value `j`.
    pub qh: [u8; 4],
    /// Low four bits: low nibble of byte `j` is value `j`, high nibble value `j + 16`.
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);
const D: usize = offset_of!(BlockQ5_0, d);
const QH: usize = offset_of!(BlockQ5_0, qh);
const QS: usize = offset_of!(BlockQ5_0, qs);
const HALF: usize = QK5_0 / 2;
/// f16 -0.0, the scale ggml writes for an all-zero block.
const ZERO_D: [u8; 2] = [0x00, 0x80];

/// The 32 codes (0..32) of a stored 5-bit block whose fifth bits are at `qh`
/// and low nibbles at `qs` (shared with `q5_1`).
#[inline]
pub(crate) fn codes5(b: &[u8], qh: usize, qs: usize) -> [u8; 32] {
    let h = u32::from_le_bytes([b[qh], b[qh + 1], b[qh + 2], b[qh + 3]]);
    std::array::from_fn(|j| {
        let lo = if j < HALF { b[qs + j] & 0x0F } else { b[qs + j - HALF] >> 4 };
        lo | ((((h >> j) & 1) as u8) << 4)
    })
}

/// Packs 32 codes (0..32) into `qh` (4 bytes) and `qs` (16 bytes) of `out`.
#[inline]
pub(crate) fn pack5(codes: &[u8; 32], out: &mut [u8], qh: usize, qs: usize) {
    let mut h = 0u32;
    for j in 0..HALF {
        let (a, c) = (codes[j], codes[j + HALF]);
        out[qs + j] = (a & 0x0F) | ((c & 0x0F) << 4);
        h |= u32::from(a >> 4) << j;
        h |= u32::from(c >> 4) << (j + HALF);
    }
    out[qh..qh + 4].copy_from_slice(&h.to_le_bytes());
}

/// The signed value of largest magnitude, first on ties (0.0 for a zero block).
#[inline]
fn signed_max(x: &[f32]) -> f32 {
    let amax = max_abs(x);
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

impl BlockCodec for BlockQ5_0 {
    const BLOCK: usize = QK5_0;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 16.0 * 65504.0;
    const CODEC: Codec = Codec::Q5_0;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK5_0];
        let d = signed_max(x) / -16.0;
        let (bits, dh) = to_f16(d)?;
        if dh == 0.0 {
            // ggml's all-zero block: d = 0.0 / -16 = -0.0, codes 16.
            out[D..D + 2].copy_from_slice(&ZERO_D);
            pack5(&[16; 32], out, QH, QS);
            return Ok(());
        }
        out[D..D + 2].copy_from_slice(&bits);
        let id = 1.0 / d;
        // C's (int8_t) truncates; the value is >= 0.5 except for rounding noise.
        let codes = std::array::from_fn(|j| ((x[j] * id + 16.5) as i32).clamp(0, 31) as u8);
        pack5(&codes, out, QH, QS);
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let d = read_f16(b, D);
        for (o, c) in out[..QK5_0].iter_mut().zip(codes5(b, QH, QS)) {
            *o = (i32::from(c) - 16) as f32 * d;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = read_f16(b, D);
        let s =
            codes5(b, QH, QS).iter().zip(&x[..QK5_0]).fold(0.0f32, |s, (&c, &v)| s + (i32::from(c) - 16) as f32 * v);
        s * d
    }

    fn error_bound(x: &[f32]) -> f32 {
        let max = signed_max(x);
        let d = max / -16.0;
        let dh = half::f16::from_f32(d).to_f32();
        if dh == 0.0 {
            return max.abs(); // everything decodes to 0
        }
        // Half a step, or more for values clamped to code 31 (x / d in (15.5, 16]).
        let id = 1.0 / d;
        let t = x.iter().fold(0.0f32, |m, &v| m.max(v * id));
        let steps = (t - 15.0).max(0.5);
        d.abs() * steps + (d - dh).abs() * 16.0 + max.abs() * SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_by_hand() {
        // Element j has code j: low nibbles j % 16, fifth bit j >= 16; d = 2.
        let mut b = [0u8; 22];
        b[0..2].copy_from_slice(&half::f16::from_f32(2.0).to_le_bytes());
        b[2..6].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
        for j in 0..16 {
            b[6 + j] = (j as u8) | ((j as u8) << 4);
        }
        let mut y = [0.0f32; 32];
        BlockQ5_0::decode_block(&b, &mut y);
        for (j, &v) in y.iter().enumerate() {
            assert_eq!(v, 2.0 * (j as f32 - 16.0), "value {j}");
        }
    }

    #[test]
    fn zero_block_is_ggmls() {
        let mut out = [0u8; 22];
        BlockQ5_0::encode_block(&[0.0; 32], &mut out).expect("finite");
        assert_eq!(&out[..2], &[0x00, 0x80]);
        assert_eq!(&out[2..6], &[0xFF; 4]);
        assert!(out[6..].iter().all(|&b| b == 0));
    }
}

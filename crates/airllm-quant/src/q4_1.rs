//! `q4_1`: 4-bit blocks of 32 with scale and minimum, byte-identical to
//! GGUF/ggml `Q4_1`.
//!
//! ```text
//! byte  0      2      4                                  20
//!       +------+------+----------------------------------+
//!       | d    | m    | qs[0] qs[1] ...          qs[15]  |
//!       | f16  | f16  | u8 each: two 4-bit codes         |
//!       +------+------+----------------------------------+
//! qs[j] = code[j] | code[j + 16] << 4        (j = 0..16)
//! value j = code[j] * f32(d) + f32(m)        (f32 multiply, then f32 add)
//! ```
//!
//! Encoding follows ggml's `quantize_row_q4_1_ref`: `min`, `max` of the
//! block, `d = (max - min) / 15`, `m = min`,
//! `code = min(15, trunc((x - min) * (1 / d) + 0.5))`, both f16 round to
//! nearest even. When `d` rounds to zero in f16 the codes are written as 0
//! (ggml's codes there all decode to `m` anyway), and an `m` that rounds to
//! zero is written as +0.0 (ggml keeps the sign of a tiny negative minimum).
//!
//! A partial last block is padded with zeros before `min`/`max` are taken
//! (the same bytes ggml gives for the zero-padded row), so its padding decodes
//! to roughly, not exactly, zero.

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, SLACK, ScaleOverflow, min_max, read_f16, to_f16};

/// Values per `q4_1` block.
pub const QK4_1: usize = 32;

/// One `q4_1` block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale, f16 little endian.
    pub d: [u8; 2],
    /// Minimum (offset), f16 little endian.
    pub m: [u8; 2],
    /// Codes: low nibble of byte `j` is element `j`, high nibble element `j + 16`.
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);
const D: usize = offset_of!(BlockQ4_1, d);
const M: usize = offset_of!(BlockQ4_1, m);
const QS: usize = offset_of!(BlockQ4_1, qs);
const HALF: usize = QK4_1 / 2;

#[inline(always)]
fn code(v: f32) -> u8 {
    (v as i32).clamp(0, 15) as u8
}

impl BlockCodec for BlockQ4_1 {
    const BLOCK: usize = QK4_1;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 65504.0;
    const CODEC: Codec = Codec::Q4_1;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK4_1];
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let (dbits, dh) = to_f16(d)?;
        let (mbits, mh) = to_f16(min)?;
        // -0.0 decodes like 0.0 but would not survive a round trip (0 * d + -0.0 = +0.0).
        let mbits = if mh == 0.0 { [0, 0] } else { mbits };
        out[D..D + 2].copy_from_slice(&dbits);
        out[M..M + 2].copy_from_slice(&mbits);
        let qs = &mut out[QS..QS + HALF];
        if dh == 0.0 {
            qs.fill(0);
            return Ok(());
        }
        let id = 1.0 / d;
        let (lo, hi) = x.split_at(HALF);
        for ((q, &a), &b) in qs.iter_mut().zip(lo).zip(hi) {
            *q = code((a - min) * id + 0.5) | (code((b - min) * id + 0.5) << 4);
        }
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let d = read_f16(b, D);
        let m = read_f16(b, M);
        let (lo, hi) = out[..QK4_1].split_at_mut(HALF);
        for ((&q, a), c) in b[QS..QS + HALF].iter().zip(lo).zip(hi) {
            *a = f32::from(q & 0x0F) * d + m;
            *c = f32::from(q >> 4) * d + m;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = read_f16(b, D);
        let m = read_f16(b, M);
        let (lo, hi) = x[..QK4_1].split_at(HALF);
        let (mut s, mut sx) = (0.0f32, 0.0f32);
        for (j, &q) in b[QS..QS + HALF].iter().enumerate() {
            s += f32::from(q & 0x0F) * lo[j];
            sx += lo[j];
        }
        for (j, &q) in b[QS..QS + HALF].iter().enumerate() {
            s += f32::from(q >> 4) * hi[j];
            sx += hi[j];
        }
        s * d + sx * m
    }

    fn error_bound(x: &[f32]) -> f32 {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let dh = half::f16::from_f32(d).to_f32();
        let mh = half::f16::from_f32(min).to_f32();
        if dh == 0.0 {
            // everything decodes to m
            return (max - min) + (min - mh).abs() + (max.abs() + min.abs()) * SLACK;
        }
        0.5 * d + (d - dh).abs() * 15.0 + (min - mh).abs() + (max.abs() + min.abs()) * SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_block_is_exact_up_to_f16() {
        let x = [0.25f32; 32];
        let mut out = [0u8; 20];
        BlockQ4_1::encode_block(&x, &mut out).expect("finite");
        assert_eq!(&out[..2], &[0, 0]);
        assert_eq!(&out[2..4], &half::f16::from_f32(0.25).to_le_bytes());
        let mut y = [0.0f32; 32];
        BlockQ4_1::decode_block(&out, &mut y);
        assert_eq!(y, x);
    }
}

//! `q5_1`: 5-bit blocks of 32 with scale and minimum, byte-identical to
//! GGUF/ggml `Q5_1`.
//!
//! ```text
//! byte  0      2      4              8                                  24
//!       +------+------+--------------+----------------------------------+
//!       | d    | m    | qh           | qs[0] qs[1] ...          qs[15]  |
//!       | f16  | f16  | u32 LE       | u8 each: two low 4-bit codes     |
//!       +------+------+--------------+----------------------------------+
//! code[j]      = qs[j] & 15 | ((qh >> j) & 1) << 4              (j = 0..16)
//! code[j + 16] = qs[j] >> 4 | ((qh >> (j + 16)) & 1) << 4
//! value j = code[j] * f32(d) + f32(m)        (f32 multiply, then f32 add)
//! ```
//!
//! Encoding follows ggml's `quantize_row_q5_1_ref`, `q4_1` with 32 levels:
//! `d = (max - min) / 31`, `m = min`, `code = trunc((x - min) * (1 / d) + 0.5)`
//! (at most 31). When `d` rounds to zero in f16 the codes are written as 0,
//! and an `m` that rounds to zero as +0.0 (as for `q4_1`).

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, SLACK, ScaleOverflow, min_max, read_f16, to_f16};
use crate::q5_0::{codes5, pack5};

/// Values per `q5_1` block.
pub const QK5_1: usize = 32;

/// One `q5_1` block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5_1 {
    /// Scale, f16 little endian.
    pub d: [u8; 2],
    /// Minimum (offset), f16 little endian.
    pub m: [u8; 2],
    /// Fifth bits, u32 little endian: bit `j` belongs to value `j`.
    pub qh: [u8; 4],
    /// Low four bits: low nibble of byte `j` is value `j`, high nibble value `j + 16`.
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);
const D: usize = offset_of!(BlockQ5_1, d);
const M: usize = offset_of!(BlockQ5_1, m);
const QH: usize = offset_of!(BlockQ5_1, qh);
const QS: usize = offset_of!(BlockQ5_1, qs);

impl BlockCodec for BlockQ5_1 {
    const BLOCK: usize = QK5_1;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 65504.0;
    const CODEC: Codec = Codec::Q5_1;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK5_1];
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let (dbits, dh) = to_f16(d)?;
        let (mbits, mh) = to_f16(min)?;
        // -0.0 decodes like 0.0 but would not survive a round trip (0 * d + -0.0 = +0.0).
        let mbits = if mh == 0.0 { [0, 0] } else { mbits };
        out[D..D + 2].copy_from_slice(&dbits);
        out[M..M + 2].copy_from_slice(&mbits);
        if dh == 0.0 {
            pack5(&[0; 32], out, QH, QS);
            return Ok(());
        }
        let id = 1.0 / d;
        let codes = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8);
        pack5(&codes, out, QH, QS);
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let d = read_f16(b, D);
        let m = read_f16(b, M);
        for (o, c) in out[..QK5_1].iter_mut().zip(codes5(b, QH, QS)) {
            *o = f32::from(c) * d + m;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = read_f16(b, D);
        let m = read_f16(b, M);
        let (mut s, mut sx) = (0.0f32, 0.0f32);
        for (&c, &v) in codes5(b, QH, QS).iter().zip(&x[..QK5_1]) {
            s += f32::from(c) * v;
            sx += v;
        }
        s * d + sx * m
    }

    fn error_bound(x: &[f32]) -> f32 {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let dh = half::f16::from_f32(d).to_f32();
        let mh = half::f16::from_f32(min).to_f32();
        if dh == 0.0 {
            // everything decodes to m
            return (max - min) + (min - mh).abs() + (max.abs() + min.abs()) * SLACK;
        }
        0.5 * d + (d - dh).abs() * 31.0 + (min - mh).abs() + (max.abs() + min.abs()) * SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_block_is_exact_up_to_f16() {
        let x = [0.25f32; 32];
        let mut out = [0u8; 24];
        BlockQ5_1::encode_block(&x, &mut out).expect("finite");
        assert_eq!(&out[..2], &[0, 0]);
        let mut y = [0.0f32; 32];
        BlockQ5_1::decode_block(&out, &mut y);
        assert_eq!(y, x);
    }

    #[test]
    fn codes_cover_the_range() {
        let x: [f32; 32] = std::array::from_fn(|j| j as f32);
        let mut out = [0u8; 24];
        BlockQ5_1::encode_block(&x, &mut out).expect("finite");
        let mut y = [0.0f32; 32];
        BlockQ5_1::decode_block(&out, &mut y);
        assert_eq!(y, x);
    }
}

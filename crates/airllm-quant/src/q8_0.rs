//! `q8_0`: 8-bit symmetric blocks of 32, byte-identical to GGUF/ggml `Q8_0`.
//!
//! ```text
//! byte  0      2                                  34
//!       +------+----------------------------------+
//!       | d    | qs[0] qs[1] ...          qs[31]  |
//!       | f16  | i8 each                          |
//!       +------+----------------------------------+
//! value j = f32(d) * qs[j]
//! ```
//!
//! Encoding follows ggml's `quantize_row_q8_0_ref`: `amax = max |x|`,
//! `d = amax / 127`, `q = roundf(x * (1 / d))`, `d` stored as f16 (round to
//! nearest even). The codes are computed against the f32 `d`, as ggml does.
//! One deliberate difference: when `d` rounds to zero in f16 (`amax < ~3.8e-6`)
//! the codes are written as 0 (ggml writes codes that decode to 0 anyway), so
//! that re-encoding decoded data always gives the same bytes.

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, SLACK, ScaleOverflow, max_abs, read_f16, round_half_away, to_f16};

/// Values per `q8_0` block.
pub const QK8_0: usize = 32;

/// One `q8_0` block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale, f16 little endian.
    pub d: [u8; 2],
    /// Codes.
    pub qs: [i8; QK8_0],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const D: usize = offset_of!(BlockQ8_0, d);
const QS: usize = offset_of!(BlockQ8_0, qs);

impl BlockCodec for BlockQ8_0 {
    const BLOCK: usize = QK8_0;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 127.0 * 65504.0;
    const CODEC: Codec = Codec::Q8_0;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK8_0];
        let amax = max_abs(x);
        let d = amax / 127.0;
        let (bits, dh) = to_f16(d)?;
        out[D..D + 2].copy_from_slice(&bits);
        let qs = &mut out[QS..QS + QK8_0];
        if dh == 0.0 {
            qs.fill(0);
            return Ok(());
        }
        let id = 1.0 / d;
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = round_half_away(v * id) as i8 as u8;
        }
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let d = read_f16(b, D);
        for (o, &q) in out[..QK8_0].iter_mut().zip(&b[QS..QS + QK8_0]) {
            *o = f32::from(q as i8) * d;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = read_f16(b, D);
        let mut s = 0.0f32;
        for (&q, &v) in b[QS..QS + QK8_0].iter().zip(&x[..QK8_0]) {
            s += f32::from(q as i8) * v;
        }
        s * d
    }

    fn error_bound(x: &[f32]) -> f32 {
        let amax = max_abs(x);
        let d = amax / 127.0;
        let dh = half::f16::from_f32(d).to_f32();
        if dh == 0.0 {
            return amax; // everything decodes to 0 (d may even underflow in f32)
        }
        0.5 * d + (d - dh).abs() * 127.0 + amax * SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_ggml_on_a_hand_computed_block() {
        // amax 127 -> d = 1 (exact in f16), codes = round(x).
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = -2.5; // roundf: away from zero -> -3
        x[2] = 0.49999997; // -> 0
        x[3] = -127.0;
        let mut out = [0u8; 34];
        BlockQ8_0::encode_block(&x, &mut out).expect("finite");
        assert_eq!(&out[..2], &half::f16::from_f32(1.0).to_le_bytes());
        assert_eq!(out[2] as i8, 127);
        assert_eq!(out[3] as i8, -3);
        assert_eq!(out[4] as i8, 0);
        assert_eq!(out[5] as i8, -127);
    }
}

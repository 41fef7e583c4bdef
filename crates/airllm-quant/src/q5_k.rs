//! `q5_k`: 5-bit super-blocks of 256 values in 8 sub-blocks of 32, each with
//! a 6-bit scale and a 6-bit minimum, byte-identical to GGUF/ggml `Q5_K`.
//!
//! ```text
//! byte  0      2      4                16             48                        176
//!       +------+------+----------------+--------------+-------------------------+
//!       | d    | dmin | scales[12]     | qh[32]       | qs[0] ...       qs[127] |
//!       | f16  | f16  | as q4_k        | 5th bits     | low 4 bits, as q4_k     |
//!       +------+------+----------------+--------------+-------------------------+
//! code[64p + l]      = (qs[32p + l] & 15) | ((qh[l] >> 2p)       & 1) << 4
//! code[64p + 32 + l] = (qs[32p + l] >> 4) | ((qh[l] >> (2p + 1)) & 1) << 4   (p = 0..4, l = 0..32)
//! value i = (d * sc[j]) * code[i] - (dmin * m[j])     j = i / 32, codes 0..=31
//! ```
//!
//! Encoding follows ggml's `quantize_row_q5_K_ref`: as `q4_k` (see
//! [`crate::q4_k`]) with 31 levels and the search `-0.5 + 0.1 is`, `is = 0..=15`.

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, ScaleOverflow, max_abs};
use crate::kquant::{QK_K, pack_scale_min_k4, plan_affine};
use crate::q4_k::sub_scales;

/// One `q5_k` super-block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5K {
    /// Super-block scale of the sub-block scales, f16 little endian.
    pub d: [u8; 2],
    /// Super-block scale of the sub-block minimums, f16 little endian.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit minimums (as `q4_k`).
    pub scales: [u8; 12],
    /// Fifth bits: bit `2p` of byte `l` for value `64p + l`, bit `2p + 1` for `64p + 32 + l`.
    pub qh: [u8; QK_K / 8],
    /// Low four bits, packed as `q4_k`'s codes.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);
const D: usize = offset_of!(BlockQ5K, d);
const DMIN: usize = offset_of!(BlockQ5K, dmin);
const SCALES: usize = offset_of!(BlockQ5K, scales);
const QH: usize = offset_of!(BlockQ5K, qh);
const QS: usize = offset_of!(BlockQ5K, qs);
// q4_k's reader of d, dmin and the scales applies unchanged.
const _: () = assert!(D == 0 && DMIN == 2 && SCALES == 4);

/// Levels of a code (0..=31).
const NMAX: u8 = 31;

/// Code `64p + 32h + l` (`h` = 0 or 1) of a stored super-block.
#[inline(always)]
fn code(b: &[u8], p: usize, h: usize, l: usize) -> u8 {
    let lo = (b[QS + 32 * p + l] >> (4 * h)) & 0x0F;
    let hi = (b[QH + l] >> (2 * p + h)) & 1;
    lo | (hi << 4)
}

impl BlockCodec for BlockQ5K {
    const BLOCK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 65504.0;
    const CODEC: Codec = Codec::Q5K;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK_K];
        if max_abs(x) > Self::LIMIT {
            return Err(ScaleOverflow);
        }
        let plan = plan_affine(x, NMAX, -0.5, 15)?;
        let l = plan.codes(x, NMAX);
        out[D..D + 2].copy_from_slice(&plan.d.0);
        out[DMIN..DMIN + 2].copy_from_slice(&plan.dmin.0);
        pack_scale_min_k4(&plan.ls, &plan.lm, &mut out[SCALES..SCALES + 12]);
        out[QH..QH + QK_K / 8].fill(0);
        for p in 0..4 {
            for i in 0..32 {
                let (a, c) = (l[64 * p + i], l[64 * p + 32 + i]);
                out[QS + 32 * p + i] = (a & 0x0F) | ((c & 0x0F) << 4);
                out[QH + i] |= ((a >> 4) << (2 * p)) | ((c >> 4) << (2 * p + 1));
            }
        }
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let sm = sub_scales(b);
        for p in 0..4 {
            let ((d1, m1), (d2, m2)) = (sm[2 * p], sm[2 * p + 1]);
            let o = &mut out[64 * p..64 * p + 64];
            for l in 0..32 {
                o[l] = d1 * f32::from(code(b, p, 0, l)) - m1;
                o[l + 32] = d2 * f32::from(code(b, p, 1, l)) - m2;
            }
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let sm = sub_scales(b);
        let mut sum = 0.0f32;
        for (j, &(d, m)) in sm.iter().enumerate() {
            let xs = &x[32 * j..32 * j + 32];
            let (mut s, mut sx) = (0.0f32, 0.0f32);
            for (l, &v) in xs.iter().enumerate() {
                s += f32::from(code(b, j / 2, j % 2, l)) * v;
                sx += v;
            }
            sum += d * s - m * sx;
        }
        sum
    }

    fn error_bound(x: &[f32]) -> f32 {
        if max_abs(x) > Self::LIMIT {
            return f32::INFINITY;
        }
        match plan_affine(&x[..QK_K], NMAX, -0.5, 15) {
            Ok(plan) => plan.error_bound(x, NMAX),
            Err(ScaleOverflow) => f32::INFINITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_bits_land_where_ggml_puts_them() {
        // Codes i % 32 with d = 1, dmin = 0, all scales 1: value i = i % 32.
        let mut b = [0u8; 176];
        b[0..2].copy_from_slice(&half::f16::ONE.to_le_bytes());
        pack_scale_min_k4(&[1; 8], &[0; 8], &mut b[4..16]);
        for p in 0..4 {
            for l in 0..32 {
                let (a, c) = (((64 * p + l) % 32) as u8, ((64 * p + 32 + l) % 32) as u8);
                b[QS + 32 * p + l] = (a & 15) | ((c & 15) << 4);
                b[QH + l] |= ((a >> 4) << (2 * p)) | ((c >> 4) << (2 * p + 1));
            }
        }
        let mut y = [0.0f32; 256];
        BlockQ5K::decode_block(&b, &mut y);
        for (i, &v) in y.iter().enumerate() {
            assert_eq!(v, (i % 32) as f32, "value {i}");
        }
    }
}

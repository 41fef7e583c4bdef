//! `q4_k`: 4-bit super-blocks of 256 values in 8 sub-blocks of 32, each with
//! a 6-bit scale and a 6-bit minimum, byte-identical to GGUF/ggml `Q4_K`.
//!
//! ```text
//! byte  0      2      4                16                                   144
//!       +------+------+----------------+------------------------------------+
//!       | d    | dmin | scales[12]     | qs[0] qs[1] ...            qs[127] |
//!       | f16  | f16  | 8 x (6+6 bit)  | u8 each: two 4-bit codes           |
//!       +------+------+----------------+------------------------------------+
//! scales: (sc[j], m[j]) = get_scale_min_k4(j):
//!   j < 4:  sc = s[j] & 63,                       m = s[j+4] & 63
//!   j >= 4: sc = s[j+4] & 15 | (s[j-4] >> 6) << 4, m = s[j+4] >> 4 | (s[j] >> 6) << 4
//! codes:  sub-blocks 2p and 2p+1 (p = 0..4) share qs[32p .. 32p+32]:
//!   code[64p + l] = qs[32p + l] & 15,  code[64p + 32 + l] = qs[32p + l] >> 4   (l = 0..32)
//! value i = (d * sc[j]) * code[i] - (dmin * m[j])     j = i / 32, f32 products first
//! ```
//!
//! Encoding follows ggml's `quantize_row_q4_K_ref`: per sub-block, weights
//! `av_x + |x|` (`av_x` the sub-block's RMS) and `make_qkx2_quants` (15
//! levels, search `-1 + 0.1 is`, `is = 0..=20`) pick a scale and a minimum
//! (the minimum is at most zero); the eight scales and mins are quantized to
//! 6 bits against their maxima (`d = max_scale / 63`, `dmin = max_min / 63`
//! in f16), then every code is recomputed on its quantized grid. See
//! [`crate::kquant`] for the one guard added to the search.

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, ScaleOverflow, max_abs, read_f16};
use crate::kquant::{QK_K, pack_scale_min_k4, plan_affine, scale_min_k4};

/// One `q4_k` super-block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4K {
    /// Super-block scale of the sub-block scales, f16 little endian.
    pub d: [u8; 2],
    /// Super-block scale of the sub-block minimums, f16 little endian.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit minimums.
    pub scales: [u8; 12],
    /// Codes: see the module docs for which nibble is which value.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);
const D: usize = offset_of!(BlockQ4K, d);
const DMIN: usize = offset_of!(BlockQ4K, dmin);
const SCALES: usize = offset_of!(BlockQ4K, scales);
const QS: usize = offset_of!(BlockQ4K, qs);

/// Levels of a code (0..=15).
const NMAX: u8 = 15;

/// The eight (scale, min) multipliers `(d * sc, dmin * m)` of a stored super-block.
#[inline]
pub(crate) fn sub_scales(b: &[u8]) -> [(f32, f32); 8] {
    let d = read_f16(b, D);
    let dmin = read_f16(b, DMIN);
    let s = &b[SCALES..SCALES + 12];
    std::array::from_fn(|j| {
        let (sc, m) = scale_min_k4(j, s);
        (d * f32::from(sc), dmin * f32::from(m))
    })
}

impl BlockCodec for BlockQ4K {
    const BLOCK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 65504.0;
    const CODEC: Codec = Codec::Q4K;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK_K];
        if max_abs(x) > Self::LIMIT {
            return Err(ScaleOverflow);
        }
        let plan = plan_affine(x, NMAX, -1.0, 20)?;
        let l = plan.codes(x, NMAX);
        out[D..D + 2].copy_from_slice(&plan.d.0);
        out[DMIN..DMIN + 2].copy_from_slice(&plan.dmin.0);
        pack_scale_min_k4(&plan.ls, &plan.lm, &mut out[SCALES..SCALES + 12]);
        let qs = &mut out[QS..QS + QK_K / 2];
        for p in 0..4 {
            for i in 0..32 {
                qs[32 * p + i] = l[64 * p + i] | (l[64 * p + 32 + i] << 4);
            }
        }
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let sm = sub_scales(b);
        let qs = &b[QS..QS + QK_K / 2];
        for p in 0..4 {
            let q = &qs[32 * p..32 * p + 32];
            let ((d1, m1), (d2, m2)) = (sm[2 * p], sm[2 * p + 1]);
            let o = &mut out[64 * p..64 * p + 64];
            for i in 0..32 {
                o[i] = d1 * f32::from(q[i] & 0x0F) - m1;
                o[i + 32] = d2 * f32::from(q[i] >> 4) - m2;
            }
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let sm = sub_scales(b);
        let qs = &b[QS..QS + QK_K / 2];
        let mut sum = 0.0f32;
        for (j, &(d, m)) in sm.iter().enumerate() {
            let (q, sh) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
            let xs = &x[32 * j..32 * j + 32];
            let (mut s, mut sx) = (0.0f32, 0.0f32);
            for (&c, &v) in q.iter().zip(xs) {
                s += f32::from((c >> sh) & 0x0F) * v;
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
        match plan_affine(&x[..QK_K], NMAX, -1.0, 20) {
            Ok(plan) => plan.error_bound(x, NMAX),
            Err(ScaleOverflow) => f32::INFINITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    /// d = 0.5, dmin = 0.25, sub-block j has scale sc[j] and min mn[j], code of
    /// value i is i % 16.
    #[test]
    fn block_by_hand() {
        let sc = [1u8, 2, 3, 4, 40, 50, 60, 63];
        let mn = [0u8, 2, 4, 6, 33, 17, 48, 63];
        let mut b = [0u8; 144];
        b[0..2].copy_from_slice(&h(0.5));
        b[2..4].copy_from_slice(&h(0.25));
        pack_scale_min_k4(&sc, &mn, &mut b[4..16]);
        for p in 0..4 {
            for l in 0..32 {
                b[16 + 32 * p + l] = ((64 * p + l) % 16) as u8 | ((((64 * p + 32 + l) % 16) as u8) << 4);
            }
        }
        let mut y = [0.0f32; 256];
        BlockQ4K::decode_block(&b, &mut y);
        for (i, &v) in y.iter().enumerate() {
            let j = i / 32;
            assert_eq!(v, 0.5 * f32::from(sc[j]) * (i % 16) as f32 - 0.25 * f32::from(mn[j]), "value {i}");
        }
        // Element 37: sub-block 1 (scale 2, min 2), code 5: 0.5*2*5 - 0.25*2 = 4.5.
        assert_eq!(y[37], 4.5);
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.01).cos()).collect();
        let want: f32 = y.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((BlockQ4K::dot_block(&b, &x) - want).abs() < 1e-3 * want.abs().max(1.0));
    }
}

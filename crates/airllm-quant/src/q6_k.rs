//! `q6_k`: 6-bit symmetric super-blocks of 256 values in 16 sub-blocks of
//! 16, each with an 8-bit signed scale, byte-identical to GGUF/ggml `Q6_K`.
//!
//! ```text
//! byte  0                          128               192            208    210
//!       +--------------------------+-----------------+--------------+------+
//!       | ql[0] ...        ql[127] | qh[0] ... qh[63]| scales[16]   | d    |
//!       | low 4 bits, two per byte | high 2 bits x 4 | i8 each      | f16  |
//!       +--------------------------+-----------------+--------------+------+
//! for each half n = 0, 1 (values 128n ..), l = 0..32, with ql = ql[64n..], qh = qh[32n..]:
//!   code[128n +      l] = ql[l]      & 15 | ((qh[l] >> 0) & 3) << 4
//!   code[128n + 32 + l] = ql[l + 32] & 15 | ((qh[l] >> 2) & 3) << 4
//!   code[128n + 64 + l] = ql[l]     >> 4  | ((qh[l] >> 4) & 3) << 4
//!   code[128n + 96 + l] = ql[l + 32] >> 4 | ((qh[l] >> 6) & 3) << 4
//! value i = (d * scales[i / 16]) * (code[i] - 32)       f32 product first, codes 0..=63
//! ```
//!
//! Encoding follows ggml's `quantize_row_q6_K_ref`: `make_qx_quants` (32
//! levels each side, weights `x^2`, 19 trial scales) per sub-block, the 16
//! scales quantized to i8 against the one of largest magnitude
//! (`d = max_scale / -128` in f16), then every code recomputed on its
//! quantized grid. A super-block whose sub-block scales are all below
//! `1e-15` is written as zeros. See [`crate::kquant`] for the guard.

use std::mem::{offset_of, size_of};

use crate::codec::{BlockCodec, Codec, SLACK, ScaleOverflow, max_abs, read_f16, to_f16};
use crate::kquant::{GROUP_MAX_EPS, QK_K, Symmetric, make_qx_quants, nearest_int};

/// One `q6_k` super-block as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ6K {
    /// Low four bits of the codes.
    pub ql: [u8; QK_K / 2],
    /// High two bits of the codes.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales, i8.
    pub scales: [u8; QK_K / 16],
    /// Super-block scale, f16 little endian.
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);
const QL: usize = offset_of!(BlockQ6K, ql);
const QH: usize = offset_of!(BlockQ6K, qh);
const SC: usize = offset_of!(BlockQ6K, scales);
const D: usize = offset_of!(BlockQ6K, d);

/// Codes run `0..64`, meaning `-32..32`.
const NMAX: i32 = 32;

/// Code `i` (0..256) of a stored super-block.
#[inline(always)]
fn code(b: &[u8], i: usize) -> u8 {
    let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
    let lo = (b[QL + 64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
    let hi = (b[QH + 32 * n + l] >> (2 * k)) & 3;
    lo | (hi << 4)
}

/// A super-block as the encoder plans it.
struct Plan {
    sub: [Symmetric; 16],
    l: [u8; QK_K],
    scales: [i8; 16],
    d: ([u8; 2], f32),
}

/// `None` for a block ggml writes as zeros.
fn plan(x: &[f32]) -> Result<Option<Plan>, ScaleOverflow> {
    let mut sub = [Symmetric::default(); 16];
    let mut l = [0u8; QK_K];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (ib, s) in sub.iter_mut().enumerate() {
        *s = make_qx_quants(&x[16 * ib..16 * ib + 16], NMAX, &mut l[16 * ib..16 * ib + 16]);
        let a = s.scale.abs();
        if a > max_abs_scale {
            max_abs_scale = a;
            max_scale = s.scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return Ok(None);
    }
    let iscale = -128.0 / max_scale;
    let d = to_f16(1.0 / iscale)?;
    let scales = std::array::from_fn(|ib| nearest_int(iscale * sub[ib].scale).clamp(-128, 127) as i8);
    Ok(Some(Plan { sub, l, scales, d }))
}

impl BlockCodec for BlockQ6K {
    const BLOCK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    const LIMIT: f32 = 65504.0;
    const CODEC: Codec = Codec::Q6K;

    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow> {
        let x = &x[..QK_K];
        if max_abs(x) > Self::LIMIT {
            return Err(ScaleOverflow);
        }
        let out = &mut out[..Self::BYTES];
        let Some(p) = plan(x)? else {
            out.fill(0);
            return Ok(());
        };
        let mut l = p.l;
        for j in 0..16 {
            let d = p.d.1 * f32::from(p.scales[j]);
            if d == 0.0 {
                continue;
            }
            for (li, &v) in l[16 * j..16 * j + 16].iter_mut().zip(&x[16 * j..16 * j + 16]) {
                *li = (nearest_int(v / d).clamp(-NMAX, NMAX - 1) + NMAX) as u8;
            }
        }
        for n in 0..2 {
            let (ql, qh, lv) = (QL + 64 * n, QH + 32 * n, &l[128 * n..128 * n + 128]);
            for i in 0..32 {
                let (q1, q2, q3, q4) = (lv[i], lv[i + 32], lv[i + 64], lv[i + 96]);
                out[ql + i] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
                out[ql + 32 + i] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
                out[qh + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        for (o, &s) in out[SC..SC + 16].iter_mut().zip(&p.scales) {
            *o = s as u8;
        }
        out[D..D + 2].copy_from_slice(&p.d.0);
        Ok(())
    }

    fn decode_block(b: &[u8], out: &mut [f32]) {
        let d = read_f16(b, D);
        for (i, o) in out[..QK_K].iter_mut().enumerate() {
            let s = d * f32::from(b[SC + i / 16] as i8);
            *o = s * f32::from(code(b, i) as i8 - 32);
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = read_f16(b, D);
        let mut sum = 0.0f32;
        for j in 0..16 {
            let mut s = 0.0f32;
            for (i, &v) in x.iter().enumerate().skip(16 * j).take(16) {
                s += f32::from(code(b, i) as i8 - 32) * v;
            }
            sum += d * f32::from(b[SC + j] as i8) * s;
        }
        sum
    }

    fn error_bound(x: &[f32]) -> f32 {
        let x = &x[..QK_K];
        let amax = max_abs(x);
        if amax > Self::LIMIT {
            return f32::INFINITY;
        }
        match plan(x) {
            Err(ScaleOverflow) => f32::INFINITY,
            // everything decodes to 0
            Ok(None) => amax,
            Ok(Some(p)) => p.sub.iter().enumerate().fold(0.0f32, |bound, (j, s)| {
                let dq = p.d.1 * f32::from(p.scales[j]);
                let b = s.cap + NMAX as f32 * (dq - s.scale).abs() + (amax + NMAX as f32 * dq.abs()) * SLACK;
                bound.max(b)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_by_hand() {
        // All codes 33 (value 1 step): low nibble 1, high 2 bits 2; scale j = j - 8.
        let mut b = [0u8; 210];
        b[..128].fill(0x11);
        b[128..192].fill(0b1010_1010);
        for (k, x) in b[192..208].iter_mut().enumerate() {
            *x = (k as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&half::f16::from_f32(0.125).to_le_bytes());
        let mut y = [0.0f32; 256];
        BlockQ6K::decode_block(&b, &mut y);
        for (i, &v) in y.iter().enumerate() {
            assert_eq!(v, 0.125 * ((i / 16) as f32 - 8.0), "value {i}");
        }
    }

    #[test]
    fn zero_block_is_all_zero_bytes() {
        let mut out = [0xAAu8; 210];
        BlockQ6K::encode_block(&[0.0; 256], &mut out).expect("finite");
        assert!(out.iter().all(|&b| b == 0));
    }
}

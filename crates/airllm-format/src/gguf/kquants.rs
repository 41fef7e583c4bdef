//! Decoders for the ggml block formats that `airllm-quant` has no codec for
//! (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1), and their conversion to a codec
//! the engine runs: Q4_K is transcoded to Q4_1 without decoding, the others are
//! dequantized to f32 and re-encoded (Q2_K as Q4_1, the rest as Q8_0; see
//! [`GgmlType::offered_as`] and the measured costs in the [module docs](crate::gguf)).
//!
//! Written from the block layouts documented in ggml (`ggml-common.h`,
//! `dequantize_row_*` in `ggml-quants.c`). Every decoder does the same f32
//! operations in the same order as ggml's reference (`d * q - m`, with `d` and
//! `m` computed first), so the output equals gguf-py's `gguf.quants.dequantize`
//! bit for bit (checked against a fixture in `tests/gguf.rs`).
//!
//! Super-block layouts (256 values each, all multi-byte fields little-endian):
//!
//! ```text
//! Q2_K  84 B: scales[16] (lo 4 bits: scale, hi 4 bits: min) | qs[64] (2-bit) | d f16 | dmin f16
//!             16 sub-blocks of 16: y = d*sc*q - dmin*m
//! Q3_K 110 B: hmask[32] (high bit, set = +0, clear = -4) | qs[64] (low 2 bits) | scales[12] (16 x 6-bit) | d f16
//!             16 sub-blocks of 16: y = d*(sc-32)*q, q in -4..=3
//! Q4_K 144 B: d f16 | dmin f16 | scales[12] (8 x 6-bit scale, 8 x 6-bit min) | qs[128] (4-bit)
//!             8 sub-blocks of 32: y = d*sc*q - dmin*m
//! Q5_K 176 B: d f16 | dmin f16 | scales[12] | qh[32] (5th bit) | qs[128] (low 4 bits)
//!             8 sub-blocks of 32: y = d*sc*q - dmin*m, q in 0..=31
//! Q6_K 210 B: ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] i8 | d f16
//!             16 sub-blocks of 16: y = d*sc*(q-32)
//! ```
//!
//! 32-value blocks: `Q5_0` 22 B: `d f16 | qh u32 | qs[16]`, `y = d*(q-16)`;
//! `Q5_1` 24 B: `d f16 | m f16 | qh u32 | qs[16]`, `y = d*q + m`.

use airllm_quant::{Codec, Floats};
use half::f16;
use rayon::prelude::*;

use crate::gguf::types::GgmlType;

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit (scale, min) pair `j` (0..8) of a Q4_K / Q5_K super-block
/// (`get_scale_min_k4` in ggml).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Decode one Q4_K super-block (144 bytes) into 256 values.
pub fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for p in 0..4 {
        let q = &qs[32 * p..32 * p + 32];
        let (sc1, m1) = scale_min_k4(2 * p, scales);
        let (sc2, m2) = scale_min_k4(2 * p + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let out = &mut y[64 * p..64 * p + 64];
        for l in 0..32 {
            out[l] = d1 * f32::from(q[l] & 0x0F) - m1;
            out[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// Decode one Q5_K super-block (176 bytes) into 256 values.
pub fn dequantize_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let ql = &b[48..176];
    for p in 0..4 {
        let q = &ql[32 * p..32 * p + 32];
        let (sc1, m1) = scale_min_k4(2 * p, scales);
        let (sc2, m2) = scale_min_k4(2 * p + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * p), 2u8 << (2 * p));
        let out = &mut y[64 * p..64 * p + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * f32::from((q[l] & 0x0F) + h1) - m1;
            out[l + 32] = d2 * f32::from((q[l] >> 4) + h2) - m2;
        }
    }
}

/// Decode one Q6_K super-block (210 bytes) into 256 values.
pub fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &ql_all[64 * n..64 * n + 64];
        let qh = &qh_all[32 * n..32 * n + 32];
        let sc = &sc_all[8 * n..8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            out[l] = s(0) * f32::from(q1);
            out[l + 32] = s(2) * f32::from(q2);
            out[l + 64] = s(4) * f32::from(q3);
            out[l + 96] = s(6) * f32::from(q4);
        }
    }
}

/// Decode one Q2_K super-block (84 bytes) into 256 values.
pub fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let min = f16_at(b, 82);
    let mut is = 0;
    let mut o = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0F);
                let ml = min * f32::from(sc >> 4);
                for l in 0..16 {
                    y[o] = dl * f32::from((q[16 * half + l] >> shift) & 3) - ml;
                    o += 1;
                }
            }
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K super-block.
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (k, o) in out.iter_mut().enumerate() {
        let low = if k < 8 { s[k] & 0x0F } else { s[k - 8] >> 4 };
        let high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

/// Decode one Q3_K super-block (110 bytes) into 256 values.
pub fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    let mut is = 0;
    let mut o = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d * f32::from(scales[is]);
                is += 1;
                for l in 0..16 {
                    let i = 16 * half + l;
                    let low = ((q[i] >> shift) & 3) as i8;
                    let v = low - if hm[i] & m != 0 { 0 } else { 4 };
                    y[o] = dl * f32::from(v);
                    o += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// Decode one Q5_0 block (22 bytes) into 32 values.
pub fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = i32::from((qs[j] & 0x0F) | h0) - 16;
        let x1 = i32::from((qs[j] >> 4) | h1) - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// Decode one Q5_1 block (24 bytes) into 32 values.
pub fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = (qs[j] & 0x0F) | h0;
        let x1 = (qs[j] >> 4) | h1;
        y[j] = f32::from(x0) * d + m;
        y[j + 16] = f32::from(x1) * d + m;
    }
}

/// The block decoder of a type this module handles.
/// Decodes one block into its values.
type BlockDecoder = fn(&[u8], &mut [f32]);

fn decoder(t: GgmlType) -> Option<BlockDecoder> {
    Some(match t {
        GgmlType::Q2_K => dequantize_q2_k,
        GgmlType::Q3_K => dequantize_q3_k,
        GgmlType::Q4_K => dequantize_q4_k,
        GgmlType::Q5_K => dequantize_q5_k,
        GgmlType::Q6_K => dequantize_q6_k,
        GgmlType::Q5_0 => dequantize_q5_0,
        GgmlType::Q5_1 => dequantize_q5_1,
        _ => return None,
    })
}

/// True for the types [`dequantize_row`] decodes.
pub fn can_dequantize(t: GgmlType) -> bool {
    decoder(t).is_some() || matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Decode one row of `out.len()` values stored as `t` in `bytes`.
///
/// Errors (as a message) when the type is not supported or the lengths disagree.
pub fn dequantize_row(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (block, size) = t.block();
    let n = out.len();
    if !n.is_multiple_of(block) || bytes.len() != n / block * size {
        return Err(format!("a {t} row of {n} values needs {} bytes, got {}", n / block * size, bytes.len()));
    }
    let codec = match t {
        GgmlType::Q4_0 => Some(Codec::Q4_0),
        GgmlType::Q4_1 => Some(Codec::Q4_1),
        GgmlType::Q8_0 => Some(Codec::Q8_0),
        _ => None,
    };
    if let Some(c) = codec {
        return c.decode_row(bytes, n, out).map_err(|e| e.to_string());
    }
    let f = decoder(t).ok_or_else(|| format!("{t} cannot be decoded"))?;
    for (b, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        f(b, y);
    }
    Ok(())
}

/// Transcode one Q4_K super-block (144 bytes) into eight Q4_1 blocks (160 bytes):
/// sub-block `j`'s `d * sc_j * q - dmin * m_j` becomes Q4_1's `d' * q + m'` with
/// `d' = f16(d * sc_j)`, `m' = f16(-dmin * m_j)` and the same 4-bit codes.
///
/// The only loss is that rounding of `d'` and `m'` to f16 (relative 2^-11 each).
/// Fails if a scale overflows f16 (|d * sc| > 65504; never in a real model).
pub fn transcode_q4_k_to_q4_1(b: &[u8], out: &mut [u8]) -> Result<(), String> {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let dj = f16::from_f32(d * f32::from(sc));
        let mj = f16::from_f32(-(min * f32::from(m)));
        if !dj.is_finite() || !mj.is_finite() {
            return Err(format!(
                "a Q4_K sub-block scale ({} or {}) does not fit in f16",
                d * f32::from(sc),
                min * f32::from(m)
            ));
        }
        let mj = if mj.to_f32() == 0.0 { f16::ZERO } else { mj };
        let o = &mut out[20 * j..20 * j + 20];
        o[0..2].copy_from_slice(&dj.to_le_bytes());
        o[2..4].copy_from_slice(&mj.to_le_bytes());
        // Sub-block j's 32 codes: nibble (j % 2) of qs[32 * (j / 2) + l], l = 0..32.
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let code = |l: usize| if j % 2 == 0 { q[l] & 0x0F } else { q[l] >> 4 };
        for i in 0..16 {
            o[4 + i] = code(i) | (code(i + 16) << 4);
        }
    }
    Ok(())
}

/// Convert a `rows x cols` matrix stored as `t` into `to` (rows in parallel).
///
/// Q4_K -> Q4_1 is transcoded block by block; anything else is dequantized
/// and re-encoded with `airllm-quant`. Errors are messages for the caller to
/// wrap with the tensor and file names.
pub fn convert_matrix(t: GgmlType, bytes: &[u8], rows: usize, cols: usize, to: Codec) -> Result<Vec<u8>, String> {
    let (block, size) = t.block();
    if !cols.is_multiple_of(block) {
        return Err(format!("row length {cols} is not a multiple of the {t} block size {block}"));
    }
    let src_row = cols / block * size;
    let expected = rows.checked_mul(src_row).ok_or("tensor too large")?;
    if bytes.len() != expected {
        return Err(format!("{} bytes stored, a {rows} x {cols} {t} tensor needs {expected}", bytes.len()));
    }
    let dst_row = to.row_bytes(cols);
    let mut out = vec![0u8; rows.checked_mul(dst_row).ok_or("tensor too large")?];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    if t == GgmlType::Q4_K && to == Codec::Q4_1 {
        let per_block = 8 * Codec::Q4_1.block_bytes();
        out.par_chunks_mut(dst_row).zip(bytes.par_chunks(src_row)).try_for_each(|(o, b)| {
            for (ob, bb) in o.chunks_exact_mut(per_block).zip(b.chunks_exact(size)) {
                transcode_q4_k_to_q4_1(bb, ob)?;
            }
            Ok::<(), String>(())
        })?;
        return Ok(out);
    }
    if !can_dequantize(t) {
        return Err(format!("{t} cannot be decoded"));
    }
    out.par_chunks_mut(dst_row).zip(bytes.par_chunks(src_row)).enumerate().try_for_each_init(
        || vec![0f32; cols],
        |buf, (r, (o, b))| {
            dequantize_row(t, b, buf)?;
            to.encode_row(Floats::F32(buf), o).map_err(|e| format!("row {r}: {e}"))
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// A Q4_K block built by hand: d = 0.5, dmin = 0.25, sub-block j has scale j+1
    /// and min 2j (j < 4 in the plain 6-bit slots, j >= 4 split across bytes),
    /// codes q[i] = i % 16.
    fn q4_k_block() -> Vec<u8> {
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&h(0.5));
        b[2..4].copy_from_slice(&h(0.25));
        let sc: [u8; 8] = [1, 2, 3, 4, 40, 50, 60, 63];
        let mn: [u8; 8] = [0, 2, 4, 6, 33, 17, 48, 63];
        let s = &mut b[4..16];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, s), (sc[j], mn[j]), "packing of pair {j}");
        }
        // Sub-block j holds values 32j..32j+32; codes (32j + l) % 16.
        for p in 0..4 {
            for l in 0..32 {
                let lo = ((64 * p + l) % 16) as u8;
                let hi = ((64 * p + 32 + l) % 16) as u8;
                b[16 + 32 * p + l] = lo | (hi << 4);
            }
        }
        b
    }

    #[test]
    fn q4_k_block_by_hand() {
        let b = q4_k_block();
        let mut y = vec![0f32; 256];
        dequantize_q4_k(&b, &mut y);
        let sc: [f32; 8] = [1., 2., 3., 4., 40., 50., 60., 63.];
        let mn: [f32; 8] = [0., 2., 4., 6., 33., 17., 48., 63.];
        for (i, &v) in y.iter().enumerate() {
            let j = i / 32;
            let want = 0.5 * sc[j] * (i % 16) as f32 - 0.25 * mn[j];
            assert_eq!(v, want, "value {i}");
        }
        // Element 37: sub-block 1 (scale 2, min 2), code 5: 0.5*2*5 - 0.25*2 = 4.5.
        assert_eq!(y[37], 4.5);
    }

    #[test]
    fn q4_k_transcodes_to_q4_1_exactly_when_scales_are_representable() {
        let b = q4_k_block();
        let mut y = vec![0f32; 256];
        dequantize_q4_k(&b, &mut y);
        let mut t = vec![0u8; 160];
        transcode_q4_k_to_q4_1(&b, &mut t).unwrap();
        let back = Codec::Q4_1.decode(&t, 256).unwrap();
        assert_eq!(back, y);
    }

    #[test]
    fn q6_k_block_by_hand() {
        let mut b = vec![0u8; 210];
        // All codes 33 (q - 32 = 1): low nibble 1, high 2 bits 2.
        for x in &mut b[0..128] {
            *x = 0x11;
        }
        for x in &mut b[128..192] {
            *x = 0b1010_1010;
        }
        for (k, x) in b[192..208].iter_mut().enumerate() {
            *x = (k as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&h(0.125));
        let mut y = vec![0f32; 256];
        dequantize_q6_k(&b, &mut y);
        for (i, &v) in y.iter().enumerate() {
            // Value i is in sub-block i / 16 (scales are in value order).
            assert_eq!(v, 0.125 * (((i / 16) as i8 - 8) as f32), "value {i}");
        }
    }

    #[test]
    fn q3_k_scales_unpack() {
        // Scale k = k + 16 (6-bit, so value k - 16 after the -32 offset).
        let want: Vec<u8> = (0..16).map(|k| k as u8 + 16).collect();
        let mut s = [0u8; 12];
        for k in 0..16 {
            let v = want[k];
            if k < 8 {
                s[k] |= v & 0x0F;
            } else {
                s[k - 8] |= (v & 0x0F) << 4;
            }
            s[8 + k % 4] |= ((v >> 4) & 3) << (2 * (k / 4));
        }
        let got = q3_k_scales(&s);
        for (k, &g) in got.iter().enumerate() {
            assert_eq!(g, k as i8 - 16);
        }
    }

    #[test]
    fn q5_0_block_by_hand() {
        let mut b = vec![0u8; 22];
        b[0..2].copy_from_slice(&h(2.0));
        // Element j has code j (0..32): low nibbles j % 16, fifth bit j >= 16.
        b[2..6].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
        for j in 0..16 {
            b[6 + j] = (j as u8) | ((j as u8) << 4);
        }
        let mut y = vec![0f32; 32];
        dequantize_q5_0(&b, &mut y);
        for (j, &v) in y.iter().enumerate() {
            assert_eq!(v, 2.0 * (j as f32 - 16.0), "value {j}");
        }
    }

    #[test]
    fn convert_matrix_checks_lengths() {
        assert!(convert_matrix(GgmlType::Q6_K, &[0u8; 10], 1, 256, Codec::Q8_0).is_err());
        assert!(convert_matrix(GgmlType::Q6_K, &[0u8; 210], 1, 100, Codec::Q8_0).is_err());
        let out = convert_matrix(GgmlType::Q6_K, &[0u8; 420], 2, 256, Codec::Q8_0).unwrap();
        assert_eq!(out.len(), 2 * Codec::Q8_0.row_bytes(256));
    }
}

//! The two ggml K-quant types that have no codec in `airllm-quant` (Q2_K and
//! Q3_K), their decoders and their conversion to a codec the engine runs
//! (Q2_K to Q4_1, Q3_K to Q8_0; see [`GgmlType::offered_as`] and the measured
//! costs in the [module docs](crate::gguf)). Every other readable quantized
//! type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) is a codec of
//! `airllm-quant`, which owns those byte layouts, and is streamed as stored.
//!
//! Written from the block layouts documented in ggml (`ggml-common.h`,
//! `dequantize_row_*` in `ggml-quants.c`). Each decoder does the same f32
//! operations in the same order as ggml's reference (`d * q - m`, with `d` and
//! `m` computed first), so the output equals gguf-py's `gguf.quants.dequantize`
//! bit for bit (checked against a fixture in `tests/gguf_kquants.rs`).
//!
//! Super-block layouts (256 values each, all multi-byte fields little-endian):
//!
//! ```text
//! Q2_K  84 B: scales[16] (lo 4 bits: scale, hi 4 bits: min) | qs[64] (2-bit) | d f16 | dmin f16
//!             16 sub-blocks of 16: y = d*sc*q - dmin*m
//! Q3_K 110 B: hmask[32] (high bit, set = +0, clear = -4) | qs[64] (low 2 bits) | scales[12] (16 x 6-bit) | d f16
//!             16 sub-blocks of 16: y = d*(sc-32)*q, q in -4..=3
//! ```

use airllm_quant::{Codec, Floats};
use half::f16;
use rayon::prelude::*;

use crate::gguf::types::GgmlType;

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
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

/// Decodes one block into its values.
type BlockDecoder = fn(&[u8], &mut [f32]);

/// The decoder of a type with no codec.
fn decoder(t: GgmlType) -> Option<BlockDecoder> {
    Some(match t {
        GgmlType::Q2_K => dequantize_q2_k,
        GgmlType::Q3_K => dequantize_q3_k,
        _ => return None,
    })
}

/// True for the types [`dequantize_row`] decodes (Q2_K, Q3_K and every type
/// that is an `airllm-quant` codec).
pub fn can_dequantize(t: GgmlType) -> bool {
    decoder(t).is_some() || t.codec().is_some()
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
    if let Some(c) = t.codec() {
        return c.decode_row(bytes, n, out).map_err(|e| e.to_string());
    }
    let f = decoder(t).ok_or_else(|| format!("{t} cannot be decoded"))?;
    for (b, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        f(b, y);
    }
    Ok(())
}

/// Convert a `rows x cols` matrix stored as `t` into `to` (rows in parallel):
/// dequantized and re-encoded with `airllm-quant`. Errors are messages for
/// the caller to wrap with the tensor and file names.
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
    fn q2_k_block_by_hand() {
        // d = 1, dmin = 0.5; sub-block j: scale j % 16 (low nibble), min 1 (high
        // nibble); every 2-bit code 3: value = j % 16 * 3 - 0.5.
        let mut b = vec![0u8; 84];
        for (j, x) in b[..16].iter_mut().enumerate() {
            *x = (j as u8) | (1 << 4);
        }
        b[16..80].fill(0xFF);
        b[80..82].copy_from_slice(&f16::ONE.to_le_bytes());
        b[82..84].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        let mut y = vec![0f32; 256];
        dequantize_q2_k(&b, &mut y);
        for (i, &v) in y.iter().enumerate() {
            assert_eq!(v, (i / 16) as f32 * 3.0 - 0.5, "value {i}");
        }
    }

    #[test]
    fn codec_types_decode_through_the_codecs() {
        // A Q6_K row of zeros: the codec decodes it.
        let mut y = vec![1f32; 256];
        dequantize_row(GgmlType::Q6_K, &[0u8; 210], &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
        assert!(can_dequantize(GgmlType::Q4_K) && can_dequantize(GgmlType::Q2_K));
        assert!(!can_dequantize(GgmlType::IQ2_XXS));
    }

    #[test]
    fn convert_matrix_checks_lengths() {
        assert!(convert_matrix(GgmlType::Q3_K, &[0u8; 10], 1, 256, Codec::Q8_0).is_err());
        assert!(convert_matrix(GgmlType::Q3_K, &[0u8; 110], 1, 100, Codec::Q8_0).is_err());
        let out = convert_matrix(GgmlType::Q3_K, &[0u8; 220], 2, 256, Codec::Q8_0).unwrap();
        assert_eq!(out.len(), 2 * Codec::Q8_0.row_bytes(256));
    }
}

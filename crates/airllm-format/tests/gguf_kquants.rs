//! K-quant (and Q5_0/Q5_1) decoding through `dequantize_row` against gguf-py
//! (Q2_K/Q3_K by this crate's decoders, the others by their `airllm-quant`
//! codecs), and the error the Q2_K/Q3_K conversion adds.
//!
//! The fixture is airllm-quant's `tests/data/kquant_blocks.safetensors` (the
//! crate that owns the layouts), made by `make_kquant_fixture.py` beside it
//! (gguf-py 0.19.0, `gguf.quants.dequantize`, seeded numpy random blocks with
//! finite f16 scales): for each type `T`, `T.raw` holds 3 rows of stored
//! blocks and `T.dequant` gguf-py's f32 values.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;

use airllm_format::gguf::GgmlType;
use airllm_format::gguf::kquants::{convert_matrix, dequantize_row};
use airllm_quant::{Codec, Floats};
use half::f16;

const TYPES: [GgmlType; 7] =
    [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q5_1];

#[test]
fn decoders_match_gguf_py_bit_for_bit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../airllm-quant/tests/data/kquant_blocks.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for t in TYPES {
        let raw = st.tensor(&format!("{t}.raw")).unwrap();
        let deq = st.tensor(&format!("{t}.dequant")).unwrap();
        let (rows, cols) = (deq.shape()[0], deq.shape()[1]);
        let want: Vec<f32> = deq.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let row_bytes = raw.shape()[1];
        for r in 0..rows {
            let mut got = vec![0f32; cols];
            dequantize_row(t, &raw.data()[r * row_bytes..(r + 1) * row_bytes], &mut got).unwrap();
            for (c, (g, w)) in got.iter().zip(&want[r * cols..(r + 1) * cols]).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{t} row {r} col {c}: {g} vs gguf-py {w}");
            }
        }
        // The types with a codec are offered as that codec, bytes untouched.
        let Some(airllm_format::StorageFormat::Quant(to)) = t.offered_as() else { panic!("{t}") };
        if let Some(c) = t.codec() {
            assert_eq!(to, c, "{t}");
            assert!(!t.is_transcoded(), "{t}");
            continue;
        }
        // The shard-time conversion of the others decodes close to the same values.
        let conv = convert_matrix(t, raw.data(), rows, cols, to).unwrap();
        let back = to.decode_matrix(&conv, rows, cols).unwrap();
        let rel = rel_rms(&back, &want);
        // Q2_K -> Q4_1 re-encodes 2-bit sub-blocks of 16 on one 4-bit grid per 32.
        let bound = if t == GgmlType::Q2_K { 0.15 } else { 0.01 };
        assert!(rel < bound, "{t} -> {to}: relative RMS error {rel}");
    }
}

// ------------------------------------------------------------------ error ---
//
// Simple reference encoders (min/max scales, round to nearest; llama.cpp's own
// quantizers search scales and err less) to make realistic blocks from
// synthetic weights. Only the block layouts must be right: the decoders above
// are checked against gguf-py.

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}
fn hf(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}
fn q(x: f32, lo: i32, hi: i32) -> i32 {
    (x.round() as i32).clamp(lo, hi)
}

/// Q4_K (bits 4) or Q5_K (bits 5) super-block.
fn enc_q45k(x: &[f32], bits: u32) -> Vec<u8> {
    let levels = ((1 << bits) - 1) as f32;
    let mut scale = [0f32; 8];
    let mut min = [0f32; 8];
    for j in 0..8 {
        let s = &x[32 * j..32 * j + 32];
        let lo = s.iter().copied().fold(f32::MAX, f32::min).min(0.0);
        let hi = s.iter().copied().fold(f32::MIN, f32::max);
        scale[j] = (hi - lo) / levels;
        min[j] = -lo;
    }
    let d = hf(scale.iter().copied().fold(0.0, f32::max) / 63.0);
    let dmin = hf(min.iter().copied().fold(0.0, f32::max) / 63.0);
    let sc: Vec<u8> = scale.iter().map(|&s| if d > 0.0 { q(s / d, 0, 63) as u8 } else { 0 }).collect();
    let mn: Vec<u8> = min.iter().map(|&m| if dmin > 0.0 { q(m / dmin, 0, 63) as u8 } else { 0 }).collect();
    let mut codes = [0u8; 256];
    for (i, c) in codes.iter_mut().enumerate() {
        let j = i / 32;
        let step = d * f32::from(sc[j]);
        *c = if step > 0.0 { q((x[i] + dmin * f32::from(mn[j])) / step, 0, levels as i32) as u8 } else { 0 };
    }
    let mut b = vec![0u8; if bits == 4 { 144 } else { 176 }];
    b[0..2].copy_from_slice(&h(d));
    b[2..4].copy_from_slice(&h(dmin));
    let s = &mut b[4..16];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
    }
    let qs_at = if bits == 4 { 16 } else { 48 };
    for p in 0..4 {
        for l in 0..32 {
            let (a, c) = (codes[64 * p + l], codes[64 * p + 32 + l]);
            b[qs_at + 32 * p + l] = (a & 0x0F) | ((c & 0x0F) << 4);
            if bits == 5 {
                b[16 + l] |= ((a >> 4) << (2 * p)) | ((c >> 4) << (2 * p + 1));
            }
        }
    }
    b
}

fn enc_q6k(x: &[f32]) -> Vec<u8> {
    let mut scale = [0f32; 16];
    for (j, s) in scale.iter_mut().enumerate() {
        *s = x[16 * j..16 * j + 16].iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0;
    }
    let d = hf(scale.iter().copied().fold(0.0, f32::max) / 127.0);
    let sc: Vec<i8> = scale.iter().map(|&s| if d > 0.0 { q(s / d, -128, 127) as i8 } else { 0 }).collect();
    let mut b = vec![0u8; 210];
    for (i, &v) in x.iter().enumerate().take(256) {
        let step = d * f32::from(sc[i / 16]);
        let c = (if step > 0.0 { q(v / step, -32, 31) } else { 0 } + 32) as u8;
        let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
        let ql = 64 * n + l + if k % 2 == 1 { 32 } else { 0 };
        b[ql] |= if k < 2 { c & 0x0F } else { (c & 0x0F) << 4 };
        b[128 + 32 * n + l] |= (c >> 4) << (2 * k);
    }
    for j in 0..16 {
        b[192 + j] = sc[j] as u8;
    }
    b[208..210].copy_from_slice(&h(d));
    b
}

/// Position of value `i` (0..256) in the Q2_K / Q3_K 2-bit layout: (qs byte, shift, sub-block).
fn two_bit_slot(i: usize) -> (usize, u32, usize) {
    let (n, r) = (i / 128, i % 128);
    let (shift_idx, r) = (r / 32, r % 32);
    (32 * n + r, 2 * shift_idx as u32, i / 16)
}

fn enc_q2k(x: &[f32]) -> Vec<u8> {
    let mut scale = [0f32; 16];
    let mut min = [0f32; 16];
    for j in 0..16 {
        let s = &x[16 * j..16 * j + 16];
        let lo = s.iter().copied().fold(f32::MAX, f32::min).min(0.0);
        let hi = s.iter().copied().fold(f32::MIN, f32::max);
        scale[j] = (hi - lo) / 3.0;
        min[j] = -lo;
    }
    let d = hf(scale.iter().copied().fold(0.0, f32::max) / 15.0);
    let dmin = hf(min.iter().copied().fold(0.0, f32::max) / 15.0);
    let mut b = vec![0u8; 84];
    let sc: Vec<u8> = scale.iter().map(|&s| if d > 0.0 { q(s / d, 0, 15) as u8 } else { 0 }).collect();
    let mn: Vec<u8> = min.iter().map(|&m| if dmin > 0.0 { q(m / dmin, 0, 15) as u8 } else { 0 }).collect();
    for j in 0..16 {
        b[j] = sc[j] | (mn[j] << 4);
    }
    for (i, &v) in x.iter().enumerate().take(256) {
        let (byte, shift, j) = two_bit_slot(i);
        let step = d * f32::from(sc[j]);
        let c = if step > 0.0 { q((v + dmin * f32::from(mn[j])) / step, 0, 3) } else { 0 } as u8;
        b[16 + byte] |= c << shift;
    }
    b[80..82].copy_from_slice(&h(d));
    b[82..84].copy_from_slice(&h(dmin));
    b
}

fn enc_q3k(x: &[f32]) -> Vec<u8> {
    let mut scale = [0f32; 16];
    for (j, s) in scale.iter_mut().enumerate() {
        *s = x[16 * j..16 * j + 16].iter().fold(0f32, |m, v| m.max(v.abs())) / 4.0;
    }
    let d = hf(scale.iter().copied().fold(0.0, f32::max) / 31.0);
    let sc: Vec<i32> = scale.iter().map(|&s| if d > 0.0 { q(s / d, -32, 31) } else { 0 }).collect();
    let mut b = vec![0u8; 110];
    for i in 0..256 {
        let (byte, shift, j) = two_bit_slot(i);
        let step = d * sc[j] as f32;
        let c = (if step > 0.0 { q(x[i] / step, -4, 3) } else { 0 } + 4) as u8;
        b[32 + byte] |= (c & 3) << shift;
        // hmask: byte (i % 32) of the 16-value halves, bit = 4n + shift_idx.
        let (n, shift_idx) = (i / 128, (i % 128) / 32);
        if c >= 4 {
            b[i % 32] |= 1 << (4 * n + shift_idx);
        }
    }
    for (k, &s) in sc.iter().enumerate() {
        let v = (s + 32) as u8;
        if k < 8 {
            b[96 + k] |= v & 0x0F;
        } else {
            b[96 + k - 8] |= (v & 0x0F) << 4;
        }
        b[96 + 8 + k % 4] |= ((v >> 4) & 3) << (2 * (k / 4));
    }
    b[108..110].copy_from_slice(&h(d));
    b
}

fn enc_q5_01(x: &[f32], with_min: bool) -> Vec<u8> {
    let mut b = vec![0u8; if with_min { 24 } else { 22 }];
    let (d, m, offset) = if with_min {
        let lo = x.iter().copied().fold(f32::MAX, f32::min);
        let hi = x.iter().copied().fold(f32::MIN, f32::max);
        (hf((hi - lo) / 31.0), hf(lo), 0)
    } else {
        let amax = x.iter().copied().fold(0f32, |a, v| if v.abs() > a.abs() { v } else { a });
        (hf(amax / -16.0), 0.0, 16)
    };
    b[0..2].copy_from_slice(&h(d));
    let at = if with_min {
        b[2..4].copy_from_slice(&h(m));
        4
    } else {
        2
    };
    let mut qh = 0u32;
    for (j, &v) in x.iter().enumerate().take(32) {
        let c = if d != 0.0 { q((v - m) / d + offset as f32, 0, 31) } else { offset } as u8;
        let i = j % 16;
        b[at + 4 + i] |= if j < 16 { c & 0x0F } else { (c & 0x0F) << 4 };
        qh |= u32::from(c >> 4) << j;
    }
    b[at..at + 4].copy_from_slice(&qh.to_le_bytes());
    b
}

fn encode(t: GgmlType, row: &[f32]) -> Vec<u8> {
    let (block, _) = t.block();
    row.chunks_exact(block)
        .flat_map(|x| match t {
            GgmlType::Q2_K => enc_q2k(x),
            GgmlType::Q3_K => enc_q3k(x),
            GgmlType::Q4_K => enc_q45k(x, 4),
            GgmlType::Q5_K => enc_q45k(x, 5),
            GgmlType::Q6_K => enc_q6k(x),
            GgmlType::Q5_0 => enc_q5_01(x, false),
            GgmlType::Q5_1 => enc_q5_01(x, true),
            other => panic!("{other}"),
        })
        .collect()
}

/// Synthetic weights: Gaussian rows with per-row scale, 0.5% outliers at 6 sigma.
fn weights(rows: usize, cols: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row_scale = 0.01 + 0.04 * u();
        for _ in 0..cols {
            let g = (-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos();
            let v = if u() < 0.005 { 6.0 * g.signum() } else { g };
            out.push((v * row_scale) as f32);
        }
    }
    out
}

fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn reference_encoders_round_trip_through_the_decoders() {
    // A sanity check of the test encoders: decoding their blocks lands near the input.
    let x = weights(4, 512);
    for t in TYPES {
        let bytes = encode(t, &x);
        let mut y = vec![0f32; x.len()];
        let (block, size) = t.block();
        for (b, o) in bytes.chunks(x.len() / 4 / block * size).zip(y.chunks_mut(512)) {
            dequantize_row(t, b, o).unwrap();
        }
        let e = rel_rms(&y, &x);
        assert!(e < 0.5, "{t}: reference encoder error {e}");
    }
}

/// The measurement behind the module docs' table (the two converted types).
/// Prints it (`--nocapture`).
#[test]
fn kquant_reencode_error() {
    let (rows, cols) = (64, 4096);
    let x = weights(rows, cols);
    println!("| GGUF type | GGUF error | -> Q8_0 | -> Q4_1 | chosen |");
    for t in TYPES {
        if !t.is_transcoded() {
            continue;
        }
        let stored = encode(t, &x);
        let (block, size) = t.block();
        let row_bytes = cols / block * size;
        let mut y = vec![0f32; x.len()];
        for (b, o) in stored.chunks(row_bytes).zip(y.chunks_mut(cols)) {
            dequantize_row(t, b, o).unwrap();
        }
        let own = rel_rms(&y, &x);
        let via = |c: Codec| {
            let enc = c.encode_matrix(Floats::F32(&y), rows, cols).unwrap();
            rel_rms(&c.decode_matrix(&enc, rows, cols).unwrap(), &y)
        };
        let (e8, e41) = (via(Codec::Q8_0), via(Codec::Q4_1));
        // What the source actually does.
        let chosen = match t.offered_as() {
            Some(airllm_format::StorageFormat::Quant(c)) => c,
            other => panic!("{t}: {other:?}"),
        };
        let enc = convert_matrix(t, &stored, rows, cols, chosen).unwrap();
        let e_chosen = rel_rms(&chosen.decode_matrix(&enc, rows, cols).unwrap(), &y);
        // Errors add in quadrature: how much larger the total error (vs the original weights) gets.
        let total = ((own * own + e_chosen * e_chosen).sqrt() / own - 1.0) * 100.0;
        println!(
            "| {t} | {own:.2e} | {e8:.2e} | {e41:.2e} | {chosen}: {e_chosen:.2e} ({:.0}% of the GGUF error, total +{total:.2}%) |",
            100.0 * e_chosen / own
        );
        if chosen == Codec::Q4_1 {
            // Q2_K: a quarter of its own error at 5 instead of 8.5 bits per weight.
            assert!(e_chosen < 0.3 * own, "{t}: added {e_chosen}, own {own}");
        } else {
            assert!(e_chosen < 0.5 * own, "{t}: added {e_chosen}, own {own}");
            assert!(e_chosen < 0.01, "{t}: {e_chosen}");
        }
    }
}

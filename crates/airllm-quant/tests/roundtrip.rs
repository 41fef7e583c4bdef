//! Property tests: round trips within the documented bound, stability of
//! re-encoding, non-finite input, zero blocks, `dot_row`, matrices, dtypes.

use airllm_quant::{Codec, Floats, QuantError};
use half::{bf16, f16};
use proptest::collection::vec;
use proptest::prelude::*;

/// Every codec encodes magnitudes up to this (f16's largest finite value).
const LIMIT: f32 = 65504.0;

fn scaled(u: f32, e: i32) -> f32 {
    (u * 2f32.powi(e)).clamp(-LIMIT, LIMIT)
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(-0.0f32),
        Just(LIMIT),
        Just(-LIMIT),
        Just(1e-45f32),
        (-1.0f32..=1.0, -149i32..=16).prop_map(|(u, e)| scaled(u, e)),
    ]
}

/// Rows of 0..=300 values: one magnitude (tiny to huge), wildly mixed
/// magnitudes, all equal, and runs of 64 that are zero, constant or random.
fn rows() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        (0usize..=300, -149i32..=16).prop_flat_map(|(n, e)| {
            vec(-1.0f32..=1.0, n).prop_map(move |v| v.into_iter().map(|u| scaled(u, e)).collect())
        }),
        vec(value(), 0..=300),
        (0usize..=300, value()).prop_map(|(n, v)| vec![v; n]),
        (vec((0u8..3, value(), -30i32..=10), 0..=5), 0usize..64).prop_map(|(runs, cut)| {
            let mut row = Vec::new();
            for (kind, v, e) in runs {
                for i in 0..64 {
                    row.push(match kind {
                        0 => 0.0,
                        1 => v,
                        _ => scaled(((i * 37 % 64) as f32 - 31.5) / 32.0, e),
                    });
                }
            }
            row.truncate(row.len().saturating_sub(cut).min(300));
            row
        }),
    ]
}

/// The row's blocks, the last one zero-padded as the encoder pads it.
fn padded_blocks(x: &[f32], bs: usize) -> Vec<Vec<f32>> {
    x.chunks(bs)
        .map(|c| {
            let mut b = c.to_vec();
            b.resize(bs, 0.0);
            b
        })
        .collect()
}

/// Codecs whose decoded data always re-encodes to the same bytes.
const STABLE: [Codec; 4] = [Codec::Q8_0, Codec::Q4_0, Codec::Nf4, Codec::Q5_0];

/// Codecs with a minimum: their zero padding decodes near, not exactly at, zero.
fn has_min(c: Codec) -> bool {
    matches!(c, Codec::Q4_1 | Codec::Q5_1 | Codec::Q4K | Codec::Q5K)
}

/// Codes and f16 fields of block `b` of a `q4_1` or `q5_1` row (for the
/// exactness condition of their stability).
fn affine_block(c: Codec, bytes: &[u8], b: usize) -> (f32, f32, [u8; 32]) {
    let n = c.block_bytes();
    let blk = &bytes[b * n..(b + 1) * n];
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
    let (qh, qs) = if c == Codec::Q5_1 { (u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]), 8) } else { (0, 4) };
    let mut codes = [0u8; 32];
    for j in 0..16 {
        codes[j] = (blk[qs + j] & 15) | ((((qh >> j) & 1) as u8) << 4);
        codes[j + 16] = (blk[qs + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    (d, m, codes)
}

fn check_round_trip(c: Codec, x: &[f32]) -> Result<(), TestCaseError> {
    let bs = c.block_size();
    let bytes = c.encode(x).map_err(|e| TestCaseError::fail(format!("{c}: {e}")))?;
    prop_assert_eq!(bytes.len(), c.row_bytes(x.len()));
    let y = c.decode(&bytes, x.len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Decoding whole blocks also shows the padding.
    let padded_cols = x.len().div_ceil(bs) * bs;
    let yp = c.decode(&bytes, padded_cols).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&yp[..x.len()], &y[..]);

    for (b, blk) in padded_blocks(x, bs).iter().enumerate() {
        let bound = c.max_abs_error_bound(blk);
        prop_assert!(bound.is_finite(), "{c} block {b}: bound {bound}");
        for (j, &v) in blk.iter().enumerate() {
            let i = b * bs + j;
            let err = (v - yp[i]).abs();
            prop_assert!(err <= bound, "{c}: element {i}: x {v} decoded {} error {err} > bound {bound}", yp[i]);
        }
        if blk.iter().all(|&v| v == 0.0) {
            prop_assert!(yp[b * bs..(b + 1) * bs].iter().all(|&v| v == 0.0), "{c}: zero block {b} decoded non-zero");
        }
    }
    if !has_min(c) {
        prop_assert!(yp[x.len()..].iter().all(|&v| v == 0.0), "{c}: padding decoded non-zero");
    }

    // K-quants refuse |x| > max_encodable, and their decoded values may lie
    // a little beyond the input's range: only in-range data re-encodes.
    if c.is_k_quant() && yp.iter().any(|v| v.abs() > c.max_encodable()) {
        return Ok(());
    }
    // Stability: decoded data re-encodes to the same bytes.
    let again = c.encode(&y).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Re-encoding the padded decode is the honest test for q4_1 (whose padding is not 0).
    let again_padded = c.encode(&yp).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if STABLE.contains(&c) {
        prop_assert_eq!(&again, &bytes, "{} not stable under re-encoding", c);
        prop_assert_eq!(&again_padded, &bytes);
        return Ok(());
    }
    if matches!(c, Codec::Q4_1 | Codec::Q5_1) {
        for b in 0..x.len().div_ceil(bs) {
            let (d, m, codes) = affine_block(c, &bytes, b);
            let exact = codes.iter().all(|&n| {
                let v = f64::from(n) * f64::from(d) + f64::from(m);
                f64::from(v as f32) == v
            });
            let range = b * c.block_bytes()..(b + 1) * c.block_bytes();
            if exact {
                prop_assert_eq!(&again_padded[range.clone()], &bytes[range], "{} block {} not stable", c, b);
            }
        }
    }
    // Otherwise (and for the K-quants, whose scale search may land elsewhere
    // on decoded data) re-encoding stays within the decoded data's bound.
    let y2 = c.decode(&again_padded, padded_cols).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (b, blk) in padded_blocks(&yp, bs).iter().enumerate() {
        let bound = c.max_abs_error_bound(blk);
        for j in 0..bs {
            prop_assert!((blk[j] - y2[b * bs + j]).abs() <= bound, "{c}: re-encoded block {b} value {j}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn round_trip_within_bound_and_stable(x in rows()) {
        for c in Codec::ALL {
            check_round_trip(c, &x)?;
        }
    }

    #[test]
    fn huge_values_up_to_each_codecs_limit(n in 1usize..=200, u in vec(-1.0f32..=1.0, 200), top in 0usize..200) {
        for c in Codec::ALL {
            let lim = c.max_encodable();
            let mut x: Vec<f32> = u[..n].iter().map(|v| v * lim).collect();
            x[top % n] = if top % 2 == 0 { lim } else { -lim };
            check_round_trip(c, &x)?;
        }
    }

    #[test]
    fn non_finite_names_the_index(x in rows(), at in any::<prop::sample::Index>(),
                                  bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)]) {
        let mut x = x;
        if x.is_empty() {
            x.push(1.0);
        }
        let i = at.index(x.len());
        x[i] = bad;
        for c in Codec::ALL {
            match c.encode(&x) {
                Err(QuantError::NonFinite { index, value }) => {
                    prop_assert_eq!(index, i);
                    prop_assert_eq!(value.to_bits(), bad.to_bits());
                }
                other => prop_assert!(false, "{c}: expected NonFinite at {i}, got {other:?}"),
            }
            // Same flat index through the parallel matrix path.
            let cols = x.len().div_ceil(3).max(1);
            let rows = x.len() / cols;
            if rows > 0 && i < rows * cols {
                let e = c.encode_matrix(Floats::F32(&x[..rows * cols]), rows, cols);
                prop_assert!(matches!(e, Err(QuantError::NonFinite { index, .. }) if index == i), "{c}: {e:?}");
            }
        }
    }

    #[test]
    fn dot_row_matches_dot_of_decoded(x in rows(), seed in vec(-4.0f32..=4.0, 300)) {
        for c in Codec::ALL {
            let a = &seed[..x.len()];
            let bytes = c.encode(&x).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let y = c.decode(&bytes, x.len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want: f64 = y.iter().zip(a).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum();
            let got = c.dot_row(&bytes, a);
            // Magnitude of the summed terms: per block, scale-sized factors times |a|.
            let bs = c.block_size();
            let mag: f64 = y.chunks(bs).zip(a.chunks(bs)).map(|(yb, ab)| {
                let m = yb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                f64::from(4.0 * m) * ab.iter().map(|v| f64::from(v.abs())).sum::<f64>()
            }).sum();
            let tol = mag * (x.len() as f64 + 8.0) * f64::from(f32::EPSILON) + 1e-37;
            prop_assert!((f64::from(got) - want).abs() <= tol, "{c}: dot_row {got} vs {want} (tol {tol})");
        }
    }

    #[test]
    fn matrices_are_rows_and_dtypes_widen(rows_n in 0usize..6, cols in 0usize..150, seed in vec(-1.0f32..1.0, 900)) {
        let n = rows_n * cols;
        let x: Vec<f32> = seed[..n].iter().map(|v| v * 3.0).collect();
        for c in Codec::ALL {
            let m = c.encode_matrix(Floats::F32(&x), rows_n, cols).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m.len(), c.matrix_bytes(rows_n, cols));
            let rb = c.row_bytes(cols);
            for r in 0..rows_n {
                let row = c.encode(&x[r * cols..(r + 1) * cols]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&m[r * rb..(r + 1) * rb], &row[..], "{} row {}", c, r);
            }
            let d = c.decode_matrix(&m, rows_n, cols).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for r in 0..rows_n {
                let row = c.decode(&m[r * rb..(r + 1) * rb], cols).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&d[r * cols..(r + 1) * cols], &row[..]);
            }
            // f16 / bf16 input encodes like its exact f32 widening.
            let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let hw: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let bw: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            prop_assert_eq!(c.encode_matrix(Floats::F16(&h), rows_n, cols).ok(), c.encode_matrix(Floats::F32(&hw), rows_n, cols).ok());
            prop_assert_eq!(c.encode_matrix(Floats::Bf16(&b), rows_n, cols).ok(), c.encode_matrix(Floats::F32(&bw), rows_n, cols).ok());
        }
    }
}

#[test]
fn scale_overflow_is_an_error_that_says_what_to_do() {
    for c in Codec::ALL {
        let mut x = vec![0.5f32; 70];
        x[40] = -c.max_encodable() * 1.01;
        match c.encode(&x) {
            Err(e @ QuantError::ScaleOverflow { .. }) => {
                let QuantError::ScaleOverflow { index, codec, .. } = &e else { unreachable!() };
                assert_eq!(*codec, c);
                assert_eq!(*index, 40 / c.block_size() * c.block_size(), "{c}: block start");
                assert!(e.to_string().contains("compression `none`"), "{e}");
            }
            other => panic!("{c}: expected ScaleOverflow, got {other:?}"),
        }
        assert!(c.max_abs_error_bound(&x).is_infinite(), "{c}");
    }
    // q4_1 also stores the minimum in f16.
    assert!(matches!(Codec::Q4_1.encode(&[70000.0; 32]), Err(QuantError::ScaleOverflow { .. })));
}

#[test]
fn serde_names_are_the_codec_names() {
    for c in Codec::ALL {
        let json = serde_json::to_string(&c).expect("serialize");
        assert_eq!(json, format!("\"{}\"", c.name()));
        assert_eq!(serde_json::from_str::<Codec>(&json).ok(), Some(c));
    }
}

//! The CPU matmul against an f64 reference over the decoded weights, for
//! every format and every SIMD level this CPU runs, at odd sizes; and every
//! level against the generic oracle.
//!
//! Tolerances (per output `y[t, n]`, `ŵ` the decoded row, `x` the token row,
//! `e` the largest activation error over the block's `amax`: `(1 + Q 2^-21)
//! / 2Q` for one term with codes up to `Q` (127 for [`Precision::Fast`],
//! 32767 for [`Precision::Precise`]: half a step, plus the f32 rounding of
//! `x / d`), `1.02 / (2 * 32767 * 16384)` for the two terms of
//! [`Precision::Exact`]):
//! - quantized formats: `sum_b e amax_b sum_{j in b} |ŵ_j|` for the
//!   quantized activations, plus for `nf4`
//!   `sum_j absmax_j |T_j - NF4_I8_j / 127| |x_j|` for the int8 code book, plus
//!   `F32_SLACK`;
//! - dense formats: `F32_SLACK` only;
//! - `F32_SLACK = (blocks + 16) * 2^-23 * sum_j (2 max|ŵ| + 2 max|m|) |x_j|`:
//!   f32 rounding of the per-block products and of their sum (`m` is the
//!   `q4_1` minimum, whose term the kernels add separately).
//! - Any level against the generic oracle: twice `F32_SLACK` (the integer
//!   block sums are exact and identical; only the f32 sums differ in order).

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::act::{Code, LO_RATIO, QK_ACT, quantize_row_generic, quantize_row2_generic};
use super::{
    Kernels, Matmul, MatmulError, MatmulShape, NF4_I8, NF4_I8_INV, Precision, Scratch, SimdLevel, WeightFormat,
};
use crate::pool::ThreadPool;
use crate::{Codec, Floats, NF4_TABLE};

const FORMATS: [WeightFormat; 7] = [
    WeightFormat::F32,
    WeightFormat::F16,
    WeightFormat::Bf16,
    WeightFormat::Quant(Codec::Q8_0),
    WeightFormat::Quant(Codec::Q4_0),
    WeightFormat::Quant(Codec::Q4_1),
    WeightFormat::Quant(Codec::Nf4),
];

/// (n, k, t): k off every block multiple, n odd, t = 1, 2, 3, 7, 33, ...
const SHAPES: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (3, 31, 1),
    (17, 33, 2),
    (5, 64, 3),
    (33, 100, 1),
    (7, 250, 7),
    (19, 257, 4),
    (2, 300, 5),
    (21, 577, 1),
    (9, 130, 33),
    (35, 96, 9),
    (4, 1031, 2),
];

fn pool(threads: usize) -> ThreadPool {
    ThreadPool::new(threads).expect("pool")
}

/// Bell-shaped weights with per-row scales, a few outliers, and an offset
/// on some rows (so `q4_1` minimums are not all negative).
fn weights(rng: &mut StdRng, n: usize, k: usize) -> Vec<f32> {
    let mut w = Vec::with_capacity(n * k);
    for r in 0..n {
        let scale = 0.02 * (1.0 + (r % 5) as f32);
        let offset = if r % 3 == 2 { 0.05 } else { 0.0 };
        for _ in 0..k {
            let v: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * scale + offset;
            w.push(if rng.random::<f32>() < 0.01 { v * 12.0 } else { v });
        }
    }
    w
}

/// Activations with per-token scales from 1e-3 to 30, an all-zero block on
/// some tokens and a large outlier on others.
fn activations(rng: &mut StdRng, t: usize, stride: usize, k: usize) -> Vec<f32> {
    let mut x = vec![f32::NAN; (t - 1) * stride + k];
    for tt in 0..t {
        let scale = [1e-3, 1.0, 30.0, 0.2][tt % 4];
        for j in 0..k {
            let mut v = (rng.random::<f32>() * 2.0 - 1.0) * scale;
            if tt % 3 == 1 && j < 32 {
                v = 0.0;
            }
            if tt % 5 == 2 && j == k / 2 {
                v *= 50.0;
            }
            x[tt * stride + j] = v;
        }
    }
    x
}

/// The stored bytes of `w` in `format` and the values they decode to.
fn encode(format: WeightFormat, w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    match format {
        WeightFormat::F32 => (w.iter().flat_map(|v| v.to_le_bytes()).collect(), w.to_vec()),
        WeightFormat::F16 => {
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        WeightFormat::Bf16 => {
            let h: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        WeightFormat::Quant(c) => {
            let bytes = c.encode_matrix(Floats::F32(w), n, k).expect("encode");
            let dec = c.decode_matrix(&bytes, n, k).expect("decode");
            (bytes, dec)
        }
    }
}

/// Per-block metadata of row `r` of the stored weights: per value, the
/// block's `absmax` (nf4) and minimum (q4_1).
fn row_meta(format: WeightFormat, bytes: &[u8], r: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let mut absmax = vec![0.0; k];
    let mut mins = vec![0.0; k];
    if let WeightFormat::Quant(c) = format {
        let row = &bytes[r * c.row_bytes(k)..(r + 1) * c.row_bytes(k)];
        for j in 0..k {
            let blk = &row[j / c.block_size() * c.block_bytes()..];
            let f = |at: usize| f16::from_le_bytes([blk[at], blk[at + 1]]).to_f32();
            match c {
                Codec::Nf4 => absmax[j] = f(0),
                Codec::Q4_1 => mins[j] = f(2),
                _ => {}
            }
        }
    }
    (absmax, mins)
}

/// The largest error of a quantized activation over its block's `amax`
/// (see the module docs).
fn act_error(precision: Precision) -> f64 {
    let one = |q: f64| (1.0 + q * 2f64.powi(-21)) / (2.0 * q);
    match precision {
        Precision::Fast => one(f64::from(<i8 as Code>::MAX)),
        Precision::Precise => one(f64::from(<i16 as Code>::MAX)),
        Precision::Exact => 1.02 / (2.0 * f64::from(<i16 as Code>::MAX) * f64::from(LO_RATIO)),
    }
}

/// The f64 reference of one output and its tolerance (see the module docs).
fn reference(
    format: WeightFormat,
    precision: Precision,
    bytes: &[u8],
    dec: &[f32],
    x: &[f32],
    r: usize,
    k: usize,
) -> (f64, f64, f64) {
    let w = &dec[r * k..(r + 1) * k];
    let exact: f64 = w.iter().zip(x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
    let (absmax, mins) = row_meta(format, bytes, r, k);
    let wmax = w.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    let mmax = mins.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    let xsum: f64 = x.iter().map(|v| f64::from(v.abs())).sum();
    let blocks = k.div_ceil(QK_ACT) as f64;
    let slack = (blocks + 16.0) * f64::from(f32::EPSILON) * (2.0 * wmax + 2.0 * mmax) * xsum;
    let mut bound = slack;
    if let WeightFormat::Quant(c) = format {
        for (b, xb) in x.chunks(QK_ACT).enumerate() {
            let amax = xb.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
            let wsum: f64 = w[b * QK_ACT..b * QK_ACT + xb.len()].iter().map(|v| f64::from(v.abs())).sum();
            bound += amax * act_error(precision) * wsum;
        }
        if c == Codec::Nf4 {
            let terr = NF4_TABLE
                .iter()
                .zip(NF4_I8)
                .fold(0.0f64, |m, (&t, c)| m.max((f64::from(t) - f64::from(c) * f64::from(NF4_I8_INV)).abs()));
            bound += (0..k).map(|j| f64::from(absmax[j]) * terr * f64::from(x[j].abs())).sum::<f64>();
        }
    }
    (exact, bound, slack)
}

#[allow(clippy::too_many_arguments)]
fn run(
    kern: &Kernels,
    pool: &ThreadPool,
    format: WeightFormat,
    precision: Precision,
    bytes: &[u8],
    shape: MatmulShape,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let m = Matmul { shape, format, weight: bytes, x, bias, precision };
    kern.matmul(&m, y, &mut Scratch::new(), pool).expect("matmul");
}

#[test]
fn every_format_level_and_precision_matches_the_f64_reference() {
    let levels = SimdLevel::available();
    eprintln!("levels on this CPU: {levels:?}");
    let pool = pool(2);
    let mut rng = StdRng::seed_from_u64(14);
    // Largest error over the bound's activation term, per precision (quantized formats).
    let mut worst = [0.0f64; 3];
    for &(n, k, t) in &SHAPES {
        let w = weights(&mut rng, n, k);
        let x = activations(&mut rng, t, k, k);
        for format in FORMATS {
            let (bytes, dec) = encode(format, &w, n, k);
            for (pi, precision) in Precision::ALL.into_iter().enumerate() {
                let mut oracle = vec![0.0f32; t * n];
                let generic = Kernels::for_level(SimdLevel::Generic).expect("generic");
                run(generic, &pool, format, precision, &bytes, MatmulShape::new(t, n, k), &x, None, &mut oracle);
                for &level in &levels {
                    let kern = Kernels::for_level(level).expect("available");
                    let mut y = vec![f32::NAN; t * n];
                    run(kern, &pool, format, precision, &bytes, MatmulShape::new(t, n, k), &x, None, &mut y);
                    for tt in 0..t {
                        let xr = &x[tt * k..(tt + 1) * k];
                        let xnorm = xr.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                        for r in 0..n {
                            let (exact, bound, slack) = reference(format, precision, &bytes, &dec, xr, r, k);
                            let got = f64::from(y[tt * n + r]);
                            let at = format!("{level} {precision} {format} n={n} k={k} t={t}: token {tt} row {r}");
                            assert!((got - exact).abs() <= bound, "{at}: {got} vs {exact} (bound {bound})");
                            let o = f64::from(oracle[tt * n + r]);
                            assert!((got - o).abs() <= 2.0 * slack, "{at}: {got} vs generic {o} (slack {slack})");
                            // The normwise form of the bound (crate docs).
                            if matches!(format, WeightFormat::Quant(c) if c != Codec::Nf4) {
                                let wnorm =
                                    dec[r * k..(r + 1) * k].iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                                let normwise = 32f64.sqrt() * act_error(precision) * xnorm * wnorm + slack;
                                assert!(
                                    (got - exact).abs() <= normwise,
                                    "{at}: {got} vs {exact} (normwise {normwise})"
                                );
                                if bound > slack {
                                    worst[pi] = worst[pi].max(((got - exact).abs() - slack).max(0.0) / (bound - slack));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "largest error / bound (activation term): exact {:.3}, precise {:.3}, fast {:.3}",
        worst[0], worst[1], worst[2]
    );
}

/// Each mode is what it claims: on the same data the precise errors are a
/// small fraction of the fast ones (the ratio of the bounds is 258), and the
/// exact ones a small fraction of the precise ones, down at the f32
/// rounding of the sums.
#[test]
fn errors_shrink_from_fast_to_precise_to_exact() {
    let pool = pool(2);
    let mut rng = StdRng::seed_from_u64(21);
    let (n, k, t) = (64, 576, 3);
    let w = weights(&mut rng, n, k);
    let x = activations(&mut rng, t, k, k);
    for format in FORMATS.into_iter().filter(|f| matches!(f, WeightFormat::Quant(c) if *c != Codec::Nf4)) {
        let (bytes, dec) = encode(format, &w, n, k);
        for level in SimdLevel::available() {
            let kern = Kernels::for_level(level).expect("available");
            let rms = |precision| {
                let mut y = vec![0.0f32; t * n];
                run(kern, &pool, format, precision, &bytes, MatmulShape::new(t, n, k), &x, None, &mut y);
                let mut sum = 0.0;
                for tt in 0..t {
                    for r in 0..n {
                        let xr = &x[tt * k..(tt + 1) * k];
                        let (exact, _, _) = reference(format, precision, &bytes, &dec, xr, r, k);
                        // Relative to the scale of the outputs: token scales differ 3e4x.
                        let scale = xr.iter().map(|v| f64::from(v.abs())).fold(0.0, f64::max);
                        sum += ((f64::from(y[tt * n + r]) - exact) / scale).powi(2);
                    }
                }
                (sum / (t * n) as f64).sqrt()
            };
            let [exact, precise, fast] = Precision::ALL.map(rms);
            eprintln!("{level} {format}: relative rms error exact {exact:.2e}, precise {precise:.2e}, fast {fast:.2e}");
            assert!(precise * 50.0 < fast, "{level} {format}: precise {precise:e} vs fast {fast:e}");
            assert!(exact * 10.0 < precise, "{level} {format}: exact {exact:e} vs precise {precise:e}");
        }
    }
}

#[test]
fn quantized_activations_are_identical_on_every_level() {
    let mut rng = StdRng::seed_from_u64(3);
    let bits = |v: &[f32]| v.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
    for k in [1usize, 31, 32, 33, 96, 100, 577] {
        let kp = k.div_ceil(64) * 64;
        let mut x: Vec<f32> = (0..k).map(|_| (rng.random::<f32>() - 0.5) * 7.0).collect();
        // Exact ties after scaling: amax 127 gives d = 1, so x.5 values tie.
        for (j, v) in x.iter_mut().enumerate().take(32) {
            *v = if j == 0 { 127.0 } else { (j as f32 - 16.0) + 0.5 };
        }
        // Ties for the 16-bit codes: amax 32767 * 2^-10 gives d = 2^-10.
        if k >= 64 {
            for (j, v) in x[32..64].iter_mut().enumerate() {
                *v = if j == 0 { 32767.0 / 1024.0 } else { ((j as f32 - 16.0) * 64.0 + 0.5) / 1024.0 };
            }
        }
        // Values so small that the 16-bit scale's inverse overflows: zeros everywhere.
        if k >= 96 {
            for (j, v) in x[64..96].iter_mut().enumerate() {
                *v = (j as f32 - 15.0) * 1e-36;
            }
        }
        let (mut q0, mut d0, mut s0) = (vec![0i8; kp], vec![0.0f32; kp / 32], vec![0.0f32; kp / 32]);
        quantize_row_generic(&x, &mut q0, &mut d0, &mut s0);
        let (mut p0, mut e0, mut t0) = (vec![0i16; kp], vec![0.0f32; kp / 32], vec![0.0f32; kp / 32]);
        quantize_row_generic(&x, &mut p0, &mut e0, &mut t0);
        let (mut r0, mut f0, mut u0) = (vec![0i16; 2 * kp], vec![0.0f32; kp / 32], vec![0.0f32; kp / 32]);
        quantize_row2_generic(&x, &mut r0, &mut f0, &mut u0);
        assert_eq!(bits(&f0), bits(&e0), "k={k}: the two-term scales are the one-term ones");
        if k >= 32 {
            assert_eq!((q0[1], q0[2]), (-14, -14), "-14.5 and -13.5 round to even");
        }
        if k >= 64 {
            assert_eq!(e0[1], 1.0 / 1024.0);
            assert_eq!((p0[33], p0[34]), (-960, -896), "-959.5 and -895.5 round to even");
            // Two terms: hi as the one-term codes, lo = remainder * 16384 / d, here exactly 0.5 * 16384.
            assert_eq!((r0[65], r0[66]), (-960, -896));
            assert_eq!((r0[97], r0[98]), (8192, 8192));
        }
        if k >= 96 {
            assert_eq!((e0[2], t0[2]), (0.0, 0.0));
            assert!(p0[64..96].iter().all(|&c| c == 0) && r0[128..192].iter().all(|&c| c == 0));
        }
        for level in SimdLevel::available() {
            let kern = Kernels::for_level(level).expect("available");
            let (mut q, mut d, mut s) = (vec![1i8; kp], vec![1.0f32; kp / 32], vec![1.0f32; kp / 32]);
            (kern.fast.quantize)(&x, &mut q, &mut d, &mut s);
            assert_eq!(q, q0, "{level} k={k}: codes");
            assert_eq!(bits(&d), bits(&d0), "{level} k={k}: scales");
            assert_eq!(bits(&s), bits(&s0), "{level} k={k}: sums");
            let (mut p, mut e, mut t) = (vec![1i16; kp], vec![1.0f32; kp / 32], vec![1.0f32; kp / 32]);
            (kern.precise.quantize)(&x, &mut p, &mut e, &mut t);
            assert_eq!(p, p0, "{level} k={k}: 16-bit codes");
            assert_eq!(bits(&e), bits(&e0), "{level} k={k}: 16-bit scales");
            assert_eq!(bits(&t), bits(&t0), "{level} k={k}: 16-bit sums");
            let (mut r, mut f, mut u) = (vec![1i16; 2 * kp], vec![1.0f32; kp / 32], vec![1.0f32; kp / 32]);
            (kern.exact.quantize)(&x, &mut r, &mut f, &mut u);
            assert_eq!(r, r0, "{level} k={k}: two-term codes");
            assert_eq!(bits(&f), bits(&f0), "{level} k={k}: two-term scales");
            assert_eq!(bits(&u), bits(&u0), "{level} k={k}: two-term sums");
        }
    }
}

#[test]
fn strides_offset_bias_and_accumulate() {
    let pool = pool(2);
    let mut rng = StdRng::seed_from_u64(5);
    let (n, k, t) = (13, 70, 6);
    let shape = MatmulShape { t, n, k, x_stride: k + 5, y_stride: n + 9, y_off: 4, accumulate: true };
    let w = weights(&mut rng, n, k);
    let x = activations(&mut rng, t, shape.x_stride, k);
    let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
    for format in FORMATS {
        let (bytes, dec) = encode(format, &w, n, k);
        for level in SimdLevel::available() {
            let kern = Kernels::for_level(level).expect("available");
            for precision in Precision::ALL {
                let y0: Vec<f32> =
                    (0..(t - 1) * shape.y_stride + shape.y_off + n + 3).map(|i| i as f32 * 0.01).collect();
                let mut y = y0.clone();
                run(kern, &pool, format, precision, &bytes, shape, &x, Some(&bias), &mut y);
                let at = format!("{level} {precision} {format}");
                for (i, (&got, &before)) in y.iter().zip(&y0).enumerate() {
                    let (tt, col) = (i / shape.y_stride, i % shape.y_stride);
                    if tt >= t || col < shape.y_off || col >= shape.y_off + n {
                        assert_eq!(got.to_bits(), before.to_bits(), "{at}: element {i} must stay untouched");
                        continue;
                    }
                    let r = col - shape.y_off;
                    let xr = &x[tt * shape.x_stride..tt * shape.x_stride + k];
                    let (exact, bound, _) = reference(format, precision, &bytes, &dec, xr, r, k);
                    let want = exact + f64::from(bias[r]) + f64::from(before);
                    let bound = bound + 4.0 * f64::from(f32::EPSILON) * want.abs().max(1.0);
                    assert!((f64::from(got) - want).abs() <= bound, "{at}: token {tt} row {r}: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn thread_counts_give_identical_bits() {
    let mut rng = StdRng::seed_from_u64(9);
    let (n, k, t) = (77, 200, 11);
    let w = weights(&mut rng, n, k);
    let x = activations(&mut rng, t, k, k);
    let pools = [pool(1), pool(2), pool(3)];
    for format in FORMATS {
        let (bytes, _) = encode(format, &w, n, k);
        let kern = Kernels::best();
        for precision in Precision::ALL {
            let outs: Vec<Vec<u32>> = pools
                .iter()
                .map(|p| {
                    let mut y = vec![0.0f32; t * n];
                    run(kern, p, format, precision, &bytes, MatmulShape::new(t, n, k), &x, None, &mut y);
                    y.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "{precision} {format}: results depend on the thread count");
        }
    }
}

#[test]
fn decode_fallback_matches_the_fast_kernels() {
    let pool = pool(2);
    let mut rng = StdRng::seed_from_u64(11);
    for &(n, k, t) in &SHAPES[..8] {
        let w = weights(&mut rng, n, k);
        let x = activations(&mut rng, t, k, k);
        for c in Codec::ALL {
            let format = WeightFormat::Quant(c);
            let (bytes, dec) = encode(format, &w, n, k);
            let slow = Kernels { decode_only: true, ..*Kernels::best() };
            assert!(!slow.is_fast(format));
            for precision in Precision::ALL {
                let mut y = vec![0.0f32; t * n];
                run(&slow, &pool, format, precision, &bytes, MatmulShape::new(t, n, k), &x, None, &mut y);
                for tt in 0..t {
                    for r in 0..n {
                        let xr = &x[tt * k..(tt + 1) * k];
                        let (exact, _, slack) = reference(WeightFormat::F32, precision, &bytes, &dec, xr, r, k);
                        let got = f64::from(y[tt * n + r]);
                        let at = format!("{precision} {c} n={n} k={k}: token {tt} row {r}");
                        assert!((got - exact).abs() <= slack, "{at}: {got} vs {exact}");
                    }
                }
            }
        }
    }
}

#[test]
fn non_finite_activations_give_nan_not_silent_numbers() {
    let pool = pool(2);
    let (n, k) = (5, 64);
    let w = weights(&mut StdRng::seed_from_u64(1), n, k);
    let mut x = vec![0.5f32; 2 * k];
    x[k + 3] = f32::INFINITY;
    for format in FORMATS {
        let (bytes, _) = encode(format, &w, n, k);
        for level in SimdLevel::available() {
            let kern = Kernels::for_level(level).expect("available");
            for precision in Precision::ALL {
                let mut y = vec![0.0f32; 2 * n];
                run(kern, &pool, format, precision, &bytes, MatmulShape::new(2, n, k), &x, None, &mut y);
                let at = format!("{level} {precision} {format}");
                assert!(y[..n].iter().all(|v| v.is_finite()), "{at}: token 0 is finite");
                assert!(y[n..].iter().all(|v| !v.is_finite()), "{at}: token 1 must not be finite: {:?}", &y[n..]);
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors_naming_the_argument() {
    let pool = pool(1);
    let (n, k) = (4, 40);
    let weight = vec![0u8; Codec::Q4_0.row_bytes(k) * n];
    let x = vec![0.0f32; k];
    let mut y = vec![0.0f32; n];
    let kern = Kernels::best();
    let mut s = Scratch::new();
    let base = Matmul {
        shape: MatmulShape::new(1, n, k),
        format: WeightFormat::Quant(Codec::Q4_0),
        weight: &weight,
        x: &x,
        bias: None,
        precision: Precision::Fast,
    };
    let short = Matmul { weight: &weight[1..], ..base };
    let e = kern.matmul(&short, &mut y, &mut s, &pool).expect_err("short weight");
    assert!(matches!(e, MatmulError::TooShort { what: "weight", .. }), "{e}");
    let e = kern.matmul(&Matmul { x: &x[1..], ..base }, &mut y, &mut s, &pool).expect_err("short x");
    assert!(matches!(e, MatmulError::TooShort { what: "x", .. }), "{e}");
    let e = kern.matmul(&base, &mut y[1..], &mut s, &pool).expect_err("short y");
    assert!(matches!(e, MatmulError::TooShort { what: "y", .. }), "{e}");
    let bias = [0.0f32; 3];
    let e = kern.matmul(&Matmul { bias: Some(&bias), ..base }, &mut y, &mut s, &pool).expect_err("short bias");
    assert!(matches!(e, MatmulError::TooShort { what: "bias", .. }), "{e}");
    let e = kern.matmul(&Matmul { shape: MatmulShape { x_stride: 3, ..base.shape }, ..base }, &mut y, &mut s, &pool);
    assert!(matches!(e, Err(MatmulError::Shape { .. })), "{e:?}");
    let e = kern.matmul(&Matmul { shape: MatmulShape { y_off: 1, ..base.shape }, ..base }, &mut y, &mut s, &pool);
    assert!(matches!(e, Err(MatmulError::Shape { .. })), "{e:?}");
    let e = kern.matmul(&Matmul { shape: MatmulShape::new(0, n, k), ..base }, &mut y, &mut s, &pool);
    assert!(matches!(e, Err(MatmulError::Shape { .. })), "{e:?}");
    assert!(kern.matmul(&base, &mut y, &mut s, &pool).is_ok());
}

#[test]
fn the_best_level_is_the_strongest_available() {
    let best = Kernels::best().level();
    assert_eq!(best, SimdLevel::detect());
    assert!(SimdLevel::available().iter().all(|&l| l <= best || !l.is_available()));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        assert!(best >= SimdLevel::Avx2, "an AVX2 CPU must not run the generic kernels");
    }
    assert_eq!(Kernels::for_level(SimdLevel::Generic).map(Kernels::level), Some(SimdLevel::Generic));
}

//! Measures how much each codec changes real (or synthetic) weights.
//!
//! ```text
//! cargo run --release -p airllm-quant --example quality -- [SOURCE]...
//! ```
//!
//! A SOURCE is a `.safetensors` file (every 2-D F32/F16/BF16 tensor in it is
//! measured; other tensors are skipped) or a synthetic matrix:
//! `gaussian:ROWSxCOLS` (N(0, 1)) or `t4:ROWSxCOLS` (Student-t with 4 degrees
//! of freedom: heavy tails, like the outliers of real LLM weights), seeded.
//! With no SOURCE it measures the crate's GGUF fixture rows and two synthetic
//! 1024x4096 matrices.
//!
//! For each source and codec it prints the RMS error and the largest absolute
//! error, both relative to the RMS of the weights (pooled over all matrices
//! of the source), the largest error relative to its tensor's RMS, and the
//! seconds spent (encode + decode + comparison, all threads).
//!
//! The full-model table (every 2-D tensor of a real checkpoint) comes from
//! running this on the model's safetensors files; for a GGUF model, once
//! `airllm-format` reads GGUF, dequantize it to safetensors first.

use std::path::Path;
use std::time::Instant;

use airllm_quant::{Codec, Floats};
use anyhow::{Context, Result, bail};
use half::{bf16, f16};
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, SafeTensors};

#[derive(Default, Clone, Copy)]
struct Acc {
    err2: f64,
    x2: f64,
    max_err: f64,
    max_rel: f64,
    n: u64,
}

struct Matrix {
    name: String,
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

fn main() -> Result<()> {
    let mut sources: Vec<String> = std::env::args().skip(1).collect();
    if sources.is_empty() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dequant.safetensors");
        sources = vec![fixture.display().to_string(), "gaussian:1024x4096".into(), "t4:1024x4096".into()];
    }
    for src in &sources {
        let mats = load(src)?;
        let weights: usize = mats.iter().map(|m| m.data.len()).sum();
        println!("\n{src}: {} matrices, {weights} weights", mats.len());
        println!(
            "{:<6} {:>6} {:>12} {:>12} {:>14} {:>10}",
            "codec", "bits/w", "rmse/rms", "max_err/rms", "max_err/t_rms", "time s"
        );
        for codec in Codec::ALL {
            let mut acc = Acc::default();
            let t = Instant::now();
            for m in &mats {
                measure(codec, m, &mut acc).with_context(|| format!("{src}: {}", m.name))?;
            }
            let rms = (acc.x2 / acc.n as f64).sqrt();
            println!(
                "{:<6} {:>6.2} {:>12.6} {:>12.5} {:>14.5} {:>10.2}",
                codec.name(),
                codec.bits_per_weight(),
                (acc.err2 / acc.x2).sqrt(),
                acc.max_err / rms,
                acc.max_rel,
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

fn measure(codec: Codec, m: &Matrix, acc: &mut Acc) -> Result<()> {
    let bytes = codec.encode_matrix(Floats::F32(&m.data), m.rows, m.cols)?;
    let back = codec.decode_matrix(&bytes, m.rows, m.cols)?;
    let (mut err2, mut x2, mut max_err) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in m.data.iter().zip(&back) {
        let e = f64::from(x) - f64::from(y);
        err2 += e * e;
        x2 += f64::from(x) * f64::from(x);
        max_err = max_err.max(e.abs());
    }
    let t_rms = (x2 / m.data.len().max(1) as f64).sqrt();
    acc.err2 += err2;
    acc.x2 += x2;
    acc.max_err = acc.max_err.max(max_err);
    if t_rms > 0.0 {
        acc.max_rel = acc.max_rel.max(max_err / t_rms);
    }
    acc.n += m.data.len() as u64;
    Ok(())
}

fn load(src: &str) -> Result<Vec<Matrix>> {
    if let Some((kind, shape)) = src.split_once(':')
        && (kind == "gaussian" || kind == "t4")
    {
        let (r, c) = shape.split_once('x').context("synthetic shape is ROWSxCOLS")?;
        let (rows, cols): (usize, usize) = (r.parse()?, c.parse()?);
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut normal = move || {
            // Box-Muller; one value per call is plenty here.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let data = (0..rows * cols)
            .map(|_| {
                let z = normal();
                if kind == "gaussian" {
                    z as f32
                } else {
                    let chi2: f64 = (0..4).map(|_| normal().powi(2)).sum();
                    (z / (chi2 / 4.0).sqrt()) as f32
                }
            })
            .collect();
        return Ok(vec![Matrix { name: src.to_owned(), rows, cols, data }]);
    }
    let bytes = std::fs::read(src).with_context(|| format!("reading {src}"))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {src} as safetensors"))?;
    let mut mats = Vec::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let t = st.tensor(name)?;
        let &[rows, cols] = t.shape() else { continue };
        let raw = t.data();
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => continue,
        };
        mats.push(Matrix { name: name.to_owned(), rows, cols, data });
    }
    if mats.is_empty() {
        bail!("{src}: no 2-D F32/F16/BF16 tensors");
    }
    Ok(mats)
}

//! K-quant GGUFs run as stored: the first 4 layers of SmolLM2-135M, re-encoded
//! into the types of llama.cpp's Q4_K_M / Q5_K_M files (Q4_K, Q5_K, Q6_K for
//! the 1536-wide down projections, Q5_0 / Q5_1 for the 576-wide matrices,
//! Q8_0 embedding; the encoders give llama-quantize's bytes, see airllm-quant's
//! tests/kquants.rs), shard with zero re-encoded tensors, stream the file's
//! tensor bytes, and give the logits of the same model stored as F32 (the
//! K-quant values decoded on the CPU): the kernels' in-kernel dequantization
//! (GEMV for a 5-token prompt, GEMM for 20) is checked end to end, fully
//! streamed. (The GEMM dequantizes with the CPU decoder's f32 operations,
//! so its logits come out identical; the GEMV factors the scales out of its
//! sums and differs by about 2e-5 of logits up to 60.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::Path;

use airllm::{AutoModel, Options};
use airllm_format::gguf::{GgmlType, GgufBuilder, GgufSource, GgufValue, read_metadata};
use airllm_format::{Manifest, TensorSource};
use airllm_quant::Floats;

const LAYERS: u32 = 4;

/// The K-quant type of a layer matrix (by GGUF name) in the test file.
fn k_type(name: &str, layer: u32) -> GgmlType {
    if name.ends_with("ffn_down.weight") {
        [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q4_K][layer as usize]
    } else if name.ends_with("attn_v.weight") {
        GgmlType::Q5_1
    } else {
        GgmlType::Q5_0
    }
}

/// Writes `kq.gguf` (K-quant types) and `f32.gguf` (the same values as F32).
fn write_pair(src: &Path, dir: &Path) {
    let meta = read_metadata(src).unwrap();
    let data = std::fs::read(src).unwrap();
    let (mut kq, mut dense) = (GgufBuilder::new(), GgufBuilder::new());
    for (k, v) in &meta.kv {
        let v = if k == "llama.block_count" { GgufValue::U32(LAYERS) } else { v.clone() };
        kq.kv(k, v.clone());
        dense.kv(k, v);
    }
    for t in &meta.tensors {
        let layer = t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|l| l.parse::<u32>().ok());
        if layer.is_some_and(|l| l >= LAYERS) {
            continue;
        }
        let raw = data[t.file_offset as usize..(t.file_offset + t.byte_len) as usize].to_vec();
        let ty = t.ggml_type.unwrap();
        let shape = t.shape();
        match (layer, shape.len()) {
            (Some(l), 2) => {
                let (rows, cols) = (shape[0], shape[1]);
                let x = ty.codec().unwrap().decode_matrix(&raw, rows, cols).unwrap();
                let to = k_type(&t.name, l);
                let bytes = to.codec().unwrap().encode_matrix(Floats::F32(&x), rows, cols).unwrap();
                let y = to.codec().unwrap().decode_matrix(&bytes, rows, cols).unwrap();
                kq.tensor_raw(&t.name, to, &shape, bytes);
                dense.tensor_f32(&t.name, &shape, &y);
            }
            _ => {
                kq.tensor_raw(&t.name, ty, &shape, raw.clone());
                dense.tensor_raw(&t.name, ty, &shape, raw);
            }
        }
    }
    kq.write(&dir.join("kq.gguf")).unwrap();
    dense.write(&dir.join("f32.gguf")).unwrap();
}

fn load(gguf: &Path, shards: &Path, device: airllm::Device) -> AutoModel {
    let opts = Options {
        shards_dir: Some(shards.to_path_buf()),
        device,
        max_context: Some(64),
        resident_layers: Some(0),
        ..Options::default()
    };
    AutoModel::from_pretrained(gguf.to_str().unwrap(), opts).unwrap()
}

#[test]
fn k_quant_gguf_streams_as_stored_and_matches_its_f32_twin() {
    let Some(src) = airllm_format::gguf::smollm2_path() else {
        assert!(std::env::var_os("CI").is_none(), "CI must fetch SmolLM2 (see .ci/run)");
        eprintln!("skipping: SmolLM2 GGUF not found (run `cargo xtask demo --fetch-only`)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    write_pair(&src, tmp.path());
    let kq_path = tmp.path().join("kq.gguf");

    // The GPU kernels (lavapipe in CI) dequantize the stored blocks; the CPU executor
    // runs the same shards through its own decoders. Both must match the dense twin.
    for device in [airllm::Device::Gpu, airllm::Device::Cpu] {
        check_against_twin(&kq_path, tmp.path(), device);
    }
}

fn check_against_twin(kq_path: &Path, tmp: &Path, device: airllm::Device) {
    let mut kq = load(kq_path, &tmp.join("kq-shards"), device);
    let mut dense = load(&tmp.join("f32.gguf"), &tmp.join("f32-shards"), device);

    // Zero re-encoded tensors; the shards hold exactly the file's tensor bytes.
    let m = Manifest::load(kq.shards_dir()).unwrap();
    assert_eq!(m.re_encoded, Some(0));
    let file = GgufSource::open(kq_path).unwrap();
    let file_bytes: usize = file.tensors().iter().map(|t| file.stored_len(t).unwrap()).sum();
    assert_eq!(m.tensor_bytes(), file_bytes as u64);
    let formats: std::collections::BTreeSet<String> =
        m.shards.iter().flat_map(|s| &s.tensors).map(|t| t.format.to_string()).collect();
    for f in ["q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "q8_0"] {
        assert!(formats.contains(f), "{f} missing from {formats:?}");
    }

    // (the twin really is dense: its layer matrices are F32)
    let md = Manifest::load(dense.shards_dir()).unwrap();
    let dense_formats: std::collections::BTreeSet<String> = md
        .shards
        .iter()
        .filter(|s| matches!(s.unit, airllm_format::Unit::Layer(_)))
        .flat_map(|s| &s.tensors)
        .map(|t| t.format.to_string())
        .collect();
    assert_eq!(dense_formats.into_iter().collect::<Vec<_>>(), ["f32"]);

    let short: Vec<u32> = vec![1, 9690, 314, 2733, 28];
    let long: Vec<u32> = (0..20u32).map(|i| 100 + i * 37).collect();
    let v = kq.spec().vocab_size;
    for prompt in [short, long] {
        let a = kq.forward_logits(std::slice::from_ref(&prompt)).unwrap();
        let b = dense.forward_logits(std::slice::from_ref(&prompt)).unwrap();
        let (a, b) = (&a[0], &b[0]);
        assert_eq!(a.len(), prompt.len() * v);
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        eprintln!("{device}: {} tokens: largest logit difference {worst:.2e} (logits up to {scale:.1})", prompt.len());
        assert!(worst <= 1e-4 * scale.max(1.0), "{} tokens: logits differ by {worst} (scale {scale})", prompt.len());
        // and the same greedy choice wherever the top two are further apart than that
        for (p, (ra, rb)) in a.chunks(v).zip(b.chunks(v)).enumerate() {
            let mut sorted: Vec<(usize, f32)> = rb.iter().copied().enumerate().collect();
            sorted.sort_by(|x, y| y.1.total_cmp(&x.1));
            let best_a = ra.iter().enumerate().fold((0, f32::MIN), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0;
            if sorted[0].1 - sorted[1].1 > 2.0 * worst {
                assert_eq!(best_a, sorted[0].0, "position {p}");
            }
        }
    }
}

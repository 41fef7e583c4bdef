//! How much block-wise compression changes what the model says: greedy
//! agreement, top-1 agreement and KL divergence of next-token distributions
//! against the uncompressed model, on the tiny fixtures' prompts. Prints the
//! table the README quotes; asserts only loose floors (8-bit must stay close).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::{AutoModel, GenerateOptions, Options, Prompt};

const FAMILIES: [&str; 8] = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "phi3", "gemma", "glm"];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(a, b)| if *a > 0.0 { a * (a / b.max(1e-30)).ln() } else { 0.0 }).sum()
}

fn load(family: &str, compression: &str, dir: &Path) -> Option<AutoModel> {
    let opts = Options {
        compression: compression.parse().unwrap(),
        shards_dir: Some(dir.join(compression)),
        max_context: Some(96),
        // Weight compression measured alone: the GPU kernels compute in f32
        // (the CPU executor also rounds activations to 8 bits).
        device: airllm::Device::Gpu,
        ..Options::default()
    };
    match AutoModel::from_pretrained(fixture(family).to_str().unwrap(), opts) {
        Ok(m) => Some(m),
        Err(airllm::EngineError::Gpu(e)) => {
            assert!(std::env::var_os("CI").is_none(), "CI must have lavapipe: {e}");
            None
        }
        Err(e) => panic!("{family} {compression}: {e}"),
    }
}

#[test]
fn compressed_models_stay_close_to_uncompressed() {
    let prompt0 = vec![0u32, 293, 437, 382, 310, 262, 271, 264, 14, 278, 262, 386, 73];
    let prompt1 = vec![0u32, 470, 380, 347, 335, 336, 391, 22, 378, 271, 319, 296, 262, 272, 67, 72];
    eprintln!("| family | codec | greedy ids equal (of 24) | top-1 agreement | mean KL |");
    let mut worst_8bit_top1 = 1.0f64;
    for family in FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        let Some(mut base) = load(family, "none", tmp.path()) else { return };
        let opts = GenerateOptions { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
        let (g0, _) = base.generate(&[Prompt::Ids(prompt0.clone())], &opts, |_| {}).unwrap();
        let l0 = base.forward_logits(&[prompt0.clone(), prompt1.clone()]).unwrap();
        let v = base.spec().vocab_size;
        drop(base);
        for codec in ["8bit", "4bit"] {
            let mut m = load(family, codec, tmp.path()).unwrap();
            let (g, _) = m.generate(&[Prompt::Ids(prompt0.clone())], &opts, |_| {}).unwrap();
            let same = g[0].new_ids.iter().zip(&g0[0].new_ids).take_while(|(a, b)| a == b).count();
            let l = m.forward_logits(&[prompt0.clone(), prompt1.clone()]).unwrap();
            let (mut agree, mut total, mut kls) = (0usize, 0usize, 0f64);
            for (a, b) in l0.iter().zip(&l) {
                for (ra, rb) in a.chunks(v).zip(b.chunks(v)) {
                    agree += usize::from(airllm::sampler::argmax(ra) == airllm::sampler::argmax(rb));
                    total += 1;
                    kls += kl(&softmax(ra), &softmax(rb));
                }
            }
            let top1 = agree as f64 / total as f64;
            eprintln!("| {family} | {codec} | {same} | {:.3} | {:.2e} |", top1, kls / total as f64);
            if codec == "8bit" {
                worst_8bit_top1 = worst_8bit_top1.min(top1);
            }
        }
    }
    assert!(worst_8bit_top1 >= 0.8, "8-bit top-1 agreement fell to {worst_8bit_top1}");
}

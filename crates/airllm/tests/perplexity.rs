//! `airllm perplexity` and `airllm::perplexity` against transformers: the perplexity
//! of each fixture prompt must be the one its golden per-position logits imply.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use airllm::perplexity::{chunk_nlls, perplexity};
use safetensors::SafeTensors;

const FAMILIES: [&str; 8] = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "phi3", "gemma", "glm"];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn has_gpu() -> bool {
    let ok = airllm_gpu::GpuContext::new(&Default::default()).is_ok();
    assert!(ok || std::env::var_os("CI").is_none(), "CI must have lavapipe");
    ok
}

/// (ids, logits [T, V]) of golden prompt `k`.
fn golden(family: &str, k: usize) -> (Vec<u32>, Vec<f32>) {
    let bytes = std::fs::read(fixture(family).join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st
        .tensor(&format!("prompt{k}.input_ids"))
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor(&format!("prompt{k}.logits"))
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids, logits)
}

fn prompt_text(family: &str, k: usize) -> String {
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(family).join("golden.json")).unwrap()).unwrap();
    g["prompts"][k]["text"].as_str().unwrap().to_owned()
}

#[test]
fn fixture_prompts_match_the_perplexity_their_golden_logits_imply() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        for k in 0..2 {
            let (ids, logits) = golden(family, k);
            let want = perplexity(&chunk_nlls(&logits, &ids, 512));
            let file = tmp.path().join(format!("{family}{k}.txt"));
            std::fs::write(&file, prompt_text(family, k)).unwrap();
            let o = Command::new(env!("CARGO_BIN_EXE_airllm"))
                .env("XDG_RUNTIME_DIR", std::env::temp_dir())
                .args(["perplexity", "--model"])
                .arg(fixture(family))
                .arg("--shards-dir")
                .arg(tmp.path().join(family))
                .arg("--file")
                .arg(&file)
                .args(["--ctx", "64", "--json"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{family}: {}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            // Tokenized as generate tokenizes a prompt: the golden ids, BOS included.
            assert_eq!(v["tokens"], ids.len() - 1, "{family} prompt {k}");
            assert_eq!(v["chunks"], 1);
            let got = v["perplexity"].as_f64().unwrap();
            let rel = (got - want.perplexity).abs() / want.perplexity;
            assert!(rel < 2e-4, "{family} prompt {k}: perplexity {got} vs transformers' {}", want.perplexity);
            let ci = v["ci95"].as_array().unwrap();
            assert!(ci[0].as_f64().unwrap() < got && got < ci[1].as_f64().unwrap());
            eprintln!("{family} prompt {k}: {got:.4} (transformers' logits: {:.4})", want.perplexity);
        }
    }
}

#[test]
fn chunks_and_kl_against_the_same_model() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/text/pride_and_prejudice_ch1.txt");
    let o = Command::new(env!("CARGO_BIN_EXE_airllm"))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .args(["perplexity", "--model"])
        .arg(fixture("qwen2"))
        .arg("--shards-dir")
        .arg(tmp.path().join("s"))
        .arg("--file")
        .arg(&text)
        .args(["--ctx", "128", "--json", "--kl-base"])
        .arg(fixture("qwen2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tokens = v["tokens"].as_u64().unwrap();
    let chunks = v["chunks"].as_u64().unwrap();
    // Every token after the first of each chunk is scored.
    assert!(chunks > 1 && tokens + chunks > 128 * (chunks - 1), "{v}");
    let kl = &v["kl_divergence"];
    assert!(kl["kl"]["mean"].as_f64().unwrap() < 1e-9, "{kl}");
    assert_eq!(kl["top1_agreement"], 1.0);
    assert_eq!(v["base"]["perplexity"], v["perplexity"]);
    let e = Command::new(env!("CARGO_BIN_EXE_airllm"))
        .args(["perplexity", "--model"])
        .arg(fixture("qwen2"))
        .args(["--file", "/no/such/text.txt"])
        .output()
        .unwrap();
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("/no/such/text.txt"));
}

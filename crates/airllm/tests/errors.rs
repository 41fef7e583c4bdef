//! Bad input gives clear errors that name the file or option.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::{AutoModel, GenerateOptions, Options, Prompt};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn copy_fixture(family: &str, to: &Path) -> PathBuf {
    let dst = to.join(family);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(family)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn err(model: &Path, opts: Options) -> String {
    match AutoModel::from_pretrained(model.to_str().unwrap(), opts) {
        Ok(_) => panic!("{} loaded", model.display()),
        Err(e) => e.to_string(),
    }
}

fn has_gpu() -> bool {
    airllm_gpu::GpuContext::new(&Default::default()).is_ok()
}

#[test]
fn bad_model_directory_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = err(tmp.path(), Options::default());
    assert!(e.contains("config.json") && e.contains("manifest.json"), "{e}");
    let e = err(&tmp.path().join("absent"), Options::default());
    assert!(e.contains("no such file"), "{e}");
}

#[test]
fn missing_tokenizer_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mistral", tmp.path());
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = err(&dir, Options { shards_dir: Some(tmp.path().join("s")), ..Options::default() });
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
}

#[test]
fn budget_too_small_names_the_minimum() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options {
        shards_dir: Some(tmp.path().join("s")),
        max_vram: Some(1000),
        device: airllm::Device::Gpu,
        ..Options::default()
    };
    let e = err(&fixture("llama"), opts);
    assert!(e.contains("--max-vram") && e.contains("minimum"), "{e}");
}

#[test]
fn prompt_longer_than_context_is_refused() {
    if !has_gpu() {
        assert!(std::env::var_os("CI").is_none(), "CI must have lavapipe");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { shards_dir: Some(tmp.path().join("s")), max_context: Some(16), ..Options::default() };
    let mut m = AutoModel::from_pretrained(fixture("qwen2").to_str().unwrap(), opts).unwrap();
    let long = Prompt::Ids(vec![5; 40]);
    let e = m.generate(&[long], &GenerateOptions::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("context") && e.contains("--max-context"), "{e}");
}

#[test]
fn chat_without_template_is_explained() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { shards_dir: Some(tmp.path().join("s")), ..Options::default() };
    let mut m = AutoModel::from_pretrained(fixture("gemma").to_str().unwrap(), opts).unwrap();
    let chat = Prompt::Chat(vec![airllm::ChatMessage::new("user", "hi")]);
    let e = m.generate(&[chat], &GenerateOptions::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("chat template"), "{e}");
}

#[test]
fn damaged_shard_while_streaming_is_named_and_recovery_is_clean() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("s");
    let opts = || Options {
        shards_dir: Some(shards.clone()),
        resident_layers: Some(0),
        prefetch_depth: 1,
        max_context: Some(64),
        device: airllm::Device::Gpu,
        ..Options::default()
    };
    let mut m = AutoModel::from_pretrained(fixture("mistral").to_str().unwrap(), opts()).unwrap();
    let prompt = Prompt::Ids(vec![0, 293, 437, 382, 310]);
    let g = GenerateOptions { max_new_tokens: 6, stop_at_eos: false, ..Default::default() };
    let (good, _) = m.generate(std::slice::from_ref(&prompt), &g, |_| {}).unwrap();

    // Cut a streamed layer shard while the model is loaded.
    let victim = shards.join("layer.01.shard");
    let saved = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &saved[..saved.len() / 2]).unwrap();
    let mut failed = false;
    for _ in 0..3 {
        // The reader may already hold prefetched copies; within a few passes it reads the file again.
        match m.generate(std::slice::from_ref(&prompt), &g, |_| {}) {
            Ok(_) => {}
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("layer.01.shard"), "{e}");
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a truncated shard was not noticed");

    // Put it back: the next pass restarts the reader at the first unit and is correct again.
    std::fs::write(&victim, &saved).unwrap();
    let (again, _) = m.generate(std::slice::from_ref(&prompt), &g, |_| {}).unwrap();
    assert_eq!(again[0].new_ids, good[0].new_ids);
}

#[test]
fn unit_larger_than_the_largest_buffer_is_named() {
    let opts = airllm_gpu::GpuOptions { max_buffer_override: Some(32 << 10), ..Default::default() };
    let Ok(ctx) = airllm_gpu::GpuContext::new(&opts) else {
        assert!(std::env::var_os("CI").is_none(), "CI must have lavapipe");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ck = airllm_format::Checkpoint::open(&fixture("mistral")).unwrap();
    airllm_format::write_shards(
        &ck,
        tmp.path(),
        &airllm_format::ShardOptions { progress: false, ..Default::default() },
    )
    .unwrap();
    let dir = airllm_format::ShardDir::open(tmp.path()).unwrap();
    let e =
        airllm::engine::Engine::new(Some(ctx), dir, airllm::engine::EngineConfig::default()).unwrap_err().to_string();
    assert!(e.contains("layer.00.shard") && e.contains("largest buffer") && e.contains("--compression"), "{e}");
}

//! The writer is resumable, atomic and deletes originals only when safe.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use airllm_format::writer::JOURNAL_FILE;
use airllm_format::{Checkpoint, ShardDir, ShardOptions, write_shards};
use common::*;

#[test]
fn rerun_keeps_complete_shards_and_redoes_damaged_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = Checkpoint::open(&fixture("mixtral")).unwrap();
    let first = write_shards(&ck, tmp.path(), &quiet()).unwrap();
    let n = first.manifest.shards.len();

    // Simulate a crash in the middle of the next run: the manifest is gone, a shard is
    // half written, a temporary file is left behind.
    std::fs::remove_file(tmp.path().join("manifest.json")).unwrap();
    let victim = tmp.path().join("layer.01.shard");
    let f = std::fs::OpenOptions::new().write(true).open(&victim).unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    std::fs::write(tmp.path().join("final_norm.shard.tmp"), b"partial").unwrap();

    let second = write_shards(&ck, tmp.path(), &quiet()).unwrap();
    assert_eq!(second.written, 1, "only the damaged shard is rewritten");
    assert_eq!(second.kept, n - 1);
    assert!(!tmp.path().join("final_norm.shard.tmp").exists(), "stale temporaries removed");
    assert!(tmp.path().join(JOURNAL_FILE).exists(), "the journal outlives the manifest");
    ShardDir::open(tmp.path()).unwrap().verify_all().unwrap();
    assert_eq!(first.manifest, second.manifest);

    // A third run over a finished directory writes nothing.
    let third = write_shards(&ck, tmp.path(), &quiet()).unwrap();
    assert_eq!((third.written, third.kept), (0, n));
}

#[test]
fn interrupted_run_without_manifest_resumes_from_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = Checkpoint::open(&fixture("phi3")).unwrap();
    let first = write_shards(&ck, tmp.path(), &quiet()).unwrap();
    // Rebuild the state of a run killed after the first two shards: journal lists them,
    // no manifest, later shards missing.
    let m = first.manifest;
    let journal = serde_json::json!({
        "format_version": airllm_format::manifest::FORMAT_VERSION,
        "identity": &m.source_identity,
        "complete": { &m.shards[0].file: &m.shards[0], &m.shards[1].file: &m.shards[1] },
        "deleted": []
    });
    std::fs::write(tmp.path().join(JOURNAL_FILE), journal.to_string()).unwrap();
    std::fs::remove_file(tmp.path().join("manifest.json")).unwrap();
    for s in &m.shards[2..] {
        std::fs::remove_file(tmp.path().join(&s.file)).unwrap();
    }
    let again = write_shards(&ck, tmp.path(), &quiet()).unwrap();
    assert_eq!((again.kept, again.written), (2, m.shards.len() - 2));
    assert_eq!(again.manifest, m);
}

#[test]
fn delete_original_removes_sources_only_after_their_shards_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_fixture("llama", tmp.path());
    let out = tmp.path().join("out");
    let ck = Checkpoint::open(&src).unwrap();
    let opts = ShardOptions { delete_original: true, ..quiet() };
    let report = write_shards(&ck, &out, &opts).unwrap();
    assert_eq!(report.deleted.len(), 2, "both weight files deleted");
    assert!(!src.join("model-00001-of-00002.safetensors").exists());
    assert!(src.join("config.json").exists(), "config and tokenizer stay");
    drop(ck);
    ShardDir::open(&out).unwrap().verify_all().unwrap();
}

#[test]
fn compressed_sharding_records_codecs() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = Checkpoint::open(&fixture("mistral")).unwrap();
    let opts = ShardOptions { compression: "8bit".parse().unwrap(), ..quiet() };
    let m = write_shards(&ck, tmp.path(), &opts).unwrap().manifest;
    assert_eq!(m.compression, "8bit");
    for s in &m.shards {
        for t in &s.tensors {
            let want = if t.role.is_compressible_matrix() { "q8_0" } else { "f32" };
            assert_eq!(t.format.name(), want, "{} {}", s.file, t.name);
        }
    }
    // Decoding gives back the weights within q8_0's bound.
    let dir = ShardDir::open(tmp.path()).unwrap();
    let got = dir.tensor_f32(airllm_format::Unit::Layer(0), airllm_format::Role::Q).unwrap();
    let plain = tempfile::tempdir().unwrap();
    write_shards(&ck, plain.path(), &quiet()).unwrap();
    let want = ShardDir::open(plain.path())
        .unwrap()
        .tensor_f32(airllm_format::Unit::Layer(0), airllm_format::Role::Q)
        .unwrap();
    let max_abs = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= max_abs / 127.0, "{a} vs {b}");
    }
}

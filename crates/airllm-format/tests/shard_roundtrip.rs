//! Every tiny fixture shards and reads back bit-identical to its source tensors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use airllm_format::{Checkpoint, ShardDir, TensorSource, write_shards};
use common::*;

#[test]
fn every_fixture_shards_and_reads_back_bit_identical() {
    for family in FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        let ck = Checkpoint::open(&fixture(family)).unwrap();
        let report = write_shards(&ck, tmp.path(), &quiet()).unwrap();
        let m = &report.manifest;
        assert_eq!(report.written, m.shards.len(), "{family}");
        let expected_shards = m.spec.num_layers + 2 + usize::from(!m.spec.tie_word_embeddings);
        assert_eq!(m.shards.len(), expected_shards, "{family}: one shard per unit");
        let dir = ShardDir::open(tmp.path()).unwrap();
        dir.verify_all().unwrap();
        let mut compared = 0;
        for t in ck.tensors() {
            let (i, entry) = dir.find(t.unit, t.role).unwrap();
            assert_eq!(entry.offset % 256, 0, "{family} {}: aligned", t.name);
            assert_eq!(entry.shape, t.shape);
            let shard = dir.map(i).unwrap();
            let got = shard.tensor(entry).unwrap();
            let want = ck.read(t).unwrap();
            if t.shape.len() == 1 {
                // Vectors are stored as f32, widened exactly from the source dtype.
                let w = airllm_format::dtype::dense_to_f32(t.format.dense().unwrap(), &want);
                assert_eq!(entry.format.name(), "f32", "{family} {}", t.name);
                assert_eq!(airllm_format::shard_dir::decode_tensor(entry, got).unwrap(), w, "{family} {}", t.name);
            } else {
                assert!(got == &want[..], "{family}: tensor {} differs after sharding", t.name);
            }
            compared += 1;
        }
        assert_eq!(compared, ck.tensors().len());
        for s in &m.shards {
            assert_eq!(s.bytes % 4096, 0, "{family}: {} padded to 4 KiB", s.file);
        }
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            assert!(tmp.path().join(f).is_file(), "{family}: {f} copied");
        }
    }
}

#[test]
fn bf16_two_file_llama_is_read_through_the_index() {
    let ck = Checkpoint::open(&fixture("llama")).unwrap();
    assert_eq!(ck.files().len(), 2);
    assert!(ck.tensors().iter().all(|t| t.format.name() == "bf16"));
}

#[test]
fn tied_models_write_the_embedding_once() {
    for family in ["qwen2", "gemma"] {
        let tmp = tempfile::tempdir().unwrap();
        let ck = Checkpoint::open(&fixture(family)).unwrap();
        let m = write_shards(&ck, tmp.path(), &quiet()).unwrap().manifest;
        assert!(m.spec.tie_word_embeddings);
        assert!(m.shards.iter().all(|s| s.file != "lm_head.shard"), "{family}");
        let (i, t) = m.find(airllm_format::Unit::LmHead, airllm_format::Role::LmHead).unwrap();
        assert_eq!(m.shards[i].file, "embedding.shard");
        assert_eq!(t.role, airllm_format::Role::Embedding);
    }
}

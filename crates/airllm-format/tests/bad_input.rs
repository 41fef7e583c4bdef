//! Bad input gives errors that name the file or field, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use std::io::{Seek, SeekFrom, Write};

use airllm_format::{Checkpoint, Manifest, ShardDir, write_shards};
use common::*;

fn sharded(family: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let ck = Checkpoint::open(&fixture(family)).unwrap();
    write_shards(&ck, tmp.path(), &quiet()).unwrap();
    tmp
}

#[test]
fn truncated_shard_is_named() {
    let tmp = sharded("mistral");
    let path = tmp.path().join("layer.01.shard");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 100).unwrap();
    let dir = ShardDir::open(tmp.path()).unwrap();
    let e = dir.verify_all().unwrap_err().to_string();
    assert!(e.contains("layer.01.shard") && e.contains("truncated"), "{e}");
}

#[test]
fn corrupted_byte_is_caught_by_the_checksum() {
    let tmp = sharded("qwen3");
    let path = tmp.path().join("layer.00.shard");
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(1000)).unwrap();
    f.write_all(&[0xAB]).unwrap();
    drop(f);
    let dir = ShardDir::open(tmp.path()).unwrap();
    let e = dir.verify_all().unwrap_err().to_string();
    assert!(e.contains("layer.00.shard") && e.contains("checksum"), "{e}");
}

#[test]
fn missing_manifest_entry_is_named() {
    let tmp = sharded("llama");
    let path = tmp.path().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["shards"][1]["tensors"].as_array_mut().unwrap().retain(|t| t["role"] != "down");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("manifest.json") && e.contains("layer 0 down"), "{e}");
}

#[test]
fn missing_manifest_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

#[test]
fn garbage_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mistral", tmp.path());
    std::fs::write(dir.join("config.json"), b"{\"hidden_size\": 64, oops").unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mistral", tmp.path());
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap().replace("MistralForCausalLM", "GPT2LMHeadModel");
    std::fs::write(&p, text).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("GPT2LMHeadModel") && e.contains("LlamaForCausalLM") && e.contains("config.json"), "{e}");
    assert!(e.contains("Gemma2ForCausalLM") && e.contains("Gemma3ForCausalLM"), "{e}");
}

#[test]
fn truncated_safetensors_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("qwen2", tmp.path());
    let p = dir.join("model.safetensors");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_index_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("llama", tmp.path());
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("incomplete"), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mistral", tmp.path());
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap().replace("\"intermediate_size\": 160", "\"intermediate_size\": 128");
    std::fs::write(&p, text).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("mlp") && e.contains("160") && e.contains("128"), "{e}");
}

#[test]
fn manifest_from_another_version_is_refused() {
    let tmp = sharded("gemma");
    let path = tmp.path().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!("\"format_version\": {}", airllm_format::manifest::FORMAT_VERSION), "\"format_version\": 99");
    std::fs::write(&path, text).unwrap();
    let e = Manifest::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("version 99"), "{e}");
}

mod fuzzish {
    use proptest::prelude::*;
    use std::path::Path;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn manifest_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = airllm_format::Manifest::parse(&bytes, Path::new("manifest.json"));
        }

        #[test]
        fn safetensors_header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = airllm_format::parse_safetensors_header(&bytes, Path::new("x.safetensors"));
        }

        #[test]
        fn safetensors_header_with_valid_length_prefix_never_panics(
            body in "\\{(\"[a-z.]{1,12}\":\\{\"dtype\":\"(F32|BF16|I8|F16)\",\"shape\":\\[[0-9]{1,3}(,[0-9]{1,3})?\\],\"data_offsets\":\\[[0-9]{1,4},[0-9]{1,4}\\]\\},?){0,3}\\}",
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = (body.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(body.as_bytes());
            bytes.extend_from_slice(&tail);
            let _ = airllm_format::parse_safetensors_header(&bytes, Path::new("x.safetensors"));
        }

        #[test]
        fn shard_header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = airllm_format::shard_file::ShardHeader::parse(&bytes, Path::new("x.shard"));
        }
    }
}

//! Regression tests for the defects of issue 11 that live in this crate: stale or
//! foreign shards reused, corruption passing silently, unbounded sizes from input
//! files, invalid values accepted, and concurrent writers. Each test failed before
//! its fix.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use airllm_format::gguf::{GgmlType, GgufBuilder, GgufMetadata, GgufValue};
use airllm_format::hub::ModelLocation;
use airllm_format::source_identity::{ShardDirState, shard_dir_state, user_cache_shards_dir};
use airllm_format::{
    Checkpoint, Manifest, ModelSpec, ShardDir, SourceIdentity, VerifyMode, ensure_shards, write_shards,
};
use airllm_quant::Compression;
use common::*;

fn sharded(family: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let ck = Checkpoint::open(&fixture(family)).unwrap();
    write_shards(&ck, tmp.path(), &quiet()).unwrap();
    tmp
}

fn flip_byte(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn hf(dir: &Path) -> ModelLocation {
    ModelLocation::HfDir(dir.to_owned())
}

// ---------------------------------------------------------------- 2: the wrong model

#[test]
fn user_cache_dirs_of_same_named_models_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a").join("model");
    let b = tmp.path().join("b").join("model");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (da, db) = (user_cache_shards_dir(&a, Compression::None), user_cache_shards_dir(&b, Compression::None));
    assert_ne!(da, db);
    for d in [&da, &db] {
        let leaf = d.file_name().unwrap().to_string_lossy();
        assert!(leaf.starts_with("model-") && leaf.ends_with(".airllm-shards-none"), "{leaf}");
    }
}

#[test]
fn manifest_records_the_source_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("qwen2", tmp.path());
    let out = tmp.path().join("s");
    write_shards(&Checkpoint::open(&model).unwrap(), &out, &quiet()).unwrap();
    let m = Manifest::load(&out).unwrap();
    let id = m.source_identity.clone().unwrap();
    assert_eq!(id.path, model.canonicalize().unwrap());
    let names: Vec<&str> = id.files.iter().map(|f| f.name.as_str()).collect();
    for n in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let now = SourceIdentity::of_checkpoint_dir(&model).unwrap();
    assert_eq!(id.mismatch(&now), None);
    assert_eq!(shard_dir_state(&out, &now, Compression::None), ShardDirState::Ready);
    assert!(matches!(shard_dir_state(&out, &now, Compression::Bits8), ShardDirState::OtherCompression(_)));
    // Old manifests without the field still parse (and count as "unknown").
    edit_manifest(&out, |m| {
        m.as_object_mut().unwrap().remove("source_identity");
    });
    assert!(matches!(shard_dir_state(&out, &now, Compression::None), ShardDirState::Unknown(_)));
}

/// Replacing a checkpoint's weights in place: the automatic shard directory is made
/// again from the new weights instead of serving the old ones.
#[test]
fn checkpoint_replaced_in_place_is_resharded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("qwen2", tmp.path());
    let loc = hf(&model);
    let out = ensure_shards(&loc, None, &quiet()).unwrap();
    assert_eq!(out, tmp.path().join("qwen2.airllm-shards-none"));
    let before =
        ShardDir::open(&out).unwrap().tensor_f32(airllm_format::Unit::FinalNorm, airllm_format::Role::FinalNorm);
    // New weights, same names and sizes: the final norm doubled.
    let st_path = model.join("model.safetensors");
    let bytes = std::fs::read(&st_path).unwrap();
    let header = airllm_format::parse_safetensors_header(&bytes, &st_path).unwrap();
    let (_, _, (b, e)) = header.tensors["model.norm.weight"].clone();
    let mut new = bytes.clone();
    for c in new[header.data_start + b..header.data_start + e].chunks_exact_mut(4) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 2.0;
        c.copy_from_slice(&x.to_le_bytes());
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&st_path, &new).unwrap();
    let again = ensure_shards(&loc, None, &quiet()).unwrap();
    assert_eq!(again, out);
    let after =
        ShardDir::open(&out).unwrap().tensor_f32(airllm_format::Unit::FinalNorm, airllm_format::Role::FinalNorm);
    let (before, after) = (before.unwrap(), after.unwrap());
    assert!(before.iter().zip(&after).all(|(a, b)| *b == 2.0 * a), "stale shards were reused");
}

/// A shard directory the user named that holds another model's shards is refused,
/// with the reason, and left as it is.
#[test]
fn explicit_shards_dir_of_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_fixture("qwen2", &tmp.path().join("a"));
    let b = copy_fixture("qwen2", &tmp.path().join("b"));
    let out = tmp.path().join("s");
    ensure_shards(&hf(&a), Some(&out), &quiet()).unwrap();
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let e = ensure_shards(&hf(&b), Some(&out), &quiet()).unwrap_err().to_string();
    assert!(e.contains("--shards-dir") && e.contains("made from") && e.contains("cannot be used"), "{e}");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest, "left alone");
    // An explicit directory whose manifest does not say where it came from: refused too.
    edit_manifest(&out, |m| {
        m.as_object_mut().unwrap().remove("source_identity");
    });
    let e = ensure_shards(&hf(&a), Some(&out), &quiet()).unwrap_err().to_string();
    assert!(e.contains("does not record"), "{e}");
}

/// The automatic directory of a model is re-sharded when its manifest has no identity.
#[test]
fn automatic_dir_with_unknown_identity_is_resharded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("mistral", tmp.path());
    let out = ensure_shards(&hf(&model), None, &quiet()).unwrap();
    edit_manifest(&out, |m| {
        m.as_object_mut().unwrap().remove("source_identity");
    });
    ensure_shards(&hf(&model), None, &quiet()).unwrap();
    assert!(Manifest::load(&out).unwrap().source_identity.is_some());
}

/// After `--delete-original` the weights are gone, and the shards still match.
#[test]
fn identity_survives_delete_original() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("mistral", tmp.path());
    let opts = airllm_format::ShardOptions { delete_original: true, ..quiet() };
    let out = ensure_shards(&hf(&model), None, &opts).unwrap();
    assert!(!model.join("model.safetensors").exists());
    let id = Manifest::load(&out).unwrap().source_identity.unwrap();
    assert_eq!(id.deleted, vec!["model.safetensors".to_string()]);
    assert_eq!(ensure_shards(&hf(&model), None, &opts).unwrap(), out);
}

// ---------------------------------------------------------------- 3: corruption

#[test]
fn flipped_tensor_byte_fails_first_use_and_the_cache_keeps_warm_starts_fast() {
    let tmp = sharded("qwen2");
    let dir = ShardDir::open(tmp.path()).unwrap();
    // The writer seeded the cache: first use after sharding hashes nothing.
    let r = dir.verify(VerifyMode::First).unwrap();
    assert_eq!((r.hashed, r.cached), (0, r.shards), "{r:?}");
    assert!(tmp.path().join(airllm_format::verify::VERIFY_CACHE_FILE).is_file());
    let r = dir.verify(VerifyMode::Always).unwrap();
    assert_eq!(r.hashed, r.shards);
    // A flipped byte inside a tensor: the file changed (ctime), so it is hashed again.
    flip_byte(&tmp.path().join("layer.01.shard"), 5000);
    let e = dir.verify(VerifyMode::First).unwrap_err().to_string();
    assert!(e.contains("layer.01.shard") && e.contains("checksum"), "{e}");
    // `never` checks headers only.
    dir.verify(VerifyMode::Never).unwrap();
}

#[test]
fn zeroed_or_missing_checksum_is_refused() {
    let tmp = sharded("qwen2");
    edit_manifest(tmp.path(), |m| m["shards"][1]["checksum"] = "0000000000000000".into());
    let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("checksum is zero"), "{e}");
    edit_manifest(tmp.path(), |m| m["shards"][1]["checksum"] = "".into());
    let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("16 hex digits"), "{e}");
}

/// Every header field is checked against the manifest.
#[test]
fn every_header_field_is_checked() {
    // (offset, value, what the message names)
    let cases: [(u64, &[u8], &str); 8] = [
        (12, &512u32.to_le_bytes(), "header length"),
        (24, &4096u64.to_le_bytes(), "data end"),
        (40, &9u32.to_le_bytes(), "tensor count"),
        (48, &3u32.to_le_bytes(), "unit index"),
        (52, &1u32.to_le_bytes(), "reserved"),
        (56, &1u64.to_le_bytes(), "tensor table hash"),
        (64, &1u64.to_le_bytes(), "model spec hash"),
        (200, &[1], "reserved"),
    ];
    for (at, bytes, needle) in cases {
        let tmp = sharded("qwen2");
        // The embedding (unit index must be 0) for the index case, a layer otherwise.
        let file = if needle == "unit index" { "embedding.shard" } else { "layer.00.shard" };
        let p = tmp.path().join(file);
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
        drop(f);
        let dir = ShardDir::open(tmp.path()).unwrap();
        let e = dir.verify(VerifyMode::Never).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(needle), "{needle}: {e}");
        let i = dir.manifest().shards.iter().position(|s| s.file == file).unwrap();
        assert!(dir.map(i).is_err(), "{needle}: mapped");
    }
}

/// A dtype in the manifest swapped for another of the same size (f32 -> ... there is
/// none; bf16 -> f16 on a matrix) no longer matches the header's tensor table hash.
#[test]
fn same_size_dtype_swap_in_the_manifest_is_caught() {
    let tmp = sharded("llama"); // bf16 matrices
    edit_manifest(tmp.path(), |m| {
        let t = m["shards"][1]["tensors"].as_array_mut().unwrap();
        let q = t.iter_mut().find(|t| t["role"] == "q").unwrap();
        assert_eq!(q["format"], "bf16");
        q["format"] = "f16".into();
    });
    let dir = ShardDir::open(tmp.path()).unwrap();
    let e = dir.verify(VerifyMode::Never).unwrap_err().to_string();
    assert!(e.contains("layer.00.shard") && e.contains("tensor table hash"), "{e}");
}

/// A changed model spec (here the norm epsilon, a valid value) no longer matches the
/// spec hash in the headers.
#[test]
fn edited_spec_in_the_manifest_is_caught() {
    let tmp = sharded("mistral");
    edit_manifest(tmp.path(), |m| m["spec"]["norm_eps"] = 1e-3.into());
    let dir = ShardDir::open(tmp.path()).unwrap();
    let e = dir.verify(VerifyMode::Never).unwrap_err().to_string();
    assert!(e.contains("model spec hash"), "{e}");
}

// ---------------------------------------------------------------- 4: unbounded sizes

#[test]
fn huge_layer_count_in_config_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mistral", tmp.path());
    edit_config(&dir, |c| c["num_hidden_layers"] = 1_000_000_000u64.into());
    let t = std::time::Instant::now();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("num_hidden_layers") && e.contains("1000000000"), "{e}");
    assert!(e.len() < 500, "{e}");
    // A count within the limit but far beyond the file: refused before listing tensors.
    edit_config(&dir, |c| c["num_hidden_layers"] = 1000u64.into());
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("tensors") && e.contains("num_hidden_layers"), "{e}");
    eprintln!("refused in {:?}", t.elapsed());
}

#[test]
fn huge_layer_count_in_manifest_is_refused() {
    let tmp = sharded("mistral");
    edit_manifest(tmp.path(), |m| m["spec"]["num_layers"] = (1u64 << 63).into());
    let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("num_hidden_layers") && e.contains("larger than any model"), "{e}");
    edit_manifest(tmp.path(), |m| m["spec"]["num_layers"] = 1000.into());
    let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("tensors"), "{e}");
}

fn small_gguf() -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", GgufValue::String("llama".into()));
    b.tensor_f32("a.weight", &[8], &[1.0; 8]);
    b.tensor_f32("b.weight", &[8], &[2.0; 8]);
    b
}

#[test]
fn gguf_long_tensor_name_and_zero_dims_are_short_errors() {
    // A 90 MB tensor name (ggml allows 63 bytes).
    let mut b = small_gguf();
    let long = "x".repeat(90 << 20);
    b.tensor_f32(&long, &[8], &[0.0; 8]);
    let bytes = b.to_bytes();
    let e = GgufMetadata::parse(&bytes, Path::new("big.gguf")).unwrap_err().to_string();
    assert!(e.contains("tensor name") && e.contains("more than the 63"), "{}", &e[..e.len().min(300)]);
    assert!(e.len() < 400, "{} bytes of message", e.len());
    // ndims 0.
    let mut b = small_gguf();
    b.tensor_raw("scalar", GgmlType::F32, &[], vec![0; 4]);
    let e = GgufMetadata::parse(&b.to_bytes(), Path::new("z.gguf")).unwrap_err().to_string();
    assert!(e.contains("0 dimensions"), "{e}");
    // A long metadata key with a bad value type is quoted as an excerpt.
    let mut b = GgufBuilder::new();
    b.kv(&"k".repeat(60_000), GgufValue::U32(1));
    let mut bytes = b.to_bytes();
    let ty_at = 24 + 8 + 60_000;
    bytes[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = GgufMetadata::parse(&bytes, Path::new("key.gguf")).unwrap_err().to_string();
    assert!(e.contains("unknown value type 99") && e.len() < 400, "{} bytes", e.len());
    // Longer than the GGUF specification allows: refused before it is read.
    let mut b = GgufBuilder::new();
    b.kv(&"k".repeat(70_000), GgufValue::U32(1));
    let e = GgufMetadata::parse(&b.to_bytes(), Path::new("key.gguf")).unwrap_err().to_string();
    assert!(e.contains("metadata key") && e.contains("65535"), "{e}");
}

#[test]
fn gguf_overlapping_tensors_are_refused() {
    let mut bytes = small_gguf().to_bytes();
    let meta = GgufMetadata::parse(&bytes, Path::new("ok.gguf")).unwrap();
    assert_eq!(meta.tensors[1].offset, 32);
    // Point b.weight's offset at a.weight's data: the offset is the last u64 of its info.
    let name_at = bytes.windows(8).position(|w| w == b"b.weight").unwrap();
    let off_at = name_at + 8 + 4 + 8 + 4;
    bytes[off_at..off_at + 8].copy_from_slice(&0u64.to_le_bytes());
    let e = GgufMetadata::parse(&bytes, Path::new("overlap.gguf")).unwrap_err().to_string();
    assert!(e.contains("overlap") && e.contains("a.weight") && e.contains("b.weight"), "{e}");
}

#[test]
fn long_input_in_config_errors_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mistral", tmp.path());
    edit_config(&dir, |c| c["hidden_size"] = "9".repeat(1 << 20).into());
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("hidden_size") && e.len() < 500, "{} bytes", e.len());
    edit_config(&dir, |c| c["architectures"] = serde_json::json!(["X".repeat(1 << 20)]));
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("unsupported architecture") && e.len() < 1000, "{} bytes", e.len());
}

// ---------------------------------------------------------------- 5: invalid values

fn config_err(family: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(family, tmp.path());
    edit_config(&dir, f);
    Checkpoint::open(&dir).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn out_of_range_config_values_are_refused() {
    for (key, v, needle) in [
        ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps"),
        ("rms_norm_eps", serde_json::json!(-1e-6), "rms_norm_eps"),
        ("rope_theta", serde_json::json!(0.0), "rope_theta"),
        ("rope_theta", serde_json::json!(-10000.0), "rope_theta"),
        ("rope_theta", serde_json::json!(1e300), "rope_theta"),
        ("eos_token_id", serde_json::json!(1u64 << 32), "eos_token_id"),
        ("eos_token_id", serde_json::json!([1, 1u64 << 33]), "eos_token_id"),
        ("eos_token_id", serde_json::json!(512), "outside the vocabulary"),
        ("bos_token_id", serde_json::json!(4096), "outside the vocabulary"),
        ("eos_token_id", serde_json::json!(1.5), "eos_token_id"),
        ("sliding_window", serde_json::json!(0), "sliding_window"),
        ("max_position_embeddings", serde_json::json!(0), "max_position_embeddings"),
    ] {
        let e = config_err("mistral", |c| c[key] = v.clone());
        assert!(e.contains(needle) && e.contains("config.json"), "{key}={v}: {e}");
    }
    let e = config_err("llama", |c| c["rope_scaling"]["high_freq_factor"] = 0.5.into());
    assert!(e.contains("high_freq_factor"), "{e}");
}

#[test]
fn eos_in_generation_config_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mistral", tmp.path());
    std::fs::write(dir.join("generation_config.json"), br#"{"eos_token_id": [1, 4294967296]}"#).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("generation_config.json") && e.contains("eos_token_id"), "{e}");
}

#[test]
fn manifest_spec_must_agree_with_its_family() {
    for (edit, needle) in [
        (serde_json::json!({"embedding_scale": 8.0}), "embedding_scale"),
        (serde_json::json!({"norm_eps": 0.0}), "rms_norm_eps"),
        (serde_json::json!({"qk_norm": true}), "qk_norm"),
        (serde_json::json!({"norm": "rms_one_plus"}), "rms_one_plus"),
        (serde_json::json!({"eos_token_ids": [4096]}), "outside the vocabulary"),
    ] {
        let tmp = sharded("mistral");
        edit_manifest(tmp.path(), |m| {
            for (k, v) in edit.as_object().unwrap() {
                m["spec"][k] = v.clone();
            }
        });
        let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
        assert!(e.contains(needle), "{edit}: {e}");
    }
    // Gemma's scale must be sqrt(hidden), not anything else.
    let tmp = sharded("gemma");
    edit_manifest(tmp.path(), |m| m["spec"]["embedding_scale"] = 1.0.into());
    let e = ShardDir::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("embedding_scale"), "{e}");
    // EOS ids of 2^32 in a manifest are refused by its parser (never truncated).
    let tmp = sharded("mistral");
    edit_manifest(tmp.path(), |m| m["spec"]["eos_token_ids"] = serde_json::json!([1u64 << 32]));
    assert!(ShardDir::open(tmp.path()).is_err());
}

#[test]
fn spec_validation_covers_gguf_metadata() {
    let mut b = small_gguf();
    b.kv("llama.block_count", GgufValue::U32(2))
        .kv("llama.embedding_length", GgufValue::U32(8))
        .kv("llama.feed_forward_length", GgufValue::U32(16))
        .kv("llama.attention.head_count", GgufValue::U32(2))
        .kv("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(-1.0))
        .kv("llama.vocab_size", GgufValue::U32(16));
    let meta = GgufMetadata::parse(&b.to_bytes(), Path::new("eps.gguf")).unwrap();
    let e = airllm_format::gguf::spec_from_metadata(&meta, None).unwrap_err().to_string();
    assert!(e.contains("rms_norm_eps"), "{e}");
    b.kv("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5));
    b.kv("tokenizer.ggml.eos_token_id", GgufValue::U64(1 << 32));
    let meta = GgufMetadata::parse(&b.to_bytes(), Path::new("eos.gguf")).unwrap();
    let e = airllm_format::gguf::spec_from_metadata(&meta, None).unwrap_err().to_string();
    assert!(e.contains("eos_token_id") && e.contains("2^32"), "{e}");
}

#[test]
fn spec_validate_rejects_each_bad_value() {
    let good = Checkpoint::open(&fixture("mistral")).unwrap();
    let good: ModelSpec = airllm_format::TensorSource::spec(&good).clone();
    good.validate().unwrap();
    type Edit = Box<dyn Fn(&mut ModelSpec)>;
    let bad: Vec<(&str, Edit)> = vec![
        ("rms_norm_eps", Box::new(|s| s.norm_eps = f32::NAN)),
        ("rope_theta", Box::new(|s| s.rope.theta = f32::INFINITY)),
        ("rotary", Box::new(|s| s.rope.rotary_dim = 0)),
        ("num_key_value_heads", Box::new(|s| s.num_kv_heads = 3)),
        ("hidden_size", Box::new(|s| s.hidden_size = 1 << 40)),
        ("embedding_scale", Box::new(|s| s.embedding_scale = Some(8.0))),
    ];
    for (needle, f) in bad {
        let mut s = good.clone();
        f(&mut s);
        let e = s.validate().unwrap_err();
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

// ---------------------------------------------------------------- 6: concurrent writers

#[test]
fn concurrent_writers_of_one_directory_both_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let out: PathBuf = tmp.path().join("s");
    let barrier = std::sync::Barrier::new(2);
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let ck = Checkpoint::open(&fixture("mixtral")).unwrap();
                    barrier.wait();
                    write_shards(&ck, &out, &quiet())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let reports: Vec<_> = reports.into_iter().map(|r| r.unwrap()).collect();
    let n = reports[0].manifest.shards.len();
    // One wrote everything, the other waited and kept it.
    let mut wk: Vec<(usize, usize)> = reports.iter().map(|r| (r.written, r.kept)).collect();
    wk.sort();
    assert_eq!(wk, vec![(0, n), (n, 0)]);
    ShardDir::open(&out).unwrap().verify_all().unwrap();
}

/// The real SmolLM2 metadata, without its tensor data, parses as a prefix and maps to
/// its spec (what the gguf fuzz target relies on to reach the spec mapping).
#[test]
fn smollm2_head_parses_as_a_prefix() {
    let seed = fixture("..").join("../fuzz/seeds/gguf/smollm2-135m-q4_1-head.gguf");
    let Ok(bytes) = std::fs::read(&seed) else { return };
    let p = Path::new("head.gguf");
    assert!(GgufMetadata::parse(&bytes, p).is_err(), "the tensor data is missing");
    let meta = GgufMetadata::parse_prefix(&bytes, 1 << 40, p).unwrap();
    assert_eq!(meta.tensors.len(), 272);
    let spec = airllm_format::gguf::spec_from_metadata(&meta, None).unwrap();
    assert_eq!(spec.num_layers, 30);
    assert!(airllm_format::gguf::export_tokenizer(&meta).unwrap().is_some());
}

//! GGUF K-quant files shard as stored: a tiny llama GGUF holding Q4_K, Q5_K,
//! Q6_K, Q5_0, Q5_1 and Q8_0 matrices (the types of a Q4_K_M / Q5_K_M file)
//! shards with zero re-encoded tensors and every shard tensor's bytes equal
//! to the file's; a Q3_K tensor is re-encoded and counted; `--compression`
//! still re-encodes into the codec it names.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test: a panic is the failure report

mod common;

use airllm_format::gguf::{GgmlType, GgufBuilder, GgufSource, GgufValue};
use airllm_format::source::RowPermutation;
use airllm_format::{Manifest, Role, ShardDir, StorageFormat, TensorSource, Unit, write_shards};
use airllm_quant::{Codec, Compression, Floats};

use common::quiet;

const H: usize = 256;
const INTER: usize = 512;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = H / HEADS;
const VOCAB: usize = 300;

fn weights(seed: &mut u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// Q3_K stored bytes for `x` (no codec here: a min/max encoder, only the
/// layout matters; each super-block has scale 1 and codes 0).
fn q3_k_zero_bytes(rows: usize, cols: usize) -> Vec<u8> {
    vec![0u8; rows * cols / 256 * 110]
}

/// A 2-layer llama GGUF whose matrices use `types` in the order
/// q, k, v, o, gate, up, down (token embedding Q8_0, norms F32).
fn tiny(types: [GgmlType; 7]) -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", GgufValue::String("llama".into()))
        .kv("llama.block_count", GgufValue::U32(2))
        .kv("llama.context_length", GgufValue::U32(512))
        .kv("llama.embedding_length", GgufValue::U32(H as u32))
        .kv("llama.feed_forward_length", GgufValue::U32(INTER as u32))
        .kv("llama.attention.head_count", GgufValue::U32(HEADS as u32))
        .kv("llama.attention.head_count_kv", GgufValue::U32(KV as u32))
        .kv("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-6))
        .kv("llama.rope.dimension_count", GgufValue::U32(HD as u32));
    let mut seed = 7u32;
    let mut mat = |b: &mut GgufBuilder, name: &str, rows: usize, cols: usize, ty: GgmlType| {
        let x = weights(&mut seed, rows * cols);
        let bytes = match ty.codec() {
            Some(c) => c.encode_matrix(Floats::F32(&x), rows, cols).unwrap(),
            None if ty == GgmlType::Q3_K => q3_k_zero_bytes(rows, cols),
            None => panic!("{ty}"),
        };
        b.tensor_raw(name, ty, &[rows, cols], bytes);
    };
    mat(&mut b, "token_embd.weight", VOCAB, H, GgmlType::Q8_0);
    for l in 0..2 {
        b.tensor_f32(&format!("blk.{l}.attn_norm.weight"), &[H], &[1.0; H]);
        b.tensor_f32(&format!("blk.{l}.ffn_norm.weight"), &[H], &[1.0; H]);
        let shapes = [(H, H), (KV * HD, H), (KV * HD, H), (H, H), (INTER, H), (INTER, H), (H, INTER)];
        let names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
        for ((name, (r, c)), ty) in names.iter().zip(shapes).zip(types) {
            mat(&mut b, &format!("blk.{l}.{name}.weight"), r, c, ty);
        }
    }
    b.tensor_f32("output_norm.weight", &[H], &[1.0; H]);
    b
}

/// A Q4_K_M-like mix: Q4_K most matrices, Q6_K for v and down (as
/// llama.cpp's Q4_K_M does for some layers), Q5_K k, Q5_0 / Q5_1 for o / up.
const MIX: [GgmlType; 7] =
    [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q5_1, GgmlType::Q6_K];

fn shard(types: [GgmlType; 7], compression: Compression) -> (tempfile::TempDir, GgufSource, Manifest) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny-q4_k_m.gguf");
    tiny(types).write(&path).unwrap();
    let src = GgufSource::open(&path).unwrap();
    let out = tmp.path().join("shards");
    let r = write_shards(&src, &out, &airllm_format::ShardOptions { compression, ..quiet() }).unwrap();
    (tmp, src, r.manifest)
}

#[test]
fn k_quant_gguf_shards_with_zero_re_encoded_tensors_and_the_files_bytes() {
    let (tmp, src, m) = shard(MIX, Compression::None);
    assert_eq!(m.re_encoded, Some(0));
    assert_eq!(m.re_encoded_tensors().count(), 0);
    let dir = ShardDir::open(&tmp.path().join("shards")).unwrap();
    dir.verify_all().unwrap();
    let reloaded = Manifest::load(&tmp.path().join("shards")).unwrap();
    assert_eq!(reloaded.re_encoded, Some(0));
    // Every tensor: the shard holds the GGUF type's codec and the file's bytes
    // (q and k rows in Hugging Face order: whole encoded rows moved).
    let mut file_bytes = 0u64;
    for t in src.tensors() {
        let info = src.metadata().tensor(&t.name).unwrap();
        let raw = src.raw_bytes(&t.name).unwrap();
        file_bytes += raw.len() as u64;
        let (shard_idx, entry) = m.find(t.unit, t.role).unwrap();
        let ty = info.ggml_type.unwrap();
        match ty.codec() {
            Some(c) => assert_eq!(entry.format, StorageFormat::Quant(c), "{}", t.name),
            None => assert_eq!(entry.format, t.format, "{}", t.name),
        }
        let shard = dir.map(shard_idx).unwrap();
        let got = shard.tensor(entry).unwrap();
        let want = match t.row_perm {
            None => raw.to_vec(),
            Some(perm @ RowPermutation::UnpermuteGgufQk { .. }) => {
                let rows = t.shape[0];
                let rb = raw.len() / rows;
                (0..rows).flat_map(|r| raw[perm.source_row(r, rows) * rb..][..rb].to_vec()).collect()
            }
        };
        assert_eq!(got.len(), want.len(), "{}", t.name);
        assert!(got[..] == want[..], "{}: shard bytes differ from the file's", t.name);
    }
    // Bytes per pass: the shards' tensors are exactly the file's tensor bytes.
    assert_eq!(m.tensor_bytes(), file_bytes);
    // ... and the K-quant bytes are what a pass streams (they were not widened).
    let q6: u64 = m
        .shards
        .iter()
        .flat_map(|s| &s.tensors)
        .filter(|t| t.format == StorageFormat::Quant(Codec::Q6K))
        .map(|t| t.bytes)
        .sum();
    assert_eq!(q6, 2 * (Codec::Q6K.matrix_bytes(KV * HD, H) + Codec::Q6K.matrix_bytes(H, INTER)) as u64);
}

#[test]
fn q3_k_tensors_are_re_encoded_and_counted() {
    let mut types = MIX;
    types[5] = GgmlType::Q3_K; // ffn_up
    let (_tmp, src, m) = shard(types, Compression::None);
    assert_eq!(m.re_encoded, Some(2));
    let re: Vec<_> =
        m.re_encoded_tensors().map(|(_, t)| (t.name.clone(), t.re_encoded_from.clone(), t.format)).collect();
    for (name, from, format) in &re {
        assert!(name.ends_with("ffn_up.weight"), "{name}");
        assert_eq!(from.as_deref(), Some("q3_k"));
        assert_eq!(*format, StorageFormat::Quant(Codec::Q8_0));
    }
    let t = src.tensors().iter().find(|t| t.role == Role::Up).unwrap();
    assert_eq!(src.re_encoded_from(t).as_deref(), Some("q3_k"));
    assert_eq!(airllm_format::writer::planned_re_encoded(&src, Compression::None).len(), 2);
}

#[test]
fn compression_still_re_encodes_into_the_codec_named() {
    let (tmp, _src, m) = shard(MIX, "q4_k".parse().unwrap());
    // q4_k sources are kept as stored; the others (k, v, o, up, down) are re-encoded.
    let re: Vec<_> =
        m.re_encoded_tensors().map(|(s, t)| (s.unit, t.role, t.re_encoded_from.clone().unwrap())).collect();
    assert_eq!(m.re_encoded, Some(re.len()));
    assert_eq!(re.len(), 10, "{re:?}");
    for (_, role, from) in &re {
        assert!(!matches!(role, Role::Q | Role::Gate), "{role} was q4_k already");
        assert!(["q5_k", "q6_k", "q5_0", "q5_1"].contains(&from.as_str()), "{from}");
    }
    for s in m.shards.iter().filter(|s| matches!(s.unit, Unit::Layer(_))) {
        for t in s.tensors.iter().filter(|t| t.role.is_compressible_matrix()) {
            assert_eq!(t.format, StorageFormat::Quant(Codec::Q4K), "{} {}", s.unit, t.role);
        }
    }
    // The re-encoded tensors decode close to the originals.
    let dir = ShardDir::open(&tmp.path().join("shards")).unwrap();
    let down = dir.tensor_f32(Unit::Layer(0), Role::Down).unwrap();
    assert_eq!(down.len(), H * INTER);
    assert!(down.iter().all(|v| v.abs() < 0.1), "decoded values out of range");
}

#[test]
fn k_quant_compression_falls_back_for_rows_of_partial_super_blocks() {
    // A 576-wide row (SmolLM2's hidden size) cannot hold whole 256-value
    // super-blocks: llama.cpp's fallbacks.
    let t = airllm_format::SourceTensor {
        name: "w".into(),
        unit: Unit::Layer(0),
        role: Role::Q,
        format: StorageFormat::Dense(airllm_format::DType::F16),
        shape: vec![576, 576],
        file: None,
        row_perm: None,
        index: 0,
    };
    let out = |c: &str| airllm_format::writer::output_format(&t, c.parse().unwrap());
    assert_eq!(out("q4_k"), StorageFormat::Quant(Codec::Q5_0));
    assert_eq!(out("q5_k"), StorageFormat::Quant(Codec::Q5_1));
    assert_eq!(out("q6_k"), StorageFormat::Quant(Codec::Q8_0));
    assert_eq!(out("none"), t.format);
    let wide = airllm_format::SourceTensor { shape: vec![576, 1536], ..t };
    assert_eq!(airllm_format::writer::output_format(&wide, "q4_k".parse().unwrap()), StorageFormat::Quant(Codec::Q4K));
}

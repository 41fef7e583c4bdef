//! Shard conversion throughput beside a plain copy of the same bytes.
//!
//! A synthetic llama-shaped checkpoint (hidden 1024, 4 layers, bf16, about 110 MB)
//! is written once; then `shard/convert/none` runs the shard writer over it,
//! `shard/convert/8bit` the same with q8_0 encoding, and `shard/plain_copy` copies
//! its files with `std::fs::copy`. All report bytes of source per second.

use std::path::{Path, PathBuf};

use airllm_format::{Checkpoint, ShardOptions, write_shards};
use criterion::{Criterion, Throughput};

fn make_checkpoint(dir: &Path) -> Vec<PathBuf> {
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 1024, "num_hidden_layers": 4,
        "num_attention_heads": 16, "num_key_value_heads": 4, "intermediate_size": 4096,
        "vocab_size": 8192, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("config");
    let spec = airllm_format::ModelSpec::from_config_value(&cfg, Path::new("config.json")).expect("spec");
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    let tensors = airllm_format::expected_tensors(&spec);
    for (unit, role, shape) in &tensors {
        let n: usize = shape.iter().product::<usize>() * 2;
        header.insert(
            airllm_format::roles::hf_name(spec.family, *unit, *role),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    // bf16 values of moderate size: 0x3c00-ish patterns.
    bytes.extend((0..off).map(|i| if i % 2 == 0 { (i * 31 % 251) as u8 } else { 0x3c }));
    let path = dir.join("model.safetensors");
    std::fs::write(&path, bytes).expect("weights");
    vec![path]
}

pub fn benches(c: &mut Criterion) {
    let root =
        tempfile::tempdir_in(std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| ".".into())).expect("tempdir");
    let src = root.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let files = make_checkpoint(&src);
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let ck = Checkpoint::open(&src).expect("checkpoint");
    let mut g = c.benchmark_group("shard");
    g.sample_size(10).throughput(Throughput::Bytes(bytes));
    for (name, comp) in [("none", "none"), ("8bit", "8bit"), ("4bit", "4bit")] {
        g.bench_function(format!("convert/{name}"), |b| {
            b.iter(|| {
                let out = root.path().join(format!("out-{name}"));
                let _ = std::fs::remove_dir_all(&out);
                let opts =
                    ShardOptions { compression: comp.parse().expect("codec"), progress: false, ..Default::default() };
                write_shards(&ck, &out, &opts).expect("shard")
            })
        });
    }
    g.bench_function("plain_copy", |b| {
        b.iter(|| {
            let out = root.path().join("copy");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).expect("mkdir");
            for f in &files {
                let dst = out.join(f.file_name().expect("name"));
                std::fs::copy(f, &dst).expect("copy");
                std::fs::File::open(&dst).and_then(|f| f.sync_all()).expect("sync");
            }
        })
    });
    g.finish();
}

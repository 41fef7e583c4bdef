//! Mutation tests through the `airllm` CLI, as a user (or an attacker) meets it:
//! fixtures with one thing changed (config.json values, safetensors headers, manifest
//! fields, shard bytes and headers, GGUF header, metadata and tensor-info bytes) must
//! give a clean error: exit status 1 with an `error:` message of reasonable length.
//! Never a panic, a signal, a hang (each case has a timeout), or exit 0 with output
//! that differs from the unmutated model's. Cases where a change may be harmless
//! (seeded random byte flips) accept exit 0 only with the unmutated output.
//!
//! The model is the bf16 Qwen2 fixture (bf16 matrices and biases, f32 vectors in the
//! shards), so one dtype can be swapped for another of the same size. Generation needs
//! a GPU adapter (lavapipe in CI); without one the cases that would reach the GPU are
//! skipped and the parse-time ones still run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airllm_format::gguf::{GgmlType, GgufBuilder, GgufValue};
use airllm_format::{Role, TensorSource, Unit};

const FAMILY: &str = "qwen2_bf16";
/// A case that runs longer than this hangs.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest error message accepted (input must be quoted as an excerpt).
const MAX_MESSAGE: usize = 3000;
const PROMPT: &str = "0,5,6,7,8";

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        // Shard-directory bookkeeping stays behind, so every case starts cold.
        if n.starts_with(".airllm") || n == ".verified.json" || n.starts_with("golden") {
            continue;
        }
        std::fs::copy(e.path(), to.join(&name)).unwrap();
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

fn airllm(args: &[&str]) -> Run {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_airllm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_else(|| "/tmp".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > CASE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("airllm {args:?} hung (killed after {CASE_TIMEOUT:?})");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&o.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&e.join().unwrap()).into_owned();
    Run { code: status.code(), stdout, stderr, secs: t.elapsed().as_secs_f64() }
}

/// Generated ids of a `generate --json` run.
fn new_ids(stdout: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    v["generations"][0]["new_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn generate(model: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt-ids", PROMPT];
    args.extend(["--max-new-tokens", "6", "--max-context", "64", "--json"]);
    args.extend(extra);
    airllm(&args)
}

/// A change to a file's bytes.
type BytesEdit = Box<dyn Fn(&mut Vec<u8>)>;
/// A change to a JSON document.
type JsonEdit = Box<dyn Fn(&mut serde_json::Value)>;

/// How a case may end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A clean error.
    Error,
    /// A clean error, or success with exactly the unmutated output.
    ErrorOrSame,
}

struct Checker {
    baseline: Option<Vec<u64>>,
    cases: usize,
    errors: usize,
    same: usize,
    slowest: (f64, String),
}

impl Checker {
    fn check(&mut self, name: &str, r: &Run, expect: Expect) {
        self.cases += 1;
        if r.secs > self.slowest.0 {
            self.slowest = (r.secs, name.to_owned());
        }
        let tail = |s: &str| s.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect::<String>();
        assert!(!r.stderr.contains("panicked"), "{name}: panic\n{}", tail(&r.stderr));
        let Some(code) = r.code else { panic!("{name}: killed by a signal\n{}", tail(&r.stderr)) };
        match code {
            0 => {
                assert!(expect == Expect::ErrorOrSame, "{name}: exit 0, an error was expected\n{}", tail(&r.stdout));
                let got = new_ids(&r.stdout);
                assert_eq!(Some(&got), self.baseline.as_ref(), "{name}: exit 0 with changed output");
                self.same += 1;
            }
            1 => {
                let msg = r.stderr.trim();
                assert!(msg.contains("error:"), "{name}: no error message: {}", tail(msg));
                assert!(msg.len() <= MAX_MESSAGE, "{name}: {} byte message: {}...", msg.len(), &msg[..300]);
                if std::env::var_os("AIRLLM_MUTATION_VERBOSE").is_some() {
                    eprintln!("{name}\n    {}", msg.lines().last().unwrap_or_default());
                }
                self.errors += 1;
            }
            other => panic!("{name}: exit status {other}\n{}", tail(&r.stderr)),
        }
    }
}

fn has_gpu() -> bool {
    airllm_gpu::GpuContext::new(&Default::default()).is_ok()
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A deterministic stream of positions.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Convert the fixture to a GGUF file (qwen2 architecture: no q/k permutation), with
/// its byte-level BPE tokenizer as llama.cpp stores it.
fn to_gguf(dir: &Path, out: &Path) {
    let ck = airllm_format::Checkpoint::open(dir).unwrap();
    let s = ck.spec().clone();
    let mut b = GgufBuilder::new();
    let u = |x: usize| GgufValue::U32(x as u32);
    b.kv("general.architecture", GgufValue::String("qwen2".into()))
        .kv("qwen2.block_count", u(s.num_layers))
        .kv("qwen2.context_length", u(s.max_position_embeddings))
        .kv("qwen2.embedding_length", u(s.hidden_size))
        .kv("qwen2.feed_forward_length", u(s.intermediate_size))
        .kv("qwen2.attention.head_count", u(s.num_heads))
        .kv("qwen2.attention.head_count_kv", u(s.num_kv_heads))
        .kv("qwen2.attention.layer_norm_rms_epsilon", GgufValue::F32(s.norm_eps))
        .kv("qwen2.rope.freq_base", GgufValue::F32(s.rope.theta));
    let tj: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tj["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let mut types = vec![1i32; tokens.len()];
    for a in tj["added_tokens"].as_array().unwrap() {
        types[a["id"].as_u64().unwrap() as usize] = 3;
    }
    let merges: Vec<String> = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            other => panic!("{other}"),
        })
        .collect();
    b.kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", GgufValue::String("default".into()))
        .kv("tokenizer.ggml.tokens", GgufValue::strings(&tokens))
        .kv("tokenizer.ggml.token_type", GgufValue::i32s(&types))
        .kv("tokenizer.ggml.merges", GgufValue::strings(&merges))
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(0))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(1))
        .kv("tokenizer.ggml.padding_token_id", GgufValue::U32(2))
        .kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
    for t in ck.tensors() {
        let name = match (t.unit, t.role) {
            (Unit::Embedding, _) => "token_embd.weight".to_string(),
            (Unit::FinalNorm, _) => "output_norm.weight".to_string(),
            (Unit::LmHead, _) => "output.weight".to_string(),
            (Unit::Layer(l), role) => {
                let r = match role {
                    Role::AttnNorm => "attn_norm.weight",
                    Role::Q => "attn_q.weight",
                    Role::K => "attn_k.weight",
                    Role::V => "attn_v.weight",
                    Role::QBias => "attn_q.bias",
                    Role::KBias => "attn_k.bias",
                    Role::VBias => "attn_v.bias",
                    Role::O => "attn_output.weight",
                    Role::MlpNorm => "ffn_norm.weight",
                    Role::Gate => "ffn_gate.weight",
                    Role::Up => "ffn_up.weight",
                    Role::Down => "ffn_down.weight",
                    other => panic!("{other}"),
                };
                format!("blk.{l}.{r}")
            }
            other => panic!("{other:?}"),
        };
        let ty = match t.format.name() {
            "bf16" => GgmlType::BF16,
            "f16" => GgmlType::F16,
            _ => GgmlType::F32,
        };
        b.tensor_raw(&name, ty, &t.shape, ck.read(t).unwrap().into_owned());
    }
    b.write(out).unwrap();
}

/// Byte position just after `needle` where the file stores it as a GGUF string (its
/// u64 length, then the bytes), so that `output.weight` does not match inside
/// `blk.0.attn_output.weight`; for other needles, just after the first occurrence.
fn after(bytes: &[u8], needle: &str) -> usize {
    let mut n = (needle.len() as u64).to_le_bytes().to_vec();
    n.extend_from_slice(needle.as_bytes());
    let plain = needle.as_bytes();
    let found = bytes.windows(n.len()).position(|w| w == n).map(|p| p + n.len());
    found
        .or_else(|| bytes.windows(plain.len()).position(|w| w == plain).map(|p| p + plain.len()))
        .unwrap_or_else(|| panic!("{needle} not in the file"))
}

/// Byte position of the u64 length in front of a GGUF string (a key or tensor name).
fn name_len_at(bytes: &[u8], name: &str) -> usize {
    after(bytes, name) - name.len() - 8
}

/// Every kind of mutation, through `airllm generate`.
#[test]
fn mutated_inputs_give_clean_errors() {
    // Without an adapter every run that passed the checks would fail at GPU start-up,
    // which cannot be told from a caught mutation: skip.
    if !has_gpu() {
        assert!(std::env::var_os("CI").is_none(), "CI must have a GPU adapter (lavapipe)");
        eprintln!("skipping: no GPU adapter");
        return;
    }
    let gpu = true;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base_hf = root.join("hf");
    copy_dir(&fixture(FAMILY), &base_hf);
    let base_shards = root.join("shards");
    let r = airllm(&["shard", base_hf.to_str().unwrap(), "--out", base_shards.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let base_gguf = root.join("model.gguf");
    to_gguf(&base_hf, &base_gguf);

    let mut c = Checker { baseline: None, cases: 0, errors: 0, same: 0, slowest: (0.0, String::new()) };
    {
        let r = generate(&base_shards, &[]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let ids = new_ids(&r.stdout);
        // The same model from the checkpoint and from the GGUF: the same tokens.
        let hf_dir = root.join("base-hf-shards");
        let r = generate(&base_hf, &["--shards-dir", hf_dir.to_str().unwrap()]);
        assert_eq!(new_ids(&r.stdout), ids, "{}", r.stderr);
        let r = generate(&base_gguf, &["--shards-dir", root.join("base-gguf-shards").to_str().unwrap()]);
        assert_eq!(new_ids(&r.stdout), ids, "gguf: {}", r.stderr);
        c.baseline = Some(ids);
    }
    let mut n = 0usize;
    let mut case_dir = |kind: &str| {
        n += 1;
        root.join(format!("case{n:03}-{kind}"))
    };

    // ---- config.json values (sharding from the checkpoint on first use).
    let config_cases: Vec<(&str, serde_json::Value)> = vec![
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ("num_hidden_layers", serde_json::json!(3)),
        ("num_hidden_layers", serde_json::json!(0)),
        ("rms_norm_eps", serde_json::json!(0.0)),
        ("rms_norm_eps", serde_json::json!(-1e-6)),
        ("rope_theta", serde_json::json!(0.0)),
        ("rope_theta", serde_json::json!(-1e4)),
        ("eos_token_id", serde_json::json!(1u64 << 32)),
        ("eos_token_id", serde_json::json!([1, (1u64 << 32) + 1])),
        ("eos_token_id", serde_json::json!(100_000)),
        ("bos_token_id", serde_json::json!(512)),
        ("hidden_size", serde_json::json!("sixty-four")),
        ("hidden_size", serde_json::json!("9".repeat(1 << 20))),
        ("hidden_size", serde_json::json!(63)),
        ("vocab_size", serde_json::json!(0)),
        ("vocab_size", serde_json::json!(511)),
        ("num_attention_heads", serde_json::json!(3)),
        ("num_key_value_heads", serde_json::json!(0)),
        ("intermediate_size", serde_json::json!(128)),
        ("max_position_embeddings", serde_json::json!(0)),
        ("architectures", serde_json::json!(["X".repeat(1 << 20)])),
        ("hidden_act", serde_json::json!("relu6")),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
            "high_freq_factor": 1.0, "original_max_position_embeddings": 64}),
        ),
    ];
    for (key, value) in config_cases {
        let d = case_dir("config");
        copy_dir(&base_hf, &d);
        edit_json(&d.join("config.json"), |c| c[key] = value.clone());
        let r = generate(&d, &["--shards-dir", d.join("s").to_str().unwrap()]);
        c.check(&format!("config.json {key}={}", airllm_format::error::excerpt(&value)), &r, Expect::Error);
    }
    {
        let d = case_dir("config");
        copy_dir(&base_hf, &d);
        std::fs::write(d.join("config.json"), b"{\"hidden_size\": 64,").unwrap();
        let r = generate(&d, &["--shards-dir", d.join("s").to_str().unwrap()]);
        c.check("config.json not JSON", &r, Expect::Error);
    }

    // ---- safetensors header and data.
    let st = base_hf.join("model.safetensors");
    let st_bytes = std::fs::read(&st).unwrap();
    let header_len = u64::from_le_bytes(st_bytes[..8].try_into().unwrap()) as usize;
    let st_cases: Vec<(&str, BytesEdit)> = vec![
        ("truncated", Box::new(|b| b.truncate(b.len() / 2))),
        ("header length huge", Box::new(|b| b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes()))),
        ("header length short", Box::new(|b| b[..8].copy_from_slice(&10u64.to_le_bytes()))),
        (
            "dtype BF16 -> I16",
            Box::new(|b| {
                let p = after(b, "\"BF16\"") - 5;
                b[p..p + 4].copy_from_slice(b"I16\"");
                b[p + 4] = b' ';
            }),
        ),
        (
            "a tensor name changed",
            Box::new(|b| {
                let p = after(b, "input_layernorm") - 4;
                b[p] = b'X';
            }),
        ),
    ];
    for (what, f) in st_cases {
        let d = case_dir("safetensors");
        copy_dir(&base_hf, &d);
        let mut b = st_bytes.clone();
        f(&mut b);
        std::fs::write(d.join("model.safetensors"), b).unwrap();
        let r = generate(&d, &["--shards-dir", d.join("s").to_str().unwrap()]);
        c.check(&format!("model.safetensors {what}"), &r, Expect::Error);
    }
    let mut rng = Lcg(11);
    for _ in 0..40 {
        let d = case_dir("safetensors-flip");
        copy_dir(&base_hf, &d);
        let mut b = st_bytes.clone();
        let at = 8 + rng.below(header_len);
        b[at] ^= 1 << rng.below(8);
        std::fs::write(d.join("model.safetensors"), b).unwrap();
        let r = generate(&d, &["--shards-dir", d.join("s").to_str().unwrap()]);
        // A flip inside the header JSON: a flip in a number changes offsets or shapes,
        // which are checked; in a name, the tensor is unknown or missing.
        c.check(&format!("model.safetensors header byte {at} flipped"), &r, Expect::ErrorOrSame);
    }

    // ---- manifest fields (the shard directory given as the model).
    let manifest_cases: Vec<(&str, JsonEdit)> = vec![
        ("num_layers 2^63", Box::new(|m| m["spec"]["num_layers"] = (1u64 << 63).into())),
        ("num_layers 1000", Box::new(|m| m["spec"]["num_layers"] = 1000.into())),
        ("norm_eps 0", Box::new(|m| m["spec"]["norm_eps"] = 0.0.into())),
        ("norm_eps valid but different", Box::new(|m| m["spec"]["norm_eps"] = 1e-3.into())),
        ("rope theta 0", Box::new(|m| m["spec"]["rope"]["theta"] = 0.0.into())),
        ("rope theta different", Box::new(|m| m["spec"]["rope"]["theta"] = 10000.0.into())),
        ("embedding_scale for a non-Gemma family", Box::new(|m| m["spec"]["embedding_scale"] = 8.0.into())),
        ("activation changed", Box::new(|m| m["spec"]["activation"] = "gelu_tanh".into())),
        ("eos 2^32", Box::new(|m| m["spec"]["eos_token_ids"] = serde_json::json!([1u64 << 32]))),
        ("eos beyond vocab", Box::new(|m| m["spec"]["eos_token_ids"] = serde_json::json!([600]))),
        ("format version 1", Box::new(|m| m["format_version"] = 1.into())),
        ("checksum zeroed", Box::new(|m| m["shards"][1]["checksum"] = "0000000000000000".into())),
        (
            "checksum removed",
            Box::new(|m| m["shards"][1].as_object_mut().unwrap().remove("checksum").map(|_| ()).unwrap()),
        ),
        ("checksum changed", Box::new(|m| m["shards"][1]["checksum"] = "0123456789abcdef".into())),
        ("plan hash changed", Box::new(|m| m["shards"][2]["plan_hash"] = "0123456789abcdef".into())),
        ("shard length changed", Box::new(|m| m["shards"][1]["bytes"] = 8192.into())),
        ("unit swapped", Box::new(|m| m["shards"][1]["unit"] = serde_json::json!({"kind": "layer", "index": 1}))),
        (
            "bf16 matrix relabelled f16 (same size)",
            Box::new(|m| {
                let t = m["shards"][1]["tensors"].as_array_mut().unwrap();
                let q = t.iter_mut().find(|t| t["role"] == "q").unwrap();
                assert_eq!(q["format"], "bf16");
                q["format"] = "f16".into();
            }),
        ),
        (
            "vector relabelled bf16",
            Box::new(|m| {
                let t = m["shards"][1]["tensors"].as_array_mut().unwrap();
                let b = t.iter_mut().find(|t| t["role"] == "q_bias").unwrap();
                b["format"] = "bf16".into();
                b["bytes"] = (b["bytes"].as_u64().unwrap() / 2).into();
            }),
        ),
        (
            "tensor offset moved",
            Box::new(|m| {
                let t = m["shards"][1]["tensors"].as_array_mut().unwrap();
                let last = t.last_mut().unwrap();
                last["offset"] = (last["offset"].as_u64().unwrap() + 256).into();
            }),
        ),
        (
            "two tensors' offsets swapped",
            Box::new(|m| {
                let t = m["shards"][1]["tensors"].as_array_mut().unwrap();
                let (a, b) = (t[2]["offset"].clone(), t[3]["offset"].clone());
                t[2]["offset"] = b;
                t[3]["offset"] = a;
            }),
        ),
        (
            "a tensor entry removed",
            Box::new(|m| m["shards"][1]["tensors"].as_array_mut().unwrap().retain(|t| t["role"] != "down")),
        ),
        ("shape changed", Box::new(|m| m["spec"]["intermediate_size"] = 128.into())),
        ("file name escapes", Box::new(|m| m["shards"][1]["file"] = "../../etc/passwd".into())),
        ("file name huge", Box::new(|m| m["shards"][1]["file"] = "x".repeat(1 << 20).into())),
        ("checksum algorithm", Box::new(|m| m["checksum_algorithm"] = "crc32".into())),
    ];
    for (what, f) in manifest_cases {
        let d = case_dir("manifest");
        copy_dir(&base_shards, &d);
        edit_json(&d.join("manifest.json"), |m| f(m));
        let r = generate(&d, &[]);
        c.check(&format!("manifest {what}"), &r, Expect::Error);
    }
    {
        let d = case_dir("manifest");
        copy_dir(&base_shards, &d);
        std::fs::write(d.join("manifest.json"), b"{\"format_version\": 2, \"shards\": [").unwrap();
        c.check("manifest truncated", &generate(&d, &[]), Expect::Error);
    }

    // ---- shard bytes and headers.
    let layer = "layer.00.shard";
    let shard_cases: Vec<(&str, &str, usize, Vec<u8>)> = vec![
        ("magic", layer, 0, b"AIRLSHRX".to_vec()),
        ("version", layer, 8, 7u32.to_le_bytes().to_vec()),
        ("header_len", layer, 12, 512u32.to_le_bytes().to_vec()),
        ("file_len", layer, 16, 4096u64.to_le_bytes().to_vec()),
        ("data_end", layer, 24, 300u64.to_le_bytes().to_vec()),
        ("plan_hash", layer, 32, 1u64.to_le_bytes().to_vec()),
        ("tensor count", layer, 40, 3u32.to_le_bytes().to_vec()),
        ("unit kind", layer, 44, 9u32.to_le_bytes().to_vec()),
        ("unit index of a layer", layer, 48, 1u32.to_le_bytes().to_vec()),
        ("unit index of the embedding", "embedding.shard", 48, 1u32.to_le_bytes().to_vec()),
        ("unit index of the final norm", "final_norm.shard", 48, 2u32.to_le_bytes().to_vec()),
        ("unit index of the lm_head", "lm_head.shard", 48, 5u32.to_le_bytes().to_vec()),
        ("reserved", layer, 52, vec![1]),
        ("table hash", layer, 56, vec![0xff]),
        ("spec hash", layer, 64, vec![0xff]),
        ("reserved tail", layer, 255, vec![1]),
        ("tensor byte", layer, 300, vec![0x5a]),
        ("tensor byte in the embedding", "embedding.shard", 5000, vec![0x5a]),
        ("tensor byte in the lm_head", "lm_head.shard", 9000, vec![0x5a]),
    ];
    for (what, file, at, bytes) in shard_cases {
        let d = case_dir("shard");
        copy_dir(&base_shards, &d);
        let p = d.join(file);
        let mut b = std::fs::read(&p).unwrap();
        for (i, x) in bytes.iter().enumerate() {
            b[at + i] = if bytes.len() == 1 { b[at + i] ^ x } else { *x };
        }
        std::fs::write(&p, b).unwrap();
        c.check(&format!("{file} {what}"), &generate(&d, &[]), Expect::Error);
    }
    for (what, f) in [
        (
            "truncated",
            Box::new(|p: &Path| std::fs::File::options().write(true).open(p).unwrap().set_len(4096).unwrap())
                as Box<dyn Fn(&Path)>,
        ),
        ("missing", Box::new(|p: &Path| std::fs::remove_file(p).unwrap())),
        (
            "padded",
            Box::new(|p: &Path| {
                let f = std::fs::File::options().write(true).open(p).unwrap();
                let n = f.metadata().unwrap().len();
                f.set_len(n + 4096).unwrap();
            }),
        ),
    ] {
        let d = case_dir("shard");
        copy_dir(&base_shards, &d);
        f(&d.join("layer.01.shard"));
        c.check(&format!("layer.01.shard {what}"), &generate(&d, &[]), Expect::Error);
    }
    if gpu {
        // A warm verification cache must not hide a later flip (made with the
        // modification time put back, as `touch -r` would).
        let d = case_dir("shard-warm");
        copy_dir(&base_shards, &d);
        let r = generate(&d, &[]);
        c.check("warm-up run", &r, Expect::ErrorOrSame);
        assert_eq!(r.code, Some(0));
        assert!(d.join(".verified.json").is_file(), "the cache was written");
        let p = d.join("layer.01.shard");
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b[700] ^= 0x10;
        std::fs::write(&p, b).unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
        c.check("flip after a verified run, mtime kept", &generate(&d, &[]), Expect::Error);
    }

    // ---- GGUF header, metadata and tensor infos.
    let g = std::fs::read(&base_gguf).unwrap();
    let gguf_cases: Vec<(&str, BytesEdit)> = vec![
        ("magic", Box::new(|b| b[0] = b'X')),
        ("version 1", Box::new(|b| b[4..8].copy_from_slice(&1u32.to_le_bytes()))),
        ("version 99", Box::new(|b| b[4..8].copy_from_slice(&99u32.to_le_bytes()))),
        ("tensor count huge", Box::new(|b| b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes()))),
        (
            "tensor count +1",
            Box::new(|b| {
                let n = u64::from_le_bytes(b[8..16].try_into().unwrap());
                b[8..16].copy_from_slice(&(n + 1).to_le_bytes());
            }),
        ),
        ("kv count huge", Box::new(|b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes()))),
        (
            "block_count 10^9",
            Box::new(|b| {
                let p = after(b, "qwen2.block_count") + 4;
                b[p..p + 4].copy_from_slice(&1_000_000_000u32.to_le_bytes());
            }),
        ),
        (
            "block_count 3",
            Box::new(|b| {
                let p = after(b, "qwen2.block_count") + 4;
                b[p..p + 4].copy_from_slice(&3u32.to_le_bytes());
            }),
        ),
        (
            "rms epsilon 0",
            Box::new(|b| {
                let p = after(b, "layer_norm_rms_epsilon") + 4;
                b[p..p + 4].copy_from_slice(&0f32.to_le_bytes());
            }),
        ),
        (
            "rms epsilon negative",
            Box::new(|b| {
                let p = after(b, "layer_norm_rms_epsilon") + 4;
                b[p..p + 4].copy_from_slice(&(-1e-6f32).to_le_bytes());
            }),
        ),
        (
            "rope base 0",
            Box::new(|b| {
                let p = after(b, "qwen2.rope.freq_base") + 4;
                b[p..p + 4].copy_from_slice(&0f32.to_le_bytes());
            }),
        ),
        (
            "eos beyond vocab",
            Box::new(|b| {
                let p = after(b, "tokenizer.ggml.eos_token_id") + 4;
                b[p..p + 4].copy_from_slice(&100_000u32.to_le_bytes());
            }),
        ),
        (
            "tokens array length huge",
            Box::new(|b| {
                let p = after(b, "tokenizer.ggml.tokens") + 4 + 4;
                b[p..p + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
            }),
        ),
        (
            "a key's length huge",
            Box::new(|b| {
                let p = name_len_at(b, "qwen2.block_count");
                b[p..p + 8].copy_from_slice(&(90u64 << 20).to_le_bytes());
            }),
        ),
        (
            "tensor name length 90M",
            Box::new(|b| {
                let p = name_len_at(b, "blk.0.attn_q.weight");
                b[p..p + 8].copy_from_slice(&(90u64 << 20).to_le_bytes());
            }),
        ),
        (
            "ndims 0",
            Box::new(|b| {
                let p = after(b, "blk.0.attn_q.weight");
                b[p..p + 4].copy_from_slice(&0u32.to_le_bytes());
            }),
        ),
        (
            "ndims 5",
            Box::new(|b| {
                let p = after(b, "blk.0.attn_q.weight");
                b[p..p + 4].copy_from_slice(&5u32.to_le_bytes());
            }),
        ),
        (
            "a dimension huge",
            Box::new(|b| {
                let p = after(b, "blk.0.attn_q.weight") + 4;
                b[p..p + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
            }),
        ),
        (
            "a dimension doubled",
            Box::new(|b| {
                let p = after(b, "blk.0.ffn_down.weight") + 4;
                let d = u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
                b[p..p + 8].copy_from_slice(&(2 * d).to_le_bytes());
            }),
        ),
        (
            "unknown type",
            Box::new(|b| {
                let p = after(b, "blk.0.attn_q.weight") + 4 + 16;
                b[p..p + 4].copy_from_slice(&77u32.to_le_bytes());
            }),
        ),
        // (Not here: a type changed to another of the same size, BF16 -> F16. Neither GGUF
        // nor safetensors carries checksums, so a source that says F16 is read as F16;
        // in the manifest the same swap is caught by the shard headers' table hash.)
        (
            "type BF16 -> Q8_0",
            Box::new(|b| {
                let p = after(b, "blk.0.attn_q.weight") + 4 + 16;
                assert_eq!(u32::from_le_bytes(b[p..p + 4].try_into().unwrap()), GgmlType::BF16.id());
                b[p..p + 4].copy_from_slice(&GgmlType::Q8_0.id().to_le_bytes());
            }),
        ),
        (
            "overlapping extents",
            Box::new(|b| {
                let p = after(b, "blk.0.attn_k.weight") + 4 + 16 + 4;
                let q = after(b, "blk.0.attn_q.weight") + 4 + 16 + 4;
                let qoff: [u8; 8] = b[q..q + 8].try_into().unwrap();
                b[p..p + 8].copy_from_slice(&qoff);
            }),
        ),
        (
            "offset past the end",
            Box::new(|b| {
                let p = after(b, "output.weight") + 4 + 16 + 4;
                b[p..p + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            }),
        ),
        (
            "offset misaligned",
            Box::new(|b| {
                let p = after(b, "output.weight") + 4 + 16 + 4;
                let o = u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
                b[p..p + 8].copy_from_slice(&(o + 2).to_le_bytes());
            }),
        ),
        ("last byte missing", Box::new(|b| b.truncate(b.len() - 1))),
        ("bytes appended", Box::new(|b| b.extend_from_slice(&[0u8; 4096]))),
        ("truncated", Box::new(|b| b.truncate(b.len() / 2))),
        ("truncated in the metadata", Box::new(|b| b.truncate(1000))),
    ];
    for (what, f) in gguf_cases {
        let d = case_dir("gguf");
        std::fs::create_dir_all(&d).unwrap();
        let mut b = g.clone();
        f(&mut b);
        let p = d.join("model.gguf");
        std::fs::write(&p, b).unwrap();
        let r = generate(&p, &["--shards-dir", d.join("s").to_str().unwrap()]);
        c.check(&format!("gguf {what}"), &r, Expect::Error);
    }
    // Random flips in the tensor infos (names, dimensions, types, offsets); a flip in a
    // metadata value could make another valid model (a different rope base), so values
    // are mutated one by one above instead.
    let infos = name_len_at(&g, "token_embd.weight");
    let data_start = after(&g, "output.weight") + 4 + 16 + 4 + 8;
    let mut rng = Lcg(7);
    for _ in 0..60 {
        let d = case_dir("gguf-flip");
        std::fs::create_dir_all(&d).unwrap();
        let mut b = g.clone();
        let at = infos + rng.below(data_start - infos);
        b[at] ^= 1 << rng.below(8);
        let p = d.join("model.gguf");
        std::fs::write(&p, b).unwrap();
        let r = generate(&p, &["--shards-dir", d.join("s").to_str().unwrap()]);
        c.check(&format!("gguf tensor-info byte {at} flipped"), &r, Expect::ErrorOrSame);
    }
    eprintln!(
        "{} mutation cases in {:.1} s: {} clean errors, {} harmless (same output); slowest {:.2} s ({})",
        c.cases,
        started.elapsed().as_secs_f64(),
        c.errors,
        c.same,
        c.slowest.0,
        c.slowest.1
    );
}

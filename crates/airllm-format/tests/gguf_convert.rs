//! The tiny Hugging Face fixtures converted to GGUF the way llama.cpp's
//! `convert_hf_to_gguf.py` does (q/k rows permuted for llama-architecture models,
//! Gemma norms stored as 1 + w, Llama 3 rope scaling as `rope_freqs.weight`,
//! experts stacked in 3-D tensors, byte-level BPE vocabulary) must shard to the
//! same weights, the same spec and the same token ids as the originals.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;

use airllm_format::dtype::dense_to_f32;
use airllm_format::gguf::{GgmlType, GgufBuilder, GgufSource, GgufValue};
use airllm_format::shard_dir::decode_tensor;
use airllm_format::{
    Checkpoint, DType, Family, LayerType, NormKind, Role, ShardDir, StorageFormat, TensorSource, Unit, write_shards,
};

fn fixture(family: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn quiet() -> airllm_format::ShardOptions {
    airllm_format::ShardOptions { progress: false, ..Default::default() }
}

fn gguf_arch(family: Family) -> &'static str {
    match family {
        Family::Llama | Family::Mistral | Family::Mixtral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Qwen3Moe => "qwen3moe",
        Family::Gemma => "gemma",
        Family::Phi3 => "phi3",
        Family::Gemma2 => "gemma2",
        Family::Gemma3 => "gemma3",
        Family::Glm => unreachable!("not converted"),
    }
}

fn gguf_name(unit: Unit, role: Role) -> String {
    let l = match unit {
        Unit::Embedding => return "token_embd.weight".into(),
        Unit::FinalNorm => return "output_norm.weight".into(),
        Unit::LmHead | Unit::LmHeadPart(_) => return "output.weight".into(),
        Unit::Layer(l) => l,
    };
    let r = match role {
        Role::AttnNorm => "attn_norm.weight",
        Role::Q => "attn_q.weight",
        Role::K => "attn_k.weight",
        Role::V => "attn_v.weight",
        Role::Qkv => "attn_qkv.weight",
        Role::O => "attn_output.weight",
        Role::QBias => "attn_q.bias",
        Role::KBias => "attn_k.bias",
        Role::VBias => "attn_v.bias",
        Role::QNorm => "attn_q_norm.weight",
        Role::KNorm => "attn_k_norm.weight",
        Role::MlpNorm => "ffn_norm.weight",
        Role::Gate => "ffn_gate.weight",
        Role::Up | Role::GateUp => "ffn_up.weight",
        Role::Down => "ffn_down.weight",
        Role::Router => "ffn_gate_inp.weight",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{l}.{r}")
}

/// llama.cpp's `LlamaModel.permute`: w.reshape(heads, 2, d/2, ...).swapaxes(1, 2).
fn permute_rows(bytes: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let rb = bytes.len() / rows;
    let d = rows / heads;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let dst = h * d + 2 * i + j; // GGUF row (h, i, j)
                let src = h * d + j * (d / 2) + i; // HF row (h, j, i)
                out[dst * rb..(dst + 1) * rb].copy_from_slice(&bytes[src * rb..(src + 1) * rb]);
            }
        }
    }
    out
}

fn ggml_type(d: DType) -> GgmlType {
    match d {
        DType::F32 => GgmlType::F32,
        DType::F16 => GgmlType::F16,
        DType::Bf16 => GgmlType::BF16,
    }
}

/// Convert a tiny fixture to a GGUF file.
fn convert(family_dir: &Path, out: &Path) {
    let ck = Checkpoint::open(family_dir).unwrap();
    let s = ck.spec().clone();
    let arch = gguf_arch(s.family);
    let k = |x: &str| format!("{arch}.{x}");
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", GgufValue::String(arch.into()))
        .kv("general.name", GgufValue::String(format!("tiny {}", s.family)))
        .kv(&k("block_count"), GgufValue::U32(s.num_layers as u32))
        .kv(&k("context_length"), GgufValue::U32(s.max_position_embeddings as u32))
        .kv(&k("embedding_length"), GgufValue::U32(s.hidden_size as u32))
        // Qwen3-MoE: feed_forward_length is the dense layers' width (convert_hf_to_gguf.py
        // writes intermediate_size there and moe_intermediate_size as the expert width).
        .kv(&k("feed_forward_length"), GgufValue::U32(s.layers.dense_intermediate_size.unwrap_or(s.intermediate_size) as u32))
        .kv(&k("attention.head_count"), GgufValue::U32(s.num_heads as u32))
        .kv(&k("attention.head_count_kv"), GgufValue::U32(s.num_kv_heads as u32))
        .kv(&k("attention.key_length"), GgufValue::U32(s.head_dim as u32))
        .kv(&k("attention.value_length"), GgufValue::U32(s.head_dim as u32))
        .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(s.norm_eps))
        .kv(&k("rope.freq_base"), GgufValue::F32(s.rope.theta))
        .kv(&k("rope.dimension_count"), GgufValue::U32(s.rope.rotary_dim as u32));
    if let Some(m) = s.moe {
        b.kv(&k("expert_count"), GgufValue::U32(m.num_experts as u32));
        b.kv(&k("expert_used_count"), GgufValue::U32(m.top_k as u32));
        if s.family == Family::Qwen3Moe {
            b.kv(&k("expert_feed_forward_length"), GgufValue::U32(s.intermediate_size as u32));
        }
    }
    if let airllm_format::RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = s.rope.scaling
    {
        // convert_hf_to_gguf.py LlamaModel.generate_extra_tensors.
        let d = s.rope.rotary_dim;
        let (low_wl, high_wl) =
            (original_max_position_embeddings / low_freq_factor, original_max_position_embeddings / high_freq_factor);
        let factors: Vec<f32> = (0..d / 2)
            .map(|i| {
                let freq = 1.0 / s.rope.theta.powf((2 * i) as f32 / d as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wl {
                    1.0
                } else if wavelen > low_wl {
                    factor
                } else {
                    let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect();
        b.tensor_f32("rope_freqs.weight", &[d / 2], &factors);
    }

    // Tokenizer: the fixture's byte-level BPE, as llama.cpp stores it.
    let tj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(family_dir.join("tokenizer.json")).unwrap()).unwrap();
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

    let permute = gguf_arch(s.family) == "llama";
    // (layer, kind) -> [(expert, bytes, shape, dtype)]
    type Stack = Vec<(u32, Vec<u8>, Vec<usize>, DType)>;
    let mut experts: std::collections::BTreeMap<(u32, &str), Stack> = Default::default();
    for t in ck.tensors() {
        let Some(dt) = t.format.dense() else { panic!("{}", t.name) };
        let mut bytes = ck.read(t).unwrap().into_owned();
        let rows = t.shape[0];
        match t.role {
            Role::Q if permute => bytes = permute_rows(&bytes, rows, s.num_heads),
            Role::K if permute => bytes = permute_rows(&bytes, rows, s.num_kv_heads),
            Role::ExpertGate(e) | Role::ExpertUp(e) | Role::ExpertDown(e) => {
                let (Unit::Layer(l), kind) = (
                    t.unit,
                    match t.role {
                        Role::ExpertGate(_) => "ffn_gate_exps",
                        Role::ExpertUp(_) => "ffn_up_exps",
                        _ => "ffn_down_exps",
                    },
                ) else {
                    panic!()
                };
                experts.entry((l, kind)).or_default().push((e, bytes, t.shape.clone(), dt));
                continue;
            }
            _ => {}
        }
        let name = gguf_name(t.unit, t.role);
        let is_norm = matches!(t.role, Role::AttnNorm | Role::MlpNorm | Role::FinalNorm | Role::QNorm | Role::KNorm);
        if s.family == Family::Gemma && is_norm {
            // GemmaModel.modify_tensors: norm weights + 1.
            let w: Vec<f32> = dense_to_f32(dt, &bytes).iter().map(|x| x + 1.0).collect();
            b.tensor_f32(&name, &t.shape, &w);
        } else {
            b.tensor_raw(&name, ggml_type(dt), &t.shape, bytes);
        }
    }
    for ((l, kind), mut list) in experts {
        list.sort_by_key(|e| e.0);
        let shape = list[0].2.clone();
        let dt = list[0].3;
        let data: Vec<u8> = list.iter().flat_map(|e| e.1.clone()).collect();
        b.tensor_raw(&format!("blk.{l}.{kind}.weight"), ggml_type(dt), &[list.len(), shape[0], shape[1]], data);
    }
    b.write(out).unwrap();
}

#[test]
fn converted_fixtures_shard_to_the_same_weights_spec_and_tokens() {
    for family in ["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "phi3", "gemma"] {
        let tmp = tempfile::tempdir().unwrap();
        let gguf = tmp.path().join(format!("{family}.gguf"));
        convert(&fixture(family), &gguf);
        let ck = Checkpoint::open(&fixture(family)).unwrap();
        let src = GgufSource::open(&gguf).unwrap_or_else(|e| panic!("{family}: {e}"));

        // The spec, up to what GGUF cannot or need not say.
        let mut want = ck.spec().clone();
        if want.family == Family::Mistral {
            want.family = Family::Llama; // GGUF calls Mistral llama: the same graph
        }
        if want.family == Family::Gemma {
            assert_eq!(want.norm, NormKind::RmsOnePlus);
            want.norm = NormKind::Rms; // the GGUF stores 1 + w
        }
        // transformers 5 lists `layer_types` (all full here); without a sliding
        // window that means the same as GGUF's empty list.
        if want.sliding_window.is_none() && want.layers.layer_types.iter().all(|t| *t == LayerType::Full) {
            want.layers.layer_types.clear();
        }
        assert_eq!(*src.spec(), want, "{family}: spec");

        // Shard both; every tensor reads back the same (q/k un-permuted, experts split).
        let out = tmp.path().join("shards");
        write_shards(&src, &out, &quiet()).unwrap();
        let dir = ShardDir::open(&out).unwrap();
        dir.verify_all().unwrap();
        let m = dir.manifest();
        let n_gguf_tensors: usize = m.shards.iter().map(|s| s.tensors.len()).sum();
        assert_eq!(n_gguf_tensors, ck.tensors().len(), "{family}: tensor count");
        for t in ck.tensors() {
            let (i, entry) = dir.find(t.unit, t.role).unwrap();
            assert_eq!(entry.shape, t.shape, "{family} {}", t.name);
            let shard = dir.map(i).unwrap();
            let got = shard.tensor(entry).unwrap();
            let want = ck.read(t).unwrap();
            let is_norm = matches!(t.role, Role::AttnNorm | Role::MlpNorm | Role::FinalNorm);
            if family == "gemma" && is_norm {
                let g = decode_tensor(entry, got).unwrap();
                let w = dense_to_f32(t.format.dense().unwrap(), &want);
                for (a, b) in g.iter().zip(&w) {
                    assert!((a - (b + 1.0)).abs() <= 1e-6, "{family} {}: {a} vs 1 + {b}", t.name);
                }
            } else if t.shape.len() == 1 {
                // Vectors are widened to f32 in the shards, exactly.
                assert_eq!(entry.format, StorageFormat::Dense(DType::F32), "{family} {}", t.name);
                let w = dense_to_f32(t.format.dense().unwrap(), &want);
                assert_eq!(decode_tensor(entry, got).unwrap(), w, "{family}: {} differs after GGUF -> shards", t.name);
            } else {
                assert_eq!(entry.format, t.format, "{family} {}", t.name);
                assert!(got == &want[..], "{family}: {} differs after GGUF -> shards", t.name);
            }
        }
        if family == "qwen3_moe" {
            // Layer 1 is dense (mlp_only_layers): no router in the GGUF, so a dense layer there too.
            assert_eq!(src.spec().layers.dense_layers, vec![1]);
            let e = src.tensors().iter().find(|t| t.role == Role::ExpertUp(7) && t.unit == Unit::Layer(2)).unwrap();
            assert_eq!(e.name, "blk.2.ffn_up_exps.weight[7]");
        }
        if family == "mixtral" {
            let e = src.tensors().iter().find(|t| t.role == Role::ExpertDown(3)).unwrap();
            assert_eq!(e.name, "blk.0.ffn_down_exps.weight[3]");
            assert_eq!(e.format, StorageFormat::Dense(DType::F32));
        }

        // The exported byte-level BPE tokenizer gives the fixture's ids.
        let files = src.tokenizer_files().unwrap();
        let tj = &files.iter().find(|(n, _)| n == "tokenizer.json").unwrap().1;
        let tok = tokenizers::Tokenizer::from_bytes(tj).unwrap();
        let reference = tokenizers::Tokenizer::from_file(fixture(family).join("tokenizer.json")).unwrap();
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(family).join("golden.json")).unwrap()).unwrap();
        let mut texts: Vec<String> = Vec::new();
        for key in ["prompt0", "prompt1"] {
            if let Some(t) = golden.pointer(&format!("/prompts/{key}/text")).and_then(|v| v.as_str()) {
                texts.push(t.to_owned());
            }
        }
        texts.extend(
            [
                "The cat sat on the mat, and the dog",
                "On 12 March 2024 we met at the café in 日本; it was 7:30!",
                "</s><pad> x  y\n",
            ]
            .map(str::to_owned),
        );
        for text in &texts {
            let a = tok.encode(text.as_str(), true).unwrap();
            let b = reference.encode(text.as_str(), true).unwrap();
            assert_eq!(a.get_ids(), b.get_ids(), "{family}: {text:?}");
            assert_eq!(a.get_ids()[0], 0, "bos prepended");
        }
    }
}

//! Gemma 2 and Gemma 3 against transformers (fixtures `tiny/gemma2`, `tiny/gemma3`,
//! sliding window 8 on some layers, prompts of 13 and 32 tokens and 24 generated
//! ones, so the window matters): logits, greedy ids and the left-padded batch,
//! all layers resident and every layer streamed; ragged steps; the same
//! checkpoints converted to GGUF as llama.cpp's converter writes them; and
//! checks that the goldens notice a wrong window, soft-cap, score scale or
//! local RoPE base.
//!
//! Tolerance: the fixtures README's bound for an independent f32
//! implementation, 1e-4 (WAVE2.md measures transformers' own f32 vs f64
//! difference on these models at 6.3e-6 for gemma2 and 5.4e-6 for gemma3).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::engine::{Logits, StepItem};
use airllm::{AutoModel, GenerateOptions, Options, Prompt};
use airllm_format::gguf::{GgmlType, GgufBuilder, GgufValue, GgufValueType};
use airllm_format::{Checkpoint, DType, Family, LayerType, Role, RopeScaling, TensorSource, Unit};
use safetensors::SafeTensors;

const FAMILIES: [&str; 2] = ["gemma2", "gemma3"];
const TOL: f32 = 1e-4;
/// The fixtures' sliding window.
const WINDOW: usize = 8;

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

struct Golden(Vec<u8>);

impl Golden {
    fn load(family: &str) -> Golden {
        Golden(std::fs::read(fixture(family).join("golden.safetensors")).unwrap())
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Loads `model` (checkpoint directory or `.gguf`), sharding it into `shards`.
/// None when this machine has no GPU adapter (never in CI).
fn load(model: &Path, shards: &Path, resident_layers: Option<usize>) -> Option<AutoModel> {
    load_on(model, shards, resident_layers, airllm::Device::Gpu)
}

/// [`load`] on a chosen executor.
fn load_on(model: &Path, shards: &Path, resident_layers: Option<usize>, device: airllm::Device) -> Option<AutoModel> {
    let opts = Options {
        shards_dir: Some(shards.to_path_buf()),
        resident_layers,
        device,
        prefetch_depth: 2,
        max_context: Some(128),
        ..Options::default()
    };
    match AutoModel::from_pretrained(model.to_str().unwrap(), opts) {
        Ok(m) => Some(m),
        Err(airllm::EngineError::Gpu(e)) => {
            assert!(std::env::var_os("CI").is_none(), "CI must have a GPU adapter (lavapipe): {e}");
            eprintln!("skipping: no GPU adapter ({e})");
            None
        }
        Err(e) => panic!("{}: {e}", model.display()),
    }
}

#[derive(Debug, PartialEq)]
struct Outputs {
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
    batch: Vec<Vec<f32>>,
}

fn run(model: &mut AutoModel, g: &Golden) -> Outputs {
    let p0 = g.ids("prompt0.input_ids");
    let p1 = g.ids("prompt1.input_ids");
    let logits = vec![
        model.forward_logits(std::slice::from_ref(&p0)).unwrap().remove(0),
        model.forward_logits(std::slice::from_ref(&p1)).unwrap().remove(0),
    ];
    let opts = GenerateOptions { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
    let (gens, _) = model.generate(&[Prompt::Ids(p0.clone())], &opts, |_| {}).unwrap();
    let batch = model.forward_logits(&[p0, p1]).unwrap();
    Outputs { logits, greedy: gens[0].new_ids.clone(), batch }
}

/// Asserts `out` matches the goldens; returns the largest logit difference.
fn check_goldens(out: &Outputs, g: &Golden, vocab: usize, what: &str) -> f32 {
    let mut worst = 0f32;
    for (i, name) in ["prompt0.logits", "prompt1.logits"].iter().enumerate() {
        let d = max_abs(&out.logits[i], &g.f32(name));
        eprintln!("{what}: {name} max abs diff {d:.2e}");
        assert!(d <= TOL, "{what}: {name} differs by {d}");
        worst = worst.max(d);
    }
    assert_eq!(out.greedy, g.ids("greedy.prompt0.new_ids"), "{what}: greedy continuation");
    // Batched, left-padded: rows with mask 1.
    let bl = g.f32("batch.logits");
    let mask = g.ids("batch.attention_mask");
    let t = mask.len() / 2;
    for b in 0..2 {
        let real: Vec<usize> = (0..t).filter(|&i| mask[b * t + i] == 1).collect();
        let want: Vec<f32> =
            real.iter().flat_map(|&i| bl[(b * t + i) * vocab..(b * t + i + 1) * vocab].iter().copied()).collect();
        let d = max_abs(&out.batch[b], &want);
        assert!(d <= TOL, "{what}: batch row {b} differs by {d}");
        worst = worst.max(d);
    }
    worst
}

/// Resident, then every layer streamed through a ring of two slots: both match
/// transformers, and each other exactly.
fn resident_and_streamed(model: &Path, family: &str, what: &str) {
    let g = Golden::load(family);
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut resident) = load(model, tmp.path(), None) else { return };
    assert_eq!(resident.engine().plan().resident_layers(), resident.spec().num_layers, "{what}: all resident");
    let v = resident.spec().vocab_size;
    let a = run(&mut resident, &g);
    check_goldens(&a, &g, v, &format!("{what} resident"));
    drop(resident);

    let Some(mut streamed) = load(model, tmp.path(), Some(0)) else { return };
    let plan = streamed.engine().plan().clone();
    assert_eq!(plan.resident_layers(), 0, "{what}: {plan}");
    let s = run(&mut streamed, &g);
    assert!(streamed.engine().stats().streamed_bytes > 0, "{what}: nothing streamed");
    check_goldens(&s, &g, v, &format!("{what} streamed"));
    assert_eq!(s, a, "{what}: streamed results differ from resident");
    drop(streamed);

    // The CPU executor: the same goldens (its own arithmetic, so not bit-equal).
    let Some(mut cpu) = load_on(model, tmp.path(), None, airllm::Device::Cpu) else { return };
    assert!(cpu.engine().device_name().starts_with("CPU"), "{what}: {}", cpu.engine().device_name());
    let c = run(&mut cpu, &g);
    check_goldens(&c, &g, v, &format!("{what} cpu"));
}

#[test]
fn gemma2_matches_transformers() {
    resident_and_streamed(&fixture("gemma2"), "gemma2", "gemma2");
}

#[test]
fn gemma3_matches_transformers() {
    resident_and_streamed(&fixture("gemma3"), "gemma3", "gemma3");
}

/// The specs read from the fixtures say what WAVE2.md says the models are.
#[test]
fn fixture_specs() {
    let s2 = Checkpoint::open(&fixture("gemma2")).unwrap().spec().clone();
    assert_eq!(s2.family, Family::Gemma2);
    assert_eq!(s2.layers.layer_types, vec![LayerType::Sliding, LayerType::Full, LayerType::Sliding]);
    assert_eq!((s2.layers.attn_softcap, s2.layers.final_softcap), (Some(4.0), Some(8.0)));
    assert_eq!(s2.layer(0).attention.scale, 1.0 / 24f32.sqrt());
    assert_eq!(s2.sliding_window, Some(WINDOW));
    let s3 = Checkpoint::open(&fixture("gemma3")).unwrap().spec().clone();
    assert_eq!(s3.family, Family::Gemma3);
    assert_eq!(s3.layers.layer_types, vec![LayerType::Sliding, LayerType::Sliding, LayerType::Full]);
    let (l0, l2) = (s3.layer(0).attention, s3.layer(2).attention);
    assert_eq!((l0.window, l0.rope.theta, l0.rope.scaling), (Some(WINDOW), 10000.0, RopeScaling::None));
    assert_eq!((l2.window, l2.rope.theta, l2.rope.scaling), (None, 1e6, RopeScaling::Linear { factor: 8.0 }));
    assert!(s3.qk_norm && s3.layers.sandwich_norms && s3.layers.attn_softcap.is_none());
}

/// Prompt 0 and prompt 1 in ragged steps whose chunks straddle the window
/// (prompt 1 in chunks 0..20, 20..21, 21..22, 22..32 beside prompt 0's 0..5,
/// 5..6, 6..13), then both decoding in shared steps at different positions.
fn ragged(model: &mut AutoModel, g: &Golden, what: &str) {
    let v = model.spec().vocab_size;
    let p0 = g.ids("prompt0.input_ids");
    let p1 = g.ids("prompt1.input_ids");
    let (want0, want1) = (g.f32("prompt0.logits"), g.f32("prompt1.logits"));
    let e = model.engine_mut();
    let (a, b) = (e.add_sequence(), e.add_sequence());
    let plan: [(std::ops::Range<usize>, std::ops::Range<usize>); 4] =
        [(0..5, 0..20), (5..6, 20..21), (6..13, 21..22), (13..13, 22..32)];
    let (mut got0, mut got1) = (Vec::new(), Vec::new());
    for (ra, rb) in plan {
        let mut items = Vec::new();
        if !ra.is_empty() {
            items.push(StepItem::new(a, &p0[ra.clone()], Logits::All));
        }
        items.push(StepItem::new(b, &p1[rb.clone()], Logits::All));
        let out = e.step(&items).unwrap();
        if !ra.is_empty() {
            got0.extend(&out[0]);
        }
        got1.extend(out.last().unwrap());
    }
    let (d0, d1) = (max_abs(&got0, &want0), max_abs(&got1, &want1));
    eprintln!("{what}: ragged prompt logits max abs diff {d0:.2e} / {d1:.2e}");
    assert!(d0 <= TOL && d1 <= TOL, "{what}: ragged logits differ by {d0} / {d1}");
    let argmax = airllm::sampler::argmax;
    let mut next = (argmax(&want0[(p0.len() - 1) * v..]), argmax(&want1[(p1.len() - 1) * v..]));
    let mut ids_a = Vec::new();
    for _ in 0..24 {
        ids_a.push(next.0);
        let out =
            e.step(&[StepItem::new(a, &[next.0], Logits::Last), StepItem::new(b, &[next.1], Logits::Last)]).unwrap();
        next = (argmax(&out[0]), argmax(&out[1]));
    }
    assert_eq!(ids_a, g.ids("greedy.prompt0.new_ids"), "{what}: greedy in shared steps");
    e.remove_sequence(a);
    e.remove_sequence(b);
    assert_eq!(e.free_blocks(), e.total_blocks(), "{what}: every block back in the pool");
}

#[test]
fn ragged_steps_resident_and_streamed() {
    for family in FAMILIES {
        let g = Golden::load(family);
        let tmp = tempfile::tempdir().unwrap();
        for (mode, resident_layers) in [("resident", None), ("streamed", Some(0))] {
            let Some(mut model) = load(&fixture(family), tmp.path(), resident_layers) else { return };
            ragged(&mut model, &g, &format!("{family} {mode}"));
        }
    }
}

/// Copies a fixture with its config.json changed by `edit`.
fn edited_fixture(family: &str, to: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let dst = to.join(family);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(family)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let p = dst.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    dst
}

/// The goldens notice each Gemma-specific setting: with any one of them wrong,
/// prompt 1's logits move far past the tolerance. A window one too long or
/// ignored changes exactly the positions at or past the window (earlier ones
/// see fewer than 8 keys either way and still match).
#[test]
fn goldens_notice_a_wrong_window_cap_scale_or_rope() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit, bool); 8] = [
        ("gemma2", "window 9", |v| v["sliding_window"] = 9.into(), true),
        ("gemma2", "window ignored", |v| v["sliding_window"] = 4096.into(), true),
        ("gemma2", "no attention soft-cap", |v| v["attn_logit_softcapping"] = serde_json::Value::Null, false),
        ("gemma2", "no final soft-cap", |v| v["final_logit_softcapping"] = serde_json::Value::Null, false),
        ("gemma2", "scale head_dim^-0.5", |v| v["query_pre_attn_scalar"] = 32.into(), false),
        ("gemma3", "window 9", |v| v["sliding_window"] = 9.into(), true),
        ("gemma3", "window ignored", |v| v["sliding_window"] = 4096.into(), true),
        (
            "gemma3",
            "global RoPE base on local layers",
            |v| v["rope_parameters"]["sliding_attention"]["rope_theta"] = 1e6.into(),
            false,
        ),
    ];
    for (family, what, edit, window_case) in cases {
        let g = Golden::load(family);
        let want = g.f32("prompt1.logits");
        let tmp = tempfile::tempdir().unwrap();
        let dir = edited_fixture(family, tmp.path(), edit);
        let Some(mut m) = load(&dir, &tmp.path().join("shards"), None) else { return };
        let v = m.spec().vocab_size;
        let p1 = g.ids("prompt1.input_ids");
        let got = m.forward_logits(std::slice::from_ref(&p1)).unwrap().remove(0);
        let before = max_abs(&got[..WINDOW * v], &want[..WINDOW * v]);
        let after = max_abs(&got[WINDOW * v..], &want[WINDOW * v..]);
        eprintln!("{family} {what}: positions < {WINDOW} differ by {before:.2e}, later ones by {after:.2e}");
        assert!(after > 100.0 * TOL, "{family} {what}: the goldens do not notice ({after})");
        if window_case {
            assert!(before <= TOL, "{family} {what}: positions inside the window moved by {before}");
        }
    }
}

/// llama.cpp's GGUF tensor name of a (unit, role) of a Gemma 2/3 model.
fn gguf_name(unit: Unit, role: Role) -> String {
    let l = match unit {
        Unit::Embedding => return "token_embd.weight".into(),
        Unit::FinalNorm => return "output_norm.weight".into(),
        Unit::LmHead | Unit::LmHeadPart(_) => return "output.weight".into(),
        Unit::Layer(l) => l,
    };
    let r = match role {
        Role::AttnNorm => "attn_norm",
        Role::Q => "attn_q",
        Role::K => "attn_k",
        Role::V => "attn_v",
        Role::O => "attn_output",
        Role::QNorm => "attn_q_norm",
        Role::KNorm => "attn_k_norm",
        Role::PostAttnNorm => "post_attention_norm",
        Role::MlpNorm => "ffn_norm",
        Role::PostMlpNorm => "post_ffw_norm",
        Role::Gate => "ffn_gate",
        Role::Up => "ffn_up",
        Role::Down => "ffn_down",
        other => panic!("no Gemma GGUF name for {other}"),
    };
    format!("blk.{l}.{r}.weight")
}

fn is_norm(role: Role) -> bool {
    matches!(
        role,
        Role::AttnNorm
            | Role::PostAttnNorm
            | Role::MlpNorm
            | Role::PostMlpNorm
            | Role::QNorm
            | Role::KNorm
            | Role::FinalNorm
    )
}

/// Writes a tiny fixture as a GGUF the way llama.cpp's `convert_hf_to_gguf.py`
/// (Gemma2Model / Gemma3Model) does: norm weights stored as `1 + w`, no q/k
/// permutation, the keys it writes. Two keys llama.cpp would not read for these
/// architectures carry what its fixed rules cannot say for these tiny models:
/// `attention.scale` (gemma2's query_pre_attn_scalar 24 is not its head_dim) and
/// `attention.sliding_window_pattern` (gemma3's three layers are S, S, F; llama.cpp's
/// fixed pattern would make all three sliding).
fn convert_to_gguf(family: &str, out: &Path) {
    let ck = Checkpoint::open(&fixture(family)).unwrap();
    let s = ck.spec().clone();
    let arch = family;
    let k = |x: &str| format!("{arch}.{x}");
    let u32v = |x: usize| GgufValue::U32(x as u32);
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", GgufValue::String(arch.into()))
        .kv(&k("context_length"), u32v(s.max_position_embeddings))
        .kv(&k("embedding_length"), u32v(s.hidden_size))
        .kv(&k("block_count"), u32v(s.num_layers))
        .kv(&k("feed_forward_length"), u32v(s.intermediate_size))
        .kv(&k("attention.head_count"), u32v(s.num_heads))
        .kv(&k("attention.head_count_kv"), u32v(s.num_kv_heads))
        .kv(&k("attention.key_length"), u32v(s.head_dim))
        .kv(&k("attention.value_length"), u32v(s.head_dim))
        .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(s.norm_eps))
        .kv(&k("attention.sliding_window"), u32v(s.sliding_window.unwrap()))
        .kv(&k("rope.freq_base"), GgufValue::F32(s.rope.theta));
    if let RopeScaling::Linear { factor } = s.rope.scaling {
        b.kv(&k("rope.scaling.type"), GgufValue::String("linear".into()))
            .kv(&k("rope.scaling.factor"), GgufValue::F32(factor));
    }
    if let Some(c) = s.layers.attn_softcap {
        b.kv(&k("attn_logit_softcapping"), GgufValue::F32(c));
    }
    if let Some(c) = s.layers.final_softcap {
        b.kv(&k("final_logit_softcapping"), GgufValue::F32(c));
    }
    let qpas = s.layers.query_pre_attn_scalar.unwrap();
    if qpas != s.head_dim as f32 {
        b.kv(&k("attention.scale"), GgufValue::F32(1.0 / qpas.sqrt()));
    }
    if family == "gemma3" {
        let flags = s.layers.layer_types.iter().map(|t| GgufValue::Bool(*t == LayerType::Sliding)).collect();
        b.kv(&k("attention.sliding_window_pattern"), GgufValue::Array { elem: GgufValueType::Bool, items: flags });
    }

    // The fixture's byte-level BPE, as llama.cpp stores it.
    let tj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(family).join("tokenizer.json")).unwrap()).unwrap();
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
        let dt = t.format.dense().unwrap();
        let bytes = ck.read(t).unwrap().into_owned();
        let name = gguf_name(t.unit, t.role);
        if is_norm(t.role) {
            // Gemma2Model / Gemma3Model.modify_tensors: norm weights + 1.
            let w: Vec<f32> = airllm_format::dtype::dense_to_f32(dt, &bytes).iter().map(|x| x + 1.0).collect();
            b.tensor_f32(&name, &t.shape, &w);
        } else {
            assert_eq!(dt, DType::F32);
            b.tensor_raw(&name, GgmlType::F32, &t.shape, bytes);
        }
    }
    b.write(out).unwrap();
}

/// The fixtures as GGUF files give transformers' logits and greedy ids,
/// resident and streamed, and the same per-layer spec as the checkpoints.
#[test]
fn gguf_conversions_match_transformers() {
    for family in FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        let gguf = tmp.path().join(format!("{family}.gguf"));
        convert_to_gguf(family, &gguf);
        let from_gguf = airllm_format::GgufSource::open(&gguf).unwrap().spec().clone();
        let mut want = Checkpoint::open(&fixture(family)).unwrap().spec().clone();
        // The GGUF stores 1 + w, so its norms are plain RMSNorm; the rest is the same.
        want.norm = airllm_format::NormKind::Rms;
        assert_eq!(from_gguf, want, "{family}: GGUF spec");
        resident_and_streamed(&gguf, family, &format!("{family} GGUF"));
    }
}

/// Gemma's turn format (the template a Gemma GGUF without one gets) renders as
/// transformers renders Gemma 3's own template.
#[test]
fn gemma_chat_format() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("gemma3").join("tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    let cfg = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": airllm_format::gguf::tokenizer::GEMMA_CHAT_TEMPLATE,
    });
    std::fs::write(tmp.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = airllm::TextTokenizer::load(tmp.path(), &[1]).unwrap();
    let m = |r: &str, c: &str| airllm::ChatMessage::new(r, c);
    let text = tok
        .apply_chat_template(
            &[m("system", "Be brief."), m("user", " Hi! "), m("assistant", "Hello."), m("user", "Why?")],
            true,
        )
        .unwrap();
    assert_eq!(
        text,
        "<s><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    );
    let e = tok.apply_chat_template(&[m("assistant", "x")], true).unwrap_err().to_string();
    assert!(e.contains("alternate"), "{e}");
}

/// Gemma 3's multimodal checkpoints (`Gemma3ForConditionalGeneration`): the text
/// config nested in `text_config`, the text model's tensors under
/// `language_model.model.` (transformers 4.5x) or `model.language_model.`
/// (transformers 5), a vision tower beside them. The text model runs as
/// `Gemma3ForCausalLM` does.
#[test]
fn gemma3_multimodal_layouts_run_the_text_model() {
    use safetensors::tensor::{Dtype, TensorView};
    let g = Golden::load("gemma3");
    let src = fixture("gemma3");
    let st_bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&st_bytes).unwrap();
    let vision = vec![0u8; 4 * 4];
    for prefix in ["language_model.model.", "model.language_model."] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("gemma3-mm");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let mut text: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        let top = serde_json::json!({
            "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "eos_token_id": text["eos_token_id"].clone(), "bos_token_id": text["bos_token_id"].clone(),
            "image_token_index": 511, "vision_config": {"hidden_size": 2, "model_type": "siglip_vision_model"},
            "text_config": {"model_type": "gemma3_text"},
        });
        text.as_object_mut().unwrap().remove("architectures");
        let mut cfg = top;
        for (k, v) in text.as_object().unwrap() {
            cfg["text_config"][k] = v.clone();
        }
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut tensors: Vec<(String, TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .map(|(name, t)| (format!("{prefix}{}", name.strip_prefix("model.").unwrap()), t))
            .collect();
        let vision_prefix = if prefix.starts_with("model.") { "model." } else { "" };
        tensors.push((
            format!("{vision_prefix}vision_tower.vision_model.embeddings.patch_embedding.weight"),
            TensorView::new(Dtype::F32, vec![2, 2], &vision).unwrap(),
        ));
        tensors.push((
            format!("{vision_prefix}multi_modal_projector.mm_input_projection_weight"),
            TensorView::new(Dtype::F32, vec![2, 2], &vision).unwrap(),
        ));
        safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();

        let ck = Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        let reference = Checkpoint::open(&src).unwrap();
        assert_eq!(ck.spec(), reference.spec(), "{prefix}: spec");
        assert_eq!(ck.tensors().len(), reference.tensors().len(), "{prefix}: the vision tower is skipped");
        let Some(mut m) = load(&dir, &tmp.path().join("shards"), None) else { return };
        let p1 = g.ids("prompt1.input_ids");
        let got = m.forward_logits(std::slice::from_ref(&p1)).unwrap().remove(0);
        let d = max_abs(&got, &g.f32("prompt1.logits"));
        eprintln!("gemma3 as {prefix}*: prompt1 logits max abs diff {d:.2e}");
        assert!(d <= TOL, "{prefix}: logits differ by {d}");
    }
}

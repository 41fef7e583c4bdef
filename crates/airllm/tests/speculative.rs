//! Speculative decoding against transformers: a token tree scored in one
//! pass gives every node the logits transformers computes for its path; after
//! the accepted path's KV is compacted the sequence decodes on exactly; and
//! greedy generation with each drafter (prompt lookup, a draft model, self-
//! drafting) gives transformers' greedy ids, resident and streamed. Sampling
//! keeps the target's distribution (a chi-square test on a tiny model).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::engine::{Logits, ROOT, StepItem, Tree};
use airllm::sampler::{Sampler, SamplerConfig};
use airllm::spec::draft_model::DraftModel;
use airllm::spec::lookup::PromptLookup;
use airllm::spec::self_draft::SelfDraft;
use airllm::spec::{Drafter, SpecConfig, Speculator};
use airllm::{AutoModel, Device, GenerateOptions, Options, Prompt};
use airllm_quant::Compression;
use safetensors::SafeTensors;

const FAMILIES: [&str; 12] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen2_bf16",
    "qwen3",
    "mixtral",
    "qwen3_moe",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3",
    "glm",
];
/// The fixtures README's bound for an independent f32 implementation.
const TOL: f32 = 1e-4;

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

fn load(family: &str, shards: &Path, opts: Options) -> Option<AutoModel> {
    let opts = Options { shards_dir: Some(shards.to_path_buf()), prefetch_depth: 2, ..opts };
    match AutoModel::from_pretrained(fixture(family).to_str().unwrap(), opts) {
        Ok(m) => Some(m),
        Err(airllm::EngineError::Gpu(e)) => {
            assert!(std::env::var_os("CI").is_none(), "CI must have a GPU adapter (lavapipe): {e}");
            eprintln!("skipping: no GPU adapter ({e})");
            None
        }
        Err(e) => panic!("{family}: {e}"),
    }
}

/// The placements every test runs in: (name, resident layers, device).
const MODES: [(&str, Option<usize>, Device); 3] =
    [("resident", None, Device::Gpu), ("streamed", Some(0), Device::Gpu), ("cpu", None, Device::Cpu)];

fn opts(resident_layers: Option<usize>, device: Device) -> Options {
    Options { resident_layers, device, max_context: Some(128), ..Options::default() }
}

/// One tree pass after prompt 0 holds transformers' greedy continuation as
/// one branch among wrong siblings (node order mixed so the path is not
/// 0, 1, 2, ...): each correct node's logits are transformers' for its path;
/// after the path is kept, decoding on continues with transformers' logits.
fn tree_pass(model: &mut AutoModel, g: &Golden, family: &str, mode: &str) {
    let v = model.spec().vocab_size;
    let p0 = g.ids("prompt0.input_ids");
    let greedy = g.ids("greedy.prompt0.new_ids");
    let step_logits = g.f32("greedy.prompt0.step_logits");
    let want = |i: usize| &step_logits[i * v..(i + 1) * v];
    let wrong = |t: u32| (t + 1 + (t % 7)) % v as u32;
    let e = model.engine_mut();
    let seq = e.add_sequence();
    e.step(&[StepItem::new(seq, &p0, Logits::Last)]).unwrap();
    let base = p0.len();
    // Node: 0 root g0; 1 wrong(g1) under 0; 2 g1 under 0; 3 wrong(g2) under 2; 4 g2 under 2;
    // 5 wrong under 1; 6 g3 under 4.
    let tokens = [greedy[0], wrong(greedy[1]), greedy[1], wrong(greedy[2]), greedy[2], wrong(greedy[3]), greedy[3]];
    let parents = [ROOT, 0, 0, 2, 2, 1, 4];
    let item = StepItem { seq, tokens: &tokens, logits: Logits::All, tree: Some(Tree { base, parents: &parents }) };
    let out = e.step(&[item]).unwrap().remove(0);
    assert_eq!(out.len(), tokens.len() * v);
    for (node, k) in [(0usize, 1usize), (2, 2), (4, 3), (6, 4)] {
        let d = max_abs(&out[node * v..(node + 1) * v], want(k));
        assert!(d <= TOL, "{family} {mode}: tree node {node} differs from transformers by {d}");
    }
    // Keep the correct path; the sequence then holds prompt + g0..g3.
    e.keep_tree_path(seq, base, &[0, 2, 4, 6]).unwrap();
    assert_eq!(e.sequence_len(seq), Some(base + 4));
    for k in 4..8 {
        let out = e.step(&[StepItem::new(seq, &greedy[k..k + 1], Logits::Last)]).unwrap().remove(0);
        let d = max_abs(&out, want(k + 1));
        assert!(d <= TOL, "{family} {mode}: decode step {k} after compaction differs by {d}");
    }
    e.remove_sequence(seq);
}

#[test]
fn tree_verification_and_compaction_match_transformers() {
    for family in ["llama", "qwen2", "mixtral", "gemma2", "gemma3", "phi3"] {
        let g = Golden::load(family);
        let tmp = tempfile::tempdir().unwrap();
        for (mode, resident, device) in MODES {
            let Some(mut model) = load(family, tmp.path(), opts(resident, device)) else { return };
            tree_pass(&mut model, &g, family, mode);
        }
    }
}

/// Greedy generation of 24 tokens after prompt 0 with speculation on.
fn greedy_with(model: &mut AutoModel, p0: &[u32], drafter: Box<dyn Drafter>, tree: usize) -> (Vec<u32>, f64) {
    model.set_speculation(Some(Speculator::new(drafter, SpecConfig { tree, max_rows: 128, adaptive: false })));
    let opts = GenerateOptions { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
    let (gens, t) = model.generate(&[Prompt::Ids(p0.to_vec())], &opts, |_| {}).unwrap();
    let stats = t.spec.expect("speculation counters");
    model.set_speculation(None);
    (gens[0].new_ids.clone(), stats.tokens_per_pass())
}

fn draft_for(family: &str, shards: &Path, target: &AutoModel) -> Box<dyn Drafter> {
    // The same fixture re-encoded in 4 bits on the CPU executor: close to the
    // target but not equal, so drafts are both accepted and rejected.
    let o =
        Options { compression: Compression::Bits4, device: Device::Cpu, max_context: Some(128), ..Options::default() };
    let draft = load(family, shards, o).unwrap();
    Box::new(DraftModel::new(draft, target.tokenizer(), target.spec().vocab_size, family).unwrap())
}

fn greedy_identity(family: &str) {
    let g = Golden::load(family);
    let p0 = g.ids("prompt0.input_ids");
    let want = g.ids("greedy.prompt0.new_ids");
    let tmp = tempfile::tempdir().unwrap();
    let draft_dir = tempfile::tempdir().unwrap();
    for (mode, resident, device) in [MODES[0], MODES[1], MODES[2], ("one-resident", Some(1), Device::Gpu)] {
        let Some(mut model) = load(family, tmp.path(), opts(resident, device)) else { return };
        let (ids, tpp) = greedy_with(&mut model, &p0, Box::new(PromptLookup::default()), 16);
        assert_eq!(ids, want, "{family} {mode}: prompt lookup changed the greedy ids");
        eprintln!("{family} {mode}: prompt lookup {tpp:.2} tokens per pass");
        let draft = draft_for(family, draft_dir.path(), &model);
        let (ids, tpp) = greedy_with(&mut model, &p0, draft, 12);
        assert_eq!(ids, want, "{family} {mode}: a draft model changed the greedy ids");
        eprintln!("{family} {mode}: draft model {tpp:.2} tokens per pass");
        assert!(tpp > 1.0, "{family} {mode}: a 4-bit copy of the model must get some drafts accepted ({tpp})");
        // Self-drafting needs leading resident layers: an early exit after one.
        let sd = SelfDraft { layers: Some(1) };
        match sd.check(model.engine()) {
            Ok(()) => {
                let (ids, tpp) = greedy_with(&mut model, &p0, Box::new(sd), 8);
                assert_eq!(ids, want, "{family} {mode}: self-drafting changed the greedy ids");
                eprintln!("{family} {mode}: self-draft {tpp:.2} tokens per pass");
            }
            Err(e) => {
                assert_eq!(mode, "streamed", "{family} {mode}: self-drafting refused: {e}");
                assert!(e.to_string().contains("--resident-layers"), "{e}");
            }
        }
        // The model is still exact without speculation afterwards.
        let opts = GenerateOptions { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
        let (gens, _) = model.generate(&[Prompt::Ids(p0.clone())], &opts, |_| {}).unwrap();
        assert_eq!(gens[0].new_ids, want, "{family} {mode}: plain greedy after speculation");
        assert_eq!(model.engine().sequences(), 0, "{family} {mode}: sequences left behind");
    }
}

macro_rules! family_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            greedy_identity(stringify!($name));
        }
    )*};
}

family_tests!(llama, mistral, qwen2, qwen2_bf16, qwen3, mixtral, qwen3_moe, phi3, gemma, gemma2, gemma3, glm);

#[test]
fn families_list_is_complete() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| fixture(n).join("golden.safetensors").exists())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FAMILIES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every tiny fixture must have a speculation test");
}

/// Sampling with speculation keeps the target's distribution: the second
/// token (the first one chosen by a verify pass, against a 4-bit draft's
/// tree) over 1500 seeds, grouped by the first token, against the exact
/// distribution computed from the target's logits; chi-square at the 0.1%
/// level.
#[test]
fn speculative_sampling_keeps_the_target_distribution() {
    let family = "llama";
    let g = Golden::load(family);
    let p0 = g.ids("prompt0.input_ids");
    let tmp = tempfile::tempdir().unwrap();
    let draft_dir = tempfile::tempdir().unwrap();
    let Some(mut model) = load(family, tmp.path(), opts(None, Device::Cpu)) else { return };
    let draft = draft_for(family, draft_dir.path(), &model);
    model.set_speculation(Some(Speculator::new(draft, SpecConfig { tree: 8, max_rows: 128, adaptive: false })));
    let cfg = SamplerConfig { temperature: 1.5, top_k: 6, ..Default::default() };
    let runs = 1500;
    let mut seconds: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for seed in 0..runs {
        let o = GenerateOptions {
            max_new_tokens: 3,
            stop_at_eos: false,
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            seed,
            ..Default::default()
        };
        let (gens, _) = model.generate(&[Prompt::Ids(p0.clone())], &o, |_| {}).unwrap();
        let ids = &gens[0].new_ids;
        seconds.entry(ids[0]).or_default().push(ids[1]);
    }
    let stats = model.speculation().map(|s| s.stats).unwrap();
    assert!(stats.verified > 0 && stats.accepted > 0, "the draft's trees were verified and partly accepted: {stats:?}");
    model.set_speculation(None);
    // The most frequent first token, and the exact distribution after it.
    let (&t1, second) = seconds.iter().max_by_key(|(_, v)| v.len()).unwrap();
    let mut ctx = p0.clone();
    ctx.push(t1);
    let mut logits = model.last_logits(&[ctx.clone()]).unwrap().remove(0);
    let p = Sampler::new(cfg).distribution(&mut logits, &ctx);
    let n = second.len() as f64;
    assert!(n >= 200.0, "too few runs share a first token ({n})");
    let mut chi2 = 0.0;
    for (&id, &pr) in p.ids.iter().zip(&p.probs) {
        let e = n * pr as f64;
        let o = second.iter().filter(|&&x| x == id).count() as f64;
        chi2 += (o - e).powi(2) / e;
    }
    assert!(second.iter().all(|x| p.ids.contains(x)), "a token outside the target's top-k was emitted");
    // 5 degrees of freedom: P(chi2 > 20.52) = 0.001.
    assert!(chi2 < 20.52, "second-token frequencies differ from the target's distribution: chi2 {chi2} over {n}");
}

/// A draft whose vocabulary differs from the target's (two tokens' ids swapped
/// in a copy of the fixture's tokenizer) is refused with an error that names the
/// option and the first differing token.
#[test]
fn a_draft_with_another_vocabulary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("llama-other-vocab");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(fixture("llama")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
        }
    }
    let tj = copy.join("tokenizer.json");
    let mut t: serde_json::Value = serde_json::from_slice(&std::fs::read(&tj).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object_mut().unwrap();
    // Swap the ids of two tokens (the merges stay valid, the id -> token map does not).
    let name_of = |v: &serde_json::Map<String, serde_json::Value>, id: u64| {
        v.iter().find(|(_, x)| x.as_u64() == Some(id)).map(|(k, _)| k.clone()).unwrap()
    };
    let (a, b) = (name_of(vocab, 300), name_of(vocab, 301));
    vocab.insert(a, 301.into());
    vocab.insert(b, 300.into());
    std::fs::write(&tj, serde_json::to_vec(&t).unwrap()).unwrap();
    let Some(target) = load("llama", &tmp.path().join("a"), opts(None, Device::Cpu)) else { return };
    let o = Options { shards_dir: Some(tmp.path().join("b")), device: Device::Cpu, ..Options::default() };
    let draft = AutoModel::from_pretrained(copy.to_str().unwrap(), o).unwrap();
    let err = DraftModel::new(draft, target.tokenizer(), target.spec().vocab_size, "other").unwrap_err().to_string();
    assert!(err.contains("--draft-model") && err.contains("token 300") && err.contains("tokenizer"), "{err}");
}

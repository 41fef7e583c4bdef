//! The engine's second shape against transformers: ragged steps mixing prompt
//! chunks and decode tokens of several sequences at different positions,
//! sequences added and removed between passes, the KV pool shared and
//! bounded, all resident and fully streamed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::engine::{Logits, SeqId, StepItem};
use airllm::{AutoModel, GenerateOptions, Options, Prompt};
use safetensors::SafeTensors;

const FAMILIES: [&str; 9] = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "phi3", "gemma", "glm", "deepseek_v3"];
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

fn argmax(v: &[f32]) -> u32 {
    airllm::sampler::argmax(v)
}

/// Prompt 0 and prompt 1 interleaved in ragged steps (chunks of different
/// sizes, a lone token among chunks), then both decoding greedily in shared
/// steps at different positions. Each sequence's logits must match what
/// transformers computes for it alone.
fn ragged(model: &mut AutoModel, g: &Golden, family: &str, mode: &str) {
    let v = model.spec().vocab_size;
    let p0 = g.ids("prompt0.input_ids");
    let p1 = g.ids("prompt1.input_ids");
    let (want0, want1) = (g.f32("prompt0.logits"), g.f32("prompt1.logits"));
    let e = model.engine_mut();
    let (a, b) = (e.add_sequence(), e.add_sequence());
    // (tokens of A, tokens of B) per step, as ranges of the prompts.
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
    let d0 = max_abs(&got0, &want0);
    let d1 = max_abs(&got1, &want1);
    eprintln!("{family} {mode}: ragged prompt logits max abs diff {d0:.2e} / {d1:.2e}");
    assert!(d0 <= TOL && d1 <= TOL, "{family} {mode}: ragged logits differ by {d0} / {d1}");
    // Greedy decoding of both in shared steps (A at 13.., B at 32..): A's ids are
    // transformers' greedy continuation of prompt 0.
    let mut next = (argmax(&want0[(p0.len() - 1) * v..]), argmax(&want1[(p1.len() - 1) * v..]));
    let mut ids_a = Vec::new();
    for _ in 0..24 {
        ids_a.push(next.0);
        let out =
            e.step(&[StepItem::new(a, &[next.0], Logits::Last), StepItem::new(b, &[next.1], Logits::Last)]).unwrap();
        next = (argmax(&out[0]), argmax(&out[1]));
    }
    assert_eq!(ids_a, g.ids("greedy.prompt0.new_ids"), "{family} {mode}: greedy in shared steps");
    assert_eq!(e.sequence_len(a), Some(p0.len() + 24));
    e.remove_sequence(a);
    e.remove_sequence(b);
    assert_eq!(e.free_blocks(), e.total_blocks(), "{family} {mode}: every block back in the pool");
}

/// Sequences come and go between passes; A's logits stay transformers' while
/// B is removed and C added in the middle of A's prompt.
fn churn(model: &mut AutoModel, g: &Golden, family: &str, mode: &str) {
    let p0 = g.ids("prompt0.input_ids");
    let p1 = g.ids("prompt1.input_ids");
    let want0 = g.f32("prompt0.logits");
    let want1 = g.f32("prompt1.logits");
    let e = model.engine_mut();
    let a = e.add_sequence();
    let b = e.add_sequence();
    let mut got0 = Vec::new();
    let out = e.step(&[StepItem::new(b, &p1[..17], Logits::None), StepItem::new(a, &p0[..4], Logits::All)]).unwrap();
    got0.extend(&out[1]);
    e.remove_sequence(b);
    let c: SeqId = e.add_sequence();
    let out = e.step(&[StepItem::new(c, &p1, Logits::All), StepItem::new(a, &p0[4..9], Logits::All)]).unwrap();
    let d1 = max_abs(&out[0], &want1);
    got0.extend(&out[1]);
    let out = e.step(&[StepItem::new(a, &p0[9..], Logits::All)]).unwrap();
    got0.extend(&out[0]);
    let d0 = max_abs(&got0, &want0);
    eprintln!("{family} {mode}: churn max abs diff {d0:.2e} / {d1:.2e}");
    assert!(d0 <= TOL && d1 <= TOL, "{family} {mode}: logits moved when others came and went: {d0} / {d1}");
    e.remove_sequence(a);
    e.remove_sequence(c);
}

fn check(family: &str) {
    let g = Golden::load(family);
    let tmp = tempfile::tempdir().unwrap();
    for (mode, resident_layers, device) in [
        ("resident", None, airllm::Device::Gpu),
        ("streamed", Some(0), airllm::Device::Gpu),
        ("cpu", None, airllm::Device::Cpu),
    ] {
        let opts = Options { resident_layers, max_context: Some(128), device, ..Options::default() };
        let Some(mut model) = load(family, tmp.path(), opts) else { return };
        if resident_layers == Some(0) {
            assert_eq!(model.engine().plan().resident_layers(), 0);
        }
        ragged(&mut model, &g, family, mode);
        churn(&mut model, &g, family, mode);
    }
}

macro_rules! family_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check(stringify!($name));
        }
    )*};
}

family_tests!(llama, mistral, qwen2, qwen3, mixtral, phi3, gemma, glm, deepseek_v3);

#[test]
fn families_list_is_complete() {
    assert_eq!(FAMILIES.len(), 9);
}

/// Runs requests through a scheduler to the end; returns each request's ids
/// (in submission order), the most requests running at once and the
/// preemptions.
fn drain(model: &mut AutoModel, prompts: &[Vec<u32>], o: &GenerateOptions) -> (Vec<Vec<u32>>, usize, usize) {
    use airllm::scheduler::{Event, Request, Scheduler};
    let mut sched = Scheduler::new(16);
    let ids: Vec<u64> =
        prompts.iter().map(|p| sched.submit(model.engine(), Request::new(p.clone(), o.clone(), 0)).unwrap()).collect();
    let mut done = std::collections::HashMap::new();
    let (mut max_running, mut preempted) = (0, 0);
    while !sched.is_idle() {
        let (engine, tok) = model.parts_mut();
        let r = sched
            .step(engine, tok, &mut |ev| {
                if let Event::Finished { id, ids, .. } = ev {
                    done.insert(id, ids);
                }
            })
            .unwrap();
        preempted += r.preempted;
        max_running = max_running.max(sched.running());
    }
    assert_eq!(model.engine().free_blocks(), model.engine().total_blocks(), "every block back in the pool");
    (ids.iter().map(|i| done.remove(i).unwrap()).collect(), max_running, preempted)
}

/// A KV pool of two 16-slot blocks: two requests whose prompts need the whole
/// pool run one after the other (admission waits); two shorter ones are both
/// admitted and, when their growth overflows the pool, the newer one is
/// preempted and recomputed later, still giving transformers' greedy ids. A
/// request that cannot fit the pool alone is refused with what to do.
#[test]
fn full_kv_pool_makes_requests_wait() {
    let g = Golden::load("llama");
    let tmp = tempfile::tempdir().unwrap();
    let opts =
        Options { max_context: Some(64), kv_tokens: Some(32), device: airllm::Device::Gpu, ..Options::default() };
    let Some(mut model) = load("llama", tmp.path(), opts) else { return };
    assert_eq!(model.engine().total_blocks(), 2);
    let o = GenerateOptions { max_new_tokens: 8, stop_at_eos: false, ..Default::default() };
    // Admission waits: 20-token prompts need both blocks.
    let p1 = g.ids("prompt1.input_ids")[..20].to_vec();
    let (alone, _, _) =
        drain(&mut model, std::slice::from_ref(&p1), &GenerateOptions { max_new_tokens: 4, ..o.clone() });
    let (both, max_running, _) =
        drain(&mut model, &[p1.clone(), p1], &GenerateOptions { max_new_tokens: 4, ..o.clone() });
    assert_eq!(max_running, 1, "the second request waits for the first");
    assert_eq!(both, vec![alone[0].clone(), alone[0].clone()]);
    // Preemption: 13 + 8 tokens each do not fit together.
    let p0 = g.ids("prompt0.input_ids");
    let want: Vec<u32> = g.ids("greedy.prompt0.new_ids")[..8].to_vec();
    let (out, _, preempted) = drain(&mut model, &[p0.clone(), p0.clone()], &o);
    assert!(preempted > 0, "the pool overflowed, so a sequence was preempted");
    assert_eq!(out, vec![want.clone(), want.clone()]);
    // 40 prompt tokens need 3 blocks: refused at once, with what to do.
    let mut sched = airllm::scheduler::Scheduler::new(16);
    let e = sched
        .submit(model.engine(), airllm::scheduler::Request::new(vec![5; 40], o.clone(), 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("KV cache is full") && e.contains("--kv-tokens"), "{e}");
    // Through generate: the same two requests as one call.
    let (gens, _) = model.generate(&[Prompt::Ids(p0.clone()), Prompt::Ids(p0)], &o, |_| {}).unwrap();
    assert!(gens.iter().all(|x| x.new_ids == want));
}

/// `generate --json` with 1, 4 and 16 prompts under a budget that forces
/// streaming reports a peak VRAM at or under the budget.
#[test]
fn peak_vram_stays_within_budget_for_any_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    let bin = env!("CARGO_BIN_EXE_airllm");
    // The all-resident plan's size, from inspect (the same planning call as generate).
    let out = std::process::Command::new(bin)
        .args(["inspect", fixture("llama").to_str().unwrap(), "--json", "--max-context", "64", "--device", "gpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let full = v["plan"]["vram_bytes"].as_u64().unwrap();
    let layer = v["shards"].as_array().unwrap().iter().map(|s| s["bytes"].as_u64().unwrap()).max().unwrap();
    let budget = full - layer / 2; // one layer's worth must stream
    for n in [1usize, 4, 16] {
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "generate",
            "--model",
            fixture("llama").to_str().unwrap(),
            "--json",
            "--max-new-tokens",
            "6",
            "--device",
            "gpu",
        ])
        .args([
            "--max-context",
            "64",
            "--max-vram",
            &budget.to_string(),
            "--shards-dir",
            shards.to_str().unwrap(),
        ]);
        for i in 0..n {
            cmd.args(["--prompt", &format!("The cat {i} sat")]);
        }
        let out = cmd.output().unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("no GPU adapter") && std::env::var_os("CI").is_none() {
                return;
            }
            panic!("{n} prompts: {err}");
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &v["timings"];
        let peak = t["peak_vram_bytes"].as_u64().unwrap();
        eprintln!("{n} prompts: peak VRAM {peak} of budget {budget}, {} tokens per pass", t["tokens_per_pass"]);
        assert!(peak <= budget, "{n} prompts: peak VRAM {peak} > budget {budget}");
        assert!(t["resident_layers"].as_u64().unwrap() < 2, "{n} prompts: something must stream");
        if n > 1 {
            assert!(t["tokens_per_pass"].as_f64().unwrap() > 1.5, "{n} prompts share passes");
        }
    }
}

/// A prompt longer than a pass's rows is read in chunks; the passes of its first
/// chunks want no logits (the final norm and head are skipped there). The last
/// logits and the greedy continuation must still be transformers'.
#[test]
fn long_prompt_read_in_chunks_alone() {
    let g = Golden::load("llama");
    let tmp = tempfile::tempdir().unwrap();
    let p0 = g.ids("prompt0.input_ids");
    assert!(p0.len() > 8, "the fixture prompt must span several chunks");
    let v = 512;
    let want_all = g.f32("prompt0.logits");
    let want_last = &want_all[want_all.len() - v..];
    for (mode, resident_layers, device) in [
        ("resident", None, airllm::Device::Gpu),
        ("streamed", Some(0), airllm::Device::Gpu),
        ("cpu", None, airllm::Device::Cpu),
    ] {
        let opts =
            Options { resident_layers, max_context: Some(128), max_batch_tokens: 4, device, ..Options::default() };
        let Some(mut model) = load("llama", tmp.path(), opts) else { return };
        assert_eq!(model.spec().vocab_size, v);
        let last = model.last_logits(std::slice::from_ref(&p0)).unwrap();
        let d = max_abs(&last[0], want_last);
        assert!(d <= TOL, "{mode}: last logits differ by {d}");
        let o = GenerateOptions { max_new_tokens: 8, stop_at_eos: false, ..Default::default() };
        let (gens, _) = model.generate(&[Prompt::Ids(p0.clone())], &o, |_| {}).unwrap();
        let greedy = g.ids("greedy.prompt0.new_ids");
        assert_eq!(gens[0].new_ids, greedy[..8], "{mode}: greedy ids");
    }
}

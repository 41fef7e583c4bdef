//! Prefix reuse across chat turns ([`airllm::ChatSession`] and the scheduler's
//! retained sequences): a conversation whose KV cache is kept between turns
//! gives exactly the ids of the same conversation read from scratch each turn,
//! while the later turns feed only their new tokens; a prompt that does not
//! start with the cached ids falls back to the common prefix (or to nothing);
//! a cancelled turn leaves a cache the next turn can use; a reused sequence that
//! is preempted still gives the ids of a run alone; and every KV block is back
//! in the pool once the session is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use airllm::scheduler::{Event, Request, Retained, Scheduler};
use airllm::{AutoModel, Device, GenerateOptions, Options, Prompt};
use safetensors::SafeTensors;

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn golden_ids(family: &str, name: &str) -> Vec<u32> {
    let bytes = std::fs::read(fixture(family).join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name).unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
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

fn all_blocks_free(model: &AutoModel) -> bool {
    model.engine().free_blocks() == model.engine().total_blocks() && model.engine().sequences() == 0
}

/// Three turns: the user's messages are pieces of the fixture prompts, each turn's
/// prompt is the previous prompt, the reply and the new message (as a chat template
/// would render them), so the cache always holds a prefix of the next prompt.
fn conversation(model: &mut AutoModel, family: &str, o: &GenerateOptions) {
    let p0 = golden_ids(family, "prompt0.input_ids");
    let p1 = golden_ids(family, "prompt1.input_ids");
    let users: [Vec<u32>; 3] = [p0.clone(), p1[..9].to_vec(), p1[9..20].to_vec()];

    // Without reuse: each turn reads its whole prompt.
    let mut plain = Vec::new();
    let mut prompt: Vec<u32> = Vec::new();
    for u in &users {
        prompt.extend(u);
        let (g, t) = model.generate(&[Prompt::Ids(prompt.clone())], o, |_| {}).unwrap();
        assert!(t.engine.rows as usize >= prompt.len(), "a turn without reuse reads its whole prompt");
        prompt.extend(&g[0].new_ids);
        plain.push(g[0].new_ids.clone());
    }
    assert!(all_blocks_free(model));

    // With reuse.
    let mut chat = model.chat_session();
    let mut prompt: Vec<u32> = Vec::new();
    for (turn, u) in users.iter().enumerate() {
        prompt.extend(u);
        let cached_before = chat.cached_ids().to_vec();
        assert!(prompt.starts_with(&cached_before), "turn {turn}: the cache holds a prefix of the prompt");
        let (g, t) = chat.generate(&Prompt::Ids(prompt.clone()), o, |_| {}).unwrap();
        assert_eq!(g.new_ids, plain[turn], "turn {turn}: the same ids with and without reuse");
        // The cache holds the prompt and the reply as fed (the last sampled token at most is missing).
        let cached = chat.cached_ids().to_vec();
        let mut full = prompt.clone();
        full.extend(&g.new_ids);
        assert!(full.starts_with(&cached) && cached.len() + 1 >= full.len(), "turn {turn}: cache = what was fed");
        assert_eq!(chat.last_reused(), cached_before.len(), "turn {turn}: the whole cached prefix is reused");
        // Rows fed this turn: exactly the tokens not already in the cache.
        assert_eq!(t.engine.rows as usize, cached.len() - cached_before.len(), "turn {turn}: only new tokens fed");
        if turn > 0 {
            assert!(chat.last_reused() >= prompt.len() - u.len() - 1, "turn {turn}: the history was not re-read");
            eprintln!(
                "turn {turn}: prompt {} tokens, {} reused, {} rows fed",
                prompt.len(),
                chat.last_reused(),
                t.engine.rows
            );
        }
        prompt.extend(&g.new_ids);
    }
    assert!(chat.cached_tokens() > 0);
    assert!(chat.model().engine().free_blocks() < chat.model().engine().total_blocks(), "the cache holds blocks");
    drop(chat);
    assert!(all_blocks_free(model), "every block is back in the pool after the session");
}

#[test]
fn three_turns_with_reuse_match_three_turns_without_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { max_context: Some(256), device: Device::Cpu, ..Options::default() };
    let mut model = load("llama", tmp.path(), opts).unwrap();
    // Greedy: the first turn is transformers' greedy continuation.
    let o = GenerateOptions { max_new_tokens: 8, stop_at_eos: false, ..Default::default() };
    let want = golden_ids("llama", "greedy.prompt0.new_ids");
    let mut chat = model.chat_session();
    let p0 = golden_ids("llama", "prompt0.input_ids");
    let (g, _) = chat.generate(&Prompt::Ids(p0), &o, |_| {}).unwrap();
    assert_eq!(g.new_ids, want[..8], "the first turn is transformers' greedy continuation");
    drop(chat);
    conversation(&mut model, "llama", &o);
    // Sampled, with a repetition penalty (its context is the whole prompt either way).
    let o = GenerateOptions { temperature: 0.9, seed: 11, repetition_penalty: 1.3, ..o };
    conversation(&mut model, "llama", &o);
}

#[test]
fn three_turns_with_reuse_match_three_turns_without_on_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { max_context: Some(256), device: Device::Gpu, resident_layers: Some(0), ..Options::default() };
    let Some(mut model) = load("qwen3", tmp.path(), opts) else { return };
    let o = GenerateOptions { max_new_tokens: 6, stop_at_eos: false, ..Default::default() };
    conversation(&mut model, "qwen3", &o);
}

/// A prompt that leaves the cached ids part way keeps only the common prefix;
/// one that differs from the first token reads from scratch; one equal to the
/// cache re-reads its last token (for its logits). Each gives the ids of a run
/// without reuse.
#[test]
fn mismatching_prefix_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { max_context: Some(256), device: Device::Cpu, ..Options::default() };
    let mut model = load("mistral", tmp.path(), opts).unwrap();
    let o = GenerateOptions { max_new_tokens: 6, stop_at_eos: false, ..Default::default() };
    let p0 = golden_ids("mistral", "prompt0.input_ids");
    let p1 = golden_ids("mistral", "prompt1.input_ids");
    let fresh = |model: &mut AutoModel, p: &[u32]| model.generate(&[Prompt::Ids(p.to_vec())], &o, |_| {}).unwrap().0;
    // (prompt, how many tokens the cache should give it, given the cache before)
    let mut edited = p0.clone();
    edited[5] = p1[3];
    edited.extend(&p1[..4]);
    let mut other = p1[..12].to_vec();
    other[0] = p0[0].wrapping_add(1) % model.spec().vocab_size as u32;
    let want: Vec<_> = [&edited, &other].iter().map(|p| fresh(&mut model, p)[0].new_ids.clone()).collect();

    let mut chat = model.chat_session();
    chat.generate(&Prompt::Ids(p0.clone()), &o, |_| {}).unwrap();
    let cached = chat.cached_ids().to_vec();
    assert!(cached.len() > p0.len());
    // Differs at position 5: positions 0..5 are kept.
    let (g, t) = chat.generate(&Prompt::Ids(edited.clone()), &o, |_| {}).unwrap();
    assert_eq!(chat.last_reused(), 5);
    assert_eq!(g.new_ids, want[0]);
    assert_eq!(t.engine.rows as usize, chat.cached_tokens() - 5);
    // The same prompt again: everything but its last token comes from the cache.
    let (g, t) = chat.generate(&Prompt::Ids(edited.clone()), &o, |_| {}).unwrap();
    assert_eq!(chat.last_reused(), edited.len() - 1);
    assert_eq!(g.new_ids, want[0]);
    assert_eq!(t.engine.rows as usize, chat.cached_tokens() - (edited.len() - 1));
    // Nothing in common (as when the oldest turns were dropped): read from scratch.
    let (g, t) = chat.generate(&Prompt::Ids(other.clone()), &o, |_| {}).unwrap();
    assert_eq!(chat.last_reused(), 0);
    assert_eq!(g.new_ids, want[1]);
    assert_eq!(t.engine.rows as usize, chat.cached_tokens());
    // A refused turn (too long for the context) leaves the cache as it was.
    let before = chat.cached_ids().to_vec();
    assert!(chat.generate(&Prompt::Ids(vec![5; 300]), &o, |_| {}).is_err());
    assert_eq!(chat.cached_ids(), before);
    assert_eq!(chat.model().engine().sequences(), 1);
    chat.reset();
    assert_eq!(chat.cached_tokens(), 0);
    assert!(all_blocks_free(chat.model()));
    drop(chat);
    assert!(all_blocks_free(&model));
}

/// Cancelled after three tokens: the cache keeps exactly what was fed, and the
/// next turn (the conversation with the partial reply) gives the ids of a run
/// without reuse.
#[test]
fn cancelled_turn_leaves_a_usable_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { max_context: Some(256), device: Device::Cpu, ..Options::default() };
    let mut model = load("qwen2", tmp.path(), opts).unwrap();
    let p0 = golden_ids("qwen2", "prompt0.input_ids");
    let p1 = golden_ids("qwen2", "prompt1.input_ids");
    let cancel = Arc::new(AtomicBool::new(false));
    let o =
        GenerateOptions { max_new_tokens: 20, stop_at_eos: false, cancel: Some(cancel.clone()), ..Default::default() };
    let mut chat = model.chat_session();
    let mut n = 0;
    let (g, _) = chat
        .generate(&Prompt::Ids(p0.clone()), &o, |_| {
            n += 1;
            if n == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
    assert_eq!(g.finish, airllm::FinishReason::Cancelled);
    assert_eq!(g.new_ids.len(), 3);
    cancel.store(false, Ordering::Relaxed);
    let mut full = p0.clone();
    full.extend(&g.new_ids);
    assert!(full.starts_with(chat.cached_ids()) && chat.cached_tokens() >= p0.len());
    full.extend(&p1[..7]);
    let o = GenerateOptions { cancel: None, max_new_tokens: 6, ..o };
    let (g, _) = chat.generate(&Prompt::Ids(full.clone()), &o, |_| {}).unwrap();
    assert!(chat.last_reused() >= p0.len() + 2);
    drop(chat);
    let (want, _) = model.generate(&[Prompt::Ids(full)], &o, |_| {}).unwrap();
    assert_eq!(g.new_ids, want[0].new_ids);
    assert!(all_blocks_free(&model));
}

/// Runs `reqs` through one scheduler; returns each request's ids and retained
/// sequence (in submission order) and the preemptions.
/// A finished request's generated ids and retained sequence.
type Done = (Vec<u32>, Option<Retained>);

fn drain(model: &mut AutoModel, reqs: Vec<Request>) -> (Vec<Done>, usize) {
    let mut sched = Scheduler::new(16);
    let ids: Vec<u64> = reqs.into_iter().map(|r| sched.submit(model.engine(), r).unwrap()).collect();
    let mut done = std::collections::HashMap::new();
    let mut preempted = 0;
    while !sched.is_idle() {
        let (engine, tok) = model.parts_mut();
        let r = sched
            .step(engine, tok, &mut |ev| {
                if let Event::Finished { id, ids, retained, .. } = ev {
                    done.insert(id, (ids, retained));
                }
            })
            .unwrap();
        preempted += r.preempted;
    }
    (ids.iter().map(|i| done.remove(i).unwrap()).collect(), preempted)
}

/// A pool of three 16-slot blocks: a request reusing a retained 12-token
/// sequence runs beside another; when both grow past their first block the
/// reused one (admitted last) is preempted, freed and re-read from scratch,
/// and still gives the ids it gives alone. A stale handle reads from scratch.
#[test]
fn preempted_reused_sequence_gives_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { max_context: Some(64), kv_tokens: Some(48), device: Device::Cpu, ..Options::default() };
    let mut model = load("llama", tmp.path(), opts).unwrap();
    assert_eq!(model.engine().total_blocks(), 3);
    let p0 = golden_ids("llama", "prompt0.input_ids");
    let p1 = golden_ids("llama", "prompt1.input_ids");
    let o = GenerateOptions { max_new_tokens: 8, stop_at_eos: false, ..Default::default() };
    let second: Vec<u32> = p1[..12].iter().chain(&p1[20..22]).copied().collect();
    let (alone, _) = drain(&mut model, vec![Request::new(second.clone(), o.clone(), 0)]);
    let (b_alone, _) = drain(&mut model, vec![Request::new(p0.clone(), o.clone(), 0)]);
    assert!(all_blocks_free(&model));

    // Retain 12 tokens: a one-token reply whose token is never fed.
    let first = Request {
        keep: true,
        ..Request::new(p1[..12].to_vec(), GenerateOptions { max_new_tokens: 1, ..o.clone() }, 0)
    };
    let (mut out, _) = drain(&mut model, vec![first]);
    let ret = out.remove(0).1.expect("kept");
    assert_eq!(ret.ids, p1[..12]);
    assert_eq!(model.engine().sequence_len(ret.seq), Some(12));
    let stale = ret.clone();

    let reuse = Request { reuse: Some(ret), ..Request::new(second.clone(), o.clone(), 0) };
    let (out, preempted) = drain(&mut model, vec![Request::new(p0.clone(), o.clone(), 0), reuse]);
    assert!(preempted > 0, "the pool overflowed, so the reused sequence was preempted");
    assert_eq!(out[0].0, b_alone[0].0);
    assert_eq!(out[1].0, alone[0].0, "the preempted reused sequence gives the ids it gives alone");
    assert!(out.iter().all(|(_, r)| r.is_none()));
    assert!(all_blocks_free(&model), "the reused sequence's blocks are back");

    // The handle's sequence is gone: the prompt is read from scratch.
    let reuse = Request { reuse: Some(stale), ..Request::new(second, o.clone(), 0) };
    let (out, _) = drain(&mut model, vec![reuse]);
    assert_eq!(out[0].0, alone[0].0);
    assert!(all_blocks_free(&model));
}

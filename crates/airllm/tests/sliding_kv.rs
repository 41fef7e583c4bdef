//! Sliding-window layers keep only their window of KV blocks
//! (`engine::kv::window`): Gemma 2 and Gemma 3 (tiny fixtures, window 8) still
//! match transformers with blocks of 4 slots, prompts chunked shorter and
//! longer than the window, two sequences at once and a continuation of three
//! windows, resident, streamed and on the CPU executor; the sliding pool's
//! blocks in use stay bounded while the global ones grow; cuts inside the last
//! step are exact and cuts further back are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::engine::kv::window::blocks_per_window;
use airllm::engine::{Engine, EngineConfig, Logits, ROOT, StepItem, Tree};
use airllm_format::{Checkpoint, ShardDir, ShardOptions};
use safetensors::SafeTensors;

const TOL: f32 = 1e-4;
const WINDOW: usize = 8;
const BLOCK: usize = 4;

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

#[derive(Clone, Copy, Debug)]
enum Mode {
    Resident,
    Streamed,
    Cpu,
}

/// An engine over `shards` with blocks of [`BLOCK`] slots and steps of
/// `rows` rows; None without a GPU adapter (never in CI) for the GPU modes.
fn engine(shards: &Path, mode: Mode, rows: usize) -> Option<Engine> {
    let cfg = EngineConfig {
        max_context: 128,
        max_sequences: 2,
        max_batch_tokens: rows,
        kv_block: BLOCK,
        prefetch_depth: 2,
        resident_layers: matches!(mode, Mode::Streamed).then_some(0),
        ..EngineConfig::default()
    };
    let ctx = match mode {
        Mode::Cpu => None,
        _ => match airllm_gpu::GpuContext::new(&Default::default()) {
            Ok(c) => Some(c),
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "CI must have a GPU adapter (lavapipe): {e}");
                eprintln!("skipping: no GPU adapter ({e})");
                return None;
            }
        },
    };
    Some(Engine::new(ctx, ShardDir::open(shards).unwrap(), cfg).unwrap())
}

fn shard(family: &str, to: &Path) {
    let ck = Checkpoint::open(&fixture(family)).unwrap();
    airllm_format::write_shards(&ck, to, &ShardOptions { progress: false, ..Default::default() }).unwrap();
}

/// Feeds `ids` to `seq` in chunks of at most `chunk`, all logits back.
fn feed(e: &mut Engine, seq: airllm::engine::SeqId, ids: &[u32], chunk: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for c in ids.chunks(chunk) {
        out.extend(e.step(&[StepItem::new(seq, c, Logits::All)]).unwrap().remove(0));
    }
    out
}

fn check(family: &str, mode: Mode, rows: usize) {
    let what = format!("{family} {mode:?} chunks of {rows}");
    let g = Golden::load(family);
    let tmp = tempfile::tempdir().unwrap();
    shard(family, tmp.path());
    let Some(mut e) = engine(tmp.path(), mode, rows) else { return };
    let kv = e.kv_blocks();
    assert!(kv.sliding_total > 0 && kv.sliding_total < kv.total, "{what}: {kv:?}");
    let v = e.spec().vocab_size;
    let (p0, p1) = (g.ids("prompt0.input_ids"), g.ids("prompt1.input_ids"));
    let (a, b) = (e.add_sequence(), e.add_sequence());
    // Prompt 1 (32 tokens, four windows) first, then prompt 0 beside it.
    let got1 = feed(&mut e, b, &p1, rows);
    let got0 = feed(&mut e, a, &p0, rows);
    let (d0, d1) = (max_abs(&got0, &g.f32("prompt0.logits")), max_abs(&got1, &g.f32("prompt1.logits")));
    eprintln!("{what}: prompt logits max abs diff {d0:.2e} / {d1:.2e}");
    assert!(d0 <= TOL && d1 <= TOL, "{what}: prompt logits differ by {d0} / {d1}");
    // Both decode in shared steps: 24 tokens of prompt 0 (to position 37, past
    // four windows) must be transformers' greedy ids; the sliding blocks stay
    // within one window per sequence (plus the step's row) while the global
    // ones grow with the context.
    let argmax = airllm::sampler::argmax;
    let mut next = (argmax(&got0[(p0.len() - 1) * v..]), argmax(&got1[(p1.len() - 1) * v..]));
    let bound = 2 * (blocks_per_window(WINDOW, BLOCK) + 1);
    let mut ids_a = Vec::new();
    let mut last = Vec::new();
    for _ in 0..24 {
        ids_a.push(next.0);
        let out =
            e.step(&[StepItem::new(a, &[next.0], Logits::Last), StepItem::new(b, &[next.1], Logits::Last)]).unwrap();
        let kv = e.kv_blocks();
        assert!(kv.sliding_used <= bound, "{what}: {} sliding blocks in use, bound {bound}", kv.sliding_used);
        next = (argmax(&out[0]), argmax(&out[1]));
        last = out[0].clone();
    }
    assert_eq!(ids_a, g.ids("greedy.prompt0.new_ids"), "{what}: greedy continuation");
    let kv = e.kv_blocks();
    let global = (p0.len() + 24).div_ceil(BLOCK) + (p1.len() + 24).div_ceil(BLOCK);
    assert_eq!(kv.used, global, "{what}: {kv:?}");
    assert!(kv.sliding_used * 2 < kv.used, "{what}: the window saved nothing: {kv:?}");

    // A cut into the last step is exact: re-reading its token gives its logits.
    let len = e.sequence_len(a).unwrap();
    e.truncate(a, len - 1).unwrap();
    let again = e.step(&[StepItem::new(a, &[*ids_a.last().unwrap()], Logits::Last)]).unwrap();
    // (Alone in its step, so the GPU may pick other matmul kernels: not bit-equal.)
    let d = max_abs(&again[0], &last);
    assert!(d <= TOL, "{what}: logits after a cut of one token differ by {d}");
    // Further back, the window before the cut is gone: refused, nothing changes.
    let err = e.truncate(a, len - 2 * WINDOW).unwrap_err().to_string();
    assert!(err.contains("sliding-window") && err.contains("re-read"), "{what}: {err}");
    assert_eq!(e.sequence_len(a), Some(len));
    e.remove_sequence(a);
    e.remove_sequence(b);
    let kv = e.kv_blocks();
    assert_eq!((kv.used, kv.sliding_used), (0, 0), "{what}: every block back in the pools");
}

#[test]
fn gemma2_windowed_kv_matches_transformers() {
    for mode in [Mode::Resident, Mode::Streamed, Mode::Cpu] {
        for rows in [5, 20] {
            check("gemma2", mode, rows);
        }
    }
}

#[test]
fn gemma3_windowed_kv_matches_transformers() {
    for mode in [Mode::Resident, Mode::Streamed, Mode::Cpu] {
        for rows in [5, 20] {
            check("gemma3", mode, rows);
        }
    }
}

/// More live sequences than the sliding pool was sized for: the engine trims
/// the idle ones to their window (as their next step would) instead of failing,
/// and every sequence still reads the right slots.
#[test]
fn idle_sequences_give_back_their_last_chunk_when_the_pool_is_short() {
    let g = Golden::load("gemma3");
    let tmp = tempfile::tempdir().unwrap();
    shard("gemma3", tmp.path());
    let Some(mut e) = engine(tmp.path(), Mode::Cpu, 20) else { return };
    let p1 = g.ids("prompt1.input_ids");
    let want = g.f32("prompt1.logits");
    let v = e.spec().vocab_size;
    // Four sequences read prompt 1 in 20-token chunks (the pool holds two windows
    // and one step); each one's logits must still match.
    let seqs: Vec<_> = (0..4).map(|_| e.add_sequence()).collect();
    for &s in &seqs {
        let got = feed(&mut e, s, &p1, 20);
        let d = max_abs(&got, &want);
        assert!(d <= TOL, "{s}: logits differ by {d}");
        assert!(e.kv_blocks().sliding_used <= e.kv_blocks().sliding_total);
    }
    // And each continues exactly: its next token's logits are the same (one
    // sequence ends first, so the global pool has room).
    e.remove_sequence(seqs[0]);
    let next = airllm::sampler::argmax(&want[(p1.len() - 1) * v..]);
    let mut outs = Vec::new();
    for &s in &seqs[1..] {
        outs.push(e.step(&[StepItem::new(s, &[next], Logits::Last)]).unwrap().remove(0));
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]), "the continuations differ");
}

/// The real Gemma 3 270M GGUF (when `$AIRLLM_GEMMA3_GGUF` names it; skipped
/// otherwise), on the CPU executor: a 2k-token prompt read in 512-token chunks,
/// then decode. The 15 sliding layers (window 512) hold at most one window
/// plus one chunk of blocks while the 3 global ones grow with the context;
/// prints the KV bytes the sequence holds.
#[test]
fn gemma3_270m_sliding_blocks_stay_at_the_window() {
    let Some(path) = std::env::var_os("AIRLLM_GEMMA3_GGUF") else {
        eprintln!("skipping: set AIRLLM_GEMMA3_GGUF to gemma-3-270m-q4_k_m.gguf");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let opts = airllm::Options {
        shards_dir: Some(tmp.path().to_path_buf()),
        max_context: Some(4096),
        max_sequences: 1,
        device: airllm::Device::Cpu,
        ..airllm::Options::default()
    };
    let mut m = airllm::AutoModel::from_pretrained(path.to_str().unwrap(), opts).unwrap();
    let text = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(160);
    let ids = m.encode(&airllm::Prompt::Text(text)).unwrap();
    assert!(ids.len() > 2048, "{}", ids.len());
    let ids = &ids[..2048];
    let e = m.engine_mut();
    let sum = airllm::sizing::KvSummary::new(e.spec(), &e.capacity());
    assert_eq!((sum.global_layers, sum.sliding_layers, sum.window), (3, 15, Some(512)));
    let (slot, sliding_layers, global_layers) = (sum.slot_bytes, 15u64, 3u64);
    let kv = e.kv_blocks();
    eprintln!("pools: {kv:?}");
    let s = e.add_sequence();
    let bound = blocks_per_window(512, kv.block) + 1 + 512usize.div_ceil(kv.block);
    let mut last = Vec::new();
    for c in ids.chunks(512) {
        last = e.step(&[StepItem::new(s, c, Logits::Last)]).unwrap().remove(0);
        let kv = e.kv_blocks();
        let len = e.sequence_len(s).unwrap();
        let bytes = kv.block as u64 * slot * (global_layers * kv.used as u64 + sliding_layers * kv.sliding_used as u64);
        let before = kv.block as u64 * slot * (global_layers + sliding_layers) * kv.used as u64;
        eprintln!(
            "{len} tokens: global blocks {} sliding {}: {:.1} MiB held (every layer at full context: {:.1} MiB)",
            kv.used,
            kv.sliding_used,
            bytes as f64 / 1048576.0,
            before as f64 / 1048576.0
        );
        assert!(kv.sliding_used <= bound, "{} sliding blocks, bound {bound}", kv.sliding_used);
        assert_eq!(kv.used, len.div_ceil(kv.block));
    }
    let mut next = airllm::sampler::argmax(&last);
    for _ in 0..8 {
        let out = e.step(&[StepItem::new(s, &[next], Logits::Last)]).unwrap().remove(0);
        next = airllm::sampler::argmax(&out);
    }
    let kv = e.kv_blocks();
    assert!(kv.sliding_used <= blocks_per_window(512, kv.block) + 1, "decode: {kv:?}");
    eprintln!("after 8 decode steps: {kv:?}");
}

/// Draft trees over a sliding model (blocks of 4, window 8): a tree grown over
/// three steps can be dropped (cut back to its base, which a trim at the
/// tree's length would have made impossible) and grown again, and keeping one
/// path (moving its nodes' keys and values in both pools) continues exactly as
/// reading those tokens plainly does.
fn tree_then_path(mode: Mode) {
    let g = Golden::load("gemma3");
    let tmp = tempfile::tempdir().unwrap();
    shard("gemma3", tmp.path());
    let Some(mut e) = engine(tmp.path(), mode, 20) else { return };
    let v = e.spec().vocab_size;
    let full: Vec<u32> = g.ids("prompt0.input_ids").into_iter().chain(g.ids("greedy.prompt0.new_ids")).collect();
    let r = e.add_sequence();
    let plain = feed(&mut e, r, &full[..31], 20);
    let want = &plain[30 * v..];
    e.remove_sequence(r);

    let t = e.add_sequence();
    feed(&mut e, t, &full[..26], 20);
    let base = 26;
    // Node 0 = full[26] and node 1 (another token) are roots; node 2 = full[27]
    // hangs off node 0, node 3 = full[28] off node 2.
    let levels: [(&[u32], Vec<u32>); 3] =
        [(&[ROOT, ROOT], vec![full[26], 7]), (&[ROOT, ROOT, 0], vec![full[27]]), (&[ROOT, ROOT, 0, 2], vec![full[28]])];
    for round in 0..2 {
        for (parents, tokens) in &levels {
            let tree = Some(Tree { base, parents });
            e.step(&[StepItem { seq: t, tokens, logits: Logits::All, tree }]).unwrap();
        }
        if round == 0 {
            e.truncate(t, base).unwrap_or_else(|err| panic!("{mode:?}: dropping the tree: {err}"));
        }
    }
    e.keep_tree_path(t, base, &[0, 2, 3]).unwrap();
    assert_eq!(e.sequence_len(t), Some(29));
    let got = e.step(&[StepItem::new(t, &full[29..31], Logits::Last)]).unwrap().remove(0);
    let d = max_abs(&got, want);
    eprintln!("{mode:?}: after a kept tree path, max abs diff {d:.2e}");
    assert!(d <= TOL, "{mode:?}: logits after the kept path differ by {d}");
}

#[test]
fn draft_trees_over_sliding_layers() {
    for mode in [Mode::Resident, Mode::Streamed, Mode::Cpu] {
        tree_then_path(mode);
    }
}

//! End-to-end correctness against Hugging Face transformers: every tiny fixture
//! family, all layers resident and every layer streamed, on whatever adapter
//! exists (lavapipe in CI).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use airllm::{AutoModel, GenerateOptions, Options, Prompt};
use safetensors::SafeTensors;

const FAMILIES: [&str; 9] = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "phi3", "gemma", "glm", "deepseek_v3"];
/// The fixtures README's bound for an independent f32 implementation.
const TOL: f32 = 1e-4;

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load(family: &str) -> Golden {
        Golden { bytes: std::fs::read(fixture(family).join("golden.safetensors")).unwrap() }
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
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

fn load(family: &str, shards: &Path, resident_layers: Option<usize>) -> Option<AutoModel> {
    load_on(family, shards, resident_layers, airllm::Device::Gpu, None)
}

fn load_on(
    family: &str,
    shards: &Path,
    resident_layers: Option<usize>,
    device: airllm::Device,
    cpu_layers: Option<usize>,
) -> Option<AutoModel> {
    let opts = Options {
        shards_dir: Some(shards.to_path_buf()),
        resident_layers,
        prefetch_depth: 2,
        max_context: Some(128),
        device,
        cpu_layers,
        ..Options::default()
    };
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

fn check_family(family: &str) {
    let g = Golden::load(family);
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut resident) = load(family, tmp.path(), None) else { return };
    assert_eq!(resident.engine().plan().resident_layers(), resident.spec().num_layers, "{family}: all resident");
    let a = run(&mut resident, &g);
    let v = resident.spec().vocab_size;
    drop(resident);

    for (i, name) in ["prompt0.logits", "prompt1.logits"].iter().enumerate() {
        let d = max_abs(&a.logits[i], &g.f32(name));
        eprintln!("{family}: {name} max abs diff {d:.2e}");
        assert!(d <= TOL, "{family}: {name} differs by {d}");
    }
    assert_eq!(a.greedy, g.ids("greedy.prompt0.new_ids"), "{family}: greedy continuation");

    // Batched, left-padded: rows with mask 1.
    let bl = g.f32("batch.logits");
    let mask = g.ids("batch.attention_mask");
    let t = mask.len() / 2;
    for b in 0..2 {
        let real: Vec<usize> = (0..t).filter(|&i| mask[b * t + i] == 1).collect();
        let want: Vec<f32> =
            real.iter().flat_map(|&i| bl[(b * t + i) * v..(b * t + i + 1) * v].iter().copied()).collect();
        let d = max_abs(&a.batch[b], &want);
        assert!(d <= TOL, "{family}: batch row {b} differs by {d}");
    }

    // Every layer streamed through a ring of two slots: identical results.
    let Some(mut streamed) = load(family, tmp.path(), Some(0)) else { return };
    let plan = streamed.engine().plan().clone();
    assert_eq!(plan.resident_layers(), 0, "{family}: {plan}");
    assert_eq!(plan.ring_slots, 2, "{family}: {plan}");
    let s = run(&mut streamed, &g);
    assert!(streamed.engine().stats().streamed_bytes > 0, "{family}: nothing streamed");
    assert_eq!(s.logits, a.logits, "{family}: streamed logits differ from resident");
    assert_eq!(s.greedy, a.greedy, "{family}: streamed greedy differs");
    assert_eq!(s.batch, a.batch, "{family}: streamed batch differs");
    drop(streamed);

    // The CPU executor alone, and a mixed placement (layer 1 on the CPU, the
    // rest streamed to the GPU, activations crossing twice per pass): the same
    // transformers logits and greedy ids.
    for (what, device, resident_layers, cpu_layers) in
        [("cpu", airllm::Device::Cpu, None, None), ("mixed", airllm::Device::Gpu, Some(0), Some(1))]
    {
        let Some(mut m) = load_on(family, tmp.path(), resident_layers, device, cpu_layers) else { return };
        let cpu_units = m.engine().plan().placement.iter().filter(|p| **p == airllm::planner::Placement::Cpu).count();
        if what == "mixed" {
            assert_eq!(cpu_units, 1, "{family}: one layer on the CPU");
            assert!(m.engine().ctx().is_some());
        } else {
            assert_eq!(cpu_units, m.engine().plan().placement.len(), "{family}: all on the CPU");
            assert!(m.engine().ctx().is_none(), "{family}: --device cpu opens no GPU");
        }
        let c = run(&mut m, &g);
        for (i, name) in ["prompt0.logits", "prompt1.logits"].iter().enumerate() {
            let d = max_abs(&c.logits[i], &g.f32(name));
            eprintln!("{family} {what}: {name} max abs diff {d:.2e}");
            assert!(d <= TOL, "{family} {what}: {name} differs by {d}");
        }
        assert_eq!(c.greedy, g.ids("greedy.prompt0.new_ids"), "{family} {what}: greedy continuation");
        for b in 0..2 {
            let d = max_abs(&c.batch[b], &a.batch[b]);
            assert!(d <= TOL, "{family} {what}: batch row {b} differs from the GPU's by {d}");
        }
        if what == "mixed" {
            assert!(m.engine().stats().transfer_bytes > 0, "{family}: activations crossed");
        }
    }
}

macro_rules! family_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check_family(stringify!($name));
        }
    )*};
}

family_tests!(llama, mistral, qwen2, qwen3, mixtral, phi3, gemma, glm, deepseek_v3);

#[test]
fn families_list_is_complete() {
    assert_eq!(FAMILIES.len(), 9);
}

/// An lm_head split into row parts (as large models get automatically, so ring
/// slots stay layer-sized) gives the same logits, resident and streamed.
#[test]
fn split_lm_head_matches_transformers() {
    for family in ["llama", "mistral"] {
        let g = Golden::load(family);
        let tmp = tempfile::tempdir().unwrap();
        let ck = airllm_format::Checkpoint::open(&fixture(family)).unwrap();
        let opts =
            airllm_format::ShardOptions { progress: false, lm_head_part_bytes: Some(20_000), ..Default::default() };
        let m = airllm_format::write_shards(&ck, tmp.path(), &opts).unwrap().manifest;
        let parts = m.shards.iter().filter(|s| matches!(s.unit, airllm_format::Unit::LmHeadPart(_))).count();
        assert!(parts >= 3, "{family}: {parts} parts");
        for resident_layers in [None, Some(0)] {
            let Some(mut model) = load(family, tmp.path(), resident_layers) else { return };
            let p0 = g.ids("prompt0.input_ids");
            let logits = model.forward_logits(std::slice::from_ref(&p0)).unwrap().remove(0);
            let d = max_abs(&logits, &g.f32("prompt0.logits"));
            assert!(d <= TOL, "{family} {resident_layers:?}: split lm_head logits differ by {d}");
            let opts = GenerateOptions { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
            let (gens, _) = model.generate(&[Prompt::Ids(p0)], &opts, |_| {}).unwrap();
            assert_eq!(gens[0].new_ids, g.ids("greedy.prompt0.new_ids"), "{family} {resident_layers:?}");
        }
    }
}

/// A tied model whose embedding is larger than a layer gets lm_head parts copied
/// from the embedding; logits are unchanged.
#[test]
fn split_tied_head_matches_transformers() {
    for family in ["qwen2", "gemma"] {
        let g = Golden::load(family);
        let tmp = tempfile::tempdir().unwrap();
        let ck = airllm_format::Checkpoint::open(&fixture(family)).unwrap();
        let opts =
            airllm_format::ShardOptions { progress: false, lm_head_part_bytes: Some(40_000), ..Default::default() };
        let m = airllm_format::write_shards(&ck, tmp.path(), &opts).unwrap().manifest;
        assert!(m.spec.tie_word_embeddings);
        let parts = m.shards.iter().filter(|s| matches!(s.unit, airllm_format::Unit::LmHeadPart(_))).count();
        assert!(parts >= 2, "{family}: {parts} parts");
        let Some(mut model) = load(family, tmp.path(), Some(0)) else { return };
        let p1 = g.ids("prompt1.input_ids");
        let logits = model.forward_logits(std::slice::from_ref(&p1)).unwrap().remove(0);
        let d = max_abs(&logits, &g.f32("prompt1.logits"));
        assert!(d <= TOL, "{family}: tied split head logits differ by {d}");
    }
}

/// The f16 KV cache (`--kv-cache f16`) halves the cache and moves logits by
/// a few 1e-3: within 1e-2 of transformers' f32 logits, same greedy continuation.
#[test]
fn f16_kv_cache_stays_close() {
    for family in FAMILIES {
        let g = Golden::load(family);
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options {
            shards_dir: Some(tmp.path().to_path_buf()),
            max_context: Some(128),
            device: airllm::Device::Gpu,
            kv_dtype: airllm::KvDtype::F16,
            ..Options::default()
        };
        let mut model = match AutoModel::from_pretrained(fixture(family).to_str().unwrap(), opts) {
            Ok(m) => m,
            Err(airllm::EngineError::Gpu(_)) if std::env::var_os("CI").is_none() => return,
            Err(e) => panic!("{family}: {e}"),
        };
        let p1 = g.ids("prompt1.input_ids");
        let logits = model.forward_logits(std::slice::from_ref(&p1)).unwrap().remove(0);
        let d = max_abs(&logits, &g.f32("prompt1.logits"));
        eprintln!("{family}: f16 KV cache, prompt1 logits max abs diff {d:.2e}");
        assert!(d <= 1e-2, "{family}: f16 KV logits differ by {d}");
        let p0 = g.ids("prompt0.input_ids");
        let opts = GenerateOptions { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
        let (gens, _) = model.generate(&[Prompt::Ids(p0)], &opts, |_| {}).unwrap();
        assert_eq!(gens[0].new_ids, g.ids("greedy.prompt0.new_ids"), "{family}: f16 KV greedy");
    }
}

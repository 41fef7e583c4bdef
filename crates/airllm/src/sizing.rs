//! Sizes of the engine's device allocations. The planner budgets with these
//! functions and the engine allocates with them, so a plan and what it
//! allocates cannot disagree. Every device buffer the engine creates outside
//! the weights is one of these.

use airllm_format::{LayerSpec, ModelSpec};
use airllm_gpu::KvLayout;
use airllm_gpu::kernels::paged::MAX_TREE;

use crate::engine::exec::Buf;
use crate::engine::kv::window;
use crate::options::KvDtype;

/// The shape of the engine's per-step buffers and KV pool (from the engine
/// configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepCapacity {
    /// Token rows one pass holds (prompt chunks + decode tokens + tree nodes).
    pub rows: usize,
    /// Logit rows one pass returns.
    pub logit_rows: usize,
    /// Sequences one pass holds.
    pub sequences: usize,
    /// Longest sequence (prompt + generated) in slots.
    pub max_context: usize,
    /// Slots in the KV pool, shared by all sequences.
    pub kv_tokens: usize,
    /// Slots per KV block.
    pub kv_block: usize,
    /// KV element type.
    pub kv_dtype: KvDtype,
}

/// The KV pool layout for `cap` (blocks rounded up to hold `kv_tokens`).
pub fn kv_layout(spec: &ModelSpec, cap: &StepCapacity) -> KvLayout {
    let block = cap.kv_block.max(1);
    KvLayout {
        num_blocks: cap.kv_tokens.div_ceil(block).max(1) as u32,
        block: block as u32,
        kv_heads: spec.num_kv_heads as u32,
        head_dim: spec.head_dim as u32,
        // An f16 cache packs pairs, so it needs an even head_dim (all supported models have one).
        f16: cap.kv_dtype == KvDtype::F16 && spec.head_dim.is_multiple_of(2),
        // Latent attention caches one row [latent | rope key] per slot and reads
        // the value from it: no v tensor.
        k_only: spec.mla.is_some(),
    }
}

/// Whether a layer's KV is kept as a sliding window (its own, smaller pool;
/// see [`crate::engine::kv::window`]): it has a window shorter than the context.
pub fn kv_sliding(layer: &LayerSpec, cap: &StepCapacity) -> bool {
    layer.attention.window.is_some_and(|w| w < cap.max_context.max(1))
}

/// The window the sliding layers' pool serves: the largest of those layers'
/// windows (None: every layer keeps its whole context).
pub fn kv_window(spec: &ModelSpec, cap: &StepCapacity) -> Option<usize> {
    spec.layer_specs().iter().filter(|l| kv_sliding(l, cap)).filter_map(|l| l.attention.window).max()
}

/// The sliding layers' KV pool layout: blocks for `cap.sequences` windows plus
/// one step's rows ([`window::pool_blocks`]), never more than the global pool.
pub fn sliding_kv_layout(spec: &ModelSpec, cap: &StepCapacity) -> Option<KvLayout> {
    let w = kv_window(spec, cap)?;
    let global = kv_layout(spec, cap);
    let blocks =
        window::pool_blocks(w, global.block as usize, cap.sequences, cap.rows, global.num_blocks as usize) as u32;
    Some(KvLayout { num_blocks: blocks, ..global })
}

/// The KV layout of decoder layer `layer`.
pub fn layer_kv_layout(spec: &ModelSpec, cap: &StepCapacity, layer: usize) -> KvLayout {
    match sliding_kv_layout(spec, cap) {
        Some(s) if kv_sliding(&spec.layer(layer), cap) => s,
        _ => kv_layout(spec, cap),
    }
}

/// Device bytes of the KV pool: every layer's k and v, sliding layers at
/// their pool's size.
pub fn kv_bytes(spec: &ModelSpec, cap: &StepCapacity) -> u64 {
    (0..spec.num_layers).map(|l| storage_size(layer_kv_layout(spec, cap, l).layer_bytes())).sum()
}

/// How the KV memory splits between global and sliding layers, for `inspect`
/// and the docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSummary {
    /// Layers that keep the whole context.
    pub global_layers: usize,
    /// Layers that keep a window.
    pub sliding_layers: usize,
    /// The window (when some layer slides).
    pub window: Option<usize>,
    /// K and v bytes of one slot of one layer.
    pub slot_bytes: u64,
    /// Slots per block.
    pub block: usize,
    /// Blocks of the global pool (per layer).
    pub global_blocks: usize,
    /// Blocks of the sliding pool (per layer; 0 without sliding layers).
    pub sliding_blocks: usize,
}

impl KvSummary {
    /// The split for `spec` under `cap`.
    pub fn new(spec: &ModelSpec, cap: &StepCapacity) -> KvSummary {
        let g = kv_layout(spec, cap);
        let sliding_layers = spec.layer_specs().iter().filter(|l| kv_sliding(l, cap)).count();
        KvSummary {
            global_layers: spec.num_layers - sliding_layers,
            sliding_layers,
            window: kv_window(spec, cap),
            slot_bytes: g.tensors_per_layer() * u64::from(g.kv_heads) * u64::from(g.head_dim) * g.elem_bytes(),
            block: g.block as usize,
            global_blocks: g.num_blocks as usize,
            sliding_blocks: sliding_kv_layout(spec, cap).map(|l| l.num_blocks as usize).unwrap_or(0),
        }
    }

    /// KV bytes one token adds to a sequence in the global layers.
    pub fn global_bytes_per_token(&self) -> u64 {
        self.global_layers as u64 * self.slot_bytes
    }

    /// Most KV bytes one sequence of `context` tokens holds in decode (whole
    /// blocks): every global layer's context, every sliding layer's window.
    pub fn sequence_bytes(&self, context: usize) -> u64 {
        let b = self.block.max(1);
        let global = context.div_ceil(b) * b;
        let sliding = match self.window {
            Some(w) => global.min((window::blocks_per_window(w, b) + 1) * b),
            None => global,
        };
        self.slot_bytes * (self.global_layers * global + self.sliding_layers * sliding) as u64
    }

    /// The same if every layer kept its whole context (before sliding pools).
    pub fn sequence_bytes_unwindowed(&self, context: usize) -> u64 {
        let b = self.block.max(1);
        self.slot_bytes * ((self.global_layers + self.sliding_layers) * context.div_ceil(b) * b) as u64
    }
}

/// Bytes a storage buffer of `bytes` really takes (the context rounds sizes
/// up to 16 bytes).
pub fn storage_size(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

/// Each activation buffer and its bytes, for `rows` token rows and
/// `logit_rows` logit rows.
pub fn activation_buffers(spec: &ModelSpec, rows: usize, logit_rows: usize) -> Vec<(Buf, u64)> {
    let r = rows.max(1) as u64;
    let lr = logit_rows.max(1) as u64;
    let f = |n: usize| (n as u64).max(1) * 4;
    let h = spec.hidden_size;
    let inter = (0..spec.num_layers)
        .map(|l| match spec.layer(l).mlp {
            airllm_format::MlpSpec::Dense { intermediate } => intermediate,
            // DeepSeek's shared expert runs through the same gate|up buffers.
            airllm_format::MlpSpec::Moe(m) => spec.intermediate_size.max(m.shared_intermediate.unwrap_or(0)),
        })
        .max()
        .unwrap_or(spec.intermediate_size);
    // Latent attention also holds the compressed query and the heads' latent
    // outputs in the attention buffer (see `graph::mla_attention`).
    let attn = match spec.mla {
        Some(m) => spec.q_dim().max(m.q_lora_rank.unwrap_or(0)).max(spec.num_heads * m.kv_lora_rank),
        None => spec.q_dim(),
    };
    let experts = spec.moe.map(|m| m.num_experts).unwrap_or(1);
    vec![
        (Buf::X, r * f(h)),
        (Buf::H, r * f(h)),
        (Buf::Qkv, r * f(spec.q_dim() + 2 * spec.kv_dim())),
        (Buf::Attn, r * f(attn)),
        (Buf::Gu, r * f(2 * inter)),
        (Buf::Act, r * f(inter)),
        (Buf::ExpertOut, if spec.moe.is_some() { r * f(h) } else { 16 }),
        (Buf::RouterLogits, r * f(experts)),
        (Buf::RouterWeights, r * f(experts)),
        (Buf::LastX, lr * f(h)),
        (Buf::LastH, lr * f(h)),
        (Buf::Logits, lr * f(spec.vocab_size)),
    ]
    .into_iter()
    .map(|(b, n)| (b, storage_size(n)))
    .collect()
}

/// Device bytes of the activation buffers.
pub fn activation_bytes(spec: &ModelSpec, rows: usize, logit_rows: usize) -> u64 {
    activation_buffers(spec, rows, logit_rows).iter().map(|(_, b)| b).sum()
}

/// Tree-mask words one row may need.
pub fn mask_words_per_row() -> usize {
    MAX_TREE.div_ceil(32) as usize
}

/// The step-input buffers (positions, rows, sequences, block tables, tree
/// masks, the sliding layers' block tables) and their bytes. A sliding table
/// is indexed like the global one (dead entries included), so it is as long.
pub fn step_input_buffers(spec: &ModelSpec, cap: &StepCapacity) -> [(&'static str, u64); 7] {
    let blocks_per_seq = cap.max_context.div_ceil(cap.kv_block.max(1)).max(1);
    let sliding = if kv_window(spec, cap).is_some() { cap.sequences.max(1) * blocks_per_seq } else { 0 };
    [
        ("positions", storage_size(cap.rows.max(1) as u64 * 4)),
        ("step_rows", storage_size(cap.rows.max(1) as u64 * 16)),
        ("step_seqs", storage_size(cap.sequences.max(1) as u64 * 16)),
        ("block_table", storage_size((cap.sequences.max(1) * blocks_per_seq) as u64 * 4)),
        ("tree_masks", storage_size((cap.rows.max(1) * mask_words_per_row()) as u64 * 4)),
        // KV slot moves after a tree is verified: at most one per tree node, for
        // the global and the sliding layers.
        ("kv_moves", storage_size(2 * u64::from(MAX_TREE) * 16)),
        ("sliding_block_table", storage_size(sliding as u64 * 4)),
    ]
}

/// Device bytes of the step inputs.
pub fn step_input_bytes(spec: &ModelSpec, cap: &StepCapacity) -> u64 {
    step_input_buffers(spec, cap).iter().map(|(_, b)| b).sum()
}

/// Device bytes of the RoPE frequency tables.
pub fn rope_table_bytes(spec: &ModelSpec) -> u64 {
    spec.distinct_ropes().iter().map(|r| storage_size((r.rotary_dim / 2) as u64 * 4)).sum()
}

/// Everything the engine allocates on the device besides weights, ring and
/// staging: KV pool, activations, step inputs, RoPE tables.
pub fn fixed_bytes(spec: &ModelSpec, cap: &StepCapacity) -> FixedBytes {
    FixedBytes {
        kv: kv_bytes(spec, cap),
        kv_sliding: (0..spec.num_layers)
            .filter(|&l| sliding_kv_layout(spec, cap).is_some() && kv_sliding(&spec.layer(l), cap))
            .map(|l| storage_size(layer_kv_layout(spec, cap, l).layer_bytes()))
            .sum(),
        activations: activation_bytes(spec, cap.rows, cap.logit_rows)
            + step_input_bytes(spec, cap)
            + rope_table_bytes(spec),
    }
}

/// The fixed allocations, in two parts the plan shows separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedBytes {
    /// The KV pool (every layer).
    pub kv: u64,
    /// The part of `kv` in sliding-window layers.
    pub kv_sliding: u64,
    /// Activations, step inputs and RoPE tables.
    pub activations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemma3() -> ModelSpec {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/gemma3");
        use airllm_format::TensorSource;
        airllm_format::Checkpoint::open(&dir).expect("the gemma3 fixture").spec().clone()
    }

    fn cap(max_context: usize, sequences: usize) -> StepCapacity {
        StepCapacity {
            rows: 512,
            logit_rows: 64,
            sequences,
            max_context,
            kv_tokens: max_context,
            kv_block: 16,
            kv_dtype: KvDtype::F16,
        }
    }

    /// DeepSeek-V3's latent attention caches one row `[latent | rope key]`
    /// (16 + 8 values in the fixture) per slot and layer, no v: the KV figures
    /// count exactly that, against 4 heads x (24 key + 16 value) values per
    /// slot for the same model with plain multi-head attention.
    #[test]
    fn latent_attention_kv_is_one_row_per_slot() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/deepseek_v3");
        use airllm_format::TensorSource;
        let spec = airllm_format::Checkpoint::open(&dir).expect("the deepseek_v3 fixture").spec().clone();
        let c = cap(4096, 2);
        let layout = kv_layout(&spec, &c);
        assert!(layout.k_only);
        assert_eq!((layout.kv_heads, layout.head_dim), (1, 24));
        let kv = KvSummary::new(&spec, &c);
        assert_eq!(kv.slot_bytes, 24 * 2, "one f16 row of 24 values per slot");
        assert_eq!(kv_bytes(&spec, &c), 3 * storage_size(256 * 16 * 24 * 2));
        assert_eq!(kv.sequence_bytes(4096), 3 * 4096 * 24 * 2);
    }

    /// The fixture: two sliding layers (window 8) and one global. At a 32k
    /// context the sliding layers' pools hold one window per sequence plus one
    /// step's rows, and the planner's KV bytes are what the engine allocates.
    #[test]
    fn sliding_layers_are_budgeted_at_their_window() {
        let spec = gemma3();
        let c = cap(32768, 4);
        let slot = 2 * spec.num_kv_heads as u64 * spec.head_dim as u64 * 2; // k + v, f16
        let kv = KvSummary::new(&spec, &c);
        assert_eq!((kv.global_layers, kv.sliding_layers, kv.window), (1, 2, Some(8)));
        assert_eq!(kv.slot_bytes, slot);
        // 8 - 1 slots straddle at most 2 blocks of 16; 4 sequences x 3 + 512 / 16.
        assert_eq!(kv.sliding_blocks, 4 * 3 + 32);
        assert_eq!(kv.global_blocks, 2048);
        let layer = |blocks: u64| storage_size(blocks * 16 * slot);
        assert_eq!(kv_bytes(&spec, &c), layer(2048) + 2 * layer(44));
        let fixed = fixed_bytes(&spec, &c);
        assert_eq!(fixed.kv_sliding, 2 * layer(44));
        // Per sequence at 32k: the global layer's whole context, each sliding one 3 blocks.
        assert_eq!(kv.sequence_bytes(32768), slot * (32768 + 2 * 48));
        assert_eq!(kv.sequence_bytes_unwindowed(32768), slot * 3 * 32768);

        // The planner budgets the windowed size: a budget that an unwindowed
        // cache would overflow holds everything resident.
        let units = vec![(airllm_format::Unit::Layer(0), 1000), (airllm_format::Unit::FinalNorm, 16)];
        let unwindowed = 3 * layer(2048) + fixed.activations + 1016;
        let budget = fixed.kv + fixed.activations + 1016 + 4096;
        assert!(budget < unwindowed);
        let plan = crate::planner::plan(&crate::planner::PlanInput {
            units,
            fixed,
            staging_in_vram: false,
            prefetch_depth: 1,
            budget,
            resident_layers: None,
        })
        .expect("fits at the window's size");
        assert_eq!(plan.kv_bytes, fixed.kv);
        assert_eq!(plan.kv_sliding_bytes, fixed.kv_sliding);
        assert!(plan.to_string().contains("sliding-window layers"), "{plan}");
    }

    /// A window at least the context is no window: every layer is global.
    #[test]
    fn a_window_longer_than_the_context_changes_nothing() {
        let spec = gemma3();
        let c = cap(8, 4);
        assert_eq!(kv_window(&spec, &c), None);
        assert_eq!(sliding_kv_layout(&spec, &c), None);
        assert_eq!(kv_bytes(&spec, &c), 3 * storage_size(kv_layout(&spec, &c).layer_bytes()));
        assert_eq!(fixed_bytes(&spec, &c).kv_sliding, 0);
        // Short contexts: the pool is capped at the global one.
        let c = cap(64, 16);
        assert_eq!(sliding_kv_layout(&spec, &c).map(|l| l.num_blocks), Some(4));
    }
}

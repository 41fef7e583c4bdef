//! Sizes of the engine's device allocations. The planner budgets with these
//! functions and the engine allocates with them, so a plan and what it
//! allocates cannot disagree. Every device buffer the engine creates outside
//! the weights is one of these.

use airllm_format::ModelSpec;
use airllm_gpu::KvLayout;
use airllm_gpu::kernels::paged::MAX_TREE;

use crate::engine::exec::Buf;
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
    }
}

/// Device bytes of the KV pool: every layer's k and v.
pub fn kv_bytes(spec: &ModelSpec, cap: &StepCapacity) -> u64 {
    spec.num_layers as u64 * storage_size(kv_layout(spec, cap).layer_bytes())
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
            airllm_format::MlpSpec::Moe(_) => spec.intermediate_size,
        })
        .max()
        .unwrap_or(spec.intermediate_size);
    let experts = spec.moe.map(|m| m.num_experts).unwrap_or(1);
    vec![
        (Buf::X, r * f(h)),
        (Buf::H, r * f(h)),
        (Buf::Qkv, r * f(spec.q_dim() + 2 * spec.kv_dim())),
        (Buf::Attn, r * f(spec.q_dim())),
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
/// masks) and their bytes.
pub fn step_input_buffers(cap: &StepCapacity) -> [(&'static str, u64); 6] {
    let blocks_per_seq = cap.max_context.div_ceil(cap.kv_block.max(1)).max(1);
    [
        ("positions", storage_size(cap.rows.max(1) as u64 * 4)),
        ("step_rows", storage_size(cap.rows.max(1) as u64 * 16)),
        ("step_seqs", storage_size(cap.sequences.max(1) as u64 * 16)),
        ("block_table", storage_size((cap.sequences.max(1) * blocks_per_seq) as u64 * 4)),
        ("tree_masks", storage_size((cap.rows.max(1) * mask_words_per_row()) as u64 * 4)),
        // KV slot moves after a tree is verified: at most one per tree node.
        ("kv_moves", storage_size(u64::from(MAX_TREE) * 16)),
    ]
}

/// Device bytes of the step inputs.
pub fn step_input_bytes(cap: &StepCapacity) -> u64 {
    step_input_buffers(cap).iter().map(|(_, b)| b).sum()
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
        activations: activation_bytes(spec, cap.rows, cap.logit_rows) + step_input_bytes(cap) + rope_table_bytes(spec),
    }
}

/// The fixed allocations, in two parts the plan shows separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedBytes {
    /// The KV pool.
    pub kv: u64,
    /// Activations, step inputs and RoPE tables.
    pub activations: u64,
}

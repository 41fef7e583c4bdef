//! Sizes of the engine's GPU allocations, shared by the planner, `inspect` and
//! the engine itself so the plan and the allocation agree.

use airllm_format::ModelSpec;

/// KV cache bytes: K and V, f32, every layer, `batch` sequences of `context` slots.
pub fn kv_bytes(spec: &ModelSpec, context: usize, batch: usize) -> u64 {
    2 * spec.num_layers as u64 * (batch * spec.num_kv_heads * context * spec.head_dim) as u64 * 4
}

/// f32 values per token in the activation buffers: residual x, normed h, fused
/// q|k|v, attention output, gate|up, activated MLP, one expert output, router.
pub fn activation_floats_per_token(spec: &ModelSpec) -> usize {
    let h = spec.hidden_size;
    let qkv = spec.q_dim() + 2 * spec.kv_dim();
    let i = spec.intermediate_size;
    let experts = spec.moe.map(|m| m.num_experts * 2 + h).unwrap_or(0);
    2 * h + qkv + spec.q_dim() + 3 * i + experts + 2
}

/// Activation bytes for `tokens` tokens per forward pass, plus logits for
/// `logit_rows` rows.
pub fn activation_bytes(spec: &ModelSpec, tokens: usize, logit_rows: usize) -> u64 {
    (activation_floats_per_token(spec) * tokens + spec.vocab_size * logit_rows + spec.hidden_size * logit_rows) as u64
        * 4
}

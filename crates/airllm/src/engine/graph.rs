//! The model graph, written once against the [`Exec`] interface: one decoder
//! layer for every supported family, the final norm and the output head.
//! Families differ by data: fused projections, biases, q/k norm, MoE, norm
//! flavour, activation, rotary layout ([`ModelSpec`]), and per layer the
//! attention span, RoPE, scale, soft-cap and norm layout ([`LayerSpec`]).

use airllm_format::{LayerSpec, MlaSpec, MlpSpec, ModelSpec, Role};

use super::exec::{Buf, Exec, NormShape, View};
use crate::error::Result;

fn hidden_norm(spec: &ModelSpec) -> NormShape {
    NormShape { d: spec.hidden_size as u32, heads: 1 }
}

/// Decoder layer `l` on the step's rows: the residual `X` is updated in place.
pub fn decoder_layer<E: Exec>(e: &mut E, spec: &ModelSpec, l: &LayerSpec) -> Result<()> {
    let n = e.rows();
    let h = spec.hidden_size as u32;
    let (x, hv) = (View::new(Buf::X, n, h), View::new(Buf::H, n, h));

    // Attention block.
    e.norm(Role::AttnNorm, hidden_norm(spec), x, Some(hv))?;
    if let Some(m) = &spec.mla {
        mla_attention(e, spec, m, l)?;
    } else {
        standard_attention(e, spec, l)?;
    }
    mlp_block(e, spec, l)
}

/// Multi-head attention (MHA/GQA/MQA, fused or separate projections, biases,
/// q/k norm) of the normed hidden `H`, added into the residual.
fn standard_attention<E: Exec>(e: &mut E, spec: &ModelSpec, l: &LayerSpec) -> Result<()> {
    let n = e.rows();
    let (q_dim, kv_dim) = (spec.q_dim() as u32, spec.kv_dim() as u32);
    let qkv_w = q_dim + 2 * kv_dim;
    let hv = View::new(Buf::H, n, spec.hidden_size as u32);
    let qkv = |off| View::cols(Buf::Qkv, n, qkv_w, off);
    if e.has(Role::Qkv) {
        e.linear(Role::Qkv, Some(Role::QkvBias), hv, qkv(0), false)?;
    } else {
        e.linear(Role::Q, Some(Role::QBias), hv, qkv(0), false)?;
        e.linear(Role::K, Some(Role::KBias), hv, qkv(q_dim), false)?;
        e.linear(Role::V, Some(Role::VBias), hv, qkv(q_dim + kv_dim), false)?;
    }
    let a = &l.attention;
    if a.qk_norm {
        let d = spec.head_dim as u32;
        e.norm(Role::QNorm, NormShape { d, heads: spec.num_heads as u32 }, qkv(0), None)?;
        e.norm(Role::KNorm, NormShape { d, heads: spec.num_kv_heads as u32 }, qkv(q_dim), None)?;
    }
    e.rope(qkv(0), spec.num_heads as u32, &a.rope)?;
    e.rope(qkv(q_dim), spec.num_kv_heads as u32, &a.rope)?;
    e.kv_append(qkv(q_dim), qkv(q_dim + kv_dim))?;
    let attn = View::new(Buf::Attn, n, q_dim);
    e.attention(qkv(0), attn, a)?;
    residual_out(e, l, Role::O, Some(Role::OBias), attn, Role::PostAttnNorm, spec)
}

// --- DeepSeek-V3 multi-head latent attention --------------------------------

/// Multi-head latent attention in the absorbed form (see `airllm_format::mla`)
/// of the normed hidden `H`, added into the residual. Buffers:
/// - `Attn` first holds the compressed query `[rows, q_lora_rank]`, later the
///   heads' attention outputs (latents) `[rows, heads * kv_lora_rank]`;
/// - `Qkv` holds the absorbed queries `[rows, heads * (kv_lora + rope)]`
///   (head h: `[q_lat | q_rope]`), then the cache row `[c_kv | k_rope]`.
///
/// The cache row is appended as the layer's one KV head (`head_dim = kv_lora
/// + rope`), and attention reads the value from its first `kv_lora_rank`
/// values (`AttentionSpec::v_dim`).
fn mla_attention<E: Exec>(e: &mut E, spec: &ModelSpec, m: &MlaSpec, l: &LayerSpec) -> Result<()> {
    let n = e.rows();
    let h = spec.hidden_size as u32;
    let (c, r) = (m.kv_lora_rank as u32, m.qk_rope_head_dim as u32);
    let heads = spec.num_heads as u32;
    let (q_dim, row) = (spec.q_dim() as u32, spec.head_dim as u32); // heads * (c + r), c + r
    let qkv_w = q_dim + 2 * spec.kv_dim() as u32;
    let hv = View::new(Buf::H, n, h);
    let qkv = |off| View::cols(Buf::Qkv, n, qkv_w, off);
    // Queries: [q_lat | q_rope] per head.
    match m.q_lora_rank {
        Some(q_lora) => {
            let cq = View::new(Buf::Attn, n, q_lora as u32);
            e.linear(Role::QA, None, hv, cq, false)?;
            e.norm(Role::QANorm, NormShape { d: q_lora as u32, heads: 1 }, cq, None)?;
            e.linear(Role::QAbsorbed, None, cq, qkv(0), false)?;
        }
        None => e.linear(Role::QAbsorbed, None, hv, qkv(0), false)?,
    }
    // The cache row: latent (normed) then the shared RoPE key.
    e.linear(Role::KvA, None, hv, qkv(q_dim), false)?;
    e.norm(Role::KvANorm, NormShape { d: c, heads: 1 }, qkv(q_dim), None)?;
    // RoPE on the last `r` values of every head: a head's first rotary_dim
    // values from column `c` on, heads `row` apart.
    let a = &l.attention;
    debug_assert_eq!(a.rope.rotary_dim as u32, r);
    e.rope(qkv(c), heads, &a.rope)?;
    e.rope(qkv(q_dim + c), 1, &a.rope)?;
    // One cached row per token; there is no separate value to store.
    e.kv_append(qkv(q_dim), qkv(q_dim))?;
    let lat = View::new(Buf::Attn, n, heads * c);
    e.attention(qkv(0), lat, a)?;
    debug_assert_eq!(row, c + r);
    residual_out(e, l, Role::OAbsorbed, None, lat, Role::PostAttnNorm, spec)
}

/// The MLP block (dense, or routed experts) of layer `l`, added into the residual.
fn mlp_block<E: Exec>(e: &mut E, spec: &ModelSpec, l: &LayerSpec) -> Result<()> {
    let n = e.rows();
    let h = spec.hidden_size as u32;
    let x = View::new(Buf::X, n, h);
    let hv = View::new(Buf::H, n, h);

    // MLP block.
    e.norm(Role::MlpNorm, hidden_norm(spec), x, Some(hv))?;
    match l.mlp {
        MlpSpec::Dense { intermediate } => {
            let i = intermediate as u32;
            let gu = View::new(Buf::Gu, n, 2 * i);
            if e.has(Role::GateUp) {
                e.linear(Role::GateUp, None, hv, gu, false)?;
            } else {
                e.linear(Role::Gate, Some(Role::GateBias), hv, View::cols(Buf::Gu, n, 2 * i, 0), false)?;
                e.linear(Role::Up, Some(Role::UpBias), hv, View::cols(Buf::Gu, n, 2 * i, i), false)?;
            }
            let act = View::new(Buf::Act, n, i);
            e.act_mul(spec.activation, gu, act)?;
            residual_out(e, l, Role::Down, Some(Role::DownBias), act, Role::PostMlpNorm, spec)?;
        }
        MlpSpec::Moe(m) => {
            let ne = m.num_experts as u32;
            let i = spec.intermediate_size as u32;
            let logits = View::new(Buf::RouterLogits, n, ne);
            let weights = View::new(Buf::RouterWeights, n, ne);
            e.linear(Role::Router, None, hv, logits, false)?;
            e.moe_route(logits, weights, &m)?;
            let gu = View::new(Buf::Gu, n, 2 * i);
            let act = View::new(Buf::Act, n, i);
            let out = View::new(Buf::ExpertOut, n, h);
            for ex in 0..ne {
                e.linear(Role::ExpertGate(ex), None, hv, View::cols(Buf::Gu, n, 2 * i, 0), false)?;
                e.linear(Role::ExpertUp(ex), None, hv, View::cols(Buf::Gu, n, 2 * i, i), false)?;
                e.act_mul(spec.activation, gu, act)?;
                e.linear(Role::ExpertDown(ex), None, act, out, false)?;
                e.moe_combine(out, x, weights, ex, ne)?;
            }
            // --- DeepSeek-V3: the shared experts, applied to every token and
            // --- added to the routed output (into the residual directly).
            if let Some(si) = m.shared_intermediate {
                let si = si as u32;
                let gu = View::new(Buf::Gu, n, 2 * si);
                e.linear(Role::SharedGate, None, hv, View::cols(Buf::Gu, n, 2 * si, 0), false)?;
                e.linear(Role::SharedUp, None, hv, View::cols(Buf::Gu, n, 2 * si, si), false)?;
                let act = View::new(Buf::Act, n, si);
                e.act_mul(spec.activation, gu, act)?;
                e.linear(Role::SharedDown, None, act, x, true)?;
            }
        }
    }
    Ok(())
}

/// The block's output projection into the residual: added directly, or with
/// sandwich norms projected into `H`, normed there and then added.
fn residual_out<E: Exec>(
    e: &mut E,
    l: &LayerSpec,
    w: Role,
    bias: Option<Role>,
    input: View,
    post_norm: Role,
    spec: &ModelSpec,
) -> Result<()> {
    let n = e.rows();
    let h = spec.hidden_size as u32;
    let x = View::new(Buf::X, n, h);
    if l.sandwich_norms {
        let hv = View::new(Buf::H, n, h);
        e.linear(w, bias, input, hv, false)?;
        e.norm(post_norm, hidden_norm(spec), hv, None)?;
        e.add(hv, x, h)
    } else {
        e.linear(w, bias, input, x, true)
    }
}

/// Selects `rows` of the residual and applies the final norm: `LastH`.
pub fn final_norm<E: Exec>(e: &mut E, spec: &ModelSpec, rows: &[u32]) -> Result<()> {
    let h = spec.hidden_size as u32;
    let n = rows.len() as u32;
    let last_x = View::new(Buf::LastX, n, h);
    e.gather_rows(View::new(Buf::X, e.rows(), h), last_x, rows)?;
    e.norm(Role::FinalNorm, hidden_norm(spec), last_x, Some(View::new(Buf::LastH, n, h)))
}

/// The output head (or the rows `[row_start, row_start + rows)` of it, for a
/// part of a split head) on the `n` selected rows: `Logits`.
pub fn lm_head<E: Exec>(e: &mut E, spec: &ModelSpec, n: u32, row_start: u32, last_part: bool) -> Result<()> {
    let h = spec.hidden_size as u32;
    let vocab = spec.vocab_size as u32;
    let w = if e.has(Role::LmHead) { Role::LmHead } else { Role::Embedding };
    let logits = View::cols(Buf::Logits, n, vocab, row_start);
    e.linear(w, None, View::new(Buf::LastH, n, h), logits, false)?;
    if last_part {
        if let Some(cap) = spec.layers.final_softcap {
            e.softcap(View::new(Buf::Logits, n, vocab), vocab, cap)?;
        }
    }
    Ok(())
}

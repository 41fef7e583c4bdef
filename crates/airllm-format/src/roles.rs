//! What each tensor is for. Source names (Hugging Face, GGUF) map onto one
//! architecture-neutral vocabulary of execution units and roles, so the engine
//! never matches on checkpoint-specific names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::Family;

/// One execution unit: the shards are written, read and run in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "index", rename_all = "snake_case")]
pub enum Unit {
    /// The token embedding table (gathered row by row on the host).
    Embedding,
    /// Decoder layer `i`.
    Layer(u32),
    /// The final norm.
    FinalNorm,
    /// The output projection (absent when tied to the embedding).
    LmHead,
    /// Part `k` of an output projection split by rows (a large lm_head is written
    /// as several shards no bigger than a decoder layer, so streaming slots stay
    /// layer-sized).
    LmHeadPart(u32),
}

impl Unit {
    /// The shard file name for this unit; `width` is the number of digits for layer indices.
    pub fn file_name(self, width: usize) -> String {
        match self {
            Unit::Embedding => "embedding.shard".into(),
            Unit::Layer(i) => format!("layer.{i:0width$}.shard"),
            Unit::FinalNorm => "final_norm.shard".into(),
            Unit::LmHead => "lm_head.shard".into(),
            Unit::LmHeadPart(k) => format!("lm_head.{k}.shard"),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unit::Embedding => f.write_str("embedding"),
            Unit::Layer(i) => write!(f, "layer {i}"),
            Unit::FinalNorm => f.write_str("final norm"),
            Unit::LmHead => f.write_str("lm_head"),
            Unit::LmHeadPart(k) => write!(f, "lm_head part {k}"),
        }
    }
}

/// The role of a tensor inside its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Token embedding `[vocab, hidden]`.
    Embedding,
    /// Norm before attention.
    AttnNorm,
    /// Query projection `[q_dim, hidden]`.
    Q,
    /// Key projection `[kv_dim, hidden]`.
    K,
    /// Value projection `[kv_dim, hidden]`.
    V,
    /// Fused q|k|v projection (Phi-3).
    Qkv,
    /// Output projection `[hidden, q_dim]`.
    O,
    /// Query bias.
    QBias,
    /// Key bias.
    KBias,
    /// Value bias.
    VBias,
    /// Fused q|k|v bias.
    QkvBias,
    /// Output-projection bias.
    OBias,
    /// Per-head query RMSNorm (Qwen3).
    QNorm,
    /// Per-head key RMSNorm (Qwen3).
    KNorm,
    /// Norm before the MLP.
    MlpNorm,
    /// Norm of the attention output before the residual add (Gemma 2/3 sandwich norms).
    PostAttnNorm,
    /// Norm of the MLP output before the residual add (Gemma 2/3 sandwich norms).
    PostMlpNorm,
    /// MLP gate projection `[inter, hidden]`.
    Gate,
    /// MLP up projection `[inter, hidden]`.
    Up,
    /// Fused gate|up projection (Phi-3, GLM).
    GateUp,
    /// MLP down projection `[hidden, inter]`.
    Down,
    /// Gate bias.
    GateBias,
    /// Up bias.
    UpBias,
    /// Down bias.
    DownBias,
    /// MoE router `[experts, hidden]`.
    Router,
    /// Expert `e`'s gate projection (Mixtral `w1`).
    ExpertGate(u32),
    /// Expert `e`'s up projection (Mixtral `w3`).
    ExpertUp(u32),
    /// Expert `e`'s down projection (Mixtral `w2`).
    ExpertDown(u32),
    /// Final norm.
    FinalNorm,
    /// Output projection `[vocab, hidden]`.
    LmHead,
    // --- DeepSeek-V3: multi-head latent attention and shared experts. ---
    /// MLA query compression `q_a_proj` `[q_lora_rank, hidden]`.
    QA,
    /// RMSNorm of the compressed query (`q_a_layernorm`).
    QANorm,
    /// MLA `kv_a_proj_with_mqa` `[kv_lora_rank + rope, hidden]`: the latent and the shared RoPE key.
    KvA,
    /// RMSNorm of the latent (`kv_a_layernorm`).
    KvANorm,
    /// MLA `kv_b_proj` `[heads * (nope + v), kv_lora_rank]` as the checkpoint stores it;
    /// folded into [`Role::QAbsorbed`] and [`Role::OAbsorbed`] when the checkpoint is
    /// opened, never written to a shard.
    KvB,
    /// MLA query projection with `kv_b_proj`'s key part absorbed: per head
    /// `[q_lat (kv_lora_rank) | q_rope (rope)]` rows, `[heads * (kv_lora + rope), q_lora_rank or hidden]`.
    QAbsorbed,
    /// MLA output projection with `kv_b_proj`'s value part absorbed: `[hidden, heads * kv_lora_rank]`.
    OAbsorbed,
    /// DeepSeek's router `e_score_correction_bias` `[experts]` (added to the scores for choosing only).
    RouterBias,
    /// Shared expert gate projection `[shared_inter, hidden]`.
    SharedGate,
    /// Shared expert up projection `[shared_inter, hidden]`.
    SharedUp,
    /// Shared expert down projection `[hidden, shared_inter]`.
    SharedDown,
}

impl Role {
    /// Weight matrices that a codec may compress (attention, MLP, experts, lm_head).
    /// Norms, biases, the router and the embedding keep their source dtype.
    pub fn is_compressible_matrix(self) -> bool {
        matches!(
            self,
            Role::Q
                | Role::K
                | Role::V
                | Role::Qkv
                | Role::O
                | Role::Gate
                | Role::Up
                | Role::GateUp
                | Role::Down
                | Role::ExpertGate(_)
                | Role::ExpertUp(_)
                | Role::ExpertDown(_)
                | Role::LmHead
                | Role::QA
                | Role::KvA
                | Role::QAbsorbed
                | Role::OAbsorbed
                | Role::SharedGate
                | Role::SharedUp
                | Role::SharedDown
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Role::Embedding => "embedding",
            Role::AttnNorm => "attn_norm",
            Role::Q => "q",
            Role::K => "k",
            Role::V => "v",
            Role::Qkv => "qkv",
            Role::O => "o",
            Role::QBias => "q_bias",
            Role::KBias => "k_bias",
            Role::VBias => "v_bias",
            Role::QkvBias => "qkv_bias",
            Role::OBias => "o_bias",
            Role::QNorm => "q_norm",
            Role::KNorm => "k_norm",
            Role::MlpNorm => "mlp_norm",
            Role::PostAttnNorm => "post_attn_norm",
            Role::PostMlpNorm => "post_mlp_norm",
            Role::Gate => "gate",
            Role::Up => "up",
            Role::GateUp => "gate_up",
            Role::Down => "down",
            Role::GateBias => "gate_bias",
            Role::UpBias => "up_bias",
            Role::DownBias => "down_bias",
            Role::Router => "router",
            Role::ExpertGate(e) => return write!(f, "expert.{e}.gate"),
            Role::ExpertUp(e) => return write!(f, "expert.{e}.up"),
            Role::ExpertDown(e) => return write!(f, "expert.{e}.down"),
            Role::FinalNorm => "final_norm",
            Role::LmHead => "lm_head",
            Role::QA => "q_a",
            Role::QANorm => "q_a_norm",
            Role::KvA => "kv_a",
            Role::KvANorm => "kv_a_norm",
            Role::KvB => "kv_b",
            Role::QAbsorbed => "q_absorbed",
            Role::OAbsorbed => "o_absorbed",
            Role::RouterBias => "router_bias",
            Role::SharedGate => "shared.gate",
            Role::SharedUp => "shared.up",
            Role::SharedDown => "shared.down",
        };
        f.write_str(s)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("expert.") {
            let (e, what) = rest.split_once('.').ok_or_else(|| format!("bad role {s:?}"))?;
            let e: u32 = e.parse().map_err(|_| format!("bad expert index in role {s:?}"))?;
            return match what {
                "gate" => Ok(Role::ExpertGate(e)),
                "up" => Ok(Role::ExpertUp(e)),
                "down" => Ok(Role::ExpertDown(e)),
                _ => Err(format!("bad role {s:?}")),
            };
        }
        let r = match s {
            "embedding" => Role::Embedding,
            "attn_norm" => Role::AttnNorm,
            "q" => Role::Q,
            "k" => Role::K,
            "v" => Role::V,
            "qkv" => Role::Qkv,
            "o" => Role::O,
            "q_bias" => Role::QBias,
            "k_bias" => Role::KBias,
            "v_bias" => Role::VBias,
            "qkv_bias" => Role::QkvBias,
            "o_bias" => Role::OBias,
            "q_norm" => Role::QNorm,
            "k_norm" => Role::KNorm,
            "mlp_norm" => Role::MlpNorm,
            "post_attn_norm" => Role::PostAttnNorm,
            "post_mlp_norm" => Role::PostMlpNorm,
            "gate" => Role::Gate,
            "up" => Role::Up,
            "gate_up" => Role::GateUp,
            "down" => Role::Down,
            "gate_bias" => Role::GateBias,
            "up_bias" => Role::UpBias,
            "down_bias" => Role::DownBias,
            "router" => Role::Router,
            "final_norm" => Role::FinalNorm,
            "lm_head" => Role::LmHead,
            "q_a" => Role::QA,
            "q_a_norm" => Role::QANorm,
            "kv_a" => Role::KvA,
            "kv_a_norm" => Role::KvANorm,
            "kv_b" => Role::KvB,
            "q_absorbed" => Role::QAbsorbed,
            "o_absorbed" => Role::OAbsorbed,
            "router_bias" => Role::RouterBias,
            "shared.gate" => Role::SharedGate,
            "shared.up" => Role::SharedUp,
            "shared.down" => Role::SharedDown,
            _ => return Err(format!("unknown role {s:?}")),
        };
        Ok(r)
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether a Hugging Face tensor is known to be unused by inference (and can be skipped).
pub fn hf_ignored(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq") || name.ends_with(".masked_bias") || name.ends_with(".attn.bias")
}

/// A DeepSeek-V3 tensor of a layer past `num_hidden_layers`: the multi-token
/// prediction module (`num_nextn_predict_layers`) that official checkpoints
/// append as extra layers; plain decoding does not use it.
pub fn beyond_layers(spec: &crate::spec::ModelSpec, name: &str) -> bool {
    spec.family == Family::DeepseekV3
        && name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .is_some_and(|i| i >= spec.num_layers)
}

/// Prefixes of the image parts of Gemma 3's multimodal checkpoints
/// (`Gemma3ForConditionalGeneration`; transformers 4.5x and 5 layouts). Text
/// generation does not read them.
const GEMMA3_VISION_PREFIXES: [&str; 4] =
    ["vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."];

/// [`hf_ignored`], plus what `family` carries that text generation does not use
/// (Gemma 3's vision tower and projector).
pub fn hf_ignored_for(family: Family, name: &str) -> bool {
    hf_ignored(name) || (family == Family::Gemma3 && GEMMA3_VISION_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// The text model's name for a tensor of Gemma 3's multimodal layout:
/// `language_model.model.X` (transformers 4.5x) and `model.language_model.X`
/// (transformers 5) become `model.X`; `language_model.lm_head.weight` becomes
/// `lm_head.weight`.
fn gemma3_text_name(name: &str) -> std::borrow::Cow<'_, str> {
    if let Some(rest) =
        name.strip_prefix("language_model.model.").or_else(|| name.strip_prefix("model.language_model."))
    {
        return format!("model.{rest}").into();
    }
    if let Some(rest) = name.strip_prefix("language_model.") {
        return rest.to_owned().into();
    }
    name.into()
}

/// Map a Hugging Face tensor name of a `family` checkpoint to its unit and role.
///
/// The families differ in the names of layer norms: Llama and most others have
/// `input_layernorm` (before attention) and `post_attention_layernorm` (before the
/// MLP); Gemma 2/3 have four, and there `post_attention_layernorm` is the norm of
/// the attention *output* ([`Role::PostAttnNorm`]), `pre_feedforward_layernorm`
/// the MLP input norm ([`Role::MlpNorm`]) and `post_feedforward_layernorm` the
/// norm of the MLP output ([`Role::PostMlpNorm`]).
pub fn classify_hf_for(family: Family, name: &str) -> Option<(Unit, Role)> {
    if family == Family::DeepseekV3 {
        return classify_deepseek(name).or_else(|| classify_hf(name));
    }
    if !family.has_sandwich_norms() {
        return classify_hf(name);
    }
    let name = if family == Family::Gemma3 { gemma3_text_name(name) } else { name.into() };
    let sandwich = name.strip_prefix("model.layers.").and_then(|rest| {
        let (idx, rest) = rest.split_once('.')?;
        let role = match rest {
            "post_attention_layernorm.weight" => Role::PostAttnNorm,
            "pre_feedforward_layernorm.weight" => Role::MlpNorm,
            "post_feedforward_layernorm.weight" => Role::PostMlpNorm,
            _ => return None,
        };
        Some((Unit::Layer(idx.parse().ok()?), role))
    });
    sandwich.or_else(|| classify_hf(&name))
}

/// DeepSeek-V3's own tensor names (MLA projections, router bias, `mlp.experts.E.*`,
/// shared experts); the rest are Llama's.
fn classify_deepseek(name: &str) -> Option<(Unit, Role)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let unit = Unit::Layer(idx.parse().ok()?);
    let role = match rest {
        "self_attn.q_a_proj.weight" => Role::QA,
        "self_attn.q_a_layernorm.weight" => Role::QANorm,
        // The full query projection, from the compressed query or (q_lora_rank null) `q_proj`.
        "self_attn.q_b_proj.weight" | "self_attn.q_proj.weight" => Role::Q,
        "self_attn.kv_a_proj_with_mqa.weight" => Role::KvA,
        "self_attn.kv_a_layernorm.weight" => Role::KvANorm,
        "self_attn.kv_b_proj.weight" => Role::KvB,
        "mlp.gate.weight" => Role::Router,
        "mlp.gate.e_score_correction_bias" => Role::RouterBias,
        "mlp.shared_experts.gate_proj.weight" => Role::SharedGate,
        "mlp.shared_experts.up_proj.weight" => Role::SharedUp,
        "mlp.shared_experts.down_proj.weight" => Role::SharedDown,
        other => {
            let (e, w) = other.strip_prefix("mlp.experts.")?.split_once('.')?;
            let e: u32 = e.parse().ok()?;
            match w {
                "gate_proj.weight" => Role::ExpertGate(e),
                "up_proj.weight" => Role::ExpertUp(e),
                "down_proj.weight" => Role::ExpertDown(e),
                _ => return None,
            }
        }
    };
    Some((unit, role))
}

/// Map a Hugging Face tensor name to its unit and role, with the norm names of
/// Llama-like families (see [`classify_hf_for`] for Gemma 2/3's).
pub fn classify_hf(name: &str) -> Option<(Unit, Role)> {
    match name {
        "model.embed_tokens.weight" => return Some((Unit::Embedding, Role::Embedding)),
        "model.norm.weight" => return Some((Unit::FinalNorm, Role::FinalNorm)),
        "lm_head.weight" => return Some((Unit::LmHead, Role::LmHead)),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let layer: u32 = idx.parse().ok()?;
    let unit = Unit::Layer(layer);
    let role = match rest {
        "input_layernorm.weight" => Role::AttnNorm,
        "post_attention_layernorm.weight" => Role::MlpNorm,
        "self_attn.q_proj.weight" => Role::Q,
        "self_attn.k_proj.weight" => Role::K,
        "self_attn.v_proj.weight" => Role::V,
        "self_attn.qkv_proj.weight" => Role::Qkv,
        "self_attn.o_proj.weight" => Role::O,
        "self_attn.q_proj.bias" => Role::QBias,
        "self_attn.k_proj.bias" => Role::KBias,
        "self_attn.v_proj.bias" => Role::VBias,
        "self_attn.qkv_proj.bias" => Role::QkvBias,
        "self_attn.o_proj.bias" => Role::OBias,
        "self_attn.q_norm.weight" => Role::QNorm,
        "self_attn.k_norm.weight" => Role::KNorm,
        "mlp.gate_proj.weight" => Role::Gate,
        "mlp.up_proj.weight" => Role::Up,
        "mlp.gate_up_proj.weight" => Role::GateUp,
        "mlp.down_proj.weight" => Role::Down,
        "mlp.gate_proj.bias" => Role::GateBias,
        "mlp.up_proj.bias" => Role::UpBias,
        "mlp.down_proj.bias" => Role::DownBias,
        "block_sparse_moe.gate.weight" => Role::Router,
        other => {
            let e = other.strip_prefix("block_sparse_moe.experts.")?;
            let (e, w) = e.split_once('.')?;
            let e: u32 = e.parse().ok()?;
            match w {
                "w1.weight" => Role::ExpertGate(e),
                "w2.weight" => Role::ExpertDown(e),
                "w3.weight" => Role::ExpertUp(e),
                _ => return None,
            }
        }
    };
    Some((unit, role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for r in [Role::Q, Role::GateUp, Role::ExpertDown(7), Role::LmHead, Role::KNorm] {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
    }

    #[test]
    fn classify_examples() {
        assert_eq!(classify_hf("model.layers.12.mlp.down_proj.weight"), Some((Unit::Layer(12), Role::Down)));
        assert_eq!(
            classify_hf("model.layers.0.block_sparse_moe.experts.3.w3.weight"),
            Some((Unit::Layer(0), Role::ExpertUp(3)))
        );
        assert_eq!(classify_hf("model.layers.0.mlp.weird.weight"), None);
    }
}

/// The Hugging Face tensor name of a (unit, role) in a `family` checkpoint — the
/// inverse of [`classify_hf_for`] (used by `cargo xtask synth` to write
/// checkpoints in Hugging Face layout). Gemma 3 names are those of
/// `Gemma3ForCausalLM`.
pub fn hf_name(family: Family, unit: Unit, role: Role) -> String {
    let layer = match unit {
        Unit::Embedding => return "model.embed_tokens.weight".into(),
        Unit::FinalNorm => return "model.norm.weight".into(),
        Unit::LmHead | Unit::LmHeadPart(_) => return "lm_head.weight".into(),
        Unit::Layer(i) => i,
    };
    let sandwich = family.has_sandwich_norms();
    let deepseek = family == Family::DeepseekV3;
    let rest = match role {
        // DeepSeek-V3's names. The absorbed MLA matrices are never in a checkpoint
        // (they are computed when one is opened); their names here only label them.
        Role::Q if deepseek => "self_attn.q_b_proj.weight".into(),
        Role::Router if deepseek => "mlp.gate.weight".into(),
        Role::ExpertGate(e) if deepseek => format!("mlp.experts.{e}.gate_proj.weight"),
        Role::ExpertUp(e) if deepseek => format!("mlp.experts.{e}.up_proj.weight"),
        Role::ExpertDown(e) if deepseek => format!("mlp.experts.{e}.down_proj.weight"),
        Role::QA => "self_attn.q_a_proj.weight".into(),
        Role::QANorm => "self_attn.q_a_layernorm.weight".into(),
        Role::KvA => "self_attn.kv_a_proj_with_mqa.weight".into(),
        Role::KvANorm => "self_attn.kv_a_layernorm.weight".into(),
        Role::KvB => "self_attn.kv_b_proj.weight".into(),
        Role::QAbsorbed => "self_attn.q_absorbed.weight".into(),
        Role::OAbsorbed => "self_attn.o_absorbed.weight".into(),
        Role::RouterBias => "mlp.gate.e_score_correction_bias".into(),
        Role::SharedGate => "mlp.shared_experts.gate_proj.weight".into(),
        Role::SharedUp => "mlp.shared_experts.up_proj.weight".into(),
        Role::SharedDown => "mlp.shared_experts.down_proj.weight".into(),
        Role::AttnNorm => "input_layernorm.weight".to_string(),
        Role::MlpNorm if sandwich => "pre_feedforward_layernorm.weight".into(),
        Role::MlpNorm => "post_attention_layernorm.weight".into(),
        // Only sandwich-norm families have these two; other families' checkpoints
        // have no name for them, and their specs never ask for them.
        Role::PostAttnNorm => "post_attention_layernorm.weight".into(),
        Role::PostMlpNorm => "post_feedforward_layernorm.weight".into(),
        Role::Q => "self_attn.q_proj.weight".into(),
        Role::K => "self_attn.k_proj.weight".into(),
        Role::V => "self_attn.v_proj.weight".into(),
        Role::Qkv => "self_attn.qkv_proj.weight".into(),
        Role::O => "self_attn.o_proj.weight".into(),
        Role::QBias => "self_attn.q_proj.bias".into(),
        Role::KBias => "self_attn.k_proj.bias".into(),
        Role::VBias => "self_attn.v_proj.bias".into(),
        Role::QkvBias => "self_attn.qkv_proj.bias".into(),
        Role::OBias => "self_attn.o_proj.bias".into(),
        Role::QNorm => "self_attn.q_norm.weight".into(),
        Role::KNorm => "self_attn.k_norm.weight".into(),
        Role::Gate => "mlp.gate_proj.weight".into(),
        Role::Up => "mlp.up_proj.weight".into(),
        Role::GateUp => "mlp.gate_up_proj.weight".into(),
        Role::Down => "mlp.down_proj.weight".into(),
        Role::GateBias => "mlp.gate_proj.bias".into(),
        Role::UpBias => "mlp.up_proj.bias".into(),
        Role::DownBias => "mlp.down_proj.bias".into(),
        Role::Router => "block_sparse_moe.gate.weight".into(),
        Role::ExpertGate(e) => format!("block_sparse_moe.experts.{e}.w1.weight"),
        Role::ExpertUp(e) => format!("block_sparse_moe.experts.{e}.w3.weight"),
        Role::ExpertDown(e) => format!("block_sparse_moe.experts.{e}.w2.weight"),
        Role::Embedding | Role::FinalNorm | Role::LmHead => format!("{role}"),
    };
    format!("model.layers.{layer}.{rest}")
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn hf_name_inverts_classify() {
        for role in [Role::Q, Role::QBias, Role::GateUp, Role::ExpertDown(2), Role::Router, Role::KNorm, Role::MlpNorm]
        {
            let n = hf_name(Family::Llama, Unit::Layer(3), role);
            assert_eq!(classify_hf(&n), Some((Unit::Layer(3), role)), "{n}");
            assert_eq!(classify_hf_for(Family::Llama, &n), Some((Unit::Layer(3), role)), "{n}");
        }
        let head = hf_name(Family::Llama, Unit::LmHead, Role::LmHead);
        assert_eq!(classify_hf(&head), Some((Unit::LmHead, Role::LmHead)));
        for family in [Family::Gemma2, Family::Gemma3] {
            for role in [Role::AttnNorm, Role::PostAttnNorm, Role::MlpNorm, Role::PostMlpNorm, Role::QNorm, Role::Down]
            {
                let n = hf_name(family, Unit::Layer(3), role);
                assert_eq!(classify_hf_for(family, &n), Some((Unit::Layer(3), role)), "{family} {n}");
            }
        }
    }

    #[test]
    fn gemma_norm_names() {
        let l = Unit::Layer(0);
        let g2 = |n: &str| classify_hf_for(Family::Gemma2, n);
        assert_eq!(g2("model.layers.0.post_attention_layernorm.weight"), Some((l, Role::PostAttnNorm)));
        assert_eq!(g2("model.layers.0.pre_feedforward_layernorm.weight"), Some((l, Role::MlpNorm)));
        assert_eq!(g2("model.layers.0.post_feedforward_layernorm.weight"), Some((l, Role::PostMlpNorm)));
        assert_eq!(g2("model.layers.0.input_layernorm.weight"), Some((l, Role::AttnNorm)));
        // Llama's meaning is unchanged, and Gemma-only names are unknown there.
        let ll = |n: &str| classify_hf_for(Family::Llama, n);
        assert_eq!(ll("model.layers.0.post_attention_layernorm.weight"), Some((l, Role::MlpNorm)));
        assert_eq!(ll("model.layers.0.pre_feedforward_layernorm.weight"), None);
        // Gemma 3's multimodal layouts name the text model's tensors with a prefix.
        let g3 = |n: &str| classify_hf_for(Family::Gemma3, n);
        assert_eq!(g3("language_model.model.layers.0.pre_feedforward_layernorm.weight"), Some((l, Role::MlpNorm)));
        assert_eq!(g3("model.language_model.layers.0.self_attn.q_norm.weight"), Some((l, Role::QNorm)));
        assert_eq!(g3("language_model.model.embed_tokens.weight"), Some((Unit::Embedding, Role::Embedding)));
        assert_eq!(g3("language_model.lm_head.weight"), Some((Unit::LmHead, Role::LmHead)));
        assert!(hf_ignored_for(Family::Gemma3, "vision_tower.vision_model.embeddings.patch_embedding.weight"));
        assert!(hf_ignored_for(Family::Gemma3, "model.multi_modal_projector.mm_input_projection_weight"));
        assert!(!hf_ignored_for(Family::Llama, "vision_tower.x.weight"));
    }
}

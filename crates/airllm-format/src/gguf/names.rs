//! GGUF tensor names (llama.cpp's `gguf-py/gguf/constants.py` `TENSOR_NAMES`)
//! mapped onto execution units and roles.

use crate::roles::{Role, Unit};

/// Which expert projection a stacked 3-D expert tensor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertKind {
    /// `ffn_gate_exps` (Mixtral `w1`).
    Gate,
    /// `ffn_up_exps` (Mixtral `w3`).
    Up,
    /// `ffn_down_exps` (Mixtral `w2`).
    Down,
}

impl ExpertKind {
    /// The per-expert role.
    pub fn role(self, e: u32) -> Role {
        match self {
            ExpertKind::Gate => Role::ExpertGate(e),
            ExpertKind::Up => Role::ExpertUp(e),
            ExpertKind::Down => Role::ExpertDown(e),
        }
    }
}

/// What a GGUF tensor name means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufName {
    /// One tensor with one role.
    Plain(Unit, Role),
    /// All experts of a layer stacked in one 3-D tensor, split on import.
    Experts(Unit, ExpertKind),
    /// A tensor inference does not read (e.g. `rope_freqs.weight`, which is folded into the spec).
    Ignored,
}

/// Classify a GGUF tensor name; None when unknown. `ffn_up` maps to [`Role::Up`]
/// (the caller turns it into [`Role::GateUp`] for Phi-3, whose `ffn_up` is fused).
pub fn classify_gguf(name: &str) -> Option<GgufName> {
    match name {
        "token_embd.weight" => return Some(GgufName::Plain(Unit::Embedding, Role::Embedding)),
        "output_norm.weight" => return Some(GgufName::Plain(Unit::FinalNorm, Role::FinalNorm)),
        "output.weight" => return Some(GgufName::Plain(Unit::LmHead, Role::LmHead)),
        "rope_freqs.weight" => return Some(GgufName::Ignored),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (idx, rest) = rest.split_once('.')?;
    if idx.is_empty() || !idx.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let unit = Unit::Layer(idx.parse().ok()?);
    let role = match rest {
        "attn_norm.weight" => Role::AttnNorm,
        "attn_q.weight" => Role::Q,
        "attn_k.weight" => Role::K,
        "attn_v.weight" => Role::V,
        "attn_qkv.weight" => Role::Qkv,
        "attn_output.weight" => Role::O,
        "attn_q.bias" => Role::QBias,
        "attn_k.bias" => Role::KBias,
        "attn_v.bias" => Role::VBias,
        "attn_qkv.bias" => Role::QkvBias,
        "attn_output.bias" => Role::OBias,
        "attn_q_norm.weight" => Role::QNorm,
        "attn_k_norm.weight" => Role::KNorm,
        // The MLP input norm (Llama's post_attention_layernorm, Gemma 2/3's
        // pre_feedforward_layernorm: llama.cpp names both ffn_norm).
        "ffn_norm.weight" => Role::MlpNorm,
        // Gemma 2/3's sandwich norms of the attention and MLP outputs.
        "post_attention_norm.weight" => Role::PostAttnNorm,
        "post_ffw_norm.weight" => Role::PostMlpNorm,
        "ffn_gate.weight" => Role::Gate,
        "ffn_up.weight" => Role::Up,
        "ffn_down.weight" => Role::Down,
        "ffn_gate.bias" => Role::GateBias,
        "ffn_up.bias" => Role::UpBias,
        "ffn_down.bias" => Role::DownBias,
        "ffn_gate_inp.weight" => Role::Router,
        "ffn_gate_exps.weight" => return Some(GgufName::Experts(unit, ExpertKind::Gate)),
        "ffn_up_exps.weight" => return Some(GgufName::Experts(unit, ExpertKind::Up)),
        "ffn_down_exps.weight" => return Some(GgufName::Experts(unit, ExpertKind::Down)),
        // Older Mixtral conversions: one tensor per expert, `blk.N.ffn_gate.E.weight`.
        other => {
            let (kind, e) = if let Some(e) = other.strip_prefix("ffn_gate.") {
                (ExpertKind::Gate, e)
            } else if let Some(e) = other.strip_prefix("ffn_up.") {
                (ExpertKind::Up, e)
            } else if let Some(e) = other.strip_prefix("ffn_down.") {
                (ExpertKind::Down, e)
            } else {
                return None;
            };
            let e = e.strip_suffix(".weight")?;
            if e.is_empty() || !e.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            kind.role(e.parse().ok()?)
        }
    };
    Some(GgufName::Plain(unit, role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        assert_eq!(classify_gguf("blk.12.attn_q.weight"), Some(GgufName::Plain(Unit::Layer(12), Role::Q)));
        assert_eq!(
            classify_gguf("blk.0.ffn_down.3.weight"),
            Some(GgufName::Plain(Unit::Layer(0), Role::ExpertDown(3)))
        );
        assert_eq!(classify_gguf("blk.1.ffn_up_exps.weight"), Some(GgufName::Experts(Unit::Layer(1), ExpertKind::Up)));
        assert_eq!(classify_gguf("token_embd.weight"), Some(GgufName::Plain(Unit::Embedding, Role::Embedding)));
        assert_eq!(classify_gguf("rope_freqs.weight"), Some(GgufName::Ignored));
        assert_eq!(
            classify_gguf("blk.3.post_attention_norm.weight"),
            Some(GgufName::Plain(Unit::Layer(3), Role::PostAttnNorm))
        );
        assert_eq!(
            classify_gguf("blk.3.post_ffw_norm.weight"),
            Some(GgufName::Plain(Unit::Layer(3), Role::PostMlpNorm))
        );
        assert_eq!(classify_gguf("blk.3.ffn_norm.weight"), Some(GgufName::Plain(Unit::Layer(3), Role::MlpNorm)));
        assert_eq!(classify_gguf("blk.x.attn_q.weight"), None);
        assert_eq!(classify_gguf("blk.+1.attn_q.weight"), None);
        assert_eq!(classify_gguf("blk.0.attn_weird.weight"), None);
        assert_eq!(classify_gguf("blk.0.ffn_gate..weight"), None);
    }
}

//! Per-layer descriptions. Most families have identical decoder layers, but
//! some do not: Gemma 2/3 alternate sliding-window and global attention with
//! different RoPE bases, Qwen3-MoE mixes dense and sparse MLPs. The engine
//! asks [`ModelSpec::layer`] for each layer's [`LayerSpec`] instead of reading
//! global fields, so families differ by data, per layer.
//!
//! What varies per layer is kept in [`LayerOverrides`] (one field of
//! [`ModelSpec`], empty for uniform models, so older manifests still parse).

use serde::{Deserialize, Serialize};

use crate::spec::{ModelSpec, MoeSpec, RopeSpec};

/// The attention span of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// Every earlier position is visible.
    Full,
    /// Only the last `sliding_window` positions (the model's window) are visible.
    Sliding,
}

/// The per-layer parts of a model description. Empty (the default) means
/// every layer follows the global fields of [`ModelSpec`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerOverrides {
    /// Attention type per layer (`layer_types` in transformers 5 configs, or
    /// derived from `sliding_window_pattern`). Empty: every layer is sliding
    /// when [`ModelSpec::sliding_window`] is set (Mistral's meaning), else full.
    pub layer_types: Vec<LayerType>,
    /// RoPE of sliding layers when it differs from the global one (Gemma 3's
    /// `rope_local_base_freq`).
    pub rope_local: Option<RopeSpec>,
    /// Attention logits soft-cap: `cap * tanh(score / cap)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Final logits soft-cap (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of
    /// `head_dim^-0.5` (Gemma 2/3).
    pub query_pre_attn_scalar: Option<f32>,
    /// Norms after attention and after the MLP as well as before them (Gemma 2/3).
    pub sandwich_norms: bool,
    /// Layers whose MLP is dense in a sparse model (Qwen3-MoE `mlp_only_layers`,
    /// DeepSeek's first `first_k_dense_replace` layers).
    pub dense_layers: Vec<usize>,
    /// Inner width of the dense MLP of those layers, when it differs from
    /// [`ModelSpec::intermediate_size`] (which then is the expert width).
    pub dense_intermediate_size: Option<usize>,
}

/// How one layer attends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    /// Sliding window in positions (a query at position p sees keys at
    /// positions > p - window), or `None` for full attention.
    pub window: Option<usize>,
    /// Rotary embedding of this layer.
    pub rope: RopeSpec,
    /// Score scale (`head_dim^-0.5` unless the family says otherwise).
    pub scale: f32,
    /// Soft-cap on scores, if any.
    pub softcap: Option<f32>,
    /// Per-head RMSNorm on q and k before RoPE.
    pub qk_norm: bool,
    /// Values per head taken from the start of each cached value row, when
    /// fewer than `head_dim`: latent attention's value is the first
    /// `kv_lora_rank` values of the cached `[latent | rope key]` row.
    pub v_dim: Option<usize>,
}

/// The MLP of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MlpSpec {
    /// A gated MLP of this inner width.
    Dense {
        /// Inner width.
        intermediate: usize,
    },
    /// A sparse mixture of experts.
    Moe(MoeSpec),
}

/// Everything the layer graph needs to know about one decoder layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    /// Layer index.
    pub index: usize,
    /// Attention.
    pub attention: AttentionSpec,
    /// MLP.
    pub mlp: MlpSpec,
    /// Post-attention and post-MLP norms as well (Gemma 2/3).
    pub sandwich_norms: bool,
}

impl ModelSpec {
    /// The description of decoder layer `index` (`index < num_layers`).
    pub fn layer(&self, index: usize) -> LayerSpec {
        let o = &self.layers;
        let kind = o.layer_types.get(index).copied().unwrap_or(if self.sliding_window.is_some() {
            LayerType::Sliding
        } else {
            LayerType::Full
        });
        let window = match kind {
            LayerType::Sliding => self.sliding_window,
            LayerType::Full => None,
        };
        let rope = match (kind, o.rope_local) {
            (LayerType::Sliding, Some(local)) => local,
            _ => self.rope,
        };
        let scale = match self.mla {
            // Latent attention scores over (nope + rope) dims, whatever the cached row's width.
            Some(m) => m.softmax_scale,
            None => 1.0 / o.query_pre_attn_scalar.unwrap_or(self.head_dim as f32).sqrt(),
        };
        let mlp = match self.moe {
            Some(m) if !o.dense_layers.contains(&index) => MlpSpec::Moe(m),
            _ => MlpSpec::Dense { intermediate: o.dense_intermediate_size.unwrap_or(self.intermediate_size) },
        };
        LayerSpec {
            index,
            attention: AttentionSpec {
                window,
                rope,
                scale,
                softcap: o.attn_softcap,
                qk_norm: self.qk_norm,
                v_dim: self.mla.map(|m| m.kv_lora_rank),
            },
            mlp,
            sandwich_norms: o.sandwich_norms,
        }
    }

    /// Every decoder layer's description.
    pub fn layer_specs(&self) -> Vec<LayerSpec> {
        (0..self.num_layers).map(|i| self.layer(i)).collect()
    }

    /// The distinct RoPE descriptions the layers use (executors precompute
    /// inverse frequencies once per entry).
    pub fn distinct_ropes(&self) -> Vec<RopeSpec> {
        let mut out: Vec<RopeSpec> = Vec::new();
        for l in 0..self.num_layers {
            let r = self.layer(l).attention.rope;
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    /// Checks the per-layer fields against the rest of the spec.
    pub(crate) fn validate_layers(&self) -> std::result::Result<(), String> {
        let o = &self.layers;
        if !o.layer_types.is_empty() && o.layer_types.len() != self.num_layers {
            return Err(format!(
                "layer_types lists {} layers but num_hidden_layers is {}",
                o.layer_types.len(),
                self.num_layers
            ));
        }
        if o.layer_types.contains(&LayerType::Sliding) && self.sliding_window.is_none_or(|w| w == 0) {
            return Err("layer_types has sliding layers but sliding_window is missing or 0".into());
        }
        for (name, v) in [("attn_logit_softcapping", o.attn_softcap), ("final_logit_softcapping", o.final_softcap)] {
            if v.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
                return Err(format!("{name} must be a positive number"));
            }
        }
        if o.query_pre_attn_scalar.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return Err("query_pre_attn_scalar must be a positive number".into());
        }
        if let Some(&bad) = o.dense_layers.iter().find(|&&l| l >= self.num_layers) {
            return Err(format!("dense layer {bad} is past num_hidden_layers {}", self.num_layers));
        }
        Ok(())
    }
}

/// At most 60 characters of `s` (values quoted from input files in errors).
pub(crate) fn excerpt(s: &str) -> String {
    if s.chars().count() <= 60 { s.to_string() } else { format!("{}...", s.chars().take(60).collect::<String>()) }
}

/// Layer types from a `sliding_window_pattern` N: every N-th layer (1-based)
/// is global, the others sliding (Gemma 3's older configs; Gemma 2 is N = 2).
pub fn layer_types_from_pattern(num_layers: usize, pattern: usize) -> Vec<LayerType> {
    (0..num_layers)
        .map(|i| if pattern > 0 && (i + 1) % pattern == 0 { LayerType::Full } else { LayerType::Sliding })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_makes_every_nth_layer_global() {
        use LayerType::{Full as F, Sliding as S};
        assert_eq!(layer_types_from_pattern(6, 6), vec![S, S, S, S, S, F]);
        assert_eq!(layer_types_from_pattern(4, 2), vec![S, F, S, F]);
    }
}

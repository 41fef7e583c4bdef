//! Gemma 2 and Gemma 3 `config.json`s: what their layers do differently
//! ([`LayerOverrides`]), Gemma 3's defaults, and the text config nested in
//! Gemma 3's multimodal checkpoints.
//!
//! What transformers' Gemma2/Gemma3 modelling code does, and where it lands here:
//!
//! | transformers | here |
//! | --- | --- |
//! | `input_layernorm` / `post_attention_layernorm` / `pre_feedforward_layernorm` / `post_feedforward_layernorm`, all `x * (1 + w)` | [`Role::AttnNorm`](crate::Role) / `PostAttnNorm` / `MlpNorm` / `PostMlpNorm`, [`NormKind::RmsOnePlus`], `sandwich_norms` |
//! | scores `* query_pre_attn_scalar ** -0.5` | `query_pre_attn_scalar` (default 256, as transformers) |
//! | `attn_logit_softcapping`, `final_logit_softcapping`: `cap * tanh(x / cap)` | `attn_softcap`, `final_softcap` (Gemma 2 defaults 50 / 30 when the key is absent; `null` turns them off) |
//! | `layer_types`, else `sliding_window_pattern` (Gemma 2: every other layer, sliding first) | `layer_types` |
//! | Gemma 3: `rope_local_base_freq` (default 10000, no scaling) for sliding layers; `rope_theta` with `rope_scaling` for full ones; transformers 5: `rope_parameters.{sliding,full}_attention` | `rope_local`, `rope` |
//! | Gemma 3: `q_norm` / `k_norm` per head, `1 + w`, before RoPE | `qk_norm` (the spec's norm kind applies) |
//! | embeddings `* sqrt(hidden)` in the activation dtype | `embedding_scale` (f32) |

use serde_json::{Map, Value, json};

use crate::error::Result;
use crate::layers::{LayerType, layer_types_from_pattern};
use crate::spec::{Cfg, Family, ModelSpec, NormKind, RopeScaling, RopeSpec};

/// Keys of a Gemma 3 multimodal config's top level that describe the text
/// model too (the rest of the top level is the vision tower's).
const SHARED_TOP_LEVEL: [&str; 7] =
    ["architectures", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "dtype", "torch_dtype"];

/// The Gemma 3 text config: `text_config` when nested (multimodal checkpoints),
/// else the whole config, with transformers' `Gemma3TextConfig` defaults for
/// keys it leaves out (Google's multimodal configs list only a few).
pub(crate) fn gemma3_text_config(v: &Value) -> Value {
    let mut out = Map::new();
    for (k, d) in [
        ("vocab_size", json!(262_208)),
        ("num_attention_heads", json!(8)),
        ("num_key_value_heads", json!(4)),
        ("head_dim", json!(256)),
        ("hidden_activation", json!("gelu_pytorch_tanh")),
        ("max_position_embeddings", json!(131_072)),
        ("rms_norm_eps", json!(1e-6)),
        ("rope_theta", json!(1_000_000.0)),
        ("rope_local_base_freq", json!(10_000.0)),
        ("query_pre_attn_scalar", json!(256)),
        ("sliding_window", json!(4096)),
        ("bos_token_id", json!(2)),
        ("eos_token_id", json!(1)),
        ("pad_token_id", json!(0)),
        ("tie_word_embeddings", json!(true)),
    ] {
        out.insert(k.to_owned(), d);
    }
    match v.get("text_config").filter(|t| t.is_object()) {
        Some(text) => {
            for k in SHARED_TOP_LEVEL {
                if let Some(x) = v.get(k) {
                    out.insert(k.to_owned(), x.clone());
                }
            }
            if let Some(t) = text.as_object() {
                out.extend(t.iter().map(|(k, x)| (k.clone(), x.clone())));
            }
        }
        None => {
            if let Some(t) = v.as_object() {
                out.extend(t.iter().map(|(k, x)| (k.clone(), x.clone())));
            }
        }
    }
    // transformers 4.5x writes the pattern as `_sliding_window_pattern` beside
    // `layer_types`; older configs have only `sliding_window_pattern` (default 6).
    if !out.contains_key("layer_types") && !out.contains_key("sliding_window_pattern") {
        let p = out.get("_sliding_window_pattern").cloned().unwrap_or(json!(6));
        out.insert("sliding_window_pattern".to_owned(), p);
    }
    Value::Object(out)
}

/// A soft-cap: absent -> the family's default, `null` -> none, else the number.
fn softcap(cfg: &Cfg<'_>, key: &str, default: Option<f32>) -> Result<Option<f32>> {
    match cfg.v.get(key) {
        None => Ok(default),
        Some(_) => Ok(cfg.opt_f64(key)?.map(|x| x as f32)),
    }
}

/// Fills the per-layer fields of a Gemma 2 / Gemma 3 spec parsed by the generic code.
pub(crate) fn hf_overrides(mut spec: ModelSpec, cfg: &Cfg<'_>) -> Result<ModelSpec> {
    let family = spec.family;
    debug_assert!(family.has_sandwich_norms());
    if cfg.opt_bool("use_bidirectional_attention")? == Some(true) {
        return Err(cfg.err(
            "use_bidirectional_attention is true: this is an embedding model (EmbeddingGemma), not a causal \
             language model; it cannot generate text",
        ));
    }
    debug_assert_eq!(spec.norm, NormKind::RmsOnePlus);
    let gemma2 = family == Family::Gemma2;
    let o = &mut spec.layers;
    o.sandwich_norms = true;
    o.query_pre_attn_scalar = Some(cfg.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0) as f32);
    o.attn_softcap = softcap(cfg, "attn_logit_softcapping", gemma2.then_some(50.0))?;
    o.final_softcap = softcap(cfg, "final_logit_softcapping", gemma2.then_some(30.0))?;
    if o.layer_types.is_empty() {
        // Gemma 2 before `layer_types`: even layers slide, odd ones are global.
        let pattern = if gemma2 { 2 } else { cfg.opt_usize("sliding_window_pattern")?.unwrap_or(6) };
        o.layer_types = layer_types_from_pattern(spec.num_layers, pattern);
    }
    if o.layer_types.contains(&LayerType::Sliding) && spec.sliding_window.is_none() {
        // transformers' default for both generations.
        spec.sliding_window = Some(4096);
    }
    let per_type = cfg.v.get("rope_parameters").and_then(|p| p.get("sliding_attention")).filter(|p| p.is_object());
    let local = match per_type {
        Some(p) => Some(cfg.rope_in(Some(p), family, spec.head_dim)?),
        None if !gemma2 => {
            let theta = cfg.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0);
            Some(RopeSpec { theta: theta as f32, scaling: RopeScaling::None, ..spec.rope })
        }
        None => None,
    };
    o.rope_local = local.filter(|l| *l != spec.rope);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<ModelSpec> {
        ModelSpec::from_config_value(&v, Path::new("config.json"))
    }

    fn gemma2() -> Value {
        json!({
            "architectures": ["Gemma2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128,
            "vocab_size": 512, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
            "rope_theta": 10000.0, "sliding_window": 8, "query_pre_attn_scalar": 24
        })
    }

    #[test]
    fn gemma2_without_layer_types_alternates_and_defaults_the_caps() {
        let s = parse(gemma2()).unwrap();
        assert_eq!(s.family, Family::Gemma2);
        let windows: Vec<_> = (0..4).map(|l| s.layer(l).attention.window).collect();
        assert_eq!(windows, vec![Some(8), None, Some(8), None]);
        assert_eq!(s.layers.attn_softcap, Some(50.0));
        assert_eq!(s.layers.final_softcap, Some(30.0));
        assert!(s.layer(0).sandwich_norms);
        assert_eq!(s.layer(1).attention.scale, 1.0 / 24f32.sqrt());
        assert_eq!(s.norm, NormKind::RmsOnePlus);
        assert_eq!(s.embedding_scale, Some(8.0));
        assert!(s.tie_word_embeddings && !s.qk_norm && s.layers.rope_local.is_none());
    }

    #[test]
    fn null_caps_are_off() {
        let mut v = gemma2();
        v["attn_logit_softcapping"] = Value::Null;
        v["final_logit_softcapping"] = Value::Null;
        let s = parse(v).unwrap();
        assert_eq!((s.layers.attn_softcap, s.layers.final_softcap), (None, None));
    }

    #[test]
    fn gemma3_v4_keys_give_local_and_scaled_global_rope() {
        let v = json!({
            "architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128,
            "vocab_size": 512, "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
            "sliding_window_pattern": 3
        });
        let s = parse(v).unwrap();
        assert!(s.qk_norm && s.layers.sandwich_norms);
        assert_eq!(s.layers.attn_softcap, None);
        let l0 = s.layer(0).attention;
        let l2 = s.layer(2).attention;
        assert_eq!((l0.window, l2.window), (Some(512), None));
        assert_eq!((l0.rope.theta, l0.rope.scaling), (10000.0, RopeScaling::None));
        assert_eq!((l2.rope.theta, l2.rope.scaling), (1e6, RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(s.layer(5).attention.window, None);
        assert_eq!(s.distinct_ropes().len(), 2);
    }

    #[test]
    fn gemma3_multimodal_config_reads_its_text_config_with_defaults() {
        // The shape of Google's gemma-3-4b-it config.json.
        let v = json!({
            "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "eos_token_id": [1, 106], "image_token_index": 262144,
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024},
            "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27}
        });
        let s = parse(v).unwrap();
        assert_eq!(s.family, Family::Gemma3);
        assert_eq!((s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim), (2560, 34, 8, 4, 256));
        assert_eq!(s.vocab_size, 262_208);
        assert_eq!(s.eos_token_ids, vec![1, 106]);
        assert_eq!(s.layer(5).attention.window, None);
        assert_eq!(s.layer(4).attention.window, Some(1024));
        assert_eq!(s.layer(5).attention.rope.theta, 1e6);
        assert_eq!(s.layer(4).attention.rope.theta, 10000.0);
        assert_eq!(s.layer(0).attention.scale, 1.0 / 16.0);
    }

    #[test]
    fn embedding_gemma_is_refused() {
        let mut v = gemma2();
        v["architectures"] = json!(["Gemma3ForCausalLM"]);
        v["use_bidirectional_attention"] = json!(true);
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("use_bidirectional_attention") && e.contains("embedding"), "{e}");
    }
}

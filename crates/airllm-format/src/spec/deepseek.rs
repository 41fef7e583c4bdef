//! DeepSeek-V3 `config.json`s (`DeepseekV3ForCausalLM`): multi-head latent
//! attention ([`MlaSpec`]), YaRN, sigmoid group-limited routing with shared
//! experts ([`MoeRouting::SigmoidGrouped`]) and dense leading layers.
//!
//! What transformers' `modeling_deepseek_v3.py` does, and where it lands here:
//!
//! | transformers | here |
//! | --- | --- |
//! | `q_a_proj` -> `q_a_layernorm` -> `q_b_proj` (or `q_proj` when `q_lora_rank` is null) | `Role::QA`, `QANorm`, and `q_b_proj` absorbed with `kv_b_proj`'s key part into `QAbsorbed` |
//! | `kv_a_proj_with_mqa` -> latent (`kv_lora_rank`) + rope key; `kv_a_layernorm` on the latent | `Role::KvA`, `KvANorm`; the cache row is `[latent | rope key]`, one KV head of `head_dim = kv_lora_rank + qk_rope_head_dim` |
//! | `kv_b_proj` -> per-head k_nope and v; `o_proj` | absorbed into `QAbsorbed` / `OAbsorbed` (`crate::mla`) |
//! | `rope_interleave` (default true): pairs (2i, 2i+1) on the rope dims only | `RopeStyle::Interleaved`, `rotary_dim = qk_rope_head_dim` |
//! | scale `qk_head_dim^-0.5 * mscale(factor, mscale_all_dim)^2` | [`MlaSpec::softmax_scale`] |
//! | layers `>= first_k_dense_replace` are MoE (and `% moe_layer_freq == 0` in DeepSeek's own code) | `layers.dense_layers`, `dense_intermediate_size` |
//! | `n_shared_experts` MLP of `moe_intermediate_size * n_shared_experts`, added | [`MoeSpec::shared_intermediate`] |

use crate::error::Result;
use crate::spec::{Cfg, Family, MlaSpec, ModelSpec, MoeRouting, MoeSpec, RopeStyle, yarn_mscale};

/// The DeepSeek-V3 parts of a spec the generic parser filled as for Llama.
pub(crate) fn hf_overrides(mut spec: ModelSpec, cfg: &Cfg<'_>) -> Result<ModelSpec> {
    let need = |key: &str| cfg.usize(key);
    let kv_lora_rank = need("kv_lora_rank")?;
    let qk_nope_head_dim = need("qk_nope_head_dim")?;
    let qk_rope_head_dim = need("qk_rope_head_dim")?;
    let v_head_dim = need("v_head_dim")?;
    let q_lora_rank = cfg.opt_usize("q_lora_rank")?;
    if cfg.opt_bool("attention_bias")?.unwrap_or(false) {
        return Err(cfg.err(
            "attention_bias true is not supported for DeepseekV3ForCausalLM (no released checkpoint has \
             q_a/kv_a/o biases)",
        ));
    }
    for (key, v) in [
        ("kv_lora_rank", kv_lora_rank),
        ("qk_nope_head_dim", qk_nope_head_dim),
        ("qk_rope_head_dim", qk_rope_head_dim),
        ("v_head_dim", v_head_dim),
    ] {
        if v == 0 {
            return Err(cfg.err(&format!("field `{key}` must be positive")));
        }
    }
    if q_lora_rank == Some(0) {
        return Err(cfg.err("field `q_lora_rank` must be positive, or null for a plain q_proj"));
    }

    // RoPE covers the rope dims only, with the config's own frequencies
    // (transformers sets head_dim = qk_rope_head_dim for them).
    let params = cfg.v.get("rope_parameters").filter(|p| p.is_object());
    let mut rope = cfg.rope_in(params, Family::DeepseekV3, qk_rope_head_dim)?;
    rope.style =
        if cfg.opt_bool("rope_interleave")?.unwrap_or(true) { RopeStyle::Interleaved } else { RopeStyle::HalfRotation };
    spec.rope = rope;

    // The softmax scale: transformers' `yarn_apply_mscale` multiplies by
    // mscale(factor, mscale_all_dim)^2 when rope scaling is set and
    // mscale_all_dim is non-zero.
    let qk_head_dim = (qk_nope_head_dim + qk_rope_head_dim) as f64;
    let mut scale = qk_head_dim.powf(-0.5);
    let scaling = params.or_else(|| cfg.v.get("rope_scaling").filter(|p| p.is_object()));
    if let Some(s) = scaling {
        let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|k| k.as_str()).unwrap_or("default");
        if kind != "default" {
            let all_dim = cfg.opt_f64_in(s, "mscale_all_dim")?.unwrap_or(0.0);
            if all_dim != 0.0 {
                let factor = cfg
                    .opt_f64_in(s, "factor")?
                    .ok_or_else(|| cfg.err("rope scaling with `mscale_all_dim` needs field `factor`"))?;
                let m = yarn_mscale(factor, all_dim);
                scale *= m * m;
            }
        }
    }
    let mla = MlaSpec {
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim,
        qk_rope_head_dim,
        v_head_dim,
        softmax_scale: scale as f32,
    };
    // The absorbed form: one shared KV head whose row is [latent | rope key].
    spec.head_dim = mla.cache_dim();
    spec.num_kv_heads = 1;
    spec.mla = Some(mla);

    // Mixture of experts.
    let experts = cfg
        .opt_usize("n_routed_experts")?
        .or(cfg.opt_usize("num_local_experts")?)
        .ok_or_else(|| cfg.err("required field `n_routed_experts` (routed experts per MoE layer) is missing"))?;
    let top_k = need("num_experts_per_tok")?;
    let n_group = cfg.opt_usize("n_group")?.unwrap_or(1);
    let topk_group = cfg.opt_usize("topk_group")?.unwrap_or(1);
    let scaling = cfg.opt_f64("routed_scaling_factor")?.unwrap_or(1.0) as f32;
    let moe_inter = need("moe_intermediate_size")?;
    let shared = cfg.opt_usize("n_shared_experts")?.unwrap_or(0);
    if let Some(method) = cfg.opt_str("topk_method").filter(|m| *m != "noaux_tc") {
        return Err(cfg.err(&format!(
            "topk_method {} is not supported (DeepSeek-V3 routes with \"noaux_tc\")",
            crate::error::quote(method)
        )));
    }
    if let Some(f) = cfg.opt_str("scoring_func").filter(|f| *f != "sigmoid") {
        return Err(cfg.err(&format!(
            "scoring_func {} is not supported (DeepSeek-V3 scores experts with \"sigmoid\")",
            crate::error::quote(f)
        )));
    }
    spec.moe = Some(MoeSpec {
        num_experts: experts,
        top_k,
        renormalize: cfg.opt_bool("norm_topk_prob")?.unwrap_or(true),
        routing: MoeRouting::SigmoidGrouped { n_group, topk_group, scaling },
        shared_intermediate: (shared > 0).then(|| moe_inter.saturating_mul(shared)),
    });
    // Dense leading layers of `intermediate_size`; experts of `moe_intermediate_size`.
    let first_dense = cfg.opt_usize("first_k_dense_replace")?.unwrap_or(0);
    let freq = cfg.opt_usize("moe_layer_freq")?.unwrap_or(1);
    if freq == 0 {
        return Err(cfg.err("field `moe_layer_freq` must be positive"));
    }
    if first_dense > spec.num_layers {
        return Err(
            cfg.err(&format!("first_k_dense_replace {first_dense} is more than num_hidden_layers {}", spec.num_layers))
        );
    }
    spec.layers.dense_layers = (0..spec.num_layers).filter(|&l| l < first_dense || !l.is_multiple_of(freq)).collect();
    spec.layers.dense_intermediate_size = Some(spec.intermediate_size);
    spec.intermediate_size = moe_inter;
    Ok(spec)
}

/// Range checks of the DeepSeek routing fields (also for specs read back from a manifest).
pub(crate) fn validate_moe(m: &MoeSpec) -> std::result::Result<(), String> {
    if let Some(w) = m.shared_intermediate
        && (w == 0 || w > crate::spec::limits::MAX_INTERMEDIATE)
    {
        return Err(format!("shared expert width {w} must be in 1..={}", crate::spec::limits::MAX_INTERMEDIATE));
    }
    if let MoeRouting::SigmoidGrouped { n_group, topk_group, scaling } = m.routing {
        // The routing kernels keep per-token masks of at most 256 experts (DeepSeek-V3 has 256).
        if m.num_experts > 256 {
            return Err(format!("n_routed_experts {} is more than the 256 sigmoid routing supports", m.num_experts));
        }
        if n_group == 0 || !m.num_experts.is_multiple_of(n_group) {
            return Err(format!("n_group {n_group} must be positive and divide n_routed_experts {}", m.num_experts));
        }
        // The group score is the sum of a group's two best experts (transformers' `topk(2)`).
        if m.num_experts / n_group < 2 {
            return Err(format!(
                "n_group {n_group} leaves fewer than 2 experts per group ({} experts); the group score needs two",
                m.num_experts
            ));
        }
        if topk_group == 0 || topk_group > n_group {
            return Err(format!("topk_group {topk_group} must be in 1..={n_group} (n_group)"));
        }
        if m.top_k > topk_group * (m.num_experts / n_group) {
            return Err(format!(
                "num_experts_per_tok {} is more than the {} experts of the topk_group {topk_group} kept groups",
                m.top_k,
                topk_group * (m.num_experts / n_group)
            ));
        }
        if !(scaling.is_finite() && scaling > 0.0) {
            return Err(format!("routed_scaling_factor {scaling} must be a positive number"));
        }
    }
    Ok(())
}

/// The MLA fields agree with the rest of the spec (the engine's kernels rely on it).
pub(crate) fn validate_mla(spec: &ModelSpec, m: &MlaSpec) -> std::result::Result<(), String> {
    if spec.head_dim != m.cache_dim() || spec.num_kv_heads != 1 {
        return Err(format!(
            "with latent attention head_dim must be kv_lora_rank + qk_rope_head_dim ({}) and num_key_value_heads 1, \
             not {} and {}",
            m.cache_dim(),
            spec.head_dim,
            spec.num_kv_heads
        ));
    }
    if spec.rope.rotary_dim != m.qk_rope_head_dim {
        return Err(format!(
            "rotary dimension {} must be qk_rope_head_dim {}",
            spec.rope.rotary_dim, m.qk_rope_head_dim
        ));
    }
    let max = crate::spec::limits::MAX_HEAD_DIM;
    for (k, v) in [
        ("kv_lora_rank", m.kv_lora_rank),
        ("qk_nope_head_dim", m.qk_nope_head_dim),
        ("v_head_dim", m.v_head_dim),
        ("q_lora_rank", m.q_lora_rank.unwrap_or(1)),
    ] {
        if v == 0 || v > crate::spec::limits::MAX_INTERMEDIATE {
            return Err(format!("{k} {v} must be positive and reasonable"));
        }
    }
    if m.cache_dim() > max {
        return Err(format!("kv_lora_rank + qk_rope_head_dim {} is more than {max}", m.cache_dim()));
    }
    if !(m.softmax_scale.is_finite() && m.softmax_scale > 0.0) {
        return Err(format!("attention scale {} must be a positive number", m.softmax_scale));
    }
    if spec.qkv_bias || spec.o_bias || spec.qk_norm {
        return Err("latent attention has no q/k/v/o biases and no q/k norm".into());
    }
    Ok(())
}

/// How many tensors a DeepSeek-V3 checkpoint has once opened (absorbed MLA
/// matrices, per-layer dense or MoE MLPs), without building the list.
pub(crate) fn expected_tensor_count(spec: &ModelSpec, mla: &MlaSpec) -> usize {
    // attention norm, kv_a, kv_a norm, q_absorbed, o_absorbed, mlp norm (+ q_a, q_a norm)
    let attn = 6 + if mla.q_lora_rank.is_some() { 2 } else { 0 };
    let mut n: usize = 2 + usize::from(!spec.tie_word_embeddings);
    for l in 0..spec.num_layers {
        n = n.saturating_add(attn);
        n = n.saturating_add(match (spec.moe, spec.layers.dense_layers.contains(&l)) {
            (Some(m), false) => {
                let shared = if m.shared_intermediate.is_some() { 3 } else { 0 };
                m.num_experts.saturating_mul(3).saturating_add(2 + shared)
            }
            _ => 3,
        });
    }
    n
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use crate::layers::MlpSpec;
    use crate::spec::{ModelSpec, MoeRouting, RopeScaling, RopeStyle};

    fn fixture_config() -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/deepseek_v3/config.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn parse(v: &Value) -> crate::error::Result<ModelSpec> {
        ModelSpec::from_config_value(v, Path::new("/models/ds/config.json"))
    }

    #[test]
    fn fixture_config_parses_to_the_absorbed_layout() {
        let s = parse(&fixture_config()).unwrap();
        let m = s.mla.unwrap();
        assert_eq!((m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim), (Some(32), 16, 16, 8));
        assert_eq!((s.head_dim, s.num_kv_heads, s.num_heads), (24, 1, 4));
        // 24^-0.5 * (0.1 ln 4 + 1)^2 (transformers' yarn_apply_mscale, mscale_all_dim 1).
        let mscale = 0.1 * 4f64.ln() + 1.0;
        assert!((f64::from(m.softmax_scale) - 24f64.powf(-0.5) * mscale * mscale).abs() < 1e-7);
        assert_eq!(s.rope.rotary_dim, 8);
        assert_eq!(s.rope.style, RopeStyle::Interleaved);
        assert!(matches!(s.rope.scaling, RopeScaling::Yarn { factor: 4.0, attention_factor: 1.0, .. }));
        let moe = s.moe.unwrap();
        assert_eq!((moe.num_experts, moe.top_k, moe.renormalize, moe.shared_intermediate), (8, 2, true, Some(32)));
        assert_eq!(moe.routing, MoeRouting::SigmoidGrouped { n_group: 4, topk_group: 2, scaling: 2.5 });
        assert_eq!(s.intermediate_size, 32);
        assert_eq!(s.layer(0).mlp, MlpSpec::Dense { intermediate: 128 });
        assert!(matches!(s.layer(1).mlp, MlpSpec::Moe(_)) && matches!(s.layer(2).mlp, MlpSpec::Moe(_)));
        assert_eq!(s.layer(1).attention.v_dim, Some(16));
    }

    /// YaRN frequencies worked out by hand for the fixture (dim 8, base 1e4,
    /// original context 64, beta 32/1): the correction range is [0, 2] after
    /// truncation, so the ramp is [0, 0.5, 1, 1]: frequency 0 kept, 1 half
    /// interpolated, 2 and 3 divided by the factor 4.
    #[test]
    fn yarn_inv_freq_follows_the_ramp() {
        let s = parse(&fixture_config()).unwrap();
        let f = s.rope.inv_freq();
        let base = [1.0f32, 0.1, 0.01, 0.001];
        let want = [base[0], 0.5 * base[1] / 4.0 + 0.5 * base[1], base[2] / 4.0, base[3] / 4.0];
        for (i, (g, w)) in f.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.max(1e-3), "inv_freq[{i}] {g} vs {w}");
        }
    }

    #[test]
    fn bad_configs_name_the_file_and_key() {
        let mut v = fixture_config();
        v.as_object_mut().unwrap().remove("kv_lora_rank");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("kv_lora_rank") && e.contains("/models/ds/config.json"), "{e}");

        let mut v = fixture_config();
        v["n_group"] = json!(3);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("n_group") && e.contains("config.json"), "{e}");

        let mut v = fixture_config();
        v["topk_group"] = json!(5);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("topk_group"), "{e}");

        let mut v = fixture_config();
        v["scoring_func"] = json!("softmax");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("scoring_func"), "{e}");

        let mut v = fixture_config();
        v["first_k_dense_replace"] = json!(9);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("first_k_dense_replace"), "{e}");

        let mut v = fixture_config();
        v["rope_scaling"].as_object_mut().unwrap().remove("original_max_position_embeddings");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("original_max_position_embeddings"), "{e}");
    }

    #[test]
    fn plain_q_proj_and_moe_layer_freq() {
        let mut v = fixture_config();
        v["q_lora_rank"] = Value::Null;
        v["moe_layer_freq"] = json!(2);
        v["num_hidden_layers"] = json!(5);
        let s = parse(&v).unwrap();
        assert_eq!(s.mla.unwrap().q_lora_rank, None);
        // Layer 0 dense (first_k_dense_replace), then MoE on even layers only.
        assert_eq!(s.layers.dense_layers, vec![0, 1, 3]);
    }

    #[test]
    fn unsupported_architecture_lists_deepseek() {
        let mut v = fixture_config();
        v["architectures"] = json!(["FalconForCausalLM"]);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("DeepseekV3ForCausalLM"), "{e}");
    }
}

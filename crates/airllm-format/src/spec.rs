//! The architecture-neutral model description: everything a forward pass needs,
//! parsed once from a Hugging Face `config.json` (both the transformers 4 and 5
//! key layouts) or from GGUF metadata.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod deepseek;
mod gemma;

use crate::error::{FormatError, IoContext, Result, excerpt};
use crate::layers::{LayerOverrides, LayerType, layer_types_from_pattern};

/// Model families with a graph in the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM, ...).
    Llama,
    /// `MistralForCausalLM`.
    Mistral,
    /// `Qwen2ForCausalLM` (q/k/v biases).
    Qwen2,
    /// `Qwen3ForCausalLM` (per-head q/k RMSNorm, explicit head_dim).
    Qwen3,
    /// `MixtralForCausalLM` (sparse MoE).
    Mixtral,
    /// `Phi3ForCausalLM` (fused qkv and gate_up).
    Phi3,
    /// `GemmaForCausalLM` (`1 + w` norms, GELU-tanh, scaled embeddings).
    Gemma,
    /// `GlmForCausalLM` (partial interleaved rotary, fused gate_up).
    Glm,
    /// `Gemma2ForCausalLM`: sandwich norms, alternating sliding-window and global
    /// layers, soft-capped attention and final logits, `query_pre_attn_scalar`.
    Gemma2,
    /// `Gemma3ForCausalLM` (and the text part of `Gemma3ForConditionalGeneration`):
    /// sandwich norms, q/k norm, per-layer sliding/global attention with a local RoPE base.
    Gemma3,
    /// `DeepseekV3ForCausalLM`: multi-head latent attention (a compressed KV
    /// latent plus a shared RoPE key), YaRN RoPE, sigmoid group-limited routing
    /// with shared experts, and dense leading layers.
    #[serde(rename = "deepseek_v3")]
    DeepseekV3,
}

impl Family {
    /// Every family, in documentation order.
    pub const ALL: [Family; 11] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Mixtral,
        Family::Phi3,
        Family::Gemma,
        Family::Gemma2,
        Family::Gemma3,
        Family::Glm,
        Family::DeepseekV3,
    ];

    /// The transformers class name in `architectures`.
    pub const fn hf_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Mixtral => "MixtralForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
            Family::Gemma => "GemmaForCausalLM",
            Family::Glm => "GlmForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::DeepseekV3 => "DeepseekV3ForCausalLM",
        }
    }

    /// Lower-case name (`model_type`).
    pub const fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Mixtral => "mixtral",
            Family::Phi3 => "phi3",
            Family::Gemma => "gemma",
            Family::Glm => "glm",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3",
            Family::DeepseekV3 => "deepseek_v3",
        }
    }

    /// Look up by class name or model_type. Gemma 3's multimodal class
    /// (`Gemma3ForConditionalGeneration`, model_type `gemma3`) and its text
    /// config (`gemma3_text`) name the text model the engine runs.
    pub fn from_name(s: &str) -> Option<Family> {
        match s {
            "Gemma3ForConditionalGeneration" | "gemma3_text" => return Some(Family::Gemma3),
            _ => {}
        }
        Family::ALL.into_iter().find(|f| f.hf_class() == s || f.name() == s)
    }

    /// Any Gemma generation: `1 + w` RMSNorm, GELU-tanh, embeddings scaled by sqrt(hidden).
    pub const fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }

    /// Norms after attention and after the MLP as well as before them (Gemma 2/3):
    /// their checkpoints name the four norms of a layer differently from Llama's two.
    pub const fn has_sandwich_norms(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// Comma-separated class names, for error messages.
    pub fn supported_list() -> String {
        Family::ALL.iter().map(|f| f.hf_class()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How RMSNorm applies its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `x / rms * w`.
    Rms,
    /// Gemma: `x / rms * (1 + w)`.
    RmsOnePlus,
}

/// The gate activation of the gated MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// `gelu(x, approximate="tanh")`.
    GeluTanh,
}

/// Which dimension pairs RoPE rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// Hugging Face `rotate_half`: pairs (i, i + rotary_dim/2).
    HalfRotation,
    /// Adjacent pairs (2i, 2i+1): GLM, and ggml's llama layout.
    Interleaved,
}

/// Rotary frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain `theta^(-2i/d)`.
    None,
    /// Position interpolation: frequencies divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f32,
    },
    /// Llama 3.1's piecewise scaling.
    Llama3 {
        /// Scale factor.
        factor: f32,
        /// Wavelengths longer than `orig_max / low_freq_factor` are scaled fully.
        low_freq_factor: f32,
        /// Wavelengths shorter than `orig_max / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// Context length of the original training.
        original_max_position_embeddings: f32,
    },
    /// YaRN (DeepSeek-V3 and others), as transformers' `_compute_yarn_parameters`:
    /// each frequency is blended between itself (extrapolation) and itself
    /// divided by `factor` (interpolation) by a linear ramp over the dimension
    /// index between the correction dimensions of `beta_fast` and `beta_slow`
    /// rotations at `original_max_position_embeddings`; cos and sin are then
    /// multiplied by `attention_factor`.
    Yarn {
        /// Scale factor.
        factor: f32,
        /// Context length of the original training.
        original_max_position_embeddings: f32,
        /// Rotations that bound the extrapolated (high-frequency) end of the ramp.
        beta_fast: f32,
        /// Rotations that bound the interpolated (low-frequency) end of the ramp.
        beta_slow: f32,
        /// Multiplier of cos and sin (transformers' `attention_factor`, from
        /// `mscale` / `mscale_all_dim` when the config does not give it).
        attention_factor: f32,
        /// Round the correction range outward to whole dimensions (transformers' default).
        truncate: bool,
    },
}

/// Rotary position embedding parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeSpec {
    /// Base `theta`.
    pub theta: f32,
    /// Frequency scaling.
    pub scaling: RopeScaling,
    /// Number of leading head dims that rotate (`head_dim * partial_rotary_factor`).
    pub rotary_dim: usize,
    /// Pairing of rotated dimensions.
    pub style: RopeStyle,
}

impl RopeSpec {
    /// Range checks: a positive finite base above 1, an even rotary dimension of at
    /// least 2, and scaling factors that give finite frequencies.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(format!("rope_theta {} must be a finite number above 1", self.theta));
        }
        if self.rotary_dim < 2 || !self.rotary_dim.is_multiple_of(2) {
            return Err(format!("rotary dimension {} must be even and at least 2", self.rotary_dim));
        }
        let positive = |name: &str, x: f32| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(format!("rope scaling {name} {x} must be a positive number"))
            }
        };
        match self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => positive("factor", factor)?,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                positive("original_max_position_embeddings", original_max_position_embeddings)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope scaling high_freq_factor {high_freq_factor} must be larger than low_freq_factor \
                         {low_freq_factor}"
                    ));
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate: _,
            } => {
                positive("factor", factor)?;
                positive("original_max_position_embeddings", original_max_position_embeddings)?;
                positive("beta_fast", beta_fast)?;
                positive("beta_slow", beta_slow)?;
                positive("attention_factor", attention_factor)?;
            }
        }
        Ok(())
    }

    /// The multiplier of cos and sin: YaRN's `attention_factor`, else 1.
    pub fn attention_factor(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn { attention_factor, .. } => attention_factor,
            _ => 1.0,
        }
    }

    /// Inverse frequencies (`rotary_dim / 2` of them), scaled, computed as transformers does
    /// (`1 / theta^(arange(0, d, 2) / d)` in f32, then the scaling rule).
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.rotary_dim;
        let base: Vec<f32> = (0..d / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / d as f32;
                1.0 / self.theta.powf(exponent)
            })
            .collect();
        match self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, truncate, .. } => {
                // transformers computes the correction range in Python floats
                // (f64) and the ramp and blend in f32 tensors.
                let (dim, theta, orig) = (d as f64, f64::from(self.theta), f64::from(original_max_position_embeddings));
                let correction_dim =
                    |rotations: f64| dim * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
                let (mut low, mut high) = (correction_dim(f64::from(beta_fast)), correction_dim(f64::from(beta_slow)));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0) as f32;
                let mut high = high.min(dim - 1.0) as f32;
                if low == high {
                    high += 0.001; // transformers' guard against a zero-width ramp
                }
                (0..d / 2)
                    .map(|i| {
                        let pos = self.theta.powf((2 * i) as f32 / d as f32);
                        let (extrapolated, interpolated) = (1.0 / pos, 1.0 / (factor * pos));
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation_weight = 1.0 - ramp;
                        interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight
                    })
                    .collect()
            }
        }
    }
}

/// The `yarn_get_mscale` of DeepSeek's and transformers' YaRN code:
/// `0.1 * mscale * ln(scale) + 1`, or 1 when `scale <= 1`.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

/// Sparse mixture-of-experts parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeSpec {
    /// Experts per layer.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Renormalise the kept routing weights to sum to one (Mixtral: yes).
    pub renormalize: bool,
    // --- DeepSeek-V3 additions (routing variant, shared experts). Both default
    // --- to Mixtral's behaviour, so manifests written before them still parse.
    /// How router logits become expert weights.
    #[serde(default)]
    pub routing: MoeRouting,
    /// Inner width of the always-applied shared expert MLP
    /// (`moe_intermediate_size * n_shared_experts`), if the model has one.
    #[serde(default)]
    pub shared_intermediate: Option<usize>,
}

/// How router logits become the dense per-token expert weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MoeRouting {
    /// Mixtral / Qwen-MoE: softmax over all experts, keep the top k.
    #[default]
    Softmax,
    /// DeepSeek-V3 (`noaux_tc`): sigmoid scores; experts are *chosen* by score
    /// plus the router's `e_score_correction_bias` ([`Role::RouterBias`](crate::Role)),
    /// first the `topk_group` best of `n_group` groups (group score: the sum of
    /// its two best), then the top k experts inside them; the weights are the
    /// chosen experts' sigmoid scores *without* the bias, renormalised when
    /// [`MoeSpec::renormalize`], times `scaling` (`routed_scaling_factor`).
    SigmoidGrouped {
        /// Groups the experts are split into (`n_group`).
        n_group: usize,
        /// Groups kept per token (`topk_group`).
        topk_group: usize,
        /// Multiplier of the final weights (`routed_scaling_factor`).
        scaling: f32,
    },
}

// --- DeepSeek-V3 multi-head latent attention ---------------------------------

/// Multi-head latent attention (DeepSeek-V2/V3). The engine runs it in the
/// "absorbed" form: the key part of `kv_b_proj` is folded into the query
/// projection and its value part into `o_proj` when a checkpoint is opened
/// (see `airllm_format::mla`), so every head attends over one shared cached
/// row `[c_kv (kv_lora_rank) | k_rope (qk_rope_head_dim)]` whose first
/// `kv_lora_rank` values are also the value. With MLA the spec's `head_dim`
/// is that row's width (`kv_lora_rank + qk_rope_head_dim`) and
/// `num_kv_heads` is 1: the KV cache holds only the latent and the RoPE key.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlaSpec {
    /// Rank of the query compression (`q_a_proj`), or None for a plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// Width of the cached latent `c_kv`.
    pub kv_lora_rank: usize,
    /// Per-head query/key dimensions without RoPE.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key dimensions with RoPE (the shared key's width).
    pub qk_rope_head_dim: usize,
    /// Per-head value dimension.
    pub v_head_dim: usize,
    /// Softmax scale: `(nope + rope)^-0.5`, times YaRN's `mscale_all_dim` factor squared.
    pub softmax_scale: f32,
}

impl MlaSpec {
    /// Width of the cached row (and of one absorbed query head).
    pub fn cache_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// Everything a forward pass needs, independent of the checkpoint format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model family.
    pub family: Family,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA/MQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// MLP inner width (per expert for MoE).
    pub intermediate_size: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Norm flavour.
    pub norm: NormKind,
    /// Norm epsilon.
    pub norm_eps: f32,
    /// MLP gate activation.
    pub activation: Activation,
    /// Rotary embedding.
    pub rope: RopeSpec,
    /// q/k/v projections carry biases.
    pub qkv_bias: bool,
    /// o projection carries a bias.
    pub o_bias: bool,
    /// MLP projections carry biases.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Sliding-window attention span in tokens, if any.
    pub sliding_window: Option<usize>,
    /// Mixture-of-experts parameters, if sparse.
    pub moe: Option<MoeSpec>,
    /// Multiplier applied to embedding rows (Gemma: sqrt(hidden)).
    pub embedding_scale: Option<f32>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (any one ends generation).
    pub eos_token_ids: Vec<u32>,
    /// Padding token.
    pub pad_token_id: Option<u32>,
    /// What differs between layers (empty for uniform models); see [`ModelSpec::layer`].
    #[serde(default)]
    pub layers: LayerOverrides,
    /// Multi-head latent attention (DeepSeek-V3), if the model uses it.
    #[serde(default)]
    pub mla: Option<MlaSpec>,
}

impl ModelSpec {
    /// Read and parse `config.json` (plus `generation_config.json` beside it, if present,
    /// for extra EOS ids).
    pub fn from_config_file(path: &Path) -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path).at("reading", path)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| FormatError::Config {
            path: path.to_owned(),
            message: format!("not valid JSON ({e}); is this a Hugging Face config.json?"),
        })?;
        let mut spec = ModelSpec::from_config_value(&value, path)?;
        if let Some(dir) = path.parent() {
            let gen_path = dir.join("generation_config.json");
            if let Ok(text) = std::fs::read_to_string(&gen_path) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    for id in token_ids(v.get("eos_token_id"), "eos_token_id", &gen_path)? {
                        if !spec.eos_token_ids.contains(&id) {
                            spec.eos_token_ids.push(id);
                        }
                    }
                    spec.validate().map_err(|m| FormatError::Config { path: gen_path.clone(), message: m })?;
                }
            }
        }
        Ok(spec)
    }

    /// Parse an already-loaded `config.json` value; `path` is used in errors only.
    pub fn from_config_value(v: &Value, path: &Path) -> Result<ModelSpec> {
        let cfg = Cfg { v, path };
        if !v.is_object() {
            return Err(cfg.err("the top level must be a JSON object"));
        }
        let family = cfg.family()?;
        if family == Family::Gemma3 {
            let text = gemma::gemma3_text_config(v);
            return ModelSpec::from_family_config(Family::Gemma3, &Cfg { v: &text, path });
        }
        ModelSpec::from_family_config(family, &cfg)
    }

    fn from_family_config(family: Family, cfg: &Cfg<'_>) -> Result<ModelSpec> {
        let v = cfg.v;
        let hidden_size = cfg.usize("hidden_size")?;
        let num_layers = cfg.usize("num_hidden_layers")?;
        let num_heads = cfg.usize("num_attention_heads")?;
        let num_kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(cfg.err(&format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match cfg.opt_usize("head_dim")? {
            Some(h) => h,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(cfg.err("head_dim is missing and hidden_size is not a multiple of num_attention_heads"));
                }
                hidden_size / num_heads
            }
        };
        let intermediate_size = cfg.usize("intermediate_size")?;
        let vocab_size = cfg.usize("vocab_size")?;
        let norm_eps = cfg.opt_f64("rms_norm_eps")?.or(cfg.opt_f64("layer_norm_eps")?).unwrap_or(1e-6) as f32;
        let act_name = cfg.opt_str("hidden_activation").or_else(|| cfg.opt_str("hidden_act")).unwrap_or("silu");
        let activation = match act_name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            // Gemma 1 checkpoints say "gelu" but transformers runs the tanh approximation.
            "gelu" if family.is_gemma() => Activation::GeluTanh,
            other => {
                return Err(cfg.err(&format!(
                    "hidden_act {} is not supported (silu, gelu_pytorch_tanh)",
                    crate::error::quote(other)
                )));
            }
        };

        let rope = cfg.rope(family, head_dim)?;
        let attention_bias = cfg.opt_bool("attention_bias")?;
        let qkv_bias = match family {
            Family::Qwen2 => true,
            _ => attention_bias.unwrap_or(false),
        };
        // GLM's attention_bias covers q/k/v only; Llama's covers o as well.
        let o_bias = match family {
            Family::Llama | Family::Mistral | Family::Qwen3 | Family::Gemma | Family::Gemma2 | Family::Gemma3 => {
                attention_bias.unwrap_or(false)
            }
            _ => false,
        };
        let mlp_bias = cfg.opt_bool("mlp_bias")?.unwrap_or(false);
        let tie_word_embeddings = cfg.opt_bool("tie_word_embeddings")?.unwrap_or(family.is_gemma());
        let use_sliding = cfg.opt_bool("use_sliding_window")?.unwrap_or(true);
        let sliding_window = if use_sliding { cfg.opt_usize("sliding_window")? } else { None };
        let moe = match family {
            Family::Mixtral => Some(MoeSpec {
                num_experts: cfg.usize("num_local_experts")?,
                top_k: cfg.usize("num_experts_per_tok")?,
                renormalize: true,
                routing: MoeRouting::Softmax,
                shared_intermediate: None,
            }),
            _ => None,
        };
        // transformers computes sqrt(hidden) in the activation dtype: f32 here.
        let embedding_scale = family.is_gemma().then(|| (hidden_size as f32).sqrt());
        let max_position_embeddings = cfg.opt_usize("max_position_embeddings")?.unwrap_or(4096);
        let spec = ModelSpec {
            family,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size,
            vocab_size,
            norm: if family.is_gemma() { NormKind::RmsOnePlus } else { NormKind::Rms },
            norm_eps,
            activation,
            rope,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            tie_word_embeddings,
            sliding_window,
            moe,
            embedding_scale,
            max_position_embeddings,
            bos_token_id: token_ids(v.get("bos_token_id"), "bos_token_id", cfg.path)?.first().copied(),
            eos_token_ids: token_ids(v.get("eos_token_id"), "eos_token_id", cfg.path)?,
            pad_token_id: usable_pad(
                token_ids(v.get("pad_token_id"), "pad_token_id", cfg.path)?.first().copied(),
                vocab_size,
            ),
            layers: cfg.layer_overrides(num_layers)?,
            mla: None,
        };
        let spec = match family {
            Family::Gemma2 | Family::Gemma3 => gemma::hf_overrides(spec, cfg)?,
            Family::DeepseekV3 => deepseek::hf_overrides(spec, cfg)?,
            _ => spec,
        };
        spec.validate().map_err(|m| cfg.err(&m))?;
        Ok(spec)
    }

    /// Internal consistency checks: every size positive and below a sane maximum
    /// ([`limits`]), every float in its valid range, the flags a family implies set as
    /// that family sets them, and every special token id inside the vocabulary. A
    /// spec that passes describes a model the engine can run without garbage output.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use limits::*;
        let sizes = [
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_position_embeddings", self.max_position_embeddings, MAX_CONTEXT),
        ];
        for (name, v, max) in sizes {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
            if v > max {
                return Err(format!("{name} is {v}, larger than any model this engine runs (at most {max})"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(format!("rms_norm_eps {} must be a number in (0, 1)", self.norm_eps));
        }
        self.rope.validate()?;
        if self.rope.rotary_dim > self.head_dim {
            return Err(format!(
                "rotary dimension {} must be even and at most head_dim {}",
                self.rope.rotary_dim, self.head_dim
            ));
        }
        if let Some(m) = self.moe {
            if m.num_experts == 0 || m.num_experts > MAX_EXPERTS {
                return Err(format!("num_local_experts {} must be in 1..={MAX_EXPERTS}", m.num_experts));
            }
            if m.top_k == 0 || m.top_k > m.num_experts {
                return Err(format!("num_experts_per_tok {} must be in 1..={}", m.top_k, m.num_experts));
            }
            deepseek::validate_moe(&m)?;
        }
        if let Some(mla) = self.mla {
            deepseek::validate_mla(self, &mla)?;
        }
        self.validate_layers()?;
        if self.sliding_window == Some(0) {
            return Err("sliding_window 0 would let no token attend to anything; use null for none".into());
        }
        self.validate_family_flags()?;
        let vocab = self.vocab_size;
        let ids = self.eos_token_ids.iter().map(|&i| ("eos_token_id", i));
        let ids = ids.chain(self.bos_token_id.map(|i| ("bos_token_id", i)));
        for (name, id) in ids.chain(self.pad_token_id.map(|i| ("pad_token_id", i))) {
            if id as usize >= vocab {
                return Err(format!("{name} {id} is outside the vocabulary of {vocab} tokens"));
            }
        }
        if self.eos_token_ids.len() > MAX_EOS_IDS {
            return Err(format!("{} eos_token_ids, more than {MAX_EOS_IDS}", self.eos_token_ids.len()));
        }
        Ok(())
    }

    /// The settings a family fixes must have that family's values (a manifest edited by
    /// hand, or damaged, would otherwise run the wrong graph and print garbage).
    fn validate_family_flags(&self) -> std::result::Result<(), String> {
        let f = self.family;
        let gemma = matches!(f, Family::Gemma | Family::Gemma2 | Family::Gemma3);
        let scale = gemma.then(|| (self.hidden_size as f32).sqrt());
        if self.embedding_scale != scale {
            return Err(format!(
                "embedding_scale {:?} disagrees with the {f} family (it must be {scale:?})",
                self.embedding_scale
            ));
        }
        if self.qk_norm != matches!(f, Family::Qwen3 | Family::Gemma3) {
            return Err(format!("qk_norm {} disagrees with the {f} family", self.qk_norm));
        }
        if f == Family::Qwen2 && !self.qkv_bias {
            return Err("qkv_bias false disagrees with the qwen2 family (its q/k/v projections have biases)".into());
        }
        if self.moe.is_some() != matches!(f, Family::Mixtral | Family::DeepseekV3) {
            return Err(format!(
                "a mixture of experts is {} for the {f} family",
                if self.moe.is_some() { "set" } else { "missing" }
            ));
        }
        if self.mla.is_some() != (f == Family::DeepseekV3) {
            return Err(format!(
                "multi-head latent attention is {} for the {f} family",
                if self.mla.is_some() { "set" } else { "missing" }
            ));
        }
        let style = if f == Family::Glm { RopeStyle::Interleaved } else { RopeStyle::HalfRotation };
        // DeepSeek checkpoints say which layout they use (`rope_interleave`).
        if self.rope.style != style && f != Family::DeepseekV3 {
            return Err(format!(
                "rope style {:?} disagrees with the {f} family (it must be {style:?})",
                self.rope.style
            ));
        }
        if self.norm == NormKind::RmsOnePlus && !gemma {
            return Err(format!("norm rms_one_plus is Gemma's; the {f} family uses plain rms"));
        }
        Ok(())
    }

    /// How many tensors [`expected_tensors`](crate::checkpoint::expected_tensors) lists for
    /// this spec, computed without building the list (so a damaged layer or expert count
    /// is refused before anything is allocated for it). Saturates.
    pub fn expected_tensor_count(&self) -> usize {
        if let Some(mla) = self.mla {
            return deepseek::expected_tensor_count(self, &mla);
        }
        let mut per_layer: usize = 1 + 1 + 1; // attention norm, o, mlp norm
        per_layer += if self.family == Family::Phi3 { 1 } else { 3 + if self.qkv_bias { 3 } else { 0 } };
        per_layer += usize::from(self.o_bias) + if self.qk_norm { 2 } else { 0 };
        per_layer += match self.moe {
            Some(m) => m.num_experts.saturating_mul(3).saturating_add(1),
            None if matches!(self.family, Family::Phi3 | Family::Glm) => 2,
            None => 3,
        };
        let head = usize::from(!self.tie_word_embeddings);
        // Sandwich norms (post-attention, post-MLP) where a layer has them.
        let sandwiched = if self.layers.sandwich_norms { self.num_layers } else { 0 };
        per_layer.saturating_mul(self.num_layers).saturating_add(sandwiched.saturating_mul(2)).saturating_add(2 + head)
    }

    /// Width of the q projection output.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Width of the k (and v) projection output.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Total parameter count implied by the spec (embedding counted once when tied).
    pub fn parameter_count(&self) -> u64 {
        if self.mla.is_some() {
            return self.mla_parameter_count();
        }
        let h = self.hidden_size as u64;
        let i = self.intermediate_size as u64;
        let v = self.vocab_size as u64;
        let q = self.q_dim() as u64;
        let kv = self.kv_dim() as u64;
        let mut attn = h * q + 2 * h * kv + q * h + 2 * h; // q,k,v,o + two norms
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += h;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim as u64;
        }
        let mlp_one = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let mlp = match self.moe {
            Some(m) => m.num_experts as u64 * mlp_one + m.num_experts as u64 * h,
            None => mlp_one,
        };
        let per_layer = attn + mlp;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_layers as u64 * per_layer + h + head
    }
}

impl ModelSpec {
    /// [`ModelSpec::parameter_count`] of a latent-attention model, as the engine
    /// stores it (absorbed query and output projections, per-layer dense or MoE MLPs).
    fn mla_parameter_count(&self) -> u64 {
        let Some(m) = self.mla else { return 0 };
        let (h, heads, v) = (self.hidden_size as u64, self.num_heads as u64, self.vocab_size as u64);
        let (c, r) = (m.kv_lora_rank as u64, m.qk_rope_head_dim as u64);
        let q_in = m.q_lora_rank.map_or(h, |q| q as u64);
        let mut attn = 2 * h + (c + r) * h + c + heads * (c + r) * q_in + h * heads * c;
        if let Some(q) = m.q_lora_rank {
            attn += q as u64 * h + q as u64;
        }
        let mut total = v * h + h + if self.tie_word_embeddings { 0 } else { v * h };
        for l in 0..self.num_layers {
            let mlp = match self.layer(l).mlp {
                crate::layers::MlpSpec::Dense { intermediate } => 3 * h * intermediate as u64,
                crate::layers::MlpSpec::Moe(moe) => {
                    let e = moe.num_experts as u64;
                    let shared = moe.shared_intermediate.map_or(0, |s| 3 * h * s as u64);
                    e * 3 * h * self.intermediate_size as u64 + e * h + e + shared
                }
            };
            total += attn + mlp;
        }
        total
    }
}

/// The largest sizes a [`ModelSpec`] may have. Each is far above every released
/// model, and together they keep every size computed from a spec far from overflow
/// and every table built from it small, whatever a damaged or hostile file says.
pub mod limits {
    /// Decoder layers (the largest released models have about 130).
    pub const MAX_LAYERS: usize = 1024;
    /// Residual width (largest released: 16384-25600).
    pub const MAX_HIDDEN: usize = 1 << 17;
    /// Attention heads, query or key/value.
    pub const MAX_HEADS: usize = 1 << 12;
    /// Dimension of one head.
    pub const MAX_HEAD_DIM: usize = 1 << 12;
    /// MLP inner width.
    pub const MAX_INTERMEDIATE: usize = 1 << 20;
    /// Vocabulary size (largest released: about 256k).
    pub const MAX_VOCAB: usize = 1 << 22;
    /// Experts per MoE layer (largest released: 384).
    pub const MAX_EXPERTS: usize = 1 << 12;
    /// Trained context length.
    pub const MAX_CONTEXT: usize = 1 << 30;
    /// End-of-sequence ids.
    pub const MAX_EOS_IDS: usize = 64;
}

/// A padding id outside the vocabulary is dropped with a warning rather than refused:
/// padding only fills the left of a batch, so the engine can pad with EOS instead,
/// and some published configs carry such ids. (EOS and BOS ids outside it are errors.)
pub(crate) fn usable_pad(pad: Option<u32>, vocab: usize) -> Option<u32> {
    match pad {
        Some(id) if id as usize >= vocab => {
            tracing::warn!("pad_token_id {id} is outside the vocabulary of {vocab} tokens; ignoring it");
            None
        }
        other => other,
    }
}

/// Token ids from a JSON value that may be a number, a list or null. Negative ids
/// (some configs write -1 for "none") are left out; anything else that is not an
/// integer below 2^32 is an error, never truncated.
fn token_ids(v: Option<&Value>, key: &str, path: &Path) -> Result<Vec<u32>> {
    let one = |x: &Value| -> Result<Option<u32>> {
        if x.as_i64().is_some_and(|i| i < 0) {
            return Ok(None);
        }
        match x.as_u64().map(u32::try_from) {
            Some(Ok(id)) => Ok(Some(id)),
            _ => Err(FormatError::Config {
                path: path.to_owned(),
                message: format!(
                    "field `{key}` holds {}, which is not a token id (an integer below 2^32)",
                    crate::error::excerpt(x)
                ),
            }),
        }
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for x in a.iter().take(limits::MAX_EOS_IDS + 1) {
                out.extend(one(x)?);
            }
            Ok(out)
        }
        Some(x) => Ok(one(x)?.into_iter().collect()),
    }
}

/// Typed field access with errors that name the file and field.
pub(crate) struct Cfg<'a> {
    pub(crate) v: &'a Value,
    pub(crate) path: &'a Path,
}

impl Cfg<'_> {
    pub(crate) fn err(&self, message: &str) -> FormatError {
        FormatError::Config { path: self.path.to_owned(), message: message.to_owned() }
    }

    fn family(&self) -> Result<Family> {
        let archs = self.v.get("architectures").and_then(Value::as_array);
        let names: Vec<&str> = archs.map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if let Some(f) = names.iter().find_map(|n| Family::from_name(n)) {
            return Ok(f);
        }
        if names.is_empty() {
            // Some converted configs carry only model_type.
            if let Some(f) = self.opt_str("model_type").and_then(Family::from_name) {
                return Ok(f);
            }
            return Err(self.err(&format!("field `architectures` is missing; supported: {}", Family::supported_list())));
        }
        Err(FormatError::UnsupportedArchitecture {
            path: self.path.to_owned(),
            found: names.join(", "),
            supported: Family::supported_list(),
        })
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(&format!("field `{key}` must be a non-negative integer, found {}", excerpt(n)))
            }),
            Some(other) => Err(self.err(&format!("field `{key}` must be an integer, found {}", excerpt(other)))),
        }
    }
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.err(&format!("required field `{key}` is missing")))
    }
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.opt_f64_in(self.v, key)
    }
    pub(crate) fn opt_f64_in(&self, obj: &Value, key: &str) -> Result<Option<f64>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(self.err(&format!("field `{key}` must be a number, found {}", excerpt(other)))),
        }
    }
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(&format!("field `{key}` must be true or false, found {}", excerpt(other)))),
        }
    }
    pub(crate) fn opt_str(&self, key: &str) -> Option<&str> {
        self.v.get(key).and_then(Value::as_str)
    }

    /// Per-layer attention types: transformers 5 `layer_types` (`"sliding_attention"` /
    /// `"full_attention"`), else `sliding_window_pattern`. Family-specific fields
    /// (soft-caps, sandwich norms, local RoPE) are filled by the family's parser.
    fn layer_overrides(&self, num_layers: usize) -> Result<LayerOverrides> {
        let mut o = LayerOverrides::default();
        match self.v.get("layer_types") {
            None | Some(Value::Null) => {
                if let Some(p) = self.opt_usize("sliding_window_pattern")? {
                    o.layer_types = layer_types_from_pattern(num_layers, p);
                }
            }
            Some(Value::Array(a)) => {
                for (i, t) in a.iter().enumerate() {
                    o.layer_types.push(match t.as_str() {
                        Some("sliding_attention") => LayerType::Sliding,
                        Some("full_attention") => LayerType::Full,
                        _ => {
                            return Err(self.err(&format!(
                                "layer_types[{i}] must be \"sliding_attention\" or \"full_attention\", found {}",
                                crate::layers::excerpt(&t.to_string())
                            )));
                        }
                    });
                }
            }
            Some(other) => {
                return Err(self.err(&format!(
                    "field `layer_types` must be a list, found {}",
                    crate::layers::excerpt(&other.to_string())
                )));
            }
        }
        Ok(o)
    }

    /// RoPE settings from either layout: transformers 5 `rope_parameters`, or
    /// transformers 4 top-level `rope_theta` / `rope_scaling` / `partial_rotary_factor`.
    fn rope(&self, family: Family, head_dim: usize) -> Result<RopeSpec> {
        let params = self.v.get("rope_parameters").filter(|p| p.is_object());
        // transformers 5 writes one entry per layer type when the types differ in
        // RoPE (Gemma 3): the global one is full attention's.
        let params = params.map(|p| p.get("full_attention").filter(|f| f.is_object()).unwrap_or(p));
        self.rope_in(params, family, head_dim)
    }

    /// One RoPE description from a `rope_parameters`-like object, or (when
    /// `params` is None) from the transformers 4 top-level keys.
    pub(crate) fn rope_in(&self, params: Option<&Value>, family: Family, head_dim: usize) -> Result<RopeSpec> {
        let scaling_obj = match params {
            Some(p) => Some(p),
            None => self.v.get("rope_scaling").filter(|p| p.is_object()),
        };
        let theta = match params.map(|p| self.opt_f64_in(p, "rope_theta")).transpose()?.flatten() {
            Some(t) => t,
            None => self.opt_f64("rope_theta")?.unwrap_or(10000.0),
        };
        let partial = match params.map(|p| self.opt_f64_in(p, "partial_rotary_factor")).transpose()?.flatten() {
            Some(p) => p,
            None => self.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
        };
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(self.err(&format!("partial_rotary_factor {partial} must be in (0, 1]")));
        }
        let scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                let f = |k: &str| -> Result<f32> {
                    self.opt_f64_in(s, k)?
                        .map(|x| x as f32)
                        .ok_or_else(|| self.err(&format!("rope scaling `{kind}` needs field `{k}`")))
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: f("factor")? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    },
                    "yarn" => self.yarn(s)?,
                    other => {
                        return Err(self.err(&format!(
                            "rope scaling type {} is not supported (default, linear, llama3, yarn)",
                            crate::error::quote(other)
                        )));
                    }
                }
            }
        };
        let rotary_dim = ((head_dim as f64) * partial) as usize;
        // DeepSeek's `rope_interleave` (default true) is handled by its parser.
        let style = if family == Family::Glm { RopeStyle::Interleaved } else { RopeStyle::HalfRotation };
        Ok(RopeSpec { theta: theta as f32, scaling, rotary_dim, style })
    }
}

impl Cfg<'_> {
    /// YaRN scaling from a `rope_scaling` / `rope_parameters` object, with
    /// transformers' defaults: `factor` from `max_position_embeddings /
    /// original_max_position_embeddings` when absent, beta_fast 32, beta_slow 1,
    /// `attention_factor` from `mscale` and `mscale_all_dim`.
    fn yarn(&self, s: &Value) -> Result<RopeScaling> {
        let orig = self.opt_f64_in(s, "original_max_position_embeddings")?.ok_or_else(|| {
            self.err("rope scaling `yarn` needs field `original_max_position_embeddings` (the pre-training context)")
        })?;
        let factor = match self.opt_f64_in(s, "factor")? {
            Some(f) => f,
            None => {
                self.opt_usize("max_position_embeddings")?.ok_or_else(|| {
                    self.err("rope scaling `yarn` needs `factor` (or `max_position_embeddings` to derive it)")
                })? as f64
                    / orig
            }
        };
        let attention_factor = match self.opt_f64_in(s, "attention_factor")? {
            Some(a) => a,
            None => {
                let mscale = self.opt_f64_in(s, "mscale")?.filter(|m| *m != 0.0);
                let mscale_all_dim = self.opt_f64_in(s, "mscale_all_dim")?.filter(|m| *m != 0.0);
                match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) => yarn_mscale(factor, m) / yarn_mscale(factor, a),
                    _ => yarn_mscale(factor, 1.0),
                }
            }
        };
        // transformers reads `x or default`: a 0 means the default too.
        let beta = |k: &str, d: f64| -> Result<f64> { Ok(self.opt_f64_in(s, k)?.filter(|b| *b != 0.0).unwrap_or(d)) };
        let truncate = match s.get("truncate") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(
                    self.err(&format!("rope scaling field `truncate` must be true or false, found {}", excerpt(other)))
                );
            }
        };
        Ok(RopeScaling::Yarn {
            factor: factor as f32,
            original_max_position_embeddings: orig as f32,
            beta_fast: beta("beta_fast", 32.0)? as f32,
            beta_slow: beta("beta_slow", 1.0)? as f32,
            attention_factor: attention_factor as f32,
            truncate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelSpec> {
        ModelSpec::from_config_value(&v, Path::new("config.json"))
    }

    fn base() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "vocab_size": 512, "rms_norm_eps": 1e-5, "hidden_act": "silu", "rope_theta": 10000.0
        })
    }

    #[test]
    fn unknown_architecture_lists_supported() {
        let mut v = base();
        v["architectures"] = json!(["FalconForCausalLM"]);
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("FalconForCausalLM") && e.contains("MixtralForCausalLM"), "{e}");
        assert!(e.contains("Gemma2ForCausalLM") && e.contains("Gemma3ForCausalLM"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("hidden_size") && e.contains("config.json"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let mut v = base();
        v["num_attention_heads"] = json!("four");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
    }

    #[test]
    fn v5_rope_parameters() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5});
        let s = parse(v).unwrap();
        assert_eq!(s.rope.theta, 1e6);
        assert_eq!(s.rope.rotary_dim, 8);
    }

    #[test]
    fn llama3_inv_freq_matches_transformers_rule() {
        let rope = RopeSpec {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            },
            rotary_dim: 16,
            style: RopeStyle::HalfRotation,
        };
        let f = rope.inv_freq();
        assert_eq!(f.len(), 8);
        // Highest frequency (wavelength 2*pi < 64/4) is unscaled.
        assert_eq!(f[0], 1.0);
        // Lowest frequency has a wavelength far above 64: divided by the factor.
        let base = 1.0 / 500000f32.powf(14.0 / 16.0);
        assert!((f[7] - base / 8.0).abs() < 1e-12);
    }
}

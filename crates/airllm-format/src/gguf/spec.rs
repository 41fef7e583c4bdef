//! [`ModelSpec`] from GGUF metadata (`{arch}.embedding_length`, ...).

use crate::error::Result;
use crate::gguf::parse::{GgufMetadata, GgufValue};
use crate::layers::{LayerOverrides, LayerType, layer_types_from_pattern};
use crate::spec::{Activation, Family, ModelSpec, MoeSpec, NormKind, RopeScaling, RopeSpec, RopeStyle};

/// GGUF architectures this reader maps, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str = "llama (Llama 1-3, Mistral, SmolLM, ...; with llama.expert_count: Mixtral), qwen2, qwen3, gemma, gemma2, gemma3, phi3";

/// How a GGUF architecture maps onto a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchInfo {
    /// The family whose graph runs it.
    pub family: Family,
    /// llama.cpp's converter permuted the Q and K rows (llama, mixtral).
    pub permuted_qk: bool,
    /// `ffn_up` holds the fused gate|up projection (phi3).
    pub fused_gate_up: bool,
}

/// The family of `general.architecture`, or a clear error.
pub fn arch_info(meta: &GgufMetadata) -> Result<(String, ArchInfo)> {
    let arch = meta
        .architecture()
        .ok_or_else(|| meta.err("metadata `general.architecture` is missing; is this a model file?"))?
        .to_owned();
    let info = |family, permuted_qk, fused_gate_up| ArchInfo { family, permuted_qk, fused_gate_up };
    let a = match arch.as_str() {
        "llama" => {
            let experts = meta.get_u64("llama.expert_count").unwrap_or(0);
            info(if experts > 0 { Family::Mixtral } else { Family::Llama }, true, false)
        }
        "qwen2" => info(Family::Qwen2, false, false),
        "qwen3" => info(Family::Qwen3, false, false),
        "gemma" => info(Family::Gemma, false, false),
        "gemma2" => info(Family::Gemma2, false, false),
        "gemma3" => info(Family::Gemma3, false, false),
        "phi3" => info(Family::Phi3, false, true),
        "chatglm" | "glm4" => {
            return Err(meta.err(format!(
                "GGUF architecture {arch:?} is not supported: llama.cpp's {arch} graph is not the one this engine \
                 runs for GLM (GlmForCausalLM). Use the Hugging Face checkpoint instead. Supported GGUF \
                 architectures: {SUPPORTED_ARCHITECTURES}"
            )));
        }
        other => {
            return Err(
                meta.err(format!("GGUF architecture {other:?} is not supported; supported: {SUPPORTED_ARCHITECTURES}"))
            );
        }
    };
    Ok((arch, a))
}

/// Read a count that may be stored per layer (an array); all layers must agree.
fn count(meta: &GgufMetadata, key: &str) -> Result<Option<usize>> {
    let Some(v) = meta.get(key) else { return Ok(None) };
    let bad = || meta.err(format!("metadata {key:?} is {v}; expected a non-negative integer"));
    match v {
        GgufValue::Array { items, .. } => {
            let vals: Vec<u64> = items.iter().map(|x| x.as_u64().ok_or_else(bad)).collect::<Result<_>>()?;
            match vals.first() {
                None => Err(bad()),
                Some(&first) if vals.iter().all(|&x| x == first) => bounded(meta, key, first as usize).map(Some),
                Some(_) => Err(meta.err(format!(
                    "metadata {key:?} differs between layers ({v}); models with per-layer sizes are not supported"
                ))),
            }
        }
        _ => {
            let x = v.as_u64().ok_or_else(bad)?;
            bounded(meta, key, usize::try_from(x).unwrap_or(usize::MAX)).map(Some)
        }
    }
}

/// Largest size accepted for any one model dimension (keeps every product of
/// sizes far from overflow on a damaged or hostile file).
const MAX_DIM: usize = 1 << 24;

fn bounded(meta: &GgufMetadata, key: &str, v: usize) -> Result<usize> {
    if v > MAX_DIM {
        return Err(
            meta.err(format!("metadata {key:?} is {v}, larger than any model (limit {MAX_DIM}); the file is damaged"))
        );
    }
    Ok(v)
}

fn required(meta: &GgufMetadata, key: &str) -> Result<usize> {
    count(meta, key)?.ok_or_else(|| meta.err(format!("required metadata {key:?} is missing")))
}

/// A special token id: absent, or an integer below 2^32 (never truncated; the spec's
/// validation then checks it against the vocabulary).
fn token_id(meta: &GgufMetadata, key: &str) -> Result<Option<u32>> {
    let Some(v) = meta.get(key) else { return Ok(None) };
    match v.as_i64() {
        // llama.cpp writes -1 for "none" in some files.
        Some(i) if i < 0 => Ok(None),
        _ => match v.as_u64().map(u32::try_from) {
            Some(Ok(id)) => Ok(Some(id)),
            _ => Err(meta.err(format!("metadata {key:?} is {v}, which is not a token id (an integer below 2^32)"))),
        },
    }
}

/// Build the model description from GGUF metadata. `rope_freqs` is the
/// content of the `rope_freqs.weight` tensor, if the file has one (llama.cpp
/// stores Llama 3.1 rope scaling as per-frequency divisors there).
pub fn spec_from_metadata(meta: &GgufMetadata, rope_freqs: Option<&[f32]>) -> Result<ModelSpec> {
    let (arch, info) = arch_info(meta)?;
    let family = info.family;
    let k = |s: &str| format!("{arch}.{s}");
    let hidden_size = required(meta, &k("embedding_length"))?;
    let num_layers = required(meta, &k("block_count"))?;
    let num_heads = required(meta, &k("attention.head_count"))?;
    let num_kv_heads = count(meta, &k("attention.head_count_kv"))?.unwrap_or(num_heads);
    if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(meta.err(format!(
            "attention.head_count ({num_heads}) must be a positive multiple of attention.head_count_kv ({num_kv_heads})"
        )));
    }
    let head_dim = match count(meta, &k("attention.key_length"))? {
        Some(h) => h,
        None if hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => {
            return Err(meta.err(format!(
                "{arch}.attention.key_length is missing and embedding_length {hidden_size} is not a multiple of \
                 head_count {num_heads}"
            )));
        }
    };
    if let Some(v) = count(meta, &k("attention.value_length"))?
        && v != head_dim
    {
        return Err(meta.err(format!("attention.value_length {v} differs from key_length {head_dim}; not supported")));
    }
    let intermediate_size = required(meta, &k("feed_forward_length"))?;
    let vocab_size = match meta.tensor("token_embd.weight") {
        Some(t) => bounded(meta, "token_embd.weight rows", t.shape().first().copied().unwrap_or(0))?,
        None => match meta.get_array("tokenizer.ggml.tokens") {
            Some(a) => a.len(),
            None => required(meta, &k("vocab_size"))?,
        },
    };
    let norm_eps = meta
        .get_f32(&k("attention.layer_norm_rms_epsilon"))
        .ok_or_else(|| meta.err(format!("required metadata {:?} is missing", k("attention.layer_norm_rms_epsilon"))))?;

    let theta = meta.get_f32(&k("rope.freq_base")).unwrap_or(10000.0);
    let rotary_dim = count(meta, &k("rope.dimension_count"))?.unwrap_or(head_dim);
    let mut rope = RopeSpec { theta, scaling: RopeScaling::None, rotary_dim, style: RopeStyle::HalfRotation };
    match meta.get_str(&k("rope.scaling.type")) {
        None | Some("none") => {}
        Some("linear") => {
            let factor = meta
                .get_f32(&k("rope.scaling.factor"))
                .ok_or_else(|| meta.err("rope.scaling.type is linear but rope.scaling.factor is missing"))?;
            rope.scaling = RopeScaling::Linear { factor };
        }
        Some(other) => {
            return Err(meta.err(format!(
                "rope scaling {other:?} is not supported (none, linear, and Llama 3 scaling via rope_freqs)"
            )));
        }
    }
    if let Some(f) = meta.get_f32(&k("rope.scale_linear"))
        && f != 1.0
        && rope.scaling == RopeScaling::None
    {
        rope.scaling = RopeScaling::Linear { factor: f };
    }
    if let Some(freqs) = rope_freqs {
        rope.scaling = llama3_scaling_from_freqs(meta, &rope, freqs)?;
    }

    let has = |name: &str| meta.tensor(name).is_some();
    let moe = match family {
        Family::Mixtral => Some(MoeSpec {
            num_experts: required(meta, "llama.expert_count")?,
            top_k: required(meta, "llama.expert_used_count")?,
            renormalize: true,
            routing: Default::default(),
            shared_intermediate: None,
        }),
        _ => None,
    };
    let mut eos_token_ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = token_id(meta, key)?
            && !eos_token_ids.contains(&id)
        {
            eos_token_ids.push(id);
        }
    }
    // Gemma's chat turns end with <end_of_turn>; llama.cpp's converter stores no
    // eot id, and llama.cpp finds the token by its text (as here).
    if family.is_gemma()
        && let Some(id) = token_index(meta, "<end_of_turn>")
        && !eos_token_ids.contains(&id)
    {
        eos_token_ids.push(id);
    }
    let spec = ModelSpec {
        family,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        intermediate_size,
        vocab_size,
        // llama.cpp's converter stores Gemma's norm weights as 1 + w, so a plain
        // RMSNorm multiply is exact here (no NormKind::RmsOnePlus).
        norm: NormKind::Rms,
        norm_eps,
        activation: if family.is_gemma() { Activation::GeluTanh } else { Activation::Silu },
        rope,
        qkv_bias: family == Family::Qwen2 || has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_down.bias"),
        qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
        tie_word_embeddings: !has("output.weight"),
        sliding_window: match (family, count(meta, &k("attention.sliding_window"))?) {
            // llama.cpp's default for Gemma 2 files that do not say.
            (Family::Gemma2, None) => Some(4096),
            (_, w) => w.filter(|&w| w > 0),
        },
        moe,
        embedding_scale: family.is_gemma().then(|| (hidden_size as f32).sqrt()),
        max_position_embeddings: count(meta, &k("context_length"))?.unwrap_or(4096),
        bos_token_id: token_id(meta, "tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
        pad_token_id: crate::spec::usable_pad(token_id(meta, "tokenizer.ggml.padding_token_id")?, vocab_size),
        layers: Default::default(),
        mla: None,
    };
    let spec = if family.has_sandwich_norms() { gemma_layers(meta, &arch, spec)? } else { spec };
    spec.validate().map_err(|m| meta.err(m))?;
    Ok(spec)
}

/// The id of the vocabulary entry `text`, if any.
fn token_index(meta: &GgufMetadata, text: &str) -> Option<u32> {
    let tokens = meta.get_array("tokenizer.ggml.tokens")?;
    tokens.iter().position(|t| t.as_str() == Some(text)).and_then(|i| u32::try_from(i).ok())
}

/// Gemma 2 / Gemma 3's per-layer attention, as llama.cpp reads it
/// (`llama-model.cpp`, `LLM_ARCH_GEMMA2` / `LLM_ARCH_GEMMA3`):
///
/// - layer types: `{arch}.attention.sliding_window_pattern` when the file has it
///   (a bool per layer, true = sliding, as llama.cpp's newer architectures write
///   it; or an integer N: every N-th layer global), else llama.cpp's fixed
///   patterns: Gemma 2 every other layer (sliding first), Gemma 3 five sliding
///   layers then a global one. Without `attention.sliding_window` (or with 0) a
///   Gemma 3 file has no sliding layers.
/// - RoPE: `rope.freq_base` and `rope.scaling.*` for global layers; sliding Gemma 3
///   layers use `rope.freq_base_swa` when present, else llama.cpp's fixed 10000,
///   unscaled.
/// - soft-caps: Gemma 2 `attn_logit_softcapping` / `final_logit_softcapping`,
///   defaults 50 / 30 (llama.cpp's); Gemma 3 `final_logit_softcapping` only,
///   default none; 0 means none.
/// - score scale: `{arch}.attention.scale` when present, else llama.cpp's rule:
///   `(hidden / heads)^-0.5` for the 27B models (46 / 62 layers), else
///   `head_dim^-0.5` (their `query_pre_attn_scalar`).
/// - sandwich norms: `post_attention_norm` / `post_ffw_norm`, stored as `1 + w`
///   like the other norms.
fn gemma_layers(meta: &GgufMetadata, arch: &str, mut spec: ModelSpec) -> Result<ModelSpec> {
    let k = |s: &str| format!("{arch}.{s}");
    let gemma2 = spec.family == Family::Gemma2;
    let n = spec.num_layers;
    let layer_types = match meta.get(&k("attention.sliding_window_pattern")) {
        _ if spec.sliding_window.is_none() => vec![LayerType::Full; n],
        Some(v) => match v.as_array() {
            Some(items) => {
                let flags: Option<Vec<bool>> = items.iter().map(|x| x.as_bool()).collect();
                match flags {
                    Some(f) if f.len() == n => {
                        f.into_iter().map(|s| if s { LayerType::Sliding } else { LayerType::Full }).collect()
                    }
                    _ => {
                        return Err(meta.err(format!(
                            "{} must be {n} booleans (one per layer), found {v}",
                            k("attention.sliding_window_pattern")
                        )));
                    }
                }
            }
            None => match v.as_u64() {
                Some(p) => layer_types_from_pattern(n, p as usize),
                None => {
                    return Err(meta.err(format!(
                        "{} must be an integer or a list of booleans, found {v}",
                        k("attention.sliding_window_pattern")
                    )));
                }
            },
        },
        None => layer_types_from_pattern(n, if gemma2 { 2 } else { 6 }),
    };
    let cap = |key: &str, default: Option<f32>| meta.get_f32(&k(key)).or(default).filter(|&c| c != 0.0);
    let scale = match meta.get_f32(&k("attention.scale")) {
        Some(s) if s.is_finite() && s > 0.0 => {
            // Back to the integer transformers configs hold, when it is one.
            let q = 1.0 / (s * s);
            if (q - q.round()).abs() <= 1e-4 * q { q.round() } else { q }
        }
        Some(s) => return Err(meta.err(format!("{} is {s}; expected a positive number", k("attention.scale")))),
        None if n == if gemma2 { 46 } else { 62 } => (spec.hidden_size / spec.num_heads) as f32,
        None => spec.head_dim as f32,
    };
    let rope_local = (!gemma2).then(|| RopeSpec {
        theta: meta.get_f32(&k("rope.freq_base_swa")).unwrap_or(10_000.0),
        scaling: RopeScaling::None,
        ..spec.rope
    });
    spec.layers = LayerOverrides {
        layer_types,
        rope_local: rope_local.filter(|r| *r != spec.rope),
        attn_softcap: if gemma2 { cap("attn_logit_softcapping", Some(50.0)) } else { None },
        final_softcap: cap("final_logit_softcapping", gemma2.then_some(30.0)),
        query_pre_attn_scalar: Some(scale),
        sandwich_norms: true,
        ..LayerOverrides::default()
    };
    Ok(spec)
}

/// Recover Llama 3.1-style scaling parameters from llama.cpp's `rope_freqs`
/// divisors (one per rotated frequency), checking that they reproduce them.
fn llama3_scaling_from_freqs(meta: &GgufMetadata, rope: &RopeSpec, freqs: &[f32]) -> Result<RopeScaling> {
    let base = RopeSpec { scaling: RopeScaling::None, ..*rope }.inv_freq();
    if freqs.len() != base.len() {
        return Err(meta.err(format!(
            "rope_freqs.weight has {} values, expected rope.dimension_count / 2 = {}",
            freqs.len(),
            base.len()
        )));
    }
    if freqs.iter().all(|&f| f == 1.0) {
        return Ok(RopeScaling::None);
    }
    let factor = freqs.iter().copied().fold(f32::MIN, f32::max);
    // Between the two wavelength limits the divisor is 1 / ((1 - s) / factor + s) with
    // s = (orig / wavelen - low) / (high - low), linear in x = 1 / wavelen. Every Llama 3.x
    // release uses low = 1, high = 4; orig varies (8192 for 3.1). Candidates, each checked below:
    // the 3.1 values; low 1 / high 4 with orig solved from one point; low 1 with orig and
    // high fitted through two points.
    let two_pi = 2.0 * std::f64::consts::PI;
    let smooth: Vec<(f64, f64)> = base
        .iter()
        .zip(freqs)
        .filter(|&(_, &f)| f > 1.0 + 1e-4 && f < factor * (1.0 - 1e-4))
        .map(|(&b, &f)| {
            let s = (f64::from(factor) / f64::from(f) - 1.0) / (f64::from(factor) - 1.0);
            (f64::from(b) / two_pi, s)
        })
        .collect();
    let tidy = |x: f64| if (x - x.round()).abs() < 1e-3 * x.abs().max(1.0) { x.round() } else { x };
    let mut candidates = vec![(1.0f64, 4.0f64, 8192.0f64)];
    if let Some(&(x1, s1)) = smooth.first() {
        candidates.push((1.0, 4.0, tidy((s1 * 3.0 + 1.0) / x1)));
    }
    if let (Some(&(x1, s1)), Some(&(x2, s2))) = (smooth.first(), smooth.last())
        && x2 != x1
    {
        let a = (s2 - s1) / (x2 - x1);
        let b = s1 - a * x1;
        if b < 0.0 {
            let high_minus_low = -1.0 / b;
            candidates.push((1.0, tidy(1.0 + high_minus_low), tidy(a * high_minus_low)));
        }
    }
    for (low, high, orig) in candidates {
        let scaling = RopeScaling::Llama3 {
            factor,
            low_freq_factor: low as f32,
            high_freq_factor: high as f32,
            original_max_position_embeddings: orig as f32,
        };
        let got = RopeSpec { scaling, ..*rope }.inv_freq();
        let ok = got.iter().zip(&base).zip(freqs).all(|((&g, &b), &f)| {
            let want = b / f;
            (g - want).abs() <= 1e-4 * want.abs()
        });
        if ok {
            return Ok(scaling);
        }
    }
    Err(meta.err(
        "rope_freqs.weight does not follow Llama 3 rope scaling (checked factor, low/high frequency factors); \
         this rope scaling is not supported",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufBuilder, GgufValueType};

    /// Metadata as llama.cpp's converter writes it for a Gemma 2/3 model of `layers` layers.
    fn gemma(arch: &str, layers: u32, extra: &[(&str, GgufValue)]) -> Result<ModelSpec> {
        let k = |s: &str| format!("{arch}.{s}");
        let mut b = GgufBuilder::new();
        b.kv("general.architecture", GgufValue::String(arch.into()))
            .kv(&k("block_count"), GgufValue::U32(layers))
            .kv(&k("embedding_length"), GgufValue::U32(640))
            .kv(&k("feed_forward_length"), GgufValue::U32(2048))
            .kv(&k("attention.head_count"), GgufValue::U32(4))
            .kv(&k("attention.head_count_kv"), GgufValue::U32(1))
            .kv(&k("attention.key_length"), GgufValue::U32(256))
            .kv(&k("attention.value_length"), GgufValue::U32(256))
            .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-6))
            .kv(&k("rope.freq_base"), GgufValue::F32(1e6))
            .kv("tokenizer.ggml.tokens", GgufValue::strings(&["<pad>", "<eos>", "<bos>", "<end_of_turn>"]))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(1));
        for (key, v) in extra {
            b.kv(&k(key), v.clone());
        }
        let bytes = b.to_bytes();
        let meta = GgufMetadata::parse(&bytes, "gemma.gguf".as_ref())?;
        spec_from_metadata(&meta, None)
    }

    #[test]
    fn gemma3_follows_llama_cpp_fixed_rules() {
        let s = gemma("gemma3", 18, &[("attention.sliding_window", GgufValue::U32(512))]).unwrap();
        assert_eq!(s.family, Family::Gemma3);
        let full: Vec<usize> = (0..18).filter(|&l| s.layer(l).attention.window.is_none()).collect();
        assert_eq!(full, vec![5, 11, 17], "five sliding layers, then a global one");
        assert_eq!(s.layer(0).attention.window, Some(512));
        assert_eq!((s.layer(0).attention.rope.theta, s.layer(5).attention.rope.theta), (10_000.0, 1e6));
        assert_eq!(s.layer(0).attention.scale, 1.0 / 16.0);
        assert_eq!((s.layers.attn_softcap, s.layers.final_softcap), (None, None));
        assert!(s.qk_norm && s.layers.sandwich_norms && s.norm == NormKind::Rms);
        assert_eq!(s.embedding_scale, Some(640f32.sqrt()));
        assert_eq!(s.eos_token_ids, vec![1, 3], "<end_of_turn> ends generation");
        // The 27B rule: (hidden / heads)^-0.5.
        let s = gemma("gemma3", 62, &[("attention.sliding_window", GgufValue::U32(1024))]).unwrap();
        assert_eq!(s.layer(0).attention.scale, 1.0 / 160f32.sqrt());
        // No sliding window: every layer global.
        let s = gemma("gemma3", 6, &[]).unwrap();
        assert!((0..6).all(|l| s.layer(l).attention.window.is_none()));
    }

    #[test]
    fn gemma3_explicit_keys_win() {
        let pattern = GgufValue::Array {
            elem: GgufValueType::Bool,
            items: [true, false, true].iter().map(|&b| GgufValue::Bool(b)).collect(),
        };
        let s = gemma(
            "gemma3",
            3,
            &[
                ("attention.sliding_window", GgufValue::U32(8)),
                ("attention.sliding_window_pattern", pattern),
                ("rope.freq_base_swa", GgufValue::F32(5e4)),
                ("final_logit_softcapping", GgufValue::F32(30.0)),
                ("attention.scale", GgufValue::F32(1.0 / 24f32.sqrt())),
            ],
        )
        .unwrap();
        let w: Vec<_> = (0..3).map(|l| s.layer(l).attention.window).collect();
        assert_eq!(w, vec![Some(8), None, Some(8)]);
        assert_eq!(s.layer(0).attention.rope.theta, 5e4);
        assert_eq!(s.layers.final_softcap, Some(30.0));
        assert_eq!(s.layers.query_pre_attn_scalar, Some(24.0));
        let bad = GgufValue::Array { elem: GgufValueType::Bool, items: vec![GgufValue::Bool(true)] };
        let e = gemma(
            "gemma3",
            3,
            &[("attention.sliding_window", GgufValue::U32(8)), ("attention.sliding_window_pattern", bad)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sliding_window_pattern") && e.contains("3 booleans"), "{e}");
    }

    #[test]
    fn gemma2_defaults_are_llama_cpp_s() {
        let s = gemma("gemma2", 46, &[]).unwrap();
        assert_eq!(s.family, Family::Gemma2);
        assert_eq!((s.layers.attn_softcap, s.layers.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(s.sliding_window, Some(4096));
        let w: Vec<_> = (0..4).map(|l| s.layer(l).attention.window).collect();
        assert_eq!(w, vec![Some(4096), None, Some(4096), None]);
        assert_eq!(s.layer(1).attention.scale, 1.0 / 160f32.sqrt(), "27B: (hidden / heads)^-0.5");
        assert!(s.layers.rope_local.is_none() && !s.qk_norm);
        let s = gemma("gemma2", 26, &[("attn_logit_softcapping", GgufValue::F32(0.0))]).unwrap();
        assert_eq!(s.layers.attn_softcap, None, "0 turns it off");
        assert_eq!(s.layer(0).attention.scale, 1.0 / 16.0);
    }
}

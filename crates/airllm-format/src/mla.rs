//! Multi-head latent attention (DeepSeek-V2/V3) in the "absorbed" form.
//!
//! A checkpoint stores, per layer, the query projection `q_b_proj` (or
//! `q_proj`) with per-head rows `[q_nope (n) | q_rope (r)]`, `kv_b_proj`
//! with per-head rows `[k_nope (n) | v (v)]` over the latent `c` (width
//! `kv_lora_rank`), and `o_proj` over the heads' values. Since
//! `q_nope · k_nope = q_nope · (W_UK c) = (W_UKᵀ q_nope) · c` and
//! `o = Σ_h W_O,h (W_UV,h c̄_h)` with `c̄_h` the softmax-weighted latent of head h,
//! the engine folds `W_UK` into the query projection and `W_UV` into the
//! output projection once, here, when the checkpoint is opened:
//!
//! - [`Role::QAbsorbed`] `[heads * (c + r), q_in]`: head h's rows are
//!   `W_UK,hᵀ · W_Qnope,h` (c rows) then `W_Qrope,h` (r rows, copied);
//! - [`Role::OAbsorbed`] `[hidden, heads * c]`: head h's columns are `W_O,h · W_UV,h`.
//!
//! Every head then attends over one shared cached row `[c | k_rope]` (c + r
//! values; its first c values are also the value), so the KV cache holds the
//! latent and the RoPE key only. The price is larger matrices when
//! `kv_lora_rank > qk_nope_head_dim` (DeepSeek-V3: q 3x, o 4x the original
//! projections); a per-head batched matmul at run time would avoid that.
//! Products are summed in f64 and stored as f32 whatever the source dtype
//! (rounding them to bf16 would add error the reference does not have).

use std::collections::BTreeMap;

use crate::dtype::{DType, StorageFormat, dense_to_f32};
use crate::error::{FormatError, Result};
use crate::roles::{Role, Unit};
use crate::source::SourceTensor;
use crate::spec::{MlaSpec, ModelSpec};

/// Shapes of the tensors of one latent-attention decoder layer's attention
/// block, in the engine's (absorbed) form.
pub fn attention_tensors(spec: &ModelSpec, m: &MlaSpec) -> Vec<(Role, Vec<usize>)> {
    let (h, heads, c, r) = (spec.hidden_size, spec.num_heads, m.kv_lora_rank, m.qk_rope_head_dim);
    let mut out = Vec::new();
    let q_in = match m.q_lora_rank {
        Some(q) => {
            out.push((Role::QA, vec![q, h]));
            out.push((Role::QANorm, vec![q]));
            q
        }
        None => h,
    };
    out.push((Role::QAbsorbed, vec![heads * (c + r), q_in]));
    out.push((Role::KvA, vec![c + r, h]));
    out.push((Role::KvANorm, vec![c]));
    out.push((Role::OAbsorbed, vec![h, heads * c]));
    out
}

/// The checkpoint tensors the absorbed ones are computed from, for one layer.
#[derive(Clone, Debug)]
pub struct AbsorbInputs {
    /// `q_b_proj` / `q_proj`.
    pub q: SourceTensor,
    /// `kv_b_proj`.
    pub kv_b: SourceTensor,
    /// `o_proj`.
    pub o: SourceTensor,
}

/// Takes the query, `kv_b` and output projections out of `tensors` (checking
/// their shapes) and puts the absorbed tensors in their place (dense f32,
/// computed by [`absorb`] when read). Returns the inputs per layer.
pub fn replace_with_absorbed(
    spec: &ModelSpec,
    m: &MlaSpec,
    tensors: &mut Vec<SourceTensor>,
    origin: &std::path::Path,
) -> Result<BTreeMap<u32, AbsorbInputs>> {
    let mut taken: BTreeMap<(u32, Role), SourceTensor> = BTreeMap::new();
    tensors.retain(|t| match (t.unit, t.role) {
        (Unit::Layer(l), role @ (Role::Q | Role::KvB | Role::O)) => {
            taken.insert((l, role), t.clone());
            false
        }
        _ => true,
    });
    let (heads, n, r, v, c) = (spec.num_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank);
    let q_in = m.q_lora_rank.unwrap_or(spec.hidden_size);
    let mut out = BTreeMap::new();
    for l in 0..spec.num_layers as u32 {
        let mut get = |role: Role, what: &str, shape: Vec<usize>| -> Result<SourceTensor> {
            let t = taken.remove(&(l, role)).ok_or_else(|| FormatError::MissingTensor {
                path: origin.to_owned(),
                tensor: format!("model.layers.{l}.self_attn.{what}.weight"),
                why: "a DeepSeek-V3 layer needs it for latent attention".into(),
            })?;
            if t.shape != shape {
                return Err(FormatError::Shape {
                    path: origin.to_owned(),
                    tensor: t.name.clone(),
                    found: t.shape.clone(),
                    expected: shape,
                });
            }
            if !matches!(t.format, StorageFormat::Dense(_)) {
                return Err(FormatError::UnsupportedDtype {
                    path: origin.to_owned(),
                    tensor: t.name.clone(),
                    dtype: "a quantized format (latent attention needs dense q, kv_b and o projections)".into(),
                });
            }
            Ok(t)
        };
        let q_name = if m.q_lora_rank.is_some() { "q_b_proj" } else { "q_proj" };
        let q = get(Role::Q, q_name, vec![heads * (n + r), q_in])?;
        let kv_b = get(Role::KvB, "kv_b_proj", vec![heads * (n + v), c])?;
        let o = get(Role::O, "o_proj", vec![spec.hidden_size, heads * v])?;
        let unit = Unit::Layer(l);
        let derived = |role: Role, name: String, shape: Vec<usize>| SourceTensor {
            name,
            unit,
            role,
            format: StorageFormat::Dense(DType::F32),
            shape,
            file: q.file,
            row_perm: None,
            index: 0,
        };
        tensors.push(derived(
            Role::QAbsorbed,
            format!("model.layers.{l}.self_attn.{q_name}.weight + kv_b_proj.weight (absorbed)"),
            vec![heads * (c + r), q_in],
        ));
        tensors.push(derived(
            Role::OAbsorbed,
            format!("model.layers.{l}.self_attn.o_proj.weight + kv_b_proj.weight (absorbed)"),
            vec![spec.hidden_size, heads * c],
        ));
        out.insert(l, AbsorbInputs { q, kv_b, o });
    }
    if let Some(((l, role), t)) = taken.into_iter().next() {
        return Err(FormatError::Config {
            path: origin.to_owned(),
            message: format!("tensor {} ({role}) is for layer {l}, past num_hidden_layers {}", t.name, spec.num_layers),
        });
    }
    Ok(out)
}

fn f32s(t: &SourceTensor, bytes: &[u8]) -> Vec<f32> {
    match t.format {
        StorageFormat::Dense(d) => dense_to_f32(d, bytes),
        // Refused by `replace_with_absorbed`.
        StorageFormat::Quant(_) => Vec::new(),
    }
}

/// The bytes (f32, little-endian) of an absorbed tensor of `role` from the
/// raw bytes of its inputs (`q`, `kv_b`, `o` as stored).
pub fn absorb(spec: &ModelSpec, m: &MlaSpec, role: Role, inputs: &AbsorbInputs, raw: [&[u8]; 3]) -> Result<Vec<u8>> {
    let (heads, n, r, v, c) = (spec.num_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank);
    let kv_b = f32s(&inputs.kv_b, raw[1]);
    let out: Vec<f32> = match role {
        Role::QAbsorbed => {
            let q = f32s(&inputs.q, raw[0]);
            let q_in = inputs.q.shape[1];
            if q.len() != heads * (n + r) * q_in || kv_b.len() != heads * (n + v) * c {
                return Err(short(&inputs.q));
            }
            let mut out = vec![0f32; heads * (c + r) * q_in];
            let mut acc = vec![0f64; q_in];
            for h in 0..heads {
                for a in 0..c {
                    // Row a of head h: Σ_i W_UK[h, i, a] · W_Qnope[h, i, :].
                    acc.fill(0.0);
                    for i in 0..n {
                        let w = f64::from(kv_b[(h * (n + v) + i) * c + a]);
                        let q_row = &q[(h * (n + r) + i) * q_in..][..q_in];
                        for (s, x) in acc.iter_mut().zip(q_row) {
                            *s += w * f64::from(*x);
                        }
                    }
                    let dst = &mut out[(h * (c + r) + a) * q_in..][..q_in];
                    for (d, s) in dst.iter_mut().zip(&acc) {
                        *d = *s as f32;
                    }
                }
                for j in 0..r {
                    let src = &q[(h * (n + r) + n + j) * q_in..][..q_in];
                    out[(h * (c + r) + c + j) * q_in..][..q_in].copy_from_slice(src);
                }
            }
            out
        }
        Role::OAbsorbed => {
            let o = f32s(&inputs.o, raw[2]);
            let hidden = spec.hidden_size;
            if o.len() != hidden * heads * v || kv_b.len() != heads * (n + v) * c {
                return Err(short(&inputs.o));
            }
            let mut out = vec![0f32; hidden * heads * c];
            let mut acc = vec![0f64; c];
            for row in 0..hidden {
                for h in 0..heads {
                    // Columns of head h: Σ_k W_O[row, h, k] · W_UV[h, k, :].
                    acc.fill(0.0);
                    for k in 0..v {
                        let w = f64::from(o[row * heads * v + h * v + k]);
                        let uv = &kv_b[(h * (n + v) + n + k) * c..][..c];
                        for (s, x) in acc.iter_mut().zip(uv) {
                            *s += w * f64::from(*x);
                        }
                    }
                    let dst = &mut out[row * heads * c + h * c..][..c];
                    for (d, s) in dst.iter_mut().zip(&acc) {
                        *d = *s as f32;
                    }
                }
            }
            out
        }
        other => {
            return Err(FormatError::MissingTensor {
                path: Default::default(),
                tensor: other.to_string(),
                why: "only q_absorbed and o_absorbed are computed from other tensors".into(),
            });
        }
    };
    Ok(out.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn short(t: &SourceTensor) -> FormatError {
    FormatError::Safetensors {
        path: Default::default(),
        reason: format!("tensor {} has fewer bytes than its shape", t.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The absorbed products equal the explicit per-head computation on small
    /// random matrices: q_lat · c == q_nope · (W_UK c) and o' · c̄ == o · (W_UV c̄).
    #[test]
    fn absorption_preserves_scores_and_outputs() {
        let (heads, n, r, v, c, q_in, hidden) = (3usize, 5usize, 4usize, 6usize, 7usize, 9usize, 11usize);
        let mut seed = 7u32;
        let mut rnd = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32) - 0.5
                })
                .collect()
        };
        let (q, kv_b, o) = (rnd(heads * (n + r) * q_in), rnd(heads * (n + v) * c), rnd(hidden * heads * v));
        let mla = MlaSpec {
            q_lora_rank: Some(q_in),
            kv_lora_rank: c,
            qk_nope_head_dim: n,
            qk_rope_head_dim: r,
            v_head_dim: v,
            softmax_scale: 1.0,
        };
        let t = |shape: Vec<usize>| SourceTensor {
            name: "t".into(),
            unit: Unit::Layer(0),
            role: Role::Q,
            format: StorageFormat::Dense(DType::F32),
            shape,
            file: None,
            row_perm: None,
            index: 0,
        };
        let inputs = AbsorbInputs {
            q: t(vec![heads * (n + r), q_in]),
            kv_b: t(vec![heads * (n + v), c]),
            o: t(vec![hidden, heads * v]),
        };
        let mut spec = test_spec();
        spec.num_heads = heads;
        spec.hidden_size = hidden;
        let bytes = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let raw = [bytes(&q), bytes(&kv_b), bytes(&o)];
        let back = |b: Vec<u8>| dense_to_f32(DType::F32, &b);
        let qa = back(absorb(&spec, &mla, Role::QAbsorbed, &inputs, [&raw[0], &raw[1], &raw[2]]).unwrap());
        let oa = back(absorb(&spec, &mla, Role::OAbsorbed, &inputs, [&raw[0], &raw[1], &raw[2]]).unwrap());
        let (x, lat) = (rnd(q_in), rnd(c));
        let matvec = |w: &[f32], rows: usize, cols: usize, x: &[f32]| -> Vec<f64> {
            (0..rows).map(|i| (0..cols).map(|j| f64::from(w[i * cols + j]) * f64::from(x[j])).sum()).collect()
        };
        let q_full = matvec(&q, heads * (n + r), q_in, &x);
        let q_abs = matvec(&qa, heads * (c + r), q_in, &x);
        let kv_full = matvec(&kv_b, heads * (n + v), c, &lat);
        for h in 0..heads {
            let explicit: f64 = (0..n).map(|i| q_full[h * (n + r) + i] * kv_full[h * (n + v) + i]).sum();
            let absorbed: f64 = (0..c).map(|a| q_abs[h * (c + r) + a] * f64::from(lat[a])).sum();
            assert!((explicit - absorbed).abs() < 1e-5, "head {h}: {explicit} vs {absorbed}");
            for j in 0..r {
                assert!((q_full[h * (n + r) + n + j] - q_abs[h * (c + r) + c + j]).abs() < 1e-6, "rope row {j}");
            }
        }
        // Output: every head's value is W_UV,h · lat here (one latent for all heads).
        let vals: Vec<f32> = (0..heads)
            .flat_map(|h| (0..v).map(move |k| (h, k)))
            .map(|(h, k)| kv_full[h * (n + v) + n + k] as f32)
            .collect();
        let o_full = matvec(&o, hidden, heads * v, &vals);
        let lat_all: Vec<f32> = (0..heads).flat_map(|_| lat.iter().copied()).collect();
        let o_abs = matvec(&oa, hidden, heads * c, &lat_all);
        for i in 0..hidden {
            assert!((o_full[i] - o_abs[i]).abs() < 1e-5, "output {i}: {} vs {}", o_full[i], o_abs[i]);
        }
    }

    fn test_spec() -> ModelSpec {
        let v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 512
        });
        ModelSpec::from_config_value(&v, std::path::Path::new("config.json")).unwrap()
    }
}

//! `cargo xtask synth-gguf`: a random-weight GGUF with a real model's layer
//! shapes, for benchmarks against llama.cpp on the same file. The vocabulary
//! (every `tokenizer.*` key) is copied from a real GGUF (`--vocab-from`), so
//! llama.cpp loads it as it loads any llama model; the vocabulary size follows
//! that file, the decoder layers keep the preset's shapes.

use std::path::PathBuf;

use airllm_format::gguf::{GgmlType, GgufBuilder, GgufMetadata, GgufValue};
use airllm_quant::Codec;
use anyhow::{Context, bail};

/// Layer shapes to imitate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shapes {
    /// Llama 3 8B: hidden 4096, ffn 14336, 32 heads, 8 KV heads (128 per head).
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// Small: hidden 256, ffn 512, 4 heads, 2 KV heads (seconds to make; for trying the tools).
    Tiny,
}

/// Arguments of `cargo xtask synth-gguf`.
#[derive(clap::Args)]
pub struct Args {
    /// Which model's layer shapes to use.
    #[arg(long, value_enum, default_value = "llama3-8b")]
    pub preset: Shapes,
    /// Decoder layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// A GGUF file whose vocabulary (tokenizer.* keys) the new file takes.
    #[arg(long)]
    pub vocab_from: PathBuf,
    /// Tensor type of the weight matrices: q4_0, q4_1 or q8_0.
    #[arg(long, default_value = "q4_0")]
    pub r#type: String,
    /// Output .gguf file.
    #[arg(long)]
    pub out: PathBuf,
    /// RNG seed (the same seed gives the same bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Deterministic values in [-0.05, 0.05): splitmix64 per tensor. Weight values
/// do not change the speed of any kernel here, only their shapes do.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (codec, ty) = match a.r#type.as_str() {
        "q4_0" => (Codec::Q4_0, GgmlType::Q4_0),
        "q4_1" => (Codec::Q4_1, GgmlType::Q4_1),
        "q8_0" => (Codec::Q8_0, GgmlType::Q8_0),
        other => bail!("--type {other}: use q4_0, q4_1 or q8_0"),
    };
    if a.layers == 0 {
        bail!("--layers must be at least 1");
    }
    let (hidden, ffn, heads, kv_heads) = match a.preset {
        Shapes::Llama3_8b => (4096usize, 14336usize, 32usize, 8usize),
        Shapes::Tiny => (256, 512, 4, 2),
    };
    let head_dim = hidden / heads;
    let bytes =
        std::fs::read(&a.vocab_from).with_context(|| format!("reading --vocab-from {}", a.vocab_from.display()))?;
    let src =
        GgufMetadata::parse(&bytes, &a.vocab_from).with_context(|| format!("parsing {}", a.vocab_from.display()))?;
    let vocab = src
        .get_array("tokenizer.ggml.tokens")
        .map(<[GgufValue]>::len)
        .with_context(|| format!("{} has no tokenizer.ggml.tokens", a.vocab_from.display()))?;
    drop(bytes);

    let mut b = GgufBuilder::new();
    let arch = "llama";
    b.kv("general.architecture", GgufValue::String(arch.into()));
    b.kv("general.name", GgufValue::String(format!("synthetic {:?} x {} layers", a.preset, a.layers)));
    let u32kv = |b: &mut GgufBuilder, k: &str, v: usize| {
        b.kv(&format!("{arch}.{k}"), GgufValue::U32(v as u32));
    };
    u32kv(&mut b, "block_count", a.layers);
    u32kv(&mut b, "context_length", 8192);
    u32kv(&mut b, "embedding_length", hidden);
    u32kv(&mut b, "feed_forward_length", ffn);
    u32kv(&mut b, "attention.head_count", heads);
    u32kv(&mut b, "attention.head_count_kv", kv_heads);
    u32kv(&mut b, "rope.dimension_count", head_dim);
    u32kv(&mut b, "vocab_size", vocab);
    b.kv(&format!("{arch}.rope.freq_base"), GgufValue::F32(500_000.0));
    b.kv(&format!("{arch}.attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5));
    for (k, v) in src.kv.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        b.kv(k, v.clone());
    }

    let mut seed = a.seed;
    let mut matrix = |b: &mut GgufBuilder, name: &str, rows: usize, cols: usize| -> anyhow::Result<()> {
        seed = seed.wrapping_add(1);
        let w = values(seed, rows * cols);
        let data = codec.encode_matrix(w.as_slice().into(), rows, cols).with_context(|| format!("encoding {name}"))?;
        b.tensor_raw(name, ty, &[rows, cols], data);
        Ok(())
    };
    let ones = vec![1.0f32; hidden];
    matrix(&mut b, "token_embd.weight", vocab, hidden)?;
    for l in 0..a.layers {
        eprintln!("layer {l} of {}", a.layers);
        b.tensor_f32(&format!("blk.{l}.attn_norm.weight"), &[hidden], &ones);
        matrix(&mut b, &format!("blk.{l}.attn_q.weight"), heads * head_dim, hidden)?;
        matrix(&mut b, &format!("blk.{l}.attn_k.weight"), kv_heads * head_dim, hidden)?;
        matrix(&mut b, &format!("blk.{l}.attn_v.weight"), kv_heads * head_dim, hidden)?;
        matrix(&mut b, &format!("blk.{l}.attn_output.weight"), hidden, heads * head_dim)?;
        b.tensor_f32(&format!("blk.{l}.ffn_norm.weight"), &[hidden], &ones);
        matrix(&mut b, &format!("blk.{l}.ffn_gate.weight"), ffn, hidden)?;
        matrix(&mut b, &format!("blk.{l}.ffn_up.weight"), ffn, hidden)?;
        matrix(&mut b, &format!("blk.{l}.ffn_down.weight"), hidden, ffn)?;
    }
    b.tensor_f32("output_norm.weight", &[hidden], &ones);
    matrix(&mut b, "output.weight", vocab, hidden)?;
    b.write(&a.out).with_context(|| format!("writing {}", a.out.display()))?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!("wrote {} ({:.2} GB, vocab {vocab} from {})", a.out.display(), size as f64 / 1e9, a.vocab_from.display());
    Ok(())
}

//! `cargo xtask synth`: random-weight checkpoints with the exact shapes of real
//! models. Streaming speed does not depend on weight values, so benchmarks use
//! these instead of multi-gigabyte downloads.
//!
//! Two outputs:
//! - default: a Hugging Face checkpoint directory (config.json, one safetensors
//!   file per execution unit plus model.safetensors.index.json, a tokenizer),
//!   written tensor by tensor so a 70B-shaped one needs little RAM;
//! - with `--compression`: a shard directory written directly (random weights
//!   generated, encoded and written layer by layer; nothing uncompressed touches
//!   the disk), which is how the 70B 4-bit benchmark model fits a 64 GB disk.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use airllm_format::{
    DType, ModelSpec, Role, SourceFile, SourceTensor, StorageFormat, TensorSource, Unit, expected_tensors,
    roles::hf_name,
};
use anyhow::Context;
use rayon::prelude::*;
use serde_json::{Value, json};

/// Model shapes to imitate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Preset {
    /// 2 layers, hidden 64 (seconds to make; for trying the tools).
    Tiny,
    /// Llama 3 8B (32 layers, hidden 4096, GQA 32/8, vocab 128256): 16.06 GB in bf16.
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// Llama 3 70B (80 layers, hidden 8192, GQA 64/8): 141 GB in bf16; use --compression.
    #[value(name = "llama3-70b")]
    Llama3_70b,
    /// Qwen2.5 7B (28 layers, hidden 3584, q/k/v biases, vocab 152064).
    #[value(name = "qwen2.5-7b")]
    Qwen25_7b,
    /// Mixtral 8x7B (32 layers, 8 experts, top-2).
    #[value(name = "mixtral-8x7b")]
    Mixtral8x7b,
}

/// Element type of the synthesized weights.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SynthDType {
    /// bfloat16 (what these models ship in).
    Bf16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

/// Arguments of `cargo xtask synth`.
#[derive(clap::Args)]
pub struct Args {
    /// Which model's shapes to use.
    #[arg(long, value_enum)]
    pub preset: Preset,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep only the first N decoder layers (smaller files, same per-layer shapes).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Weight dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: SynthDType,
    /// RNG seed (the same seed gives the same bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a shard directory directly with this codec (none, 8bit, 4bit, q8_0, ...)
    /// instead of a Hugging Face checkpoint.
    #[arg(long)]
    pub compression: Option<airllm_quant::Compression>,
}

fn config_for(preset: Preset, layers: Option<usize>, dtype: SynthDType) -> Value {
    let torch_dtype = match dtype {
        SynthDType::Bf16 => "bfloat16",
        SynthDType::F16 => "float16",
        SynthDType::F32 => "float32",
    };
    let llama3_rope = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let mut c = match preset {
        Preset::Tiny => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 128, "vocab_size": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 256, "tie_word_embeddings": false }),
        Preset::Llama3_8b => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "rope_scaling": llama3_rope, "max_position_embeddings": 131072,
            "tie_word_embeddings": false }),
        Preset::Llama3_70b => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
            "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
            "intermediate_size": 28672, "vocab_size": 128256, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "rope_scaling": llama3_rope, "max_position_embeddings": 131072,
            "tie_word_embeddings": false }),
        Preset::Qwen25_7b => json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "intermediate_size": 18944, "vocab_size": 152064, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "max_position_embeddings": 32768, "tie_word_embeddings": false,
            "use_sliding_window": false, "sliding_window": 131072 }),
        Preset::Mixtral8x7b => json!({
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 32000, "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "max_position_embeddings": 32768, "tie_word_embeddings": false,
            "num_local_experts": 8, "num_experts_per_tok": 2 }),
    };
    c["torch_dtype"] = json!(torch_dtype);
    // The bundled tokenizer's special tokens.
    c["bos_token_id"] = json!(0);
    c["eos_token_id"] = json!(1);
    c["pad_token_id"] = json!(2);
    if let Some(n) = layers {
        c["num_hidden_layers"] = json!(n);
    }
    c
}

/// The bundled byte-level BPE tokenizer (vocab 512) of the test fixtures: random
/// weights need no real vocabulary, only valid ids.
const TOKENIZER_JSON: &str = include_str!("../../../testdata/tiny/llama/tokenizer.json");
const TOKENIZER_CONFIG: &str = include_str!("../../../testdata/tiny/llama/tokenizer_config.json");

/// Random weights generated on demand, deterministic per (seed, tensor).
pub struct SynthSource {
    spec: ModelSpec,
    dtype: DType,
    seed: u64,
    tensors: Vec<SourceTensor>,
}

impl SynthSource {
    pub fn new(spec: ModelSpec, dtype: DType, seed: u64) -> Self {
        let tensors = expected_tensors(&spec)
            .into_iter()
            .enumerate()
            .map(|(index, (unit, role, shape))| SourceTensor {
                name: hf_name(spec.family, unit, role),
                unit,
                role,
                format: StorageFormat::Dense(dtype),
                shape,
                file: None,
                row_perm: None,
                index,
            })
            .collect();
        SynthSource { spec, dtype, seed, tensors }
    }

    /// Fill `out` with this tensor's values encoded as the source dtype.
    fn generate(&self, t: &SourceTensor, out: &mut [u8]) {
        let cols = *t.shape.last().unwrap_or(&1) as f32;
        // (center, half-width of a uniform distribution) per role, like common inits.
        let (center, spread) = match t.role {
            Role::AttnNorm | Role::MlpNorm | Role::FinalNorm | Role::QNorm | Role::KNorm => (1.0, 0.1),
            Role::QBias | Role::KBias | Role::VBias | Role::QkvBias | Role::OBias => (0.0, 0.05),
            Role::Embedding => (0.0, 1.0),
            _ => (0.0, (3.0 / cols).sqrt()),
        };
        let size = self.dtype.size();
        const CHUNK: usize = 1 << 16;
        let seed = self.seed ^ (t.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        out.par_chunks_mut(CHUNK * size).enumerate().for_each(|(ci, chunk)| {
            let mut state = seed ^ (ci as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            for e in chunk.chunks_exact_mut(size) {
                // splitmix64: fast, good enough for benchmark weights.
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                let v = center + spread * (2.0 * u - 1.0);
                match self.dtype {
                    DType::F32 => e.copy_from_slice(&v.to_le_bytes()),
                    DType::F16 => e.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                    DType::Bf16 => e.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                }
            }
        });
    }
}

impl TensorSource for SynthSource {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }
    fn files(&self) -> &[SourceFile] {
        &[]
    }
    fn read(&self, t: &SourceTensor) -> airllm_format::Result<Cow<'_, [u8]>> {
        let mut v = vec![0u8; t.byte_len()];
        self.generate(t, &mut v);
        Ok(Cow::Owned(v))
    }
    fn describe(&self) -> String {
        format!("synthetic random weights (seed {}, {})", self.seed, self.dtype)
    }
    fn tokenizer_files(&self) -> airllm_format::Result<Vec<(String, Vec<u8>)>> {
        Ok(vec![
            ("tokenizer.json".into(), TOKENIZER_JSON.as_bytes().to_vec()),
            ("tokenizer_config.json".into(), TOKENIZER_CONFIG.as_bytes().to_vec()),
        ])
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dtype = match a.dtype {
        SynthDType::Bf16 => DType::Bf16,
        SynthDType::F16 => DType::F16,
        SynthDType::F32 => DType::F32,
    };
    let config = config_for(a.preset, a.layers, a.dtype);
    let spec = ModelSpec::from_config_value(&config, Path::new("synth config.json"))?;
    let src = SynthSource::new(spec, dtype, a.seed);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if let Some(c) = a.compression {
        let opts = airllm_format::ShardOptions { compression: c, ..Default::default() };
        let report = airllm_format::write_shards(&src, &a.out, &opts)?;
        println!("{}", report.summary(&a.out));
        return Ok(());
    }
    write_hf_checkpoint(&src, &config, &a.out)?;
    Ok(())
}

/// Write a Hugging Face layout checkpoint: one safetensors file per unit.
fn write_hf_checkpoint(src: &SynthSource, config: &Value, out: &Path) -> anyhow::Result<()> {
    let spec = src.spec();
    let total: u64 = src.tensors.iter().map(|t| t.byte_len() as u64).sum();
    let needed = total + (1 << 20);
    let free = fs4::available_space(out).unwrap_or(u64::MAX);
    anyhow::ensure!(
        needed <= free,
        "{} needs {} but only {} are free in {}; use --layers, or --compression to write shards directly",
        spec.family,
        airllm_format::human_bytes(needed),
        airllm_format::human_bytes(free),
        out.display()
    );
    let mut units: Vec<Unit> = src.tensors.iter().map(|t| t.unit).collect();
    units.dedup();
    let n = units.len();
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(s) = indicatif::ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(s.progress_chars("=> "));
    }
    let mut weight_map = serde_json::Map::new();
    for (i, unit) in units.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        let tensors: Vec<&SourceTensor> = src.tensors.iter().filter(|t| t.unit == *unit).collect();
        bar.set_message(unit.to_string());
        write_safetensors(src, &tensors, &out.join(&name), &bar)?;
        for t in tensors {
            weight_map.insert(t.name.clone(), json!(name));
        }
    }
    bar.finish_and_clear();
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index)?)?;
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(config)?)?;
    for (name, bytes) in src.tokenizer_files()? {
        std::fs::write(out.join(name), bytes)?;
    }
    println!(
        "wrote {} ({} parameters, {}) to {}",
        spec.family,
        spec.parameter_count(),
        airllm_format::human_bytes(total),
        out.display()
    );
    Ok(())
}

/// Stream tensors into a safetensors file without holding them all in memory.
fn write_safetensors(
    src: &SynthSource,
    tensors: &[&SourceTensor],
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for t in tensors {
        let len = t.byte_len();
        header.insert(
            t.name.clone(),
            json!({"dtype": src.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let mut w =
        BufWriter::with_capacity(8 << 20, File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    for t in tensors {
        let data = src.read(t)?;
        w.write_all(&data).with_context(|| format!("writing {}", tmp.display()))?;
        bar.inc(data.len() as u64);
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

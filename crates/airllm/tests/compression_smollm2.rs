//! Compression quality on real weights: SmolLM2-135M dequantized to f32 (from its
//! GGUF) is the uncompressed reference; the same weights re-encoded with 8bit
//! (q8_0) and 4bit (q4_1) are compared on the three golden prompts, every
//! position: top-1 agreement and mean KL divergence of the next-token
//! distributions. Prints the README table; asserts loose floors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::borrow::Cow;
use std::path::Path;

use airllm::{AutoModel, Options};
use airllm_format::gguf::GgufSource;
use airllm_format::{DType, ModelSpec, ShardOptions, SourceFile, SourceTensor, StorageFormat, TensorSource};
use safetensors::SafeTensors;

/// The GGUF with every quantized tensor presented as f32.
struct Dequantized {
    inner: GgufSource,
    tensors: Vec<SourceTensor>,
}

impl TensorSource for Dequantized {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }
    fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }
    fn files(&self) -> &[SourceFile] {
        self.inner.files()
    }
    fn read(&self, t: &SourceTensor) -> airllm_format::Result<Cow<'_, [u8]>> {
        let orig = &self.inner.tensors()[t.index];
        let raw = self.inner.read(orig)?;
        match orig.format {
            StorageFormat::Quant(c) => {
                let cols = *orig.shape.last().unwrap();
                let rows = orig.shape.iter().product::<usize>() / cols;
                let v = c.decode_matrix(&raw, rows, cols).unwrap();
                Ok(Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            }
            _ => Ok(raw),
        }
    }
    fn describe(&self) -> String {
        format!("dequantized {}", self.inner.describe())
    }
    fn tokenizer_files(&self) -> airllm_format::Result<Vec<(String, Vec<u8>)>> {
        self.inner.tokenizer_files()
    }
}

/// 4bit is q4_1, which these weights were stored in: it re-encodes them exactly,
/// so q4_0 and nf4 are measured too for a real 4-bit comparison.
const CODECS: [&str; 5] = ["none", "8bit", "4bit", "q4_0", "nf4"];

fn ids(bytes: &[u8], name: &str) -> Vec<u32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensor(name).unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

#[test]
fn smollm2_compression_quality() {
    let Some(gguf) = airllm_format::gguf::smollm2_path() else {
        assert!(std::env::var_os("CI").is_none(), "CI must fetch SmolLM2 (see .ci/run)");
        eprintln!("skipping: SmolLM2 GGUF not found");
        return;
    };
    if airllm_gpu::GpuContext::new(&Default::default()).is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have lavapipe");
        return;
    }
    let inner = GgufSource::open(&gguf).unwrap();
    let tensors = inner
        .tensors()
        .iter()
        .map(|t| SourceTensor {
            format: if matches!(t.format, StorageFormat::Quant(_)) {
                StorageFormat::Dense(DType::F32)
            } else {
                t.format
            },
            ..t.clone()
        })
        .collect();
    let src = Dequantized { inner, tensors };
    let golden =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/smollm2/golden.safetensors")).unwrap();
    let prompts: Vec<Vec<u32>> =
        ["plain", "chat", "unicode"].iter().map(|n| ids(&golden, &format!("{n}.input_ids"))).collect();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut logits = Vec::new();
    for codec in CODECS {
        let dir = tmp.path().join(codec);
        let opts = ShardOptions { compression: codec.parse().unwrap(), progress: false, ..Default::default() };
        airllm_format::write_shards(&src, &dir, &opts).unwrap();
        // The CPU executor: its matmuls match an f32 matmul over the decoded weights
        // (Precision::Exact), and it is far faster than lavapipe on a 540 MB f32 model.
        let opts = Options { max_context: Some(64), device: airllm::Device::Cpu, ..Options::default() };
        let mut m = AutoModel::from_pretrained(dir.to_str().unwrap(), opts).unwrap();
        logits.push(
            prompts.iter().map(|p| m.forward_logits(std::slice::from_ref(p)).unwrap().remove(0)).collect::<Vec<_>>(),
        );
        std::fs::remove_dir_all(&dir).ok();
    }
    let v = 49152;
    eprintln!("| codec | top-1 agreement | mean KL | max KL |");
    for (ci, codec) in CODECS[1..].iter().enumerate() {
        let (mut agree, mut total, mut kl_sum, mut kl_max) = (0, 0, 0f64, 0f64);
        for (a, b) in logits[0].iter().zip(&logits[ci + 1]) {
            for (ra, rb) in a.chunks(v).zip(b.chunks(v)) {
                agree += usize::from(airllm::sampler::argmax(ra) == airllm::sampler::argmax(rb));
                total += 1;
                let (p, q) = (softmax(ra), softmax(rb));
                let kl: f64 =
                    p.iter().zip(&q).map(|(x, y)| if *x > 0.0 { x * (x / y.max(1e-30)).ln() } else { 0.0 }).sum();
                kl_sum += kl;
                kl_max = kl_max.max(kl);
            }
        }
        let top1 = agree as f64 / total as f64;
        eprintln!("| {codec} | {top1:.3} ({agree}/{total}) | {:.2e} | {kl_max:.2e} |", kl_sum / total as f64);
        let floor = if *codec == "8bit" { 0.9 } else { 0.5 };
        assert!(top1 >= floor, "{codec}: top-1 agreement {top1}");
    }
}

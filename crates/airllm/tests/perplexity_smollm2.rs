//! The README's perplexity table: SmolLM2-135M dequantized to f32 (from its Q4_1
//! GGUF) against the same weights re-encoded with 8bit (q8_0) and each 4-bit codec,
//! on the bundled public-domain text (testdata/text). Slow on a software GPU
//! (several minutes), so it runs on request:
//!
//! ```sh
//! cargo test --release -p airllm --test perplexity_smollm2 -- --ignored --nocapture
//! ```
//!
//! `AIRLLM_PPL_TOKENS=N` scores only the first N tokens of the text (one chunk of N
//! when N <= 512), for a quick run on a slow machine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::borrow::Cow;
use std::path::Path;

use airllm::perplexity::{DivergenceAcc, chunk_nlls, chunks, perplexity};
use airllm::{AutoModel, Options, Prompt};
use airllm_format::gguf::GgufSource;
use airllm_format::{DType, ModelSpec, ShardOptions, SourceFile, SourceTensor, StorageFormat, TensorSource};

/// The GGUF with every quantized tensor presented as f32 (as in compression_smollm2.rs).
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

const CODECS: [&str; 5] = ["none", "q8_0", "q4_1", "q4_0", "nf4"];
const CTX: usize = 512;

#[test]
#[ignore = "several minutes on lavapipe; prints the README table"]
fn smollm2_perplexity_by_codec() {
    let Some(gguf) = airllm_format::gguf::smollm2_path() else {
        eprintln!("skipping: SmolLM2 GGUF not found");
        return;
    };
    if airllm_gpu::GpuContext::new(&Default::default()).is_err() {
        eprintln!("skipping: no GPU adapter");
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
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/text/pride_and_prejudice_ch1.txt"),
    )
    .unwrap();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut reference: Vec<Vec<f32>> = Vec::new();
    let mut rows = Vec::new();
    for codec in CODECS {
        let dir = tmp.path().join(codec);
        let opts = ShardOptions { compression: codec.parse().unwrap(), progress: false, ..Default::default() };
        let report = airllm_format::write_shards(&src, &dir, &opts).unwrap();
        let bytes = report.manifest.total_bytes();
        let mut m =
            AutoModel::from_pretrained(dir.to_str().unwrap(), Options { max_context: Some(CTX), ..Options::default() })
                .unwrap();
        let mut ids = m.encode(&Prompt::Text(text.clone())).unwrap();
        if let Some(n) = std::env::var("AIRLLM_PPL_TOKENS").ok().and_then(|v| v.parse::<usize>().ok()) {
            ids.truncate(n);
        }
        let v = m.spec().vocab_size;
        let (mut nlls, mut acc) = (Vec::new(), DivergenceAcc::default());
        for (k, c) in chunks(&ids, CTX).iter().enumerate() {
            let logits = m.forward_logits(&[c.to_vec()]).unwrap().remove(0);
            nlls.extend(chunk_nlls(&logits, c, v));
            if codec == "none" {
                reference.push(logits);
            } else {
                acc.add_chunk(&reference[k], &logits, c.len() - 1, v);
            }
        }
        let p = perplexity(&nlls);
        let d = (codec != "none").then(|| acc.finish());
        eprintln!("{codec}: {p:?} {d:?}");
        rows.push((codec, bytes, p, d, ids.len()));
        drop(m);
        std::fs::remove_dir_all(&dir).ok();
    }
    eprintln!(
        "\nSmolLM2-135M-Instruct, the first {} tokens of testdata/text/pride_and_prejudice_ch1.txt, --ctx {CTX}",
        rows[0].4
    );
    eprintln!("| weights | shards | perplexity (95% CI) | mean KL vs f32 | max KL | top-1 agreement |");
    eprintln!("|---|---|---|---|---|---|");
    for (codec, bytes, p, d, _) in &rows {
        let name = if *codec == "none" { "f32 (dequantized)" } else { codec };
        let (kl, mx, t1) = match d {
            Some(d) => (format!("{:.4}", d.kl.mean), format!("{:.3}", d.kl_max), format!("{:.3}", d.top1_agreement)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        eprintln!(
            "| {name} | {} | {:.3} ({:.3}-{:.3}) | {kl} | {mx} | {t1} |",
            airllm_format::human_bytes(*bytes),
            p.perplexity,
            p.ci95[0],
            p.ci95[1]
        );
    }
    // Loose sanity: 8-bit stays close to the reference.
    let f32_ppl = rows[0].2.perplexity;
    assert!((rows[1].2.perplexity / f32_ppl - 1.0).abs() < 0.05, "q8_0 moved perplexity by more than 5%");
}

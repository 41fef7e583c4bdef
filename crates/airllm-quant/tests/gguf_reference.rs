//! Decoding real GGUF rows (SmolLM2-135M-Instruct, Q4_1 and Q8_0) must
//! reproduce llama.cpp's reference decoder (gguf-py 0.19) bit for bit, and
//! re-encoding the decoded values must give the original bytes back.
//!
//! Data: `tests/data/dequant.safetensors`, copied from the shared fixtures
//! (`smollm2/dequant.safetensors`; see its README).

use std::path::Path;

use airllm_quant::{Codec, Floats};
use anyhow::{Context, Result, bail, ensure};
use safetensors::{Dtype, SafeTensors};

const TENSORS: [(&str, Codec); 4] = [
    ("blk.0.attn_q.weight", Codec::Q4_1),
    ("blk.0.ffn_down.weight", Codec::Q4_1),
    ("token_embd.weight", Codec::Q8_0),
    ("blk.29.ffn_up.weight", Codec::Q4_1),
];

struct Case {
    name: &'static str,
    codec: Codec,
    rows: usize,
    cols: usize,
    raw: Vec<u8>,
    want: Vec<f32>,
}

fn load() -> Result<Vec<Case>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dequant.safetensors");
    let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&data).with_context(|| format!("parsing {}", path.display()))?;
    let mut cases = Vec::new();
    for (name, codec) in TENSORS {
        let raw = st.tensor(&format!("{name}.raw_rows"))?;
        let deq = st.tensor(&format!("{name}.dequant_rows"))?;
        ensure!(raw.dtype() == Dtype::U8 && deq.dtype() == Dtype::F32, "{name}: dtypes");
        let (&[rows, row_bytes], &[rows2, cols]) = (raw.shape(), deq.shape()) else {
            bail!("{name}: expected 2-D tensors");
        };
        ensure!(rows == rows2, "{name}: row counts differ");
        ensure!(row_bytes == codec.row_bytes(cols), "{name}: {row_bytes} bytes per row is not {codec} of {cols}");
        let want = deq.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        cases.push(Case { name, codec, rows, cols, raw: raw.data().to_vec(), want });
    }
    Ok(cases)
}

#[test]
fn decode_is_bit_identical_to_llama_cpp() -> Result<()> {
    for case in load()? {
        let got = case.codec.decode_matrix(&case.raw, case.rows, case.cols)?;
        for (i, (g, w)) in got.iter().zip(&case.want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{}: row {} col {}: decoded {g}, llama.cpp {w}",
                case.name,
                i / case.cols,
                i % case.cols
            );
        }
        // The reference dot product agrees with the decoded values too.
        let rb = case.codec.row_bytes(case.cols);
        let x: Vec<f32> = (0..case.cols).map(|i| ((i * 7919 % 113) as f32 - 56.0) / 56.0).collect();
        for r in 0..case.rows {
            let want: f64 = case.want[r * case.cols..][..case.cols]
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let got = case.codec.dot_row(&case.raw[r * rb..][..rb], &x);
            assert!(
                (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{} row {r}: {got} vs {want}",
                case.name
            );
        }
    }
    Ok(())
}

#[test]
fn reencoding_decoded_rows_gives_the_gguf_bytes() -> Result<()> {
    for case in load()? {
        let bytes = case.codec.encode_matrix(Floats::F32(&case.want), case.rows, case.cols)?;
        let bb = case.codec.block_bytes();
        let differing: Vec<usize> =
            (0..bytes.len() / bb).filter(|&b| bytes[b * bb..][..bb] != case.raw[b * bb..][..bb]).collect();
        assert!(
            differing.is_empty(),
            "{} ({}): {} of {} blocks differ, first {:?}",
            case.name,
            case.codec,
            differing.len(),
            bytes.len() / bb,
            differing.first()
        );
    }
    Ok(())
}

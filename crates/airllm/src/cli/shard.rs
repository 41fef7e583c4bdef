//! `airllm shard`: split a checkpoint into layer shards.

use std::path::PathBuf;

use anyhow::Context;

/// Split a checkpoint into one shard file per execution unit plus manifest.json.
#[derive(clap::Args, Debug)]
pub struct ShardArgs {
    /// Checkpoint directory, .gguf file, or repo id (org/name) in the local Hugging Face cache.
    pub model: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Codec for 2-D weight matrices: none, 8bit (q8_0), 4bit (q4_1), or
    /// q8_0/q4_0/q4_1/nf4/q5_0/q5_1/q4_k/q5_k/q6_k. With none, GGUF tensors are
    /// stored as the file holds them; a codec re-encodes GGUF matrices too
    /// (K-quants fall back to q5_0/q5_1/q8_0 for rows that are not whole
    /// 256-value super-blocks, as llama.cpp does). Norms and biases
    /// are stored as f32; embeddings keep their source dtype.
    #[arg(long, default_value = "none")]
    pub compression: airllm_quant::Compression,
    /// Delete each source file once everything in it is written and verified.
    #[arg(long)]
    pub delete_original: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ShardArgs) -> anyhow::Result<()> {
    let opts = airllm_format::ShardOptions {
        compression: a.compression,
        delete_original: a.delete_original,
        progress: !a.json,
        ..Default::default()
    };
    let r = airllm_format::writer::shard_model(&a.model, &a.out, &opts)
        .with_context(|| format!("sharding {} into {}", a.model, a.out.display()))?;
    if a.json {
        let v = serde_json::json!({
            "out": a.out, "shards": r.manifest.shards.len(), "bytes": r.manifest.total_bytes(),
            "written": r.written, "kept": r.kept, "bytes_written": r.bytes_written, "seconds": r.seconds,
            "write_gbps": if r.seconds > 0.0 { r.bytes_written as f64 / r.seconds / 1e9 } else { 0.0 },
            "deleted": r.deleted, "compression": r.manifest.compression,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", r.summary(&a.out));
    }
    Ok(())
}

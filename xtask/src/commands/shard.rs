//! `cargo xtask shard`: the same job as `airllm shard`, through the same library call.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `cargo xtask shard`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory, .gguf file, shard directory or Hugging Face repo id (org/name, local cache only).
    pub model: String,
    /// Output directory for the shards and manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Codec for 2-D weight matrices: none, 8bit (q8_0), 4bit, or a codec name (q8_0, q4_0, q4_1, nf4).
    #[arg(long, default_value = "none")]
    pub compression: airllm_quant::Compression,
    /// Delete each source file once every tensor in it is written and verified.
    #[arg(long)]
    pub delete_original: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let opts = airllm_format::ShardOptions {
        compression: a.compression,
        delete_original: a.delete_original,
        progress: true,
        ..Default::default()
    };
    let report = airllm_format::writer::shard_model(&a.model, &a.out, &opts)
        .with_context(|| format!("sharding {} into {}", a.model, a.out.display()))?;
    println!("{}", report.summary(&a.out));
    Ok(())
}

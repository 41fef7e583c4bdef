//! `airllm pull`: download a model from the Hugging Face Hub into its cache.

use airllm_format::human_bytes;
use anyhow::Context;

/// Download a model from the Hugging Face Hub (resumable, verified) into the
/// Hugging Face cache that transformers and huggingface-cli use.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Repo id: ORG/NAME, or ORG/NAME:TAG for one quantization of a GGUF repo
    /// (ORG/NAME:Q4_K_M, picked as llama.cpp's -hf does).
    pub repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Fetch only files matching this glob (repeatable; `*` also crosses `/`). Default:
    /// what a model needs (safetensors + configs + tokenizer, or one GGUF file).
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "hub")]
pub fn run(a: PullArgs) -> anyhow::Result<()> {
    let (repo, tag) = airllm_format::hub::split_tag(&a.repo);
    if !airllm_format::hub::looks_like_repo_id(repo) {
        anyhow::bail!("{:?} is not a repo id; give ORG/NAME (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)", a.repo);
    }
    let cfg = airllm::hub::HubConfig::from_env()?;
    let opts = airllm::hub::PullOptions {
        revision: a.revision.clone(),
        include: a.include.clone(),
        quant: tag.map(str::to_owned),
        progress: !a.json,
        ..Default::default()
    };
    if !a.json && !cfg.offline {
        eprintln!("pulling {repo} ({}) from {} into {}", a.revision, cfg.endpoint, cfg.cache_dir.display());
    }
    let p = airllm::hub::pull(&cfg, repo, &opts).with_context(|| format!("pulling {repo}"))?;
    let fetched: u64 = p.files.iter().map(|f| f.downloaded).sum();
    if a.json {
        let v = serde_json::json!({
            "repo": p.repo, "commit": p.commit, "snapshot": p.snapshot, "model_path": p.model_path(),
            "downloaded_bytes": fetched,
            "files": p.files.iter().map(|f| serde_json::json!({
                "path": f.path, "bytes": f.bytes, "downloaded": f.downloaded, "resumed_from": f.resumed_from, "digest": f.digest,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    for f in &p.files {
        let how = if f.downloaded == 0 {
            "cached".to_owned()
        } else if f.resumed_from > 0 {
            format!("resumed at {}", human_bytes(f.resumed_from))
        } else {
            "downloaded".to_owned()
        };
        println!("  {:<40} {:>10}  {how}", f.path, human_bytes(f.bytes));
    }
    println!(
        "{} at {} ({} fetched): {}",
        p.repo,
        &p.commit[..p.commit.len().min(12)],
        human_bytes(fetched),
        p.model_path().display()
    );
    Ok(())
}

#[cfg(not(feature = "hub"))]
pub fn run(_a: PullArgs) -> anyhow::Result<()> {
    anyhow::bail!("this airllm was built without the `hub` feature, so it cannot download models")
}

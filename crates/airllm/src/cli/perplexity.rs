//! `airllm perplexity`: how well a model predicts a text, and how far a
//! compressed model's predictions move from a reference model's.

use std::path::PathBuf;

use anyhow::Context;

use super::args::ModelArgs;

/// Perplexity of a text (95% confidence interval), and with --kl-base the KL
/// divergence and top-1 agreement against a reference model.
#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (UTF-8; `-` for stdin). It is tokenized as `generate` tokenizes a prompt.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Chunk length in tokens: the text is cut into chunks of this many tokens, each run from
    /// an empty context, and every token after the first of each chunk is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Reference model (e.g. the uncompressed checkpoint) for KL divergence and top-1 agreement.
    #[arg(long, value_name = "MODEL")]
    pub kl_base: Option<String>,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(mut a: PerplexityArgs) -> anyhow::Result<()> {
    if a.ctx < 2 {
        anyhow::bail!("--ctx must be at least 2 tokens (one to condition on, one to score)");
    }
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading the text from stdin")?;
        s
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("reading --file {}", a.file.display()))?
    };
    if a.model.engine.max_context.is_none() {
        a.model.engine.max_context = Some(a.ctx);
    }
    let progress = !a.json;
    let mut model = a.model.load(progress)?;
    if model.engine().max_context() < a.ctx {
        anyhow::bail!(
            "--ctx {} is longer than the model's context ({}); lower --ctx",
            a.ctx,
            model.engine().max_context()
        );
    }
    let ids = model.encode(&airllm::Prompt::Text(text))?;
    let mut base = match &a.kl_base {
        Some(m) => {
            let mut b = a.model.clone();
            b.model = m.clone();
            b.compression = airllm_quant::Compression::None;
            b.shards_dir = None;
            Some(b.load(progress).with_context(|| format!("loading --kl-base {m}"))?)
        }
        None => None,
    };
    let bar = if progress { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    if let Ok(s) = indicatif::ProgressStyle::with_template("scoring {bar:30} {pos}/{len} chunks, eta {eta}") {
        bar.set_style(s);
    }
    let ev = airllm::perplexity::evaluate(&mut model, base.as_mut(), &ids, a.ctx, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if a.json {
        let v = serde_json::json!({
            "model": a.model.model, "file": a.file, "ctx": ev.ctx, "chunks": ev.chunks, "tokens": ev.model.tokens,
            "perplexity": ev.model.perplexity, "ci95": ev.model.ci95, "nll": ev.model.nll,
            "base": ev.base.as_ref().map(|b| serde_json::json!({"model": a.kl_base, "perplexity": b.perplexity, "ci95": b.ci95})),
            "kl_divergence": ev.divergence,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let p = &ev.model;
    println!(
        "perplexity {:.4} (95% CI {:.4} .. {:.4}) over {} tokens in {} chunk(s) of up to {} tokens; mean NLL {:.4} ± {:.4} nats",
        p.perplexity, p.ci95[0], p.ci95[1], p.tokens, ev.chunks, ev.ctx, p.nll.mean, p.nll.se
    );
    if let (Some(b), Some(d)) = (&ev.base, &ev.divergence) {
        println!("reference perplexity {:.4} (95% CI {:.4} .. {:.4})", b.perplexity, b.ci95[0], b.ci95[1]);
        println!(
            "KL divergence vs reference: mean {:.6} ± {:.6}, median {:.6}, p99 {:.6}, max {:.6}; top-1 agreement {:.2}% of {} positions",
            d.kl.mean,
            d.kl.se,
            d.kl_median,
            d.kl_p99,
            d.kl_max,
            100.0 * d.top1_agreement,
            d.positions
        );
    }
    Ok(())
}

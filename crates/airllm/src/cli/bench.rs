//! `airllm bench`: prefill time, time per generated token, effective streaming
//! GB/s, peak VRAM and where the time went; `--io-only` measures the shard reader
//! against a plain sequential read of the same files.

use airllm::{AutoModel, GenerateOptions, Prompt, Timings};
use airllm_format::human_bytes;
use anyhow::Context;

use super::args::ModelArgs;

/// Measure prefill and decode speed (or, with --io-only, the reader alone).
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens (synthetic ids; ignored with --prompt / --file).
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// A real prompt instead of synthetic ids (what speculation needs to be measured on).
    #[arg(long, short = 'p', conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
    /// Wrap --prompt / --file in the model's chat template (as a user message).
    #[arg(long)]
    pub chat: bool,
    /// Tokens to generate (timed after the first).
    #[arg(long, default_value_t = 16)]
    pub new_tokens: usize,
    /// Prompts decoded together as one batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Only measure reading the shards (model must be a shard directory).
    #[arg(long)]
    pub io_only: bool,
    /// Passes over the shards for --io-only.
    #[arg(long, default_value_t = 2)]
    pub passes: usize,
    /// Reader threads for --io-only (default: one per core, at most 16). `-t/--threads`
    /// is the CPU executor's thread count.
    #[arg(long)]
    pub io_threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub spec: super::spec::SpecArgs,
}

pub fn timings_json(model: &AutoModel, t: &Timings, prompt_tokens: usize) -> serde_json::Value {
    let e = model.engine();
    let per_pass = e.plan().streamed_bytes();
    let per_token = t.per_token();
    serde_json::json!({
        "prompt_tokens": prompt_tokens,
        "prefill_s": t.prefill.as_secs_f64(),
        "decode_s": t.decode.as_secs_f64(),
        "decode_steps": t.decode_steps,
        "passes": t.engine.passes,
        "generated_tokens": t.generated,
        "tokens_per_pass": t.tokens_per_pass(),
        "per_token_s": per_token,
        "tokens_per_s": if per_token > 0.0 { 1.0 / per_token } else { 0.0 },
        "streamed_bytes_per_pass": per_pass,
        "stream_gbps": if per_token > 0.0 { per_pass as f64 / per_token / 1e9 } else { 0.0 },
        "io_wait_s": t.engine.io_wait.as_secs_f64(),
        "remap_wait_s": t.engine.remap_wait.as_secs_f64(),
        "upload_s": t.engine.upload.as_secs_f64(),
        "host_s": t.engine.host.as_secs_f64(),
        "readback_s": t.engine.readback.as_secs_f64(),
        "forward_s": t.engine.forward.as_secs_f64(),
        "load_s": t.engine.load.as_secs_f64(),
        "peak_vram_bytes": e.peak_vram(),
        "budget_bytes": (e.plan().budget != u64::MAX).then_some(e.plan().budget),
        "resident_layers": e.plan().resident_layers(),
        "device": e.device_name(),
        "adapter": e.ctx().map(|c| c.caps().adapter_name.clone()),
        "cpu_s": t.engine.cpu.as_secs_f64(),
        "transfer_s": t.engine.transfer.as_secs_f64(),
        "transfer_bytes": t.engine.transfer_bytes,
        "speculation": t.spec.map(|s| serde_json::json!({
            "drafter": model.speculation().map(|sp| sp.drafter.name()),
            "verify_passes": s.verified,
            "proposed": s.proposed,
            "accepted": s.accepted,
            "tokens_per_pass": s.tokens_per_pass(),
            "draft_s": s.draft.as_secs_f64(),
            "verify_s": t.decode.saturating_sub(s.draft).as_secs_f64(),
        })),
        // Sparse experts: (row, expert) pairs computed (rows x top_k per MoE layer)
        // and the routing readbacks that choose them (one per GPU MoE layer and pass).
        "moe": model.spec().moe.map(|m| {
            let s = &t.engine.moe;
            serde_json::json!({
                "experts": m.num_experts,
                "top_k": m.top_k,
                "moe_layers_run": s.layers,
                "expert_row_pairs": s.pairs,
                "experts_run": s.experts_run,
                "router_readbacks": s.readbacks,
                "router_readback_s": s.readback.as_secs_f64(),
                "router_readback_bytes": s.readback_bytes,
            })
        }),
        "per_pass_s": t.per_pass(),
        "gpu_pass": t.engine.gpu_passes.to_json(),
        "decode_pass": t.engine.decode_passes.to_json(),
        "units": e.placements().iter().map(|(u, b, p)| serde_json::json!({"unit": u.to_string(), "bytes": b, "executor": p.name()})).collect::<Vec<_>>(),
    })
}

pub fn profile_text(model: &AutoModel, t: &Timings) -> String {
    let e = model.engine();
    let g = &t.engine;
    let accounted = g.io_wait + g.remap_wait + g.upload + g.host + g.readback + g.moe.readback;
    let mut s = format!(
        "profile: forward {:.3} s = io wait {:.3} s + staging remap {:.3} s + upload (staging -> slot) {:.3} s + \
         host (embeddings, inputs) {:.3} s + waiting for the GPU and reading logits {:.3} s + MoE router readbacks \
         {:.3} s + recording/submitting {:.3} s; streamed {} in {} passes",
        g.forward.as_secs_f64(),
        g.io_wait.as_secs_f64(),
        g.remap_wait.as_secs_f64(),
        g.upload.as_secs_f64(),
        g.host.as_secs_f64(),
        g.readback.as_secs_f64(),
        g.moe.readback.as_secs_f64(),
        g.forward.saturating_sub(accounted).as_secs_f64(),
        human_bytes(g.streamed_bytes),
        g.passes
    );
    if let Some(r) = e.reader_stats() {
        s += &format!("\nreader: {r}");
    }
    let d = &g.decode_passes;
    if d.passes > 0 {
        let ms = |x: std::time::Duration| 1e3 * d.per_pass(x);
        s += &format!(
            "\ndecode pass (mean of {}): {:.2} ms = host {:.2} ms (inputs {:.2} + recording {:.2} + submitting {:.2} + \
             reading logits {:.2}) + waiting for the device {:.2} ms{}; host {:.1}% of the pass, host CPU time {:.2} ms{}",
            d.passes,
            ms(d.wall),
            ms(d.host()),
            ms(d.inputs),
            ms(d.record),
            ms(d.submit),
            ms(d.read),
            ms(d.wait),
            if d.compile.is_zero() { String::new() } else { format!(" + compiling pipelines {:.2} ms", ms(d.compile)) },
            100.0 * d.host().as_secs_f64() / d.wall.as_secs_f64().max(1e-12),
            ms(d.host_cpu),
            if d.gpu.is_zero() { String::new() } else { format!("; GPU kernels (timestamps) {:.2} ms", ms(d.gpu)) }
        );
        if let Some(ctx) = e.ctx() {
            let b = ctx.bind_group_stats();
            s += &format!("\nbind groups: {} reused, {} created, {} cached", b.hits, b.created, b.entries);
        }
    }
    if let Some(m) = model.spec().moe {
        let mo = &g.moe;
        s += &format!(
            "\nmoe: {} (row, expert) pairs computed in {} MoE layer runs (top-{} of {} experts per row), {} expert \
             MLPs run; {} router readbacks, {:.3} s, {}",
            mo.pairs,
            mo.layers,
            m.top_k,
            m.num_experts,
            mo.experts_run,
            mo.readbacks,
            mo.readback.as_secs_f64(),
            human_bytes(mo.readback_bytes)
        );
    }
    if g.cpu > std::time::Duration::ZERO || g.transfer_bytes > 0 {
        s += &format!(
            "\ncpu executor {:.3} s; host<->GPU transfers {:.3} s ({})",
            g.cpu.as_secs_f64(),
            g.transfer.as_secs_f64(),
            human_bytes(g.transfer_bytes)
        );
    }
    if let Some(ctx) = e.ctx() {
        let text = ctx.take_profile().to_string();
        if !text.trim().is_empty() {
            s += &format!("\nGPU kernels:\n{text}");
        }
    }
    s
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.io_only {
        return io_only(&a);
    }
    let mut model = super::spec::load_with_speculation(&a.model, &a.spec, !a.json)?;
    let vocab = model.spec().vocab_size as u64;
    let text = match (&a.prompt, &a.file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading the prompt file {}", f.display()))?)
        }
        (None, None) => None,
    };
    let prompts: Vec<Prompt> = (0..a.batch)
        .map(|b| match &text {
            Some(t) if a.chat => Prompt::Chat(vec![airllm::ChatMessage::new("user", t)]),
            Some(t) => Prompt::Text(t.clone()),
            None => Prompt::Ids(
                (0..a.prompt_len as u64).map(|i| ((i * 7919 + b as u64 * 104729 + 3) % vocab) as u32).collect(),
            ),
        })
        .collect();
    let prompt_len = match prompts.first() {
        Some(p @ (Prompt::Text(_) | Prompt::Chat(_))) => model.encode(p)?.len(),
        _ => a.prompt_len,
    };
    let opts = GenerateOptions { max_new_tokens: a.new_tokens.max(1), stop_at_eos: false, ..Default::default() };
    let (_, t) = model.generate(&prompts, &opts, |_| {})?;
    let mut v = timings_json(&model, &t, prompt_len);
    v["batch"] = serde_json::json!(a.batch);
    v["max_sequences"] = serde_json::json!(model.engine().capacity().sequences);
    v["tokens_per_s_total"] = serde_json::json!(if t.per_token() > 0.0 { a.batch as f64 / t.per_token() } else { 0.0 });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(s) = &t.spec {
            println!(
                "speculation ({}): {:.2} tokens per verify pass ({} of {} draft tokens accepted over {} passes); \
                 drafting {:.3} s, verifying {:.3} s",
                model.speculation().map(|sp| sp.drafter.name()).unwrap_or("?"),
                s.tokens_per_pass(),
                s.accepted,
                s.proposed,
                s.verified,
                s.draft.as_secs_f64(),
                t.decode.saturating_sub(s.draft).as_secs_f64()
            );
        }
        println!(
            "prefill {} x {} tokens: {:.3} s\ndecode: {:.4} s/token ({:.2} tokens/s per sequence, {:.2} total, {:.2} tokens per pass), {:.2} GB/s streamed\npeak VRAM {} (budget {})",
            a.batch,
            prompt_len,
            t.prefill.as_secs_f64(),
            t.per_token(),
            v["tokens_per_s"].as_f64().unwrap_or(0.0),
            v["tokens_per_s_total"].as_f64().unwrap_or(0.0),
            t.tokens_per_pass(),
            v["stream_gbps"].as_f64().unwrap_or(0.0),
            human_bytes(model.engine().peak_vram()),
            if model.engine().plan().budget == u64::MAX {
                "unlimited".into()
            } else {
                human_bytes(model.engine().plan().budget)
            },
        );
        println!("{}", profile_text(&model, &t));
    }
    Ok(())
}

fn io_only(a: &BenchArgs) -> anyhow::Result<()> {
    let dir = match airllm_format::resolve_model(&a.model.model)? {
        airllm_format::ModelLocation::ShardDir(d) => d,
        _ => anyhow::bail!("--io-only needs a shard directory (run `airllm shard` first)"),
    };
    let sd = airllm_format::ShardDir::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let shards: Vec<airllm_io::ShardSpec> = (0..sd.manifest().shards.len())
        .map(|i| airllm_io::ShardSpec::new(sd.shard_path(i), sd.entry(i).bytes))
        .collect();
    let mut opts = airllm_io::ReaderOptions {
        depth: a.model.engine.prefetch_depth.unwrap_or(airllm::Options::default().prefetch_depth).max(1),
        ..Default::default()
    };
    if let Some(m) = a.model.read_mode {
        opts.mode = m;
    }
    if let Some(t) = a.io_threads {
        opts.threads = t.max(1);
    }
    let report = airllm_io::bench::run_io_bench(&shards, &opts, a.passes.max(1))?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(())
}

//! `airllm inspect`: the model spec, parameter count, bytes per shard and, with
//! `--max-vram`, the residency plan.

use airllm_format::{ModelLocation, human_bytes};
use anyhow::Context;

/// Print a model's spec, parameter count, shard sizes and residency plan.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Checkpoint directory, shard directory, .gguf file, or cached repo id.
    pub model: String,
    /// The plan is made exactly as `generate` makes it with these options; without
    /// --max-vram the adapter's default budget applies (unlimited with no adapter).
    #[command(flatten)]
    pub engine: super::args::EngineArgs,
    /// Codec the shards would use (for checkpoints not yet sharded).
    #[arg(long, default_value = "none")]
    pub compression: airllm_quant::Compression,
    /// Adapter name substring (also AIRLLM_ADAPTER): the plan uses its memory and kind.
    #[arg(long, env = "AIRLLM_ADAPTER")]
    pub adapter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let loc = airllm_format::resolve_model(&a.model)?;
    let (spec, units, source) = match &loc {
        ModelLocation::ShardDir(dir) => {
            let m = airllm_format::Manifest::load(dir)?;
            let units: Vec<(airllm_format::Unit, String, u64, usize)> =
                m.shards.iter().map(|s| (s.unit, s.file.clone(), s.bytes, s.tensors.len())).collect();
            (m.spec.clone(), units, format!("shard directory ({}, compression {})", m.source, m.compression))
        }
        _ => {
            let sizes = airllm::inspect::planned_shard_sizes(&loc, a.compression)
                .with_context(|| format!("reading {}", a.model))?;
            (
                sizes.0,
                sizes.1,
                format!("{} (sizes as sharded with --compression {})", loc.path().display(), a.compression),
            )
        }
    };
    let mut opts = airllm::Options { adapter: a.adapter.clone(), ..airllm::Options::default() };
    a.engine.apply(&mut opts);
    let mut cfg = opts.engine_config(&spec);
    cfg.cost_model = opts.device == airllm::Device::Auto;
    // The device decides the default budget, whether staging counts as VRAM,
    // and whether anything runs on the GPU at all: as `generate` decides it.
    let gpu = airllm::model::open_device(&opts)?;
    let adapter = match &gpu {
        Some(ctx) => {
            cfg.max_vram = airllm::engine::effective_budget(ctx, &cfg);
            ctx.caps().adapter_name.clone()
        }
        None => "CPU executor (no GPU in use)".to_string(),
    };
    let plan = airllm::inspect::plan_for(&spec, &units, &cfg, gpu.as_ref())?;
    let cap = cfg.capacity();
    let kv = airllm::sizing::KvSummary::new(&spec, &cap);
    let stats = airllm::inspect::tensor_stats(&loc, a.compression).with_context(|| format!("reading {}", a.model))?;
    if a.json {
        let v = serde_json::json!({
            "source": source, "spec": spec, "parameters": spec.parameter_count(),
            "tensors": stats.tensors, "tensor_bytes": stats.tensor_bytes, "source_tensor_bytes": stats.source_bytes,
            "re_encoded": stats.re_encoded.as_ref().map(Vec::len),
            "re_encoded_tensors": stats.re_encoded.as_ref().map(|v| v.iter().map(|(n, from, to)| {
                serde_json::json!({"name": n, "from": from, "to": to})
            }).collect::<Vec<_>>()),
            "shards": units.iter().map(|(_, f, b, n)| serde_json::json!({"file": f, "bytes": b, "tensors": n})).collect::<Vec<_>>(),
            "total_bytes": units.iter().map(|u| u.2).sum::<u64>(),
            "adapter": adapter,
            "plan": {
                "budget": (plan.budget != u64::MAX).then_some(plan.budget), "vram_bytes": plan.vram_bytes(),
                "resident_bytes": plan.resident_bytes(), "streamed_bytes_per_pass": plan.streamed_bytes(),
                "resident_layers": plan.resident_layers(), "ring_slots": plan.ring_slots, "slot_bytes": plan.slot_bytes,
                "kv_bytes": plan.kv_bytes, "kv_tokens": cap.kv_tokens, "max_context": cap.max_context,
                "max_sequences": cap.sequences, "max_batch_tokens": cap.rows,
                "kv_sliding_bytes": plan.kv_sliding_bytes,
                "kv": {
                    "global_layers": kv.global_layers, "sliding_layers": kv.sliding_layers, "window": kv.window,
                    "bytes_per_token_per_layer": kv.slot_bytes, "global_bytes_per_token": kv.global_bytes_per_token(),
                    "block": kv.block, "global_blocks": kv.global_blocks, "sliding_blocks": kv.sliding_blocks,
                    "sequence_bytes_at_context": kv.sequence_bytes(cap.max_context),
                    "sequence_bytes_at_context_unwindowed": kv.sequence_bytes_unwindowed(cap.max_context),
                },
                "placement": plan.units.iter().zip(&plan.placement)
                    .map(|((u, b), p)| serde_json::json!({"unit": u.to_string(), "bytes": b, "placement": p.name()}))
                    .collect::<Vec<_>>(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model       {source}");
    println!(
        "family      {} (hidden {}, {} layers, heads {}/{} x {}, ffn {}, vocab {}{})",
        spec.family,
        spec.hidden_size,
        spec.num_layers,
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.intermediate_size,
        spec.vocab_size,
        spec.moe.map(|m| format!(", {} experts top-{}", m.num_experts, m.top_k)).unwrap_or_default()
    );
    println!("parameters  {} ({:.2} B)", spec.parameter_count(), spec.parameter_count() as f64 / 1e9);
    println!(
        "rope        theta {}, {:?}, rotary dims {} ({:?}); norm {:?} eps {:e}; act {:?}; tied {}",
        spec.rope.theta,
        spec.rope.scaling,
        spec.rope.rotary_dim,
        spec.rope.style,
        spec.norm,
        spec.norm_eps,
        spec.activation,
        spec.tie_word_embeddings
    );
    let total: u64 = units.iter().map(|u| u.2).sum();
    let src_bytes = match stats.source_bytes {
        Some(b) if b == stats.tensor_bytes => format!(" (the source's tensor bytes, {b} exactly)"),
        Some(b) => format!(" (the source stores them in {} = {b} bytes)", human_bytes(b)),
        None => String::new(),
    };
    println!(
        "tensors     {}, {} = {} bytes{src_bytes}",
        stats.tensors,
        human_bytes(stats.tensor_bytes),
        stats.tensor_bytes
    );
    match &stats.re_encoded {
        Some(re) => {
            println!("re-encoded  {} tensors", re.len());
            for (i, (name, from, to)) in re.iter().enumerate() {
                if i < 6 || re.len() <= 8 {
                    println!("  {name:<32} {from} -> {to}");
                } else if i == 6 {
                    println!("  ... ({} more)", re.len() - 6);
                }
            }
        }
        None => println!("re-encoded  not recorded (sharded by an older build; re-run `airllm shard` to record it)"),
    }
    println!("shards      {} files, {}", units.len(), human_bytes(total));
    let show_all = units.len() <= 12;
    for (i, (_, f, b, n)) in units.iter().enumerate() {
        if show_all || i < 4 || i + 3 >= units.len() {
            println!("  {f:<22} {:>12}  {n} tensors", human_bytes(*b));
        } else if i == 4 {
            println!("  ...");
        }
    }
    println!(
        "plan        {adapter}; KV {} tokens (context {}), {} sequences x {} rows per pass:",
        cap.kv_tokens, cap.max_context, cap.sequences, cap.rows
    );
    for line in plan.to_string().lines() {
        println!("  {line}");
    }
    println!("{}", kv_lines(&kv, cap.max_context));
    Ok(())
}

/// The KV split for people: per token and per sequence, global vs sliding layers.
fn kv_lines(kv: &airllm::sizing::KvSummary, context: usize) -> String {
    let per_seq = human_bytes(kv.sequence_bytes(context));
    let Some(w) = kv.window else {
        return format!(
            "kv          {} layers x {} per token; {per_seq} per sequence at context {context}",
            kv.global_layers,
            human_bytes(kv.slot_bytes)
        );
    };
    format!(
        "kv          {} global layers x {} per token; {} sliding layers keep a window of {w} ({} each, \
         {} blocks of {} in their pool vs {} global)\n            per sequence at context {context}: {per_seq} \
         (without windowed pools: {})",
        kv.global_layers,
        human_bytes(kv.slot_bytes),
        kv.sliding_layers,
        human_bytes(kv.slot_bytes * w as u64),
        kv.sliding_blocks,
        kv.block,
        kv.global_blocks,
        human_bytes(kv.sequence_bytes_unwindowed(context))
    )
}

//! `airllm generate`: one prompt in, streamed text out.

use std::io::Write;

use airllm::{AutoModel, ChatMessage, GenerateOptions, Options, Prompt};
use anyhow::Context;

use super::args::ModelArgs;

/// Generate text from a prompt, streaming it to stdout as it is produced.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text. Repeat it to run several prompts as one batch (one pass over
    /// the weights per step serves all of them; their texts print when done).
    #[arg(long, short = 'p', conflicts_with = "prompt_ids", required_unless_present = "prompt_ids")]
    pub prompt: Vec<String>,
    /// Prompt token ids, comma separated, used verbatim (no BOS added).
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template (as a user message).
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object (prompt_ids, new_ids, text, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// Sampling settings shared by generate and chat.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// New tokens at most.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Penalise tokens already in the context (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// RNG seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the output contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop_strings: self.stop.clone(),
            stop_at_eos: true,
        }
    }
}

impl ModelArgs {
    pub fn options(&self, progress: bool) -> Options {
        Options {
            compression: self.compression,
            shards_dir: self.shards_dir.clone(),
            prefetch_depth: self.prefetch_depth,
            max_vram: self.max_vram,
            resident_layers: self.resident_layers,
            max_context: self.max_context,
            profiling: self.profile,
            delete_original: self.delete_original,
            adapter: self.adapter.clone(),
            backend: self.backend.clone(),
            read_mode: self.read_mode,
            kv_f16: self.kv_cache == "f16",
            verify: self.verify,
            progress,
            ..Options::default()
        }
    }

    pub fn load(&self, progress: bool) -> anyhow::Result<AutoModel> {
        if progress {
            eprintln!("loading {} ...", self.model);
        }
        let m = AutoModel::from_pretrained(&self.model, self.options(progress))
            .with_context(|| format!("loading {}", self.model))?;
        if progress {
            let e = m.engine();
            eprintln!(
                "{} on {} ({} of {} layers resident, {} streamed per pass)",
                e.spec().family,
                e.ctx().caps().adapter_name,
                e.plan().resident_layers(),
                e.spec().num_layers,
                airllm_format::human_bytes(e.plan().streamed_bytes())
            );
        }
        Ok(m)
    }
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let mut model = a.model.load(!a.json)?;
    let prompts: Vec<Prompt> = match &a.prompt_ids {
        Some(ids) => vec![Prompt::Ids(ids.clone())],
        None if a.prompt.is_empty() => anyhow::bail!("give --prompt or --prompt-ids"),
        None => a
            .prompt
            .iter()
            .map(|text| {
                if a.chat {
                    let mut msgs = Vec::new();
                    if let Some(s) = &a.system {
                        msgs.push(ChatMessage::new("system", s));
                    }
                    msgs.push(ChatMessage::new("user", text));
                    Prompt::Chat(msgs)
                } else {
                    Prompt::Text(text.clone())
                }
            })
            .collect(),
    };
    let opts = a.sampling.options();
    let json = a.json;
    let stream = !json && prompts.len() == 1;
    let mut out = std::io::stdout();
    let (gens, timings) = model.generate(&prompts, &opts, |ev| {
        if stream {
            if let Some(t) = &ev.text {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
        }
    })?;
    let one = |g: &airllm::Generation| {
        serde_json::json!({
            "prompt_ids": g.prompt_ids,
            "new_ids": g.new_ids,
            "text": g.text,
            "finish": format!("{:?}", g.finish).to_lowercase(),
        })
    };
    if json {
        let mut v = if gens.len() == 1 {
            one(&gens[0])
        } else {
            serde_json::json!({ "generations": gens.iter().map(one).collect::<Vec<_>>() })
        };
        let prompt_tokens = gens.iter().map(|g| g.prompt_ids.len()).max().unwrap_or(0);
        v["timings"] = super::bench::timings_json(&model, &timings, prompt_tokens);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if stream {
            println!();
        } else {
            for (i, g) in gens.iter().enumerate() {
                println!("--- [{i}] {}", g.text);
            }
        }
        let new: usize = gens.iter().map(|g| g.new_ids.len()).sum();
        eprintln!(
            "[{} prompt(s), {} prompt tokens (longest) in {:.3} s, {} new tokens, {:.3} s/step]",
            gens.len(),
            gens.iter().map(|g| g.prompt_ids.len()).max().unwrap_or(0),
            timings.prefill.as_secs_f64(),
            new,
            timings.per_token()
        );
        if a.model.profile {
            eprintln!("{}", super::bench::profile_text(&model, &timings));
        }
    }
    Ok(())
}

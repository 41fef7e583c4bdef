//! `airllm generate`: prompts in, streamed text (or JSON) out.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use airllm::{AutoModel, ChatMessage, FinishReason, GenerateOptions, Generation, Prompt};
use anyhow::Context;

use super::args::ModelArgs;
use super::out::Out;

/// Generate text from prompts, streaming it to stdout as it is produced.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (`-` reads it from stdin). Repeat it to run several prompts as
    /// one batch (one pass over the weights per step serves all of them).
    #[arg(long, short = 'p')]
    pub prompt: Vec<String>,
    /// Read a prompt from a file (`-` for stdin); repeatable, adds to --prompt.
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Prompt token ids, comma separated, used verbatim (no BOS added).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "files"])]
    pub prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template (as a user message).
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Use this Jinja chat template instead of the model's (implies --chat).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub spec: super::spec::SpecArgs,
    /// Print one JSON line at the end: {"generations": [{prompt_ids, new_ids, text, finish}], "seed", "timings"}.
    #[arg(long, conflicts_with = "jsonl")]
    pub json: bool,
    /// Stream JSON lines: {"event":"token","seq","id","text"} per token, {"event":"done","seq",...} per
    /// prompt, then {"event":"summary",...}.
    #[arg(long)]
    pub jsonl: bool,
    /// Constrain the output to a JSON schema (a JSON file).
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to a grammar: Lark as llguidance reads it, or GBNF (`root ::= ...`).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
}

fn float_in(s: &str, opt: &str, ok: impl Fn(f32) -> bool, want: &str) -> Result<f32, String> {
    let v: f32 = s.trim().parse().map_err(|_| format!("{s:?} is not a number; {opt} must be {want}"))?;
    if v.is_finite() && ok(v) { Ok(v) } else { Err(format!("{opt} must be {want} (got {s})")) }
}

/// `--temperature`: finite, >= 0.
pub fn parse_temperature(s: &str) -> Result<f32, String> {
    float_in(s, "--temperature", |v| v >= 0.0, "a finite number >= 0 (0 = greedy)")
}
/// `--top-p`: 0 < p <= 1.
pub fn parse_top_p(s: &str) -> Result<f32, String> {
    float_in(s, "--top-p", |v| v > 0.0 && v <= 1.0, "in (0, 1] (1 = off)")
}
/// `--repetition-penalty`: finite, > 0.
pub fn parse_repetition_penalty(s: &str) -> Result<f32, String> {
    float_in(s, "--repetition-penalty", |v| v > 0.0, "a finite number > 0 (1 = off)")
}
/// `--max-new-tokens`: >= 1.
pub fn parse_max_new_tokens(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("--max-new-tokens must be a whole number >= 1 (got {s})")),
    }
}
fn parse_stop(s: &str) -> Result<String, String> {
    if s.is_empty() { Err("--stop must not be empty".into()) } else { Ok(s.to_owned()) }
}

/// Sampling settings shared by generate and chat.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// New tokens at most.
    #[arg(long, short = 'n', default_value = "128", value_parser = parse_max_new_tokens, allow_hyphen_values = true)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, visible_alias = "temp", default_value = "0", value_parser = parse_temperature, allow_hyphen_values = true)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold, in (0, 1] (1 = off).
    #[arg(long, default_value = "1", value_parser = parse_top_p, allow_hyphen_values = true)]
    pub top_p: f32,
    /// Penalise tokens already in the context, > 0 (1 = off).
    #[arg(long, default_value = "1", value_parser = parse_repetition_penalty, allow_hyphen_values = true)]
    pub repetition_penalty: f32,
    /// RNG seed for sampling (default: a random one, printed on stderr).
    #[arg(long, short = 's')]
    pub seed: Option<u64>,
    /// Stop when the output contains this string (repeatable); it is not part of the text.
    #[arg(long = "stop", value_parser = parse_stop)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// The options, with the seed resolved (random unless --seed) and returned.
    pub fn options(&self) -> (GenerateOptions, u64) {
        let seed = self.seed.unwrap_or_else(rand::random);
        let o = GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed,
            stop_strings: self.stop.clone(),
            stop_at_eos: !self.ignore_eos,
            ..GenerateOptions::default()
        };
        (o, seed)
    }
}

/// A finish reason as the CLI and its JSON name it.
pub fn finish_name(f: FinishReason) -> &'static str {
    f.name()
}

/// Read a prompt file (`-`: stdin).
fn read_prompt(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the prompt from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading the prompt file {}", path.display()))
}

/// Replace the model's chat template with the file's.
pub fn override_chat_template(model: &mut AutoModel, file: &std::path::Path) -> anyhow::Result<()> {
    let t = std::fs::read_to_string(file).with_context(|| format!("reading --chat-template {}", file.display()))?;
    model.tokenizer_mut().set_chat_template(t);
    Ok(())
}

/// The constraint named by --json-schema / --grammar, if any.
#[cfg(feature = "constrain")]
pub fn constraint(
    model: &AutoModel,
    schema: Option<&PathBuf>,
    grammar: Option<&PathBuf>,
) -> anyhow::Result<Option<Arc<std::sync::Mutex<dyn airllm::sampler::LogitsHook>>>> {
    use airllm::constrain::{Constraint, Grammar};
    let g = match (schema, grammar) {
        (Some(s), _) => Grammar::json_schema_file(s)?,
        (None, Some(g)) => Grammar::grammar_file(g)?,
        (None, None) => return Ok(None),
    };
    Ok(Some(Arc::new(std::sync::Mutex::new(Constraint::new(model, g)?))))
}

#[cfg(not(feature = "constrain"))]
pub fn constraint(
    _model: &AutoModel,
    schema: Option<&PathBuf>,
    grammar: Option<&PathBuf>,
) -> anyhow::Result<Option<Arc<std::sync::Mutex<dyn airllm::sampler::LogitsHook>>>> {
    if schema.is_some() || grammar.is_some() {
        anyhow::bail!(
            "this airllm was built without the `constrain` feature, so --json-schema/--grammar are unavailable"
        );
    }
    Ok(None)
}

fn generation_json(g: &Generation) -> serde_json::Value {
    serde_json::json!({
        "prompt_ids": g.prompt_ids, "new_ids": g.new_ids, "text": g.text, "finish": finish_name(g.finish),
    })
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let machine = a.json || a.jsonl;
    let mut texts: Vec<String> = Vec::new();
    for p in &a.prompt {
        texts.push(if p == "-" { read_prompt(std::path::Path::new("-"))? } else { p.clone() });
    }
    for f in &a.files {
        texts.push(read_prompt(f)?);
    }
    if a.prompt_ids.is_none() && texts.is_empty() {
        anyhow::bail!("give a prompt: --prompt TEXT, --file FILE (- for stdin) or --prompt-ids");
    }
    let mut model = super::spec::load_with_speculation(&a.model, &a.spec, !machine)?;
    let chat = a.chat || a.chat_template.is_some();
    if let Some(t) = &a.chat_template {
        override_chat_template(&mut model, t)?;
    }
    let prompts: Vec<Prompt> = match &a.prompt_ids {
        Some(ids) => vec![Prompt::Ids(ids.clone())],
        None => texts
            .iter()
            .map(|text| {
                if chat {
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
    let (mut opts, seed) = a.sampling.options();
    if a.sampling.seed.is_none() && opts.temperature > 0.0 && !machine {
        eprintln!("seed {seed} (pass --seed {seed} to reproduce)");
    }
    let cancel = Arc::new(AtomicBool::new(false));
    opts.cancel = Some(cancel.clone());
    opts.logits_hook = constraint(&model, a.json_schema.as_ref(), a.grammar.as_ref())?;
    let mut out = Out::new(cancel);
    let stream_text = !machine && prompts.len() == 1;
    // The scheduler holds back text that could start a stop string and never
    // emits a stop string, so events are shown as they come.
    let (gens, timings) = model.generate(&prompts, &opts, |ev| {
        let shown = ev.text.as_deref().unwrap_or_default();
        // Text released at the end with no token of its own is in the done event.
        if a.jsonl && ev.id != u32::MAX {
            let line = serde_json::json!({"event": "token", "seq": ev.seq, "id": ev.id, "text": shown});
            out.line(&line.to_string());
        } else if stream_text {
            out.write(shown);
        }
    })?;
    let prompt_tokens = gens.iter().map(|g| g.prompt_ids.len()).max().unwrap_or(0);
    let timing = super::bench::timings_json(&model, &timings, prompt_tokens);
    if a.jsonl {
        for (i, g) in gens.iter().enumerate() {
            let mut v = generation_json(g);
            v["event"] = "done".into();
            v["seq"] = i.into();
            out.line(&v.to_string());
        }
        out.line(
            &serde_json::json!({"event": "summary", "generations": gens.len(), "seed": seed, "timings": timing})
                .to_string(),
        );
    } else if a.json {
        let v = serde_json::json!({
            "generations": gens.iter().map(generation_json).collect::<Vec<_>>(), "seed": seed, "timings": timing,
        });
        out.line(&v.to_string());
    } else {
        if stream_text {
            out.line("");
        } else {
            for (i, g) in gens.iter().enumerate() {
                out.line(&format!("--- [{i}] {}", g.text));
            }
        }
        out.check()?;
        let new: usize = gens.iter().map(|g| g.new_ids.len()).sum();
        let spec = match &timings.spec {
            Some(s) => format!(", {:.2} tokens per verify pass", s.tokens_per_pass()),
            None => String::new(),
        };
        eprintln!(
            "[{} prompt(s), {} prompt tokens (longest) in {:.3} s, {} new tokens, {:.3} s/token{spec}, finish {}]",
            gens.len(),
            prompt_tokens,
            timings.prefill.as_secs_f64(),
            new,
            timings.per_token(),
            gens.iter().map(|g| finish_name(g.finish)).collect::<Vec<_>>().join(",")
        );
        if a.model.profile {
            eprintln!("{}", super::bench::profile_text(&model, &timings));
        }
    }
    out.check()?;
    Ok(())
}

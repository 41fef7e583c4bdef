//! `airllm chat`: an interactive conversation with streamed replies.
//!
//! Line editing and history come from rustyline (history kept in airllm's cache
//! directory). Ctrl-C while a reply streams stops that reply (the SIGINT handler
//! raises `GenerateOptions::cancel`, checked once per step) and the session goes
//! on; Ctrl-C at the prompt clears the line; Ctrl-D or /exit quits.
//!
//! The conversation's KV cache is kept between turns ([`airllm::ChatSession`]):
//! each turn re-renders the whole conversation, and only the tokens after the
//! prefix the cache shares with it are read. /reset, /system and dropping old
//! turns change the rendered prefix; the next turn re-validates the cache against
//! it (keeping only the common part, e.g. the system message), so no command has
//! to manage it. A turn stopped by Ctrl-C keeps what was fed, checked the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use airllm::stop::StopStream;
use airllm::{AutoModel, ChatMessage, FinishReason, GenerateOptions, Prompt};
use anyhow::Context;
use rustyline::error::ReadlineError;

use super::args::ModelArgs;
use super::generate::{SamplingArgs, parse_max_new_tokens, parse_repetition_penalty, parse_temperature, parse_top_p};
use super::out::Out;

/// Chat with a model in the terminal (history kept; /help lists the commands).
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: super::spec::SpecArgs,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Use this Jinja chat template instead of the model's.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Do not read or write the line-editing history file.
    #[arg(long)]
    pub no_history: bool,
    /// Re-read the whole conversation every turn instead of keeping its KV cache
    /// between turns (slower; for comparison).
    #[arg(long)]
    pub no_cache_reuse: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

const HELP: &str = "\
commands:
  /help                 this list
  /reset                forget the conversation (the system message stays)
  /system TEXT          set the system message (empty TEXT removes it)
  /set NAME VALUE       temperature, top_p, top_k, max_tokens, seed or repetition_penalty
  /set                  show the settings
  /save FILE            write the conversation as JSON
  /exit, /quit          leave (or Ctrl-D)
Ctrl-C stops a reply that is being written; the conversation keeps what was said.";

const COMMANDS: &str = "/help, /reset, /system, /set, /save, /exit";

/// What a line asks for.
#[derive(Debug, PartialEq)]
enum Line {
    Empty,
    Message(String),
    Exit,
    Help,
    Reset,
    System(String),
    Set(Option<(String, String)>),
    Save(PathBuf),
}

fn parse_line(line: &str) -> Result<Line, String> {
    let t = line.trim();
    if t.is_empty() {
        return Ok(Line::Empty);
    }
    if !t.starts_with('/') {
        return Ok(Line::Message(t.to_owned()));
    }
    let (cmd, rest) = t.split_once(char::is_whitespace).map_or((t, ""), |(c, r)| (c, r.trim()));
    match cmd {
        "/exit" | "/quit" | "/bye" => Ok(Line::Exit),
        "/help" | "/?" => Ok(Line::Help),
        "/reset" | "/clear" => Ok(Line::Reset),
        "/system" => Ok(Line::System(rest.to_owned())),
        "/set" if rest.is_empty() => Ok(Line::Set(None)),
        "/set" => match rest.split_once(char::is_whitespace) {
            Some((k, v)) => Ok(Line::Set(Some((k.to_owned(), v.trim().to_owned())))),
            None => Err(format!("/set needs a name and a value, e.g. /set temperature 0.7 (names: {SETTINGS})")),
        },
        "/save" if rest.is_empty() => Err("/save needs a file name, e.g. /save chat.json".into()),
        "/save" => Ok(Line::Save(PathBuf::from(rest))),
        other => Err(format!("unknown command {other}; the commands are {COMMANDS} (/help explains them)")),
    }
}

const SETTINGS: &str = "temperature, top_p, top_k, max_tokens, seed, repetition_penalty";

fn apply_setting(o: &mut GenerateOptions, name: &str, v: &str) -> Result<(), String> {
    let fix = |e: String, flag: &str| e.replace(flag, name);
    match name {
        "temperature" | "temp" => o.temperature = parse_temperature(v).map_err(|e| fix(e, "--temperature"))?,
        "top_p" => o.top_p = parse_top_p(v).map_err(|e| fix(e, "--top-p"))?,
        "top_k" => o.top_k = v.parse().map_err(|_| format!("top_k must be a whole number >= 0 (got {v})"))?,
        "max_tokens" | "max_new_tokens" => {
            o.max_new_tokens = parse_max_new_tokens(v).map_err(|e| fix(e, "--max-new-tokens"))?
        }
        "seed" => o.seed = v.parse().map_err(|_| format!("seed must be a whole number >= 0 (got {v})"))?,
        "repetition_penalty" => {
            o.repetition_penalty = parse_repetition_penalty(v).map_err(|e| fix(e, "--repetition-penalty"))?
        }
        other => return Err(format!("unknown setting {other}; the settings are {SETTINGS}")),
    }
    Ok(())
}

fn settings_text(o: &GenerateOptions) -> String {
    format!(
        "temperature {}  top_p {}  top_k {}  max_tokens {}  seed {}  repetition_penalty {}",
        o.temperature, o.top_p, o.top_k, o.max_new_tokens, o.seed, o.repetition_penalty
    )
}

fn history_file() -> Option<PathBuf> {
    airllm_format::hub::airllm_cache_dir().map(|d| d.join("chat_history.txt"))
}

/// Fit the conversation into the context: drop the oldest turns (never the system
/// message or the new question). `Err` when the new message alone does not fit.
fn fit_history(model: &AutoModel, history: &mut Vec<ChatMessage>, max_new: usize) -> Result<Vec<u32>, String> {
    let ctx = model.engine().max_context();
    let limit = ctx.saturating_sub(max_new);
    // The new message alone (with the system message) must fit, or nothing changes.
    let alone: Vec<ChatMessage> =
        history.iter().filter(|m| m.role == "system").chain(history.last()).cloned().collect();
    let n = model.tokenizer().encode_chat(&alone).map_err(|e| e.to_string())?.len();
    if n > limit {
        return Err(format!(
            "the message needs {n} tokens; with max_tokens {max_new} that is more than the context of {ctx} \
             tokens, so it was not sent (shorten it, /set max_tokens lower, or restart with a larger --ctx-size)"
        ));
    }
    loop {
        let ids = model.tokenizer().encode_chat(history).map_err(|e| e.to_string())?;
        if ids.len() <= limit {
            return Ok(ids);
        }
        let first = history.iter().position(|m| m.role != "system");
        match first {
            Some(i) if i + 1 < history.len() => {
                history.remove(i);
                // Drop the reply with its question, so turns keep alternating.
                if history.get(i).is_some_and(|m| m.role == "assistant") && i + 1 < history.len() {
                    history.remove(i);
                }
                eprintln!("(dropped the oldest turn to stay within the context of {ctx} tokens)");
            }
            _ => return Err(format!("the conversation does not fit the context of {ctx} tokens; /reset it")),
        }
    }
}

pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    let mut model = super::spec::load_with_speculation(&a.model, &a.spec, true)?;
    if let Some(t) = &a.chat_template {
        super::generate::override_chat_template(&mut model, t)?;
    }
    if !model.tokenizer().has_chat_template() {
        anyhow::bail!(
            "{} has no chat template; pass one with --chat-template FILE, or use `airllm generate --prompt ...`",
            a.model.model
        );
    }
    let (mut opts, seed) = a.sampling.options();
    if a.sampling.seed.is_none() && opts.temperature > 0.0 {
        eprintln!("seed {seed} (pass --seed {seed} to reproduce)");
    }
    let cancel = Arc::new(AtomicBool::new(false));
    opts.cancel = Some(cancel.clone());
    // SIGINT while a reply streams: stop the reply. Otherwise (loading, or a prompt
    // read without a terminal): quit as usual, with 130.
    let idle = Arc::new(AtomicBool::new(true));
    signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 130, idle.clone())
        .context("installing the Ctrl-C handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, cancel.clone())
        .context("installing the Ctrl-C handler")?;

    let mut rl = rustyline::DefaultEditor::new().context("setting up line editing")?;
    let hist = if a.no_history { None } else { history_file() };
    if let Some(h) = &hist {
        let _ = rl.load_history(h);
    }
    let mut history: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s)).collect();
    let mut session = model.chat_session();
    let mut out = Out::new(Arc::new(AtomicBool::new(false)));
    eprintln!("chat with {} (/help for commands, Ctrl-D to quit)", a.model.model);
    loop {
        let line = match rl.readline("> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-C: the line was cleared; /exit or Ctrl-D quits)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the terminal"),
        };
        if !line.trim().is_empty() {
            let _ = rl.add_history_entry(line.as_str());
        }
        let msg = match parse_line(&line) {
            Ok(Line::Empty) => continue,
            Ok(Line::Exit) => break,
            Ok(Line::Help) => {
                println!("{HELP}");
                continue;
            }
            Ok(Line::Reset) => {
                history.retain(|m| m.role == "system");
                println!("(conversation cleared)");
                continue;
            }
            Ok(Line::System(text)) => {
                history.retain(|m| m.role != "system");
                if !text.is_empty() {
                    history.insert(0, ChatMessage::new("system", &text));
                }
                println!("(system message {})", if text.is_empty() { "removed" } else { "set" });
                continue;
            }
            Ok(Line::Set(None)) => {
                println!("{}", settings_text(&opts));
                continue;
            }
            Ok(Line::Set(Some((k, v)))) => {
                match apply_setting(&mut opts, &k, &v) {
                    Ok(()) => println!("({k} = {v})"),
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            Ok(Line::Save(path)) => {
                let v = serde_json::json!({
                    "model": a.model.model, "messages": history,
                    "settings": {"temperature": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k,
                                 "max_tokens": opts.max_new_tokens, "seed": opts.seed,
                                 "repetition_penalty": opts.repetition_penalty},
                });
                match serde_json::to_string_pretty(&v).map_err(|e| e.to_string()).and_then(|s| {
                    std::fs::write(&path, s + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
                }) {
                    Ok(()) => println!("(saved {} messages to {})", history.len(), path.display()),
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            Ok(Line::Message(m)) => m,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        history.push(ChatMessage::new("user", &msg));
        let ids = match fit_history(session.model(), &mut history, opts.max_new_tokens) {
            Ok(ids) => ids,
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        spinner.set_message("reading the prompt ...");
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        let mut stream = StopStream::new(&opts.stop_strings);
        let mut first = true;
        if a.no_cache_reuse {
            session.reset();
        }
        cancel.store(false, Ordering::Relaxed);
        idle.store(false, Ordering::Relaxed);
        let result = session.generate(&Prompt::Ids(ids), &opts, |ev| {
            if first {
                spinner.finish_and_clear();
                first = false;
            }
            if let Some(t) = &ev.text {
                let shown = stream.push(t);
                out.write(&shown);
            }
        });
        idle.store(true, Ordering::Relaxed);
        spinner.finish_and_clear();
        let (g, t) = match result {
            Ok(r) => r,
            Err(e) => {
                history.pop();
                eprintln!("\nerror: {e}");
                continue;
            }
        };
        let rest = stream.finish();
        out.write(&rest);
        out.line("");
        if g.finish == FinishReason::Cancelled {
            eprintln!("[interrupted]");
        }
        eprintln!(
            "[{} tokens, {:.3} s/token; prompt {} tokens, {} of them cached, read in {:.2} s]",
            g.new_ids.len(),
            t.per_token(),
            g.prompt_ids.len(),
            session.last_reused(),
            t.prefill.as_secs_f64()
        );
        history.push(ChatMessage::new("assistant", g.text.trim()));
    }
    if let Some(h) = &hist {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = rl.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_commands() {
        assert_eq!(parse_line("  hi there "), Ok(Line::Message("hi there".into())));
        assert_eq!(parse_line(""), Ok(Line::Empty));
        assert_eq!(parse_line("/set temperature 0.5"), Ok(Line::Set(Some(("temperature".into(), "0.5".into())))));
        assert_eq!(parse_line("/system Be brief."), Ok(Line::System("Be brief.".into())));
        let e = parse_line("/frobnicate").unwrap_err();
        assert!(e.contains("/frobnicate") && e.contains("/help") && e.contains("/save"), "{e}");
        assert!(parse_line("/save").is_err() && parse_line("/set temperature").is_err());
    }

    #[test]
    fn settings_are_validated_and_name_the_setting() {
        let mut o = GenerateOptions::default();
        apply_setting(&mut o, "temperature", "0.7").unwrap();
        apply_setting(&mut o, "max_tokens", "12").unwrap();
        assert_eq!((o.temperature, o.max_new_tokens), (0.7, 12));
        let e = apply_setting(&mut o, "top_p", "0").unwrap_err();
        assert!(e.contains("top_p") && !e.contains("--"), "{e}");
        assert!(apply_setting(&mut o, "temperature", "nan").unwrap_err().contains("temperature"));
        assert!(apply_setting(&mut o, "volume", "11").unwrap_err().contains("unknown setting"));
    }
}

//! `airllm chat`: an interactive conversation with streamed replies.

use std::io::{BufRead, Write};

use airllm::{ChatMessage, Prompt};

use super::args::ModelArgs;
use super::generate::SamplingArgs;

/// Chat with a model in the terminal (history kept; /reset clears it, /exit or Ctrl-D quits).
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    let mut model = a.model.load(true)?;
    if !model.tokenizer().has_chat_template() {
        anyhow::bail!("{} has no chat template; use `airllm generate --prompt ...`", a.model.model);
    }
    let mut history: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s)).collect();
    let opts = a.sampling.options();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        print!("> ");
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                println!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", line));
        // Keep the conversation inside the context: drop the oldest turns (never the
        // system message or the new question) until prompt + reply fit.
        let limit = model.engine().max_context().saturating_sub(opts.max_new_tokens);
        loop {
            let len = model.tokenizer().encode_chat(&history)?.len();
            let first = history.iter().position(|m| m.role != "system");
            match first {
                Some(i) if len > limit && i + 1 < history.len() => {
                    history.remove(i);
                    // Drop the reply with its question, so turns keep alternating.
                    if history.get(i).is_some_and(|m| m.role == "assistant") && i + 1 < history.len() {
                        history.remove(i);
                    }
                    eprintln!(
                        "(dropped the oldest turn to stay within the context of {})",
                        model.engine().max_context()
                    );
                }
                _ if len > limit => {
                    anyhow::bail!(
                        "the message needs {len} tokens, more than the context allows ({limit} after --max-new-tokens); raise --max-context"
                    );
                }
                _ => break,
            }
        }
        let (gens, t) = model.generate(&[Prompt::Chat(history.clone())], &opts, |ev| {
            if let Some(s) = &ev.text {
                print!("{s}");
                let _ = std::io::stdout().flush();
            }
        })?;
        println!();
        eprintln!("[{} tokens, {:.3} s/token]", gens[0].new_ids.len(), t.per_token());
        history.push(ChatMessage::new("assistant", gens[0].text.trim()));
    }
    Ok(())
}

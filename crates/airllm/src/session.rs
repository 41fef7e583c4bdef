//! [`ChatSession`]: a conversation whose KV cache is kept between turns, so a
//! turn reads only the tokens after what the cache already holds (prefix reuse
//! on the engine's sequences; see [`crate::scheduler`] for how the prefix is
//! verified).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use airllm::{AutoModel, ChatMessage, GenerateOptions, Options, Prompt};
//!
//! let mut model = AutoModel::from_pretrained("testdata/smollm2", Options::default())?;
//! let opts = GenerateOptions { max_new_tokens: 32, ..GenerateOptions::default() };
//! let mut chat = model.chat_session();
//! let mut history = vec![ChatMessage::new("user", "Hi!")];
//! let (reply, _) = chat.generate(&Prompt::Chat(history.clone()), &opts, |_| {})?;
//! history.push(ChatMessage::new("assistant", &reply.text));
//! history.push(ChatMessage::new("user", "And then?"));
//! // Reads only the new turn: the cache holds the first prompt and the reply.
//! let (_reply, _) = chat.generate(&Prompt::Chat(history), &opts, |_| {})?;
//! println!("{} prompt tokens came from the cache", chat.last_reused());
//! # Ok(()) }
//! ```
//!
//! Invariants: the session holds at most one engine sequence, and the ids it
//! names are exactly what that sequence's cache holds; dropping the session,
//! [`ChatSession::reset`], or an engine error frees it (no KV block outlives
//! the session). A cancelled turn keeps what was fed, which the next turn
//! re-validates like any other prefix.
//!
//! Non-goals: sharing one cached prefix between several sessions (each
//! session owns its sequence), and keeping caches across processes.

use std::time::Instant;

use crate::Prompt;
use crate::error::Result;
use crate::model::{AutoModel, FinishReason, Generation, Timings, TokenEvent};
use crate::options::GenerateOptions;
use crate::scheduler::{Event, Request, Retained, Scheduler};

/// A conversation on a model, its KV cache kept between turns.
pub struct ChatSession<'m> {
    model: &'m mut AutoModel,
    retained: Option<Retained>,
    last_reused: usize,
}

impl std::fmt::Debug for ChatSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSession").field("cached_tokens", &self.cached_tokens()).finish()
    }
}

impl AutoModel {
    /// A conversation whose turns reuse the KV cache of the turns before
    /// (the model is borrowed for the session; its sequence is freed on drop).
    pub fn chat_session(&mut self) -> ChatSession<'_> {
        ChatSession { model: self, retained: None, last_reused: 0 }
    }
}

impl ChatSession<'_> {
    /// The model.
    pub fn model(&self) -> &AutoModel {
        self.model
    }

    /// Mutable model access (settings, raw engine work). Sequences made there
    /// are the caller's; the session's own is re-validated on the next turn.
    pub fn model_mut(&mut self) -> &mut AutoModel {
        self.model
    }

    /// The token ids the session's cache holds (empty when nothing is cached).
    pub fn cached_ids(&self) -> &[u32] {
        self.retained.as_ref().map_or(&[], |r| r.ids.as_slice())
    }

    /// How many tokens the session's cache holds.
    pub fn cached_tokens(&self) -> usize {
        self.cached_ids().len()
    }

    /// Prompt tokens the last turn took from the cache instead of reading them.
    pub fn last_reused(&self) -> usize {
        self.last_reused
    }

    /// Forgets the cache and frees its KV blocks (the next turn reads its whole prompt).
    pub fn reset(&mut self) {
        if let Some(r) = self.retained.take() {
            self.model.engine_mut().remove_sequence(r.seq);
        }
        self.last_reused = 0;
    }

    /// Generates a reply to `prompt` (usually the whole conversation so far), reading
    /// only the tokens after the longest prefix the cache shares with it; the cache then
    /// holds the prompt and the reply. The result and `on_token` are those of
    /// [`AutoModel::generate`] for one prompt (sequence 0, seed `opts.seed`), and so are the
    /// tokens: the cached prefix's KV is what reading it again would compute.
    pub fn generate(
        &mut self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<(Generation, Timings)> {
        opts.validate()?;
        let ids = self.model.encode(prompt)?;
        let (engine, tok, speculation) = self.model.parts_spec_mut();
        let before = engine.stats();
        let mut sched = Scheduler::new(1);
        sched.set_cancel_flag(opts.cancel.clone());
        sched.set_speculation(speculation.take());
        let spec_before = sched.spec_stats();
        // Kept aside: a refused request leaves the cache as it was.
        let kept = self.retained.clone();
        let req = Request { reuse: self.retained.take(), keep: true, ..Request::new(ids.clone(), opts.clone(), 0) };
        if let Err(e) = sched.submit(engine, req) {
            self.retained = kept;
            *speculation = sched.set_speculation(None);
            return Err(e);
        }
        drop(kept);
        let mut reply: Option<Generation> = None;
        let mut retained = None;
        let mut reused = 0;
        let mut started = false;
        let t0 = Instant::now();
        let mut prefill = None;
        let (mut decode_steps, mut generated, mut decode_tokens) = (0, 0, 0);
        while !sched.is_idle() {
            let was_started = started;
            let report = sched.step(engine, tok, &mut |ev| match ev {
                Event::Token { token, text, logprob, .. } => {
                    started = true;
                    on_token(&TokenEvent { seq: 0, id: token, text, logprob });
                }
                Event::Text { text, .. } => {
                    on_token(&TokenEvent { seq: 0, id: u32::MAX, text: Some(text), logprob: None });
                }
                Event::Finished { reason, ids: new_ids, text, reused_tokens, retained: kept, .. } => {
                    started = true;
                    reused = reused_tokens;
                    retained = kept;
                    reply = Some(Generation { prompt_ids: ids.clone(), new_ids, text, finish: reason });
                }
            });
            let report = match report {
                Ok(r) => r,
                Err(e) => {
                    // Nothing of this turn is trusted: free its sequence (and any kept one).
                    sched.clear(engine);
                    *speculation = sched.set_speculation(None);
                    if let Some(r) = retained.take() {
                        engine.remove_sequence(r.seq);
                    }
                    self.last_reused = 0;
                    return Err(e);
                }
            };
            generated += report.sampled;
            if was_started && report.ran {
                decode_steps += 1;
                decode_tokens += report.sampled;
            }
            if prefill.is_none() && started {
                prefill = Some(t0.elapsed());
            }
        }
        self.retained = retained;
        self.last_reused = reused;
        let prefill = prefill.unwrap_or_else(|| t0.elapsed());
        let reply = reply.unwrap_or(Generation {
            prompt_ids: ids,
            new_ids: Vec::new(),
            text: String::new(),
            finish: FinishReason::Cancelled,
        });
        let engine = before.since(&engine.stats());
        let spec = sched.spec_stats().map(|s| s.since(&spec_before.unwrap_or_default()));
        *speculation = sched.set_speculation(None);
        let timings = Timings {
            prefill,
            decode: t0.elapsed() - prefill,
            decode_steps,
            generated,
            decode_tokens,
            sequences: 1,
            engine,
            spec,
        };
        Ok((reply, timings))
    }
}

impl Drop for ChatSession<'_> {
    fn drop(&mut self) {
        self.reset();
    }
}

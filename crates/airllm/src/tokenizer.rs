//! Text in, ids out (and back): the `tokenizers` crate for the vocabulary,
//! `minijinja` for the chat template of `tokenizer_config.json`.

use std::path::Path;

use minijinja::{Environment, context};
use serde::Serialize;
use serde_json::Value;

use crate::error::{EngineError, Result};

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with a role.
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: String,
    eos_token: String,
    eos_ids: Vec<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("vocab", &self.inner.get_vocab_size(true)).finish()
    }
}

/// A token's text from `tokenizer_config.json` (a string, or `{"content": ...}`).
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

impl TextTokenizer {
    /// Load `tokenizer.json` (required) and `tokenizer_config.json` (optional) from `dir`.
    /// `eos_ids` are the model's end-of-sequence ids (from its config).
    pub fn load(dir: &Path, eos_ids: &[u32]) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::Tokenizer {
                path: path.clone(),
                message: "missing; the model directory must contain tokenizer.json (re-run `airllm shard` \
                          on a checkpoint that has one)"
                    .into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| EngineError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read(&cfg_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| EngineError::Tokenizer {
                path: cfg_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?,
            Err(_) => Value::Null,
        };
        let mut chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_owned),
            _ => None,
        };
        if chat_template.is_none() {
            if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
                chat_template = Some(t);
            }
        }
        let bos_token = token_text(cfg.get("bos_token")).unwrap_or_default();
        let eos_token = token_text(cfg.get("eos_token")).unwrap_or_default();
        let mut eos = eos_ids.to_vec();
        if let Some(id) = inner.token_to_id(&eos_token) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        Ok(TextTokenizer { inner, chat_template, bos_token, eos_token, eos_ids: eos })
    }

    /// Encode text the way `tokenizer(text)` does in transformers (with the
    /// tokenizer's own special-token rules, e.g. a BOS its post-processor adds).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Encode with or without the post-processor's special tokens.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| EngineError::Tokenizer { path: "tokenizer.json".into(), message: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids to text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// The vocabulary entry of `id` as the tokenizer stores it (`Ġhello` in a byte-level
    /// BPE, `<0xE2>` for a byte-fallback token, `<|im_end|>` for a special token).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// End-of-sequence ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Replace the chat template (`--chat-template FILE`; issue 19).
    pub fn set_chat_template(&mut self, template: String) {
        self.chat_template = Some(template);
    }

    /// Whether a chat template is available.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Render the chat template (as `apply_chat_template(messages,
    /// add_generation_prompt=..., tokenize=False)`).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| EngineError::Tokenizer {
            path: "tokenizer_config.json".into(),
            message: "this model has no chat template; use a plain prompt (without --chat)".into(),
        })?;
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let tmpl_err = |e: minijinja::Error| EngineError::Tokenizer {
            path: "tokenizer_config.json (chat_template)".into(),
            message: e.to_string(),
        };
        env.add_template("chat", template).map_err(tmpl_err)?;
        let t = env.get_template("chat").map_err(tmpl_err)?;
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(tmpl_err)
    }

    /// Encode a rendered chat prompt: the template already wrote the special tokens.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, true)?;
        self.encode_with(&text, false)
    }
}

/// Turns a growing list of ids into text pieces as they become complete UTF-8.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// Add one id; returns newly completed text, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids);
        // Hold back a trailing replacement character: the next token may complete it.
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return None;
        }
        let piece = text[self.emitted..].to_owned();
        self.emitted = text.len();
        Some(piece)
    }
}

//! The OpenAI HTTP API's request and response bodies, mirroring its schema
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, errors), and the checks that
//! turn a request into a [`GenRequest`].
//!
//! Requests are parsed from a `serde_json::Value` through `serde_path_to_error`, so a
//! wrong type is reported with the path of the field (`messages[1].content`). Fields
//! whose JSON type varies (`stop`, `prompt`, `content`) stay `Value`s and are checked by
//! hand, for messages that say what is accepted. Unknown fields are ignored, as the
//! OpenAI clients send optional ones freely; fields this server cannot honour
//! (`n` > 1, penalties, `logit_bias`, tools, `echo`, ...) are refused with a 400 rather
//! than silently ignored, since ignoring them would return something else than asked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backend::{GenRequest, TokenLogprob, TopLogprob};
use crate::FinishReason;
use crate::tokenizer::ChatMessage;

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What is wrong and what to do.
    pub message: String,
    /// OpenAI's `type`: "invalid_request_error", "authentication_error", "not_found_error",
    /// "rate_limit_error", "server_error".
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    /// A machine-readable code ("invalid_api_key", "model_not_found", "context_length_exceeded", ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: (!param.is_empty()).then_some(param),
            code: None,
        }
    }

    /// Set the code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Any status with a type.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }
}

/// Parse a request body as a JSON object (syntax errors name line and column).
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("", format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid("", format!("the request body must be a JSON object, not {}", kind(&value))));
    }
    Ok(value)
}

/// Read `T` out of a parsed body; a wrong type is reported with the field's path.
pub fn from_value<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            // A missing required field is reported at the object itself; name it anyway.
            let param = inner.strip_prefix("missing field `").and_then(|r| r.split('`').next()).unwrap_or("");
            ApiError::invalid(param, format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("{path}: {inner}"))
        }
    })
}

/// Parse a chat request body.
pub fn parse_chat(bytes: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let v = parse_json(bytes)?;
    Ok(ChatCompletionRequest { common: from_value(&v)?, chat: from_value(&v)? })
}

/// Parse a completions request body.
pub fn parse_completion(bytes: &[u8]) -> Result<CompletionRequest, ApiError> {
    let v = parse_json(bytes)?;
    Ok(CompletionRequest { common: from_value(&v)?, completion: from_value(&v)? })
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and `"usage": null` in the others).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields both endpoints share.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CommonFields {
    /// The model to use; must be the served one.
    pub model: String,
    /// Legacy name of `max_completion_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// New tokens at most.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// 0 to 2; 0 is greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling, (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// A string or an array of strings.
    #[serde(default)]
    pub stop: Option<Value>,
    /// Choices per request: only 1.
    #[serde(default)]
    pub n: Option<u64>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Not supported unless 0.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Not supported unless 0.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Not supported unless empty.
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Ignored (an end-user id for abuse tracking).
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /v1/chat/completions`: the shared fields and the chat ones (both read from the
/// same object; serde's `flatten` would lose the field paths in errors).
#[derive(Clone, Debug)]
pub struct ChatCompletionRequest {
    /// Shared fields.
    pub common: CommonFields,
    /// Chat fields.
    pub chat: ChatFields,
}

/// The fields only chat requests have.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatFields {
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// Return log-probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// 0 to 20 alternatives per position (needs `logprobs: true`).
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    /// Not supported.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// Only `{"type": "text"}`.
    #[serde(default)]
    pub response_format: Option<Value>,
}

/// One message of a chat request.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessageIn {
    /// "system", "developer" (read as system), "user" or "assistant".
    pub role: String,
    /// A string, an array of `{"type": "text", "text": ...}` parts, or null (assistant).
    #[serde(default)]
    pub content: Value,
}

/// `POST /v1/completions`: the shared fields and the completion ones.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    /// Shared fields.
    pub common: CommonFields,
    /// Completion fields.
    pub completion: CompletionFields,
}

/// The fields only completions requests have.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionFields {
    /// A string, an array of one string, an array of token ids, or an array of one such array.
    #[serde(default)]
    pub prompt: Value,
    /// Legacy log-probabilities: 0 to 20 alternatives per position.
    #[serde(default)]
    pub logprobs: Option<u64>,
    /// Not supported.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Not supported.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Only 1.
    #[serde(default)]
    pub best_of: Option<u64>,
}

/// A prompt as the completions endpoint receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptIn {
    /// Text to encode.
    Text(String),
    /// Token ids used verbatim.
    Ids(Vec<u32>),
}

/// Sampling settings and limits checked from the shared fields; `max_new_tokens` is
/// settled once the prompt length is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// `max_completion_tokens` or `max_tokens`, if given.
    pub max_tokens: Option<(usize, &'static str)>,
    /// Temperature.
    pub temperature: f32,
    /// Top-p.
    pub top_p: f32,
    /// Seed.
    pub seed: u64,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Last chunk carries usage.
    pub include_usage: bool,
}

/// Check the fields both endpoints share.
pub fn check_common(c: &CommonFields) -> Result<Sampling, ApiError> {
    if let Some(n) = c.n
        && n != 1
    {
        return Err(ApiError::invalid("n", format!("n = {n} is not supported: this server returns one choice")));
    }
    for (name, v) in [("frequency_penalty", c.frequency_penalty), ("presence_penalty", c.presence_penalty)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(name, format!("{name} is not supported by this server; leave it out or 0")));
        }
    }
    if c.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid("logit_bias", "logit_bias is not supported by this server"));
    }
    let max_tokens = match (c.max_completion_tokens, c.max_tokens) {
        (Some(v), _) => Some((v, "max_completion_tokens")),
        (None, Some(v)) => Some((v, "max_tokens")),
        (None, None) => None,
    };
    let max_tokens = match max_tokens {
        Some((0, name)) => return Err(ApiError::invalid(name, format!("{name} must be at least 1"))),
        Some((v, name)) => Some((usize::try_from(v).unwrap_or(usize::MAX), name)),
        None => None,
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, not {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], not {top_p}")));
    }
    let stop = match &c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::invalid(format!("stop[{i}]"), format!("stop[{i}] must be a string, not {}", kind(v)))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stop",
                format!("stop must be a string or an array of strings, not {}", kind(v)),
            ));
        }
    };
    let stream = c.stream.unwrap_or(false);
    let include_usage = c.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Sampling {
        max_tokens,
        temperature,
        top_p,
        // Negative seeds are valid in the API; any 64 bits make a seed.
        seed: c.seed.unwrap_or(0) as u64,
        stop,
        stream,
        include_usage,
    })
}

/// The JSON type of a value, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Check a chat request's own fields; returns the conversation and `top_logprobs`.
pub fn check_chat(r: &ChatFields) -> Result<(Vec<ChatMessage>, Option<usize>), ApiError> {
    if r.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools", "tools (function calling) are not supported by this server"));
    }
    if let Some(f) = &r.response_format {
        let t = f.get("type").and_then(Value::as_str);
        if t != Some("text") {
            return Err(ApiError::invalid(
                "response_format",
                "only response_format {\"type\": \"text\"} is supported by this server",
            ));
        }
    }
    if r.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must hold at least one message"));
    }
    let mut out = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("messages[{i}].role {other:?} is not supported (use system, developer, user or assistant)"),
                ));
            }
        };
        let content = match &m.content {
            Value::String(s) => s.clone(),
            Value::Null if role == "assistant" => String::new(),
            Value::Array(parts) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let at = format!("messages[{i}].content[{j}]");
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (Some("text"), None) => {
                            return Err(ApiError::invalid(format!("{at}.text"), format!("{at}.text must be a string")));
                        }
                        (Some(t), _) => {
                            return Err(ApiError::invalid(
                                format!("{at}.type"),
                                format!("{at}: content parts of type {t:?} are not supported (text only)"),
                            ));
                        }
                        (None, _) => {
                            return Err(ApiError::invalid(
                                format!("{at}.type"),
                                format!("{at} must be an object with \"type\": \"text\" and \"text\""),
                            ));
                        }
                    }
                }
                text
            }
            v => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!("messages[{i}].content must be a string or an array of text parts, not {}", kind(v)),
                ));
            }
        };
        out.push(ChatMessage { role: role.into(), content });
    }
    let top = match (r.logprobs.unwrap_or(false), r.top_logprobs) {
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid("top_logprobs", "top_logprobs needs \"logprobs\": true"));
        }
        (true, Some(k)) if k > 20 => {
            return Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be between 0 and 20, not {k}")));
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, _) => None,
    };
    Ok((out, top))
}

/// Check a completions request's own fields; returns the prompt and legacy `logprobs`.
pub fn check_completion(r: &CompletionFields) -> Result<(PromptIn, Option<usize>), ApiError> {
    if r.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported by this server"));
    }
    if r.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix (insertion) is not supported by this server"));
    }
    if r.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "best_of other than 1 is not supported by this server"));
    }
    let ids = |a: &[Value], at: &str| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| {
                    ApiError::invalid(format!("{at}[{i}]"), format!("{at}[{i}] must be a token id (an integer >= 0)"))
                })
            })
            .collect()
    };
    let one = "prompt: only one prompt per request is supported (send an array of one, or a string)";
    let prompt = match &r.prompt {
        Value::Null => return Err(ApiError::invalid("prompt", "prompt is required")),
        Value::String(s) => PromptIn::Text(s.clone()),
        Value::Array(a) if a.is_empty() => return Err(ApiError::invalid("prompt", "prompt must not be empty")),
        Value::Array(a) => match &a[0] {
            Value::String(_) if a.len() > 1 => return Err(ApiError::invalid("prompt", one)),
            Value::String(s) => PromptIn::Text(s.clone()),
            Value::Array(_) if a.len() > 1 => return Err(ApiError::invalid("prompt", one)),
            Value::Array(inner) => PromptIn::Ids(ids(inner, "prompt[0]")?),
            Value::Number(_) => PromptIn::Ids(ids(a, "prompt")?),
            v => {
                return Err(ApiError::invalid(
                    "prompt[0]",
                    format!("prompt[0] must be a string or a token id, not {}", kind(v)),
                ));
            }
        },
        v => {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt must be a string or an array of one string, not {}", kind(v)),
            ));
        }
    };
    let top = match r.logprobs {
        Some(k) if k > 20 => {
            return Err(ApiError::invalid("logprobs", format!("logprobs must be between 0 and 20, not {k}")));
        }
        Some(k) => Some(k as usize),
        None => None,
    };
    Ok((prompt, top))
}

/// Settle `max_new_tokens` against the context and build the request.
/// `default_max` applies when the client gave no limit (it is clamped to what fits).
pub fn gen_request(
    prompt_ids: Vec<u32>,
    s: &Sampling,
    top_logprobs: Option<usize>,
    context: usize,
    prompt_param: &str,
    default_max: Option<usize>,
) -> Result<GenRequest, ApiError> {
    let prompt = prompt_ids.len();
    if prompt == 0 {
        return Err(ApiError::invalid(prompt_param, format!("{prompt_param} encodes to no tokens; give some text")));
    }
    if prompt >= context {
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "the prompt is {prompt} tokens, but this model's context is {context} tokens (and at least one \
                 must be left to generate); shorten the {prompt_param}"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt;
    let max_new_tokens = match s.max_tokens {
        Some((n, name)) if n > room => {
            return Err(ApiError::invalid(
                name,
                format!(
                    "this model's context is {context} tokens, but the request needs {} ({prompt} in the prompt, \
                     {n} to generate); shorten the {prompt_param} or lower {name} to at most {room}",
                    prompt.saturating_add(n)
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Some((n, _)) => n,
        None => default_max.map_or(room, |d| d.min(room)),
    };
    Ok(GenRequest {
        prompt_ids,
        max_new_tokens,
        temperature: s.temperature,
        top_p: s.top_p,
        seed: s.seed,
        stop: s.stop.clone(),
        top_logprobs,
    })
}

/// The API's name for a finish reason.
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        // A cancelled request has no client left to tell; "stop" is the neutral name.
        FinishReason::Eos | FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// `usage`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Usage from the two counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// One alternative in chat `logprobs.content[].top_logprobs`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChatTopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// One position of chat `logprobs.content`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

impl From<&TokenLogprob> for ChatTokenLogprob {
    fn from(l: &TokenLogprob) -> Self {
        let top =
            |t: &TopLogprob| ChatTopLogprob { token: t.token.clone(), logprob: t.logprob, bytes: t.bytes.clone() };
        ChatTokenLogprob {
            token: l.chosen.token.clone(),
            logprob: l.chosen.logprob,
            bytes: l.chosen.bytes.clone(),
            top_logprobs: l.top.iter().map(top).collect(),
        }
    }
}

/// Chat `logprobs`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
    /// Always null here.
    pub refusal: Option<String>,
}

/// The legacy completions `logprobs`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// Per position: token text -> log-probability of the alternatives.
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    /// Byte offset of each token's text in the completion.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Add one position; `offset` is where the token's text starts in the completion.
    pub fn push(&mut self, l: &TokenLogprob, offset: usize) {
        self.tokens.push(l.chosen.token.clone());
        self.token_logprobs.push(l.chosen.logprob);
        self.top_logprobs.push(l.top.iter().map(|t| (t.token.clone(), Value::from(t.logprob))).collect());
        self.text_offset.push(offset);
    }
}

/// The assistant's message in a chat response.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AssistantMessage {
    /// "assistant".
    pub role: &'static str,
    /// The reply.
    pub content: String,
}

/// A choice of a chat response.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChatChoice {
    /// 0.
    pub index: usize,
    /// The reply.
    pub message: AssistantMessage,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// "stop" or "length".
    pub finish_reason: &'static str,
}

/// `chat.completion`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChatCompletion {
    /// "chatcmpl-...".
    pub id: String,
    /// "chat.completion".
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// The `delta` of a chat chunk.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ChatDelta {
    /// "assistant" in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text (absent in the last chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// A choice of a chat chunk.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChatChunkChoice {
    /// 0.
    pub index: usize,
    /// New text.
    pub delta: ChatDelta,
    /// Log-probabilities of this chunk's tokens, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the last content chunk.
    pub finish_reason: Option<&'static str>,
}

/// `chat.completion.chunk`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChatCompletionChunk {
    /// Same for every chunk of a response.
    pub id: String,
    /// "chat.completion.chunk".
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// One choice (none in the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// With `include_usage`: null in every chunk but the last, which has the counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// A choice of a completions response or chunk.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CompletionChoice {
    /// The text (new text, in a chunk).
    pub text: String,
    /// 0.
    pub index: usize,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// "stop" or "length" (null in chunks before the last).
    pub finish_reason: Option<&'static str>,
}

/// `text_completion` (a whole response, or one chunk of a stream).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Completion {
    /// "cmpl-...".
    pub id: String,
    /// "text_completion".
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// One choice (none in the usage chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts (a response); with `include_usage`, null or the counts (a chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// An entry of `/v1/models`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelObject {
    /// The name requests use.
    pub id: String,
    /// "model".
    pub object: &'static str,
    /// Unix seconds (server start).
    pub created: u64,
    /// "airllm".
    pub owned_by: &'static str,
}

/// `/v1/models`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelList {
    /// "list".
    pub object: &'static str,
    /// The served model.
    pub data: Vec<ModelObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_name_the_field() {
        let e = parse_chat(br#"{"model":"m","messages":[{"role":3}]}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{e:?}");
        let e = parse_chat(br#"{"model":"m","messages":[],"temperature":"hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
        let e = parse_chat(br#"{"messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"), "{e:?}");
        let e = parse_chat(b"{\"model\":").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e:?}");
    }

    #[test]
    fn prompts_in_every_accepted_shape() {
        let p = |v: &str| {
            let r = parse_completion(format!(r#"{{"model":"m","prompt":{v}}}"#).as_bytes()).unwrap();
            check_completion(&r.completion).map(|x| x.0)
        };
        assert_eq!(p(r#""hi""#).unwrap(), PromptIn::Text("hi".into()));
        assert_eq!(p(r#"["hi"]"#).unwrap(), PromptIn::Text("hi".into()));
        assert_eq!(p("[1,2]").unwrap(), PromptIn::Ids(vec![1, 2]));
        assert_eq!(p("[[1,2]]").unwrap(), PromptIn::Ids(vec![1, 2]));
        assert_eq!(p(r#"["a","b"]"#).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(p("[1,-2]").unwrap_err().param.as_deref(), Some("prompt[1]"));
        assert_eq!(p("7").unwrap_err().param.as_deref(), Some("prompt"));
    }

    #[test]
    fn context_limits_give_both_numbers() {
        let s = check_common(&CommonFields { max_tokens: Some(50), ..Default::default() }).unwrap();
        let e = gen_request(vec![1; 20], &s, None, 64, "messages", None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(e.message.contains("64") && e.message.contains("20") && e.message.contains("70"), "{}", e.message);
        let e = gen_request(vec![1; 64], &s, None, 64, "messages", None).unwrap_err();
        assert!(e.message.contains("64 tokens"), "{}", e.message);
        let s = check_common(&CommonFields::default()).unwrap();
        assert_eq!(gen_request(vec![1; 20], &s, None, 64, "prompt", Some(16)).unwrap().max_new_tokens, 16);
        assert_eq!(gen_request(vec![1; 60], &s, None, 64, "prompt", Some(16)).unwrap().max_new_tokens, 4);
        assert_eq!(gen_request(vec![1; 20], &s, None, 64, "messages", None).unwrap().max_new_tokens, 44);
    }

    #[test]
    fn chunk_usage_is_null_or_absent() {
        let c = ChatCompletionChunk {
            id: "x".into(),
            object: "chat.completion.chunk",
            created: 0,
            model: "m".into(),
            choices: vec![],
            usage: Some(None),
        };
        assert_eq!(serde_json::to_value(&c).unwrap()["usage"], Value::Null);
        let c = ChatCompletionChunk { usage: None, ..c };
        assert!(serde_json::to_value(&c).unwrap().get("usage").is_none());
    }
}

//! The tokenizer stored in GGUF metadata (`tokenizer.ggml.*`), exported as a
//! Hugging Face `tokenizer.json` and `tokenizer_config.json`, built with
//! serde_json (this crate does not depend on `tokenizers`; its tests load the
//! result with it).
//!
//! Two tokenizer models:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE (Llama 3, Qwen, SmolLM,
//!   ...). Tokens and merges as stored; the pre-tokenizer is chosen by
//!   `tokenizer.ggml.pre`: `default`/`gpt2` (GPT-2 regex), `llama-bpe` (the
//!   Llama 3 regex, with `ignore_merges`), `qwen2` (Qwen2 regex, NFC
//!   normalizer), `smollm`/`starcoder`/`refact` (every digit split off, then the
//!   GPT-2 regex, as llama.cpp and the original SmolLM2 tokenizer.json do).
//!   Anything else logs a warning and falls back to the GPT-2 regex.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece BPE with scores and
//!   byte-fallback tokens `<0x..>`, written the way Hugging Face's
//!   `LlamaTokenizerFast` (legacy) does: normalizer "prepend ▁ (when
//!   `add_space_prefix`), replace space by ▁", BPE with `byte_fallback` and merges
//!   generated from the scores (as transformers' GGUF converter does), decoder
//!   replace ▁ / byte fallback / fuse / strip one leading space.
//!
//! The export follows llama.cpp where it and transformers 5's own GGUF
//! conversion differ: `smollm` splits digits (transformers uses the plain GPT-2
//! regex, which groups whitespace before a digit differently, e.g. `"\r\n4"`),
//! and a SentencePiece vocabulary gets its `▁` prefix after every added token
//! too (transformers' `Metaspace(prepend_scheme="first")` only at the start).
//! Elsewhere the ids are the same (checked in `tests/gguf.rs` against the
//! SmolLM2 goldens and a vocabulary converted by transformers).
//!
//! Token types: control tokens (3) and the unknown token (2) become added
//! tokens with `special: true`; user-defined tokens (4) become added tokens with
//! `special: false` (llama.cpp's converter marks exactly Hugging Face's
//! non-special added tokens, such as Qwen's `<tool_call>`, as user-defined, so
//! they are matched whole but still decoded). The bos/eos/unk/pad tokens are
//! always special added tokens.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::error::Result;
use crate::gguf::parse::GgufMetadata;

/// The Llama 3 pre-tokenizer regex (`tokenizer.ggml.pre = "llama-bpe"`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 pre-tokenizer regex (`tokenizer.ggml.pre = "qwen2"`).
pub const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Gemma's chat format (`<start_of_turn>user ... <end_of_turn>`, the assistant
/// role called `model`, a system message folded into the first user turn), for
/// Gemma files without `tokenizer.chat_template`.
pub const GEMMA_CHAT_TEMPLATE: &str = "{{- bos_token -}}\
{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set prefix = messages[0]['content'] ~ '\\n\\n' -%}{%- set turns = messages[1:] -%}\
{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
{%- for m in turns -%}\
{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}\
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}\
{%- endif -%}\
{{- '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else m['role']) ~ '\\n' -}}\
{{- prefix if loop.first else '' -}}{{- m['content'] | trim -}}{{- '<end_of_turn>\\n' -}}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}";

const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The exported files: `tokenizer.json` and `tokenizer_config.json` as JSON values.
#[derive(Clone, Debug)]
pub struct ExportedTokenizer {
    /// The Hugging Face `tokenizer.json`.
    pub tokenizer_json: Value,
    /// `tokenizer_config.json`: special tokens, `add_bos_token`, `chat_template`.
    pub tokenizer_config: Value,
}

impl ExportedTokenizer {
    /// Both files serialized, as (file name, bytes).
    pub fn to_files(&self) -> Vec<(String, Vec<u8>)> {
        let ser = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
        vec![
            ("tokenizer.json".to_owned(), ser(&self.tokenizer_json)),
            ("tokenizer_config.json".to_owned(), ser(&self.tokenizer_config)),
        ]
    }
}

/// Build the Hugging Face tokenizer files from GGUF metadata. `Ok(None)` when
/// the file has no tokenizer (`tokenizer.ggml.model` absent).
pub fn export_tokenizer(meta: &GgufMetadata) -> Result<Option<ExportedTokenizer>> {
    let Some(model) = meta.get_str("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let tokens = string_array(meta, "tokenizer.ggml.tokens")?
        .ok_or_else(|| meta.err("tokenizer.ggml.model is set but tokenizer.ggml.tokens is missing"))?;
    let n = tokens.len();
    let types: Vec<i64> = match meta.get_array("tokenizer.ggml.token_type") {
        Some(a) if a.len() == n => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        Some(a) => {
            return Err(meta.err(format!("tokenizer.ggml.token_type has {} entries but there are {n} tokens", a.len())));
        }
        None => vec![1; n],
    };
    let id = |key: &str| -> Result<Option<usize>> {
        match meta.get_u64(key) {
            None => Ok(None),
            Some(i) if (i as usize) < n => Ok(Some(i as usize)),
            Some(i) => Err(meta.err(format!("{key} is {i} but there are only {n} tokens"))),
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let unk = id("tokenizer.ggml.unknown_token_id")?;
    let pad = id("tokenizer.ggml.padding_token_id")?;

    let is_spm = match model {
        "gpt2" => false,
        "llama" => true,
        other => {
            return Err(meta.err(format!(
                "tokenizer.ggml.model {other:?} is not supported (gpt2 byte-level BPE, llama SentencePiece)"
            )));
        }
    };
    let add_bos = meta.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(is_spm);
    let add_eos = meta.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);

    // Added tokens: control / unknown / user-defined, plus the named special tokens.
    let mut added: BTreeMap<usize, bool> = BTreeMap::new();
    for (i, &t) in types.iter().enumerate() {
        match t {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                added.insert(i, true);
            }
            TOKEN_TYPE_USER_DEFINED => {
                added.insert(i, false);
            }
            _ => {}
        }
    }
    for i in [bos, eos, unk, pad].into_iter().flatten() {
        added.insert(i, true);
    }
    let added_tokens: Vec<Value> = added
        .iter()
        .map(|(&i, &special)| {
            json!({
                "id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special,
            })
        })
        .collect();

    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        // A duplicated token string keeps its first id (a JSON object cannot hold both).
        vocab.entry(t.clone()).or_insert(json!(i));
    }

    let (normalizer, pre_tokenizer, bpe, decoder) =
        if is_spm { spm_parts(meta, &tokens, unk, vocab)? } else { gpt2_parts(meta, vocab)? };

    let tok = |i: Option<usize>| i.map(|i| tokens[i].clone());
    let with_text = |i: Option<usize>, on: bool| i.filter(|_| on).map(|i| (tokens[i].as_str(), i));
    let post_processor = template(with_text(bos, add_bos), with_text(eos, add_eos));
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": bpe,
    });

    let mut config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": tok(bos),
        "eos_token": tok(eos),
        "unk_token": tok(unk),
        "pad_token": tok(pad),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(arch) = meta.architecture()
        && let Some(ctx) = meta.get_u64(&format!("{arch}.context_length"))
    {
        config["model_max_length"] = json!(ctx);
    }
    if let Some(t) = chat_template(meta) {
        config["chat_template"] = t;
    } else if meta.architecture().is_some_and(|a| a.starts_with("gemma"))
        && tokens.iter().any(|t| t == "<start_of_turn>")
        && tokens.iter().any(|t| t == "<end_of_turn>")
    {
        // Base (pretrained) Gemma files carry no template; their vocabulary has
        // the turn tokens, so chat uses Gemma's turn format.
        tracing::info!("{}: no tokenizer.chat_template; using Gemma's turn format", meta.path.display());
        config["chat_template"] = json!(GEMMA_CHAT_TEMPLATE);
    }
    Ok(Some(ExportedTokenizer { tokenizer_json, tokenizer_config: config }))
}

/// `tokenizer.chat_template` as a string, or Hugging Face's list form
/// (`[{"name": "default", "template": ...}, ...]`) when named templates
/// (`tokenizer.chat_template.<name>`) exist too.
fn chat_template(meta: &GgufMetadata) -> Option<Value> {
    let default = meta.get_str("tokenizer.chat_template");
    let named: Vec<(&str, &str)> =
        meta.kv.iter().filter_map(|(k, v)| Some((k.strip_prefix("tokenizer.chat_template.")?, v.as_str()?))).collect();
    if named.is_empty() {
        return default.map(|t| json!(t));
    }
    let mut list: Vec<Value> = default.map(|t| json!({"name": "default", "template": t})).into_iter().collect();
    list.extend(named.into_iter().map(|(n, t)| json!({"name": n, "template": t})));
    Some(Value::Array(list))
}

fn string_array(meta: &GgufMetadata, key: &str) -> Result<Option<Vec<String>>> {
    let Some(a) = meta.get_array(key) else { return Ok(None) };
    a.iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| meta.err(format!("{key} holds a non-string value {v}"))))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A TemplateProcessing post-processor adding bos / eos (token, id) as configured.
fn template(bos: Option<(&str, usize)>, eos: Option<(&str, usize)>) -> Value {
    let part = |seq: &str, type_id: u32| -> Vec<Value> {
        let mut v = Vec::new();
        if let Some((b, _)) = bos {
            v.push(json!({"SpecialToken": {"id": b, "type_id": type_id}}));
        }
        v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        if let Some((e, _)) = eos {
            v.push(json!({"SpecialToken": {"id": e, "type_id": type_id}}));
        }
        v
    };
    let single = part("A", 0);
    let mut pair = single.clone();
    pair.extend(part("B", 1));
    let mut specials = serde_json::Map::new();
    for (t, i) in [bos, eos].into_iter().flatten() {
        specials.insert(t.to_owned(), json!({"id": t, "ids": [i], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_regex(re: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
}

type Parts = (Value, Value, Value, Value);

/// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
fn gpt2_parts(meta: &GgufMetadata, vocab: serde_json::Map<String, Value>) -> Result<Parts> {
    let merges: Vec<Value> = match string_array(meta, "tokenizer.ggml.merges")? {
        None => Vec::new(),
        Some(m) => m
            .iter()
            .map(|s| {
                // llama.cpp splits at the first space after the first character.
                let cut = s.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
                match cut {
                    Some(i) => Ok(json!([&s[..i], &s[i + 1..]])),
                    None => Err(meta.err(format!("tokenizer.ggml.merges entry {s:?} has no space"))),
                }
            })
            .collect::<Result<_>>()?,
    };
    let pre = meta.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let mut normalizer = Value::Null;
    let mut ignore_merges = false;
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" => {
            ignore_merges = true;
            json!({"type": "Sequence", "pretokenizers": [split_regex(LLAMA3_REGEX), byte_level(false)]})
        }
        "qwen2" => {
            normalizer = json!({"type": "NFC"});
            json!({"type": "Sequence", "pretokenizers": [split_regex(QWEN2_REGEX), byte_level(false)]})
        }
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        other => {
            tracing::warn!(
                "{}: tokenizer.ggml.pre {other:?} is not known; using the GPT-2 pre-tokenizer, \
                 which may split some text differently from llama.cpp",
                meta.path.display()
            );
            byte_level(true)
        }
    };
    let bpe = json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
        "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
    });
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    Ok((normalizer, pre_tokenizer, bpe, decoder))
}

/// SentencePiece BPE (`tokenizer.ggml.model = "llama"`).
fn spm_parts(
    meta: &GgufMetadata,
    tokens: &[String],
    unk: Option<usize>,
    vocab: serde_json::Map<String, Value>,
) -> Result<Parts> {
    let scores: Vec<f32> = match meta.get_array("tokenizer.ggml.scores") {
        Some(a) if a.len() == tokens.len() => a.iter().map(|v| v.as_f32().unwrap_or(0.0)).collect(),
        Some(a) => {
            return Err(meta.err(format!(
                "tokenizer.ggml.scores has {} entries but there are {} tokens",
                a.len(),
                tokens.len()
            )));
        }
        None => (0..tokens.len()).map(|i| -(i as f32)).collect(),
    };
    let merges: Vec<Value> = match string_array(meta, "tokenizer.ggml.merges")? {
        Some(m) if !m.is_empty() => m.iter().filter_map(|s| s.split_once(' ').map(|(a, b)| json!([a, b]))).collect(),
        _ => spm_merges(tokens, &scores).into_iter().map(|(a, b)| json!([a, b])).collect(),
    };
    let add_space_prefix = meta.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let bpe = json!({
        "type": "BPE", "dropout": null, "unk_token": unk.map(|i| tokens[i].clone()),
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges,
    });
    Ok((normalizer, Value::Null, bpe, json!({"type": "Sequence", "decoders": decoders})))
}

/// Merges of a SentencePiece BPE vocabulary, ranked by the score of the merged
/// piece, as transformers' `generate_merges` does: every split of every token
/// into two tokens, splits of one token ordered by (left id, right id), then a
/// stable sort by (score, left length, right length), highest first.
pub fn spm_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        ids.entry(t.as_str()).or_insert(i);
    }
    // (score, left chars, right chars, left, right)
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        // A duplicated token string counts once (its first id and score).
        if ids.get(t.as_str()) != Some(&i) {
            continue;
        }
        let score = scores[i];
        let mut local: Vec<(usize, usize, &str, &str)> = Vec::new();
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                local.push((a, b, l, r));
            }
        }
        local.sort_by_key(|&(a, b, _, _)| (a, b));
        merges.extend(local.into_iter().map(|(_, _, l, r)| (score, l.chars().count(), r.chars().count(), l, r)));
    }
    merges.sort_by(|x, y| {
        y.0.partial_cmp(&x.0).unwrap_or(std::cmp::Ordering::Equal).then(y.1.cmp(&x.1)).then(y.2.cmp(&x.2))
    });
    merges.into_iter().map(|(_, _, _, l, r)| (l.to_owned(), r.to_owned())).collect()
}

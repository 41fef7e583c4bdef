//! Constrained output: a JSON schema or a grammar decides, token by token, which
//! ids may come next, and the others are masked out of the logits before sampling.
//! The constraint engine is [llguidance](https://github.com/guidance-ai/llguidance)
//! (what llama.cpp and vLLM use); its token trie is built from the model's own
//! `tokenizer.json` (`llguidance::token_bytes_from_tokenizer_json`), so every id
//! the engine can produce is known to it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{Arc, Mutex};
//! use airllm::{AutoModel, GenerateOptions, Options, Prompt};
//! use airllm::constrain::{Constraint, Grammar};
//!
//! let mut model = AutoModel::from_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf", Options::default())?;
//! let schema = serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
//! let c = Constraint::new(&model, Grammar::JsonSchema(schema))?;
//! let opts = GenerateOptions { logits_hook: Some(Arc::new(Mutex::new(c))), ..GenerateOptions::default() };
//! let (out, _) = model.generate(&[Prompt::Text("A JSON person:".into())], &opts, |_| {})?;
//! let v: serde_json::Value = serde_json::from_str(&out[0].text)?;
//! # Ok(()) }
//! ```
//!
//! For a server: OpenAI's `response_format: {"type": "json_schema", "json_schema":
//! {"schema": S}}` is `Grammar::JsonSchema(S)`, `{"type": "json_object"}` is
//! `Grammar::JsonSchema({"type": "object"})`; build one [`Constraint`] per request
//! (it holds one matcher per sequence of that request).

use std::collections::HashMap;
use std::path::Path;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{EngineError, Result};

/// What the output must match.
#[derive(Clone, Debug)]
pub enum Grammar {
    /// A JSON schema (draft 2020-12 subset llguidance supports).
    JsonSchema(serde_json::Value),
    /// A Lark grammar in llguidance's dialect (`start: ...`), or a GBNF grammar
    /// (`root ::= ...`, as llama.cpp reads it), converted by [`gbnf_to_lark`].
    Lark(String),
}

impl Grammar {
    /// Read `--json-schema FILE`.
    pub fn json_schema_file(path: &Path) -> Result<Grammar> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::invalid("--json-schema", format!("cannot read {}: {e}", path.display())))?;
        let v = serde_json::from_str(&text)
            .map_err(|e| EngineError::invalid("--json-schema", format!("{} is not JSON: {e}", path.display())))?;
        Ok(Grammar::JsonSchema(v))
    }

    /// Read `--grammar FILE` (Lark, or GBNF when it has `::=` rules).
    pub fn grammar_file(path: &Path) -> Result<Grammar> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::invalid("--grammar", format!("cannot read {}: {e}", path.display())))?;
        Ok(Grammar::Lark(if is_gbnf(&text) { gbnf_to_lark(&text) } else { text }))
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(v) => TopLevelGrammar::from_json_schema(v.clone()),
            Grammar::Lark(s) => TopLevelGrammar::from_lark(s.clone()),
        }
    }
}

/// The model's vocabulary as llguidance sees it (byte strings per id), with the
/// HF tokenizer for re-tokenizing forced text.
struct ModelTokEnv {
    trie: TokTrie,
    hf: tokenizers::Tokenizer,
}

impl TokenizerEnv for ModelTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.hf.encode(s, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
        })
    }
}

/// Build llguidance's token environment from a `tokenizer.json`, padded to the
/// model's vocabulary (`vocab_size` rows of the embedding; ids past the tokenizer's
/// own vocabulary are never allowed).
pub fn tok_env(tokenizer_json: &Path, vocab_size: usize, eos_ids: &[u32]) -> Result<TokEnv> {
    let bad = |m: String| EngineError::Tokenizer { path: tokenizer_json.to_owned(), message: m };
    let text = std::fs::read(tokenizer_json).map_err(|e| bad(format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
        .map_err(|e| bad(format!("constrained output needs a byte-level or byte-fallback tokenizer: {e}")))?;
    if words.len() > vocab_size {
        return Err(bad(format!("the tokenizer has {} tokens, more than the model's {vocab_size}", words.len())));
    }
    for (i, w) in words.iter_mut().enumerate() {
        if w.is_empty() {
            // Holes in the id space: unreachable special tokens.
            *w = special_name(i);
        }
    }
    while words.len() < vocab_size {
        words.push(special_name(words.len()));
    }
    let eos: Vec<u32> = eos_ids.iter().copied().filter(|&e| (e as usize) < vocab_size).collect();
    let Some(&first) = eos.first() else {
        return Err(bad("the model has no end-of-sequence token, so a finished grammar cannot stop it".into()));
    };
    let info = TokRxInfo::new(vocab_size as u32, first);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
    let hf = tokenizers::Tokenizer::from_bytes(&text).map_err(|e| bad(e.to_string()))?;
    Ok(std::sync::Arc::new(ModelTokEnv { trie, hf }))
}

fn special_name(i: usize) -> Vec<u8> {
    let mut v = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    v.extend_from_slice(format!("<[{i}]>").as_bytes());
    v
}

/// A grammar applied to every sequence of a `generate` call (one matcher each).
/// Use it as [`GenerateOptions::logits_hook`](crate::GenerateOptions).
pub struct Constraint {
    factory: ParserFactory,
    grammar: TopLevelGrammar,
    matchers: HashMap<usize, Matcher>,
    option: &'static str,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("sequences", &self.matchers.len()).finish()
    }
}

impl Constraint {
    /// A constraint for `model`'s vocabulary. The grammar is compiled here, so a
    /// bad schema or grammar is an error before generation starts.
    pub fn new(model: &crate::AutoModel, grammar: Grammar) -> Result<Constraint> {
        let env =
            tok_env(&model.shards_dir().join("tokenizer.json"), model.spec().vocab_size, model.tokenizer().eos_ids())?;
        Constraint::with_env(&env, grammar)
    }

    /// A constraint over a prepared token environment.
    pub fn with_env(env: &TokEnv, grammar: Grammar) -> Result<Constraint> {
        let option = match grammar {
            Grammar::JsonSchema(_) => "--json-schema",
            Grammar::Lark(_) => "--grammar",
        };
        let mut factory = ParserFactory::new_simple(env).map_err(|e| EngineError::invalid(option, e.to_string()))?;
        factory.quiet();
        let grammar = grammar.top_level();
        // Compile once to report errors now.
        let probe = Matcher::new(factory.create_parser(grammar.clone()));
        if let Some(e) = probe.get_error() {
            return Err(EngineError::invalid(option, e));
        }
        Ok(Constraint { factory, grammar, matchers: HashMap::new(), option })
    }

    fn matcher(&mut self, seq: usize) -> &mut Matcher {
        let (factory, grammar) = (&self.factory, &self.grammar);
        self.matchers.entry(seq).or_insert_with(|| Matcher::new(factory.create_parser(grammar.clone())))
    }

    /// Whether sequence `seq`'s output so far is a complete match.
    pub fn is_accepting(&mut self, seq: usize) -> bool {
        self.matcher(seq).is_accepting().unwrap_or(false)
    }
}

impl crate::sampler::LogitsHook for Constraint {
    fn mask(&mut self, seq: usize, logits: &mut [f32]) -> std::result::Result<(), String> {
        let option = self.option;
        let mask = self.matcher(seq).compute_mask_or_eos().map_err(|e| format!("{option}: {e}"))?;
        if mask.num_set() == 0 {
            return Err(format!("{option}: no token can continue the output (the grammar allows nothing here)"));
        }
        mask.iter_unset_entries(|i| {
            if let Some(l) = logits.get_mut(i) {
                *l = f32::NEG_INFINITY;
            }
        });
        Ok(())
    }

    fn accept(&mut self, seq: usize, id: u32) -> std::result::Result<(), String> {
        let option = self.option;
        let m = self.matcher(seq);
        if m.is_stopped() {
            return Ok(());
        }
        m.consume_token(id).map_err(|e| format!("{option}: {e}"))
    }
}

/// Whether a grammar text is GBNF (`name ::= ...` rules).
pub fn is_gbnf(text: &str) -> bool {
    text.lines().any(|l| gbnf_rule_start(l).is_some())
}

/// `Some((name, rest))` when a line starts a GBNF rule.
fn gbnf_rule_start(line: &str) -> Option<(&str, &str)> {
    let t = line.trim_start();
    let (name, rest) = t.split_once("::=")?;
    let name = name.trim();
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then_some((name, rest))
}

/// A GBNF rule name as a Lark rule name: lower case, `-` as `_`, `root` as `start`.
fn lark_name(n: &str) -> String {
    let n = n.to_ascii_lowercase().replace('-', "_");
    if n == "root" { "start".into() } else { n }
}

/// Convert a GBNF grammar (llama.cpp's format) to llguidance's Lark dialect. The two
/// share strings, grouping, `| * + ?` and `{m,n}`; what changes is the rule syntax
/// (`name ::= body` → `name: body`), the entry rule (`root` → `start`), names (`-` →
/// `_`), character classes (`[a-z]` → the regex `/[a-z]/`), comments (`#` → dropped)
/// and continuation lines (joined to their rule).
pub fn gbnf_to_lark(text: &str) -> String {
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = strip_gbnf_comment(line);
        if let Some((name, rest)) = gbnf_rule_start(&line) {
            rules.push((lark_name(name), rest.to_owned()));
        } else if let Some(last) = rules.last_mut() {
            if !line.trim().is_empty() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        }
    }
    rules.iter().map(|(n, body)| format!("{n}: {}\n", rename_refs(body.trim()))).collect()
}

/// The line without a `#` comment (a `#` inside a string or class is kept).
fn strip_gbnf_comment(line: &str) -> String {
    let (mut out, mut in_str, mut in_class, mut esc) = (String::new(), false, false, false);
    for c in line.chars() {
        if esc {
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if in_str {
            in_str = c != '"';
        } else if in_class {
            in_class = c != ']';
        } else if c == '"' {
            in_str = true;
        } else if c == '[' {
            in_class = true;
        } else if c == '#' {
            break;
        }
        out.push(c);
    }
    out
}

/// Rename rule references in a body (outside strings and classes).
fn rename_refs(body: &str) -> String {
    let (mut out, mut word, mut in_str, mut in_class, mut esc) = (String::new(), String::new(), false, false, false);
    let flush = |w: &mut String, out: &mut String| {
        if !w.is_empty() {
            out.push_str(&lark_name(w));
            w.clear();
        }
    };
    for c in body.chars() {
        if in_str || in_class {
            if in_class && c == '/' && !esc {
                out.push('\\');
            }
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if in_str && c == '"' {
                in_str = false;
            } else if in_class && c == ']' {
                // A GBNF class is a regex in Lark: `[a-z]` -> `/[a-z]/`.
                out.push('/');
                in_class = false;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            // Digits inside {m,n} are not names.
            if word.is_empty() && c.is_ascii_digit() {
                out.push(c);
            } else {
                word.push(c);
            }
            continue;
        }
        flush(&mut word, &mut out);
        if c == '"' {
            in_str = true;
        } else if c == '[' {
            in_class = true;
            out.push('/');
        }
        out.push(c);
    }
    flush(&mut word, &mut out);
    out
}

/// For tests and tools: a token environment over a byte-level vocabulary.
pub fn approximate_env(words: &[Vec<u8>], eos: u32) -> TokEnv {
    let info = TokRxInfo::new(words.len() as u32, eos);
    std::sync::Arc::new(toktrie::ApproximateTokEnv::new(TokTrie::from(&info, words)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::LogitsHook;

    #[test]
    fn gbnf_converts_to_lark() {
        let g = "# a list\nroot ::= \"[\" item (\",\" item)* \"]\"  # items\nitem ::= [a-z#]+ |\n   \"x-y\" my-num{1,3}\nmy-num ::= [0-9]\n";
        assert!(is_gbnf(g) && !is_gbnf("start: \"a\""));
        let l = gbnf_to_lark(g);
        assert_eq!(
            l,
            "start: \"[\" item (\",\" item)* \"]\"\nitem: /[a-z#]/+ | \"x-y\" my_num{1,3}\nmy_num: /[0-9]/\n"
        );
    }

    /// A vocabulary of single bytes plus an EOS: the mask must follow the grammar.
    #[test]
    fn mask_follows_a_lark_grammar() {
        let mut words: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        words.push(special_name(256));
        let env = approximate_env(&words, 256);
        let mut c = Constraint::with_env(&env, Grammar::Lark("start: \"ab\" | \"ac\"".into())).unwrap();
        let mut logits = vec![0.0f32; 257];
        c.mask(0, &mut logits).unwrap();
        let allowed: Vec<usize> = (0..257).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(allowed, [b'a' as usize]);
        c.accept(0, b'a' as u32).unwrap();
        let mut logits = vec![0.0f32; 257];
        c.mask(0, &mut logits).unwrap();
        let allowed: Vec<usize> = (0..257).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(allowed, [b'b' as usize, b'c' as usize]);
        c.accept(0, b'c' as u32).unwrap();
        assert!(c.is_accepting(0));
        let mut logits = vec![0.0f32; 257];
        c.mask(0, &mut logits).unwrap();
        assert!(logits[256].is_finite() && logits[b'a' as usize].is_infinite());
        // A second sequence starts from the beginning.
        let mut logits = vec![0.0f32; 257];
        c.mask(1, &mut logits).unwrap();
        assert!(logits[b'a' as usize].is_finite() && logits[b'b' as usize].is_infinite());
    }

    #[test]
    fn a_bad_grammar_is_an_error_naming_the_option() {
        let words: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        let env = approximate_env(&words, 0);
        let e = Constraint::with_env(&env, Grammar::Lark("start: undefined_rule".into())).unwrap_err().to_string();
        assert!(e.contains("--grammar"), "{e}");
        let e =
            Constraint::with_env(&env, Grammar::JsonSchema(serde_json::json!({"type": 5}))).unwrap_err().to_string();
        assert!(e.contains("--json-schema"), "{e}");
    }
}

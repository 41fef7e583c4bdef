//! A draft model: a second, small model with the target's vocabulary
//! proposes a token tree by its own probabilities.
//!
//! The tree grows best-first (in the spirit of SpecExec): every candidate
//! continuation carries the draft's cumulative log-probability of its path
//! from the root; each draft pass adds the best few candidates as nodes and
//! scores them together (one tree step on the draft's own engine, each node
//! seeing its ancestors), and their most likely next tokens become new
//! candidates, until the tree has its budget of nodes. Likely paths get deep,
//! uncertain spots get several branches.
//!
//! The draft keeps one sequence per request whose cache holds the request's
//! context; between passes only the new tokens are read, and the tree's nodes
//! are dropped after each proposal.

use std::collections::HashMap;

use super::{DraftRequest, DraftTree, Drafter};
use crate::engine::{Engine, Logits, ROOT, SeqId, StepItem, Tree};
use crate::error::{EngineError, Result};
use crate::model::AutoModel;
use crate::tokenizer::TextTokenizer;

/// Candidates scored per draft pass, at most.
const WIDTH: usize = 6;
/// Children considered per scored node.
const TOP_K: usize = 4;

/// The draft-model drafter.
pub struct DraftModel {
    engine: Engine,
    /// Per request: the draft's sequence and the ids its cache holds.
    seqs: HashMap<u64, (SeqId, Vec<u32>)>,
    name: String,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel").field("model", &self.name).field("sequences", &self.seqs.len()).finish()
    }
}

impl DraftModel {
    /// Wraps a loaded draft model after checking that its vocabulary is the
    /// target's (every id decodes to the same token), so its proposals mean
    /// the same tokens. `name` names the draft in errors and reports.
    pub fn new(draft: AutoModel, target: &TextTokenizer, target_vocab: usize, name: &str) -> Result<DraftModel> {
        let dv = draft.spec().vocab_size;
        let dtok = draft.tokenizer();
        let first_diff = (0..dv.max(target_vocab) as u32).find(|&id| dtok.id_to_token(id) != target.id_to_token(id));
        if let Some(id) = first_diff {
            return Err(EngineError::invalid(
                "--draft-model",
                format!(
                    "{name} has a different vocabulary from the target model (token {id}: {:?} against {:?}; \
                     vocabularies of {dv} and {target_vocab} entries); a draft model must use the target's tokenizer",
                    dtok.id_to_token(id),
                    target.id_to_token(id)
                ),
            ));
        }
        let (engine, _) = draft.into_parts();
        Ok(DraftModel { engine, seqs: HashMap::new(), name: name.to_string() })
    }

    /// The draft's engine (its plan and counters).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Brings request `key`'s draft sequence to `context` and returns the
    /// draft's logits after its last token.
    fn sync(&mut self, key: u64, context: &[u32]) -> Result<(SeqId, Vec<f32>)> {
        let e = &mut self.engine;
        let (seq, cached) = self.seqs.entry(key).or_insert_with(|| (e.add_sequence(), Vec::new()));
        // Keep the common prefix; re-read at least the last token (for its logits).
        let common = cached.iter().zip(context).take_while(|(a, b)| a == b).count().min(context.len() - 1);
        e.truncate(*seq, common)?;
        cached.truncate(common);
        let rows = e.capacity().rows.max(1);
        let mut logits = Vec::new();
        let mut at = common;
        while at < context.len() {
            let end = (at + rows).min(context.len());
            let l = if end == context.len() { Logits::Last } else { Logits::None };
            let mut out = e.step(&[StepItem::new(*seq, &context[at..end], l)])?;
            cached.extend_from_slice(&context[at..end]);
            logits = out.pop().unwrap_or_default();
            at = end;
        }
        Ok((*seq, logits))
    }
}

impl Drafter for DraftModel {
    fn name(&self) -> &'static str {
        "draft-model"
    }

    fn propose(&mut self, _target: &mut Engine, req: DraftRequest<'_>) -> Result<DraftTree> {
        if req.budget == 0 || req.context.is_empty() {
            return Ok(DraftTree::default());
        }
        let room = self.engine.max_context().saturating_sub(req.context.len());
        let budget = req.budget.min(room).min(crate::engine::MAX_TREE_NODES);
        let (seq, root) = match self.sync(req.key, req.context) {
            Ok(x) => x,
            Err(EngineError::KvFull { .. }) => {
                // The draft's pool is full (many requests): no proposal this time.
                self.finish(req.key);
                return Ok(DraftTree::default());
            }
            Err(e) => return Err(e),
        };
        let base = req.context.len();
        let cap = self.engine.capacity();
        let width = WIDTH.min(cap.rows).min(cap.logit_rows).max(1);
        let e = &mut self.engine;
        let tree = expand(&root, budget, width, |new, parents| {
            let item = StepItem { seq, tokens: new, logits: Logits::All, tree: Some(Tree { base, parents }) };
            let out = e.step(&[item])?;
            Ok(out.into_iter().next().unwrap_or_default())
        });
        // Drop the tree's nodes whatever happened; the context stays cached.
        e.truncate(seq, base)?;
        match tree {
            Ok(t) => Ok(t),
            Err(EngineError::KvFull { .. }) => Ok(DraftTree::default()),
            Err(err) => Err(err),
        }
    }

    fn finish(&mut self, key: u64) {
        if let Some((seq, _)) = self.seqs.remove(&key) {
            self.engine.remove_sequence(seq);
        }
    }
}

/// A candidate node: its path's cumulative log-probability, parent, token.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    logp: f32,
    parent: u32,
    token: u32,
}

/// Grows a best-first tree of at most `budget` nodes from the draft's
/// `root_logits` (the distribution after the root). `score(new, parents)`
/// runs one tree pass of the draft over the nodes `new` (the last
/// `new.len()` of the tree; `parents` covers every node so far) and returns
/// their logits, `[new.len(), vocab]` row-major.
pub(crate) fn expand(
    root_logits: &[f32],
    budget: usize,
    width: usize,
    mut score: impl FnMut(&[u32], &[u32]) -> Result<Vec<f32>>,
) -> Result<DraftTree> {
    let vocab = root_logits.len();
    let mut tree = DraftTree::default();
    let mut cum: Vec<f32> = Vec::new();
    let mut cands: Vec<Candidate> =
        top_k(root_logits, TOP_K).into_iter().map(|(token, logp)| Candidate { logp, parent: ROOT, token }).collect();
    while tree.len() < budget && !cands.is_empty() && vocab > 0 {
        // The best `width` candidates become nodes.
        cands.sort_by(|a, b| b.logp.total_cmp(&a.logp));
        let take = width.min(budget - tree.len()).min(cands.len());
        let first = tree.len();
        for c in cands.drain(..take) {
            tree.push(c.token, c.parent);
            cum.push(c.logp);
        }
        if tree.len() >= budget {
            break;
        }
        let logits = score(&tree.tokens[first..], &tree.parents)?;
        for (k, row) in logits.chunks_exact(vocab).enumerate() {
            let node = (first + k) as u32;
            for (token, logp) in top_k(row, TOP_K) {
                cands.push(Candidate { logp: cum[node as usize] + logp, parent: node, token });
            }
        }
    }
    Ok(tree)
}

/// The `k` most likely tokens of a logit row and their log-probabilities, best first.
pub(crate) fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if logits.is_empty() || k == 0 {
        return Vec::new();
    }
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits.iter().map(|&l| ((l - m) as f64).exp()).sum::<f64>().ln() as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    idx.into_iter().filter(|&i| logits[i as usize].is_finite()).map(|i| (i, logits[i as usize] - lse)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy draft over 4 tokens that always prefers `last + 1`: the tree
    /// must grow deep along that chain first.
    #[test]
    fn best_first_goes_deep_where_the_draft_is_sure() {
        let row = |prefer: u32| -> Vec<f32> { (0..4).map(|t| if t == prefer % 4 { 5.0 } else { 0.0 }).collect() };
        let tree = expand(&row(1), 8, 2, |new, _parents| Ok(new.iter().flat_map(|&t| row(t + 1)).collect())).unwrap();
        tree.validate().unwrap();
        assert_eq!(tree.len(), 8);
        // The chain 1 -> 2 -> 3 -> 0 is in the tree.
        let mut node = ROOT;
        for t in [1, 2, 3, 0] {
            node = tree.child(node, t).unwrap_or_else(|| panic!("token {t} missing under {node}: {tree:?}"));
        }
    }
}

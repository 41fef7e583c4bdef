//! Speculative decoding: many accepted tokens per pass over the weights.
//!
//! When the weights stream, a pass costs about the same whether it scores one
//! token or a hundred. So before a sequence's decode pass a [`Drafter`]
//! proposes a tree of likely continuations ([`DraftTree`]); the target model
//! scores the whole tree in that one pass (a tree step, each node seeing only
//! its ancestors: [`crate::engine::Tree`]); the scheduler then walks the tree
//! from its root, choosing each next token from the target's own
//! distribution at the current node and moving on while the choice is one of
//! the node's children. The accepted path's KV is kept (moved down to
//! consecutive slots, [`Engine::keep_tree_path`]) and the rest is dropped.
//! A pass therefore yields one token plus every accepted draft token.
//!
//! Drafters ([`Drafter`]):
//! - [`lookup::PromptLookup`]: n-gram matches in the prompt and the output so
//!   far (no model; strong on edits, code and summaries);
//! - [`draft_model::DraftModel`]: a second, small model with the same
//!   vocabulary, kept resident or on the CPU executor, expanding a best-first
//!   tree by its own probabilities (SpecExec-style, `--draft-tree N` nodes);
//! - [`self_draft::SelfDraft`]: the target's own resident layers plus its
//!   final norm and head (early exit, LayerSkip-style), no streaming needed.
//!
//! **Exactness.** The choice at a node is the speculative-sampling rule
//! ([`choose`]): each child `x` the drafter proposed is accepted with
//! probability `min(1, p(x) / q(x))`, else its mass is removed from `p` (the
//! residual) and the next child is tried; with no child left the token is
//! drawn from the residual. Tree drafts are deterministic (`q` puts all its
//! mass on the proposed token), so the rule reads: accept `x` with
//! probability `p(x)`, else continue with `p` without `x`. The emitted token
//! is then distributed exactly as `p`, the target's distribution after
//! temperature, top-k, top-p and the repetition penalty; at temperature 0 `p`
//! is a point mass on the arg-max, so greedy speculation gives exactly the ids
//! of greedy decoding.

pub mod draft_model;
pub mod lookup;
pub mod self_draft;
pub mod sizer;

use std::time::Duration;

use crate::engine::{Engine, ROOT, SeqId};
use crate::error::{EngineError, Result};
use crate::sampler::Distribution;

/// A proposed token tree below a root (the sequence's next token, sampled
/// but not yet fed). Node `j` continues its parent: `parents[j]` is an
/// earlier node, or [`ROOT`] for a child of the root. Siblings are listed
/// most likely first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DraftTree {
    /// Token of each node.
    pub tokens: Vec<u32>,
    /// Parent of each node.
    pub parents: Vec<u32>,
}

impl DraftTree {
    /// Nodes in the tree.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it proposes nothing.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Adds a node; returns its index.
    pub fn push(&mut self, token: u32, parent: u32) -> u32 {
        self.tokens.push(token);
        self.parents.push(parent);
        (self.tokens.len() - 1) as u32
    }

    /// The child of `parent` (a node or [`ROOT`]) holding `token`, if any.
    pub fn child(&self, parent: u32, token: u32) -> Option<u32> {
        (0..self.len()).find(|&j| self.parents[j] == parent && self.tokens[j] == token).map(|j| j as u32)
    }

    /// Checks that every parent is an earlier node or the root and that no two
    /// siblings hold the same token.
    pub fn validate(&self) -> Result<()> {
        if self.tokens.len() != self.parents.len() {
            return Err(EngineError::invalid("draft", "a draft tree needs one parent per token"));
        }
        for j in 0..self.len() {
            let p = self.parents[j];
            if p != ROOT && p as usize >= j {
                return Err(EngineError::invalid(
                    "draft",
                    format!("draft node {j} has parent {p}, not an earlier node"),
                ));
            }
            if self.child(p, self.tokens[j]) != Some(j as u32) {
                return Err(EngineError::invalid("draft", format!("draft node {j} repeats a sibling's token")));
            }
        }
        Ok(())
    }

    /// The verify step's tree: the root as node 0, then these nodes
    /// (`(tokens, parents)` with parents shifted by one).
    pub fn with_root(&self, root: u32) -> (Vec<u32>, Vec<u32>) {
        let mut tokens = Vec::with_capacity(self.len() + 1);
        let mut parents = Vec::with_capacity(self.len() + 1);
        tokens.push(root);
        parents.push(ROOT);
        for j in 0..self.len() {
            tokens.push(self.tokens[j]);
            parents.push(if self.parents[j] == ROOT { 0 } else { self.parents[j] + 1 });
        }
        (tokens, parents)
    }
}

/// What a drafter is asked for.
#[derive(Clone, Copy, Debug)]
pub struct DraftRequest<'a> {
    /// The request (drafters with per-sequence state key it by this).
    pub key: u64,
    /// The target's sequence (its cache holds `context` minus the last token).
    pub seq: SeqId,
    /// Prompt and generated ids; the last one is the root the target feeds next.
    pub context: &'a [u32],
    /// Nodes at most below the root.
    pub budget: usize,
}

/// Proposes token trees.
pub trait Drafter: Send {
    /// A short name for reports (`prompt-lookup`, `draft-model`, `self-draft`).
    fn name(&self) -> &'static str;

    /// A tree continuing `req.context` (possibly empty: nothing to propose).
    /// `target` is the engine that verifies; only [`self_draft::SelfDraft`]
    /// uses it, and it leaves every sequence as it found it.
    fn propose(&mut self, target: &mut Engine, req: DraftRequest<'_>) -> Result<DraftTree>;

    /// Request `key` ended: forget its state.
    fn finish(&mut self, _key: u64) {}
}

/// How much to speculate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    /// Draft nodes at most per sequence and pass (`--draft-tree`).
    pub tree: usize,
    /// Speculate only while the pass holds fewer token rows than this: a pass
    /// already full of real work (a big batch, a prompt) gains nothing.
    pub max_rows: usize,
    /// Pick each pass's tree size (at most `tree`) from measured costs and
    /// acceptance ([`sizer::TreeSizer`]); false (the default): always `tree`.
    pub adaptive: bool,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig { tree: 32, max_rows: 128, adaptive: false }
    }
}

/// Counters of speculation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpecStats {
    /// Sequence-passes that verified a draft tree.
    pub verified: u64,
    /// Draft nodes proposed.
    pub proposed: u64,
    /// Draft tokens accepted (each one saved a pass).
    pub accepted: u64,
    /// Tokens emitted by verifying passes (accepted + one chosen per pass).
    pub emitted: u64,
    /// Time spent drafting.
    pub draft: Duration,
}

impl SpecStats {
    /// Tokens per verifying pass (1 without speculation).
    pub fn tokens_per_pass(&self) -> f64 {
        if self.verified == 0 { 0.0 } else { self.emitted as f64 / self.verified as f64 }
    }

    /// Counters since `earlier`.
    pub fn since(&self, earlier: &SpecStats) -> SpecStats {
        SpecStats {
            verified: self.verified - earlier.verified,
            proposed: self.proposed - earlier.proposed,
            accepted: self.accepted - earlier.accepted,
            emitted: self.emitted - earlier.emitted,
            draft: self.draft.saturating_sub(earlier.draft),
        }
    }
}

/// A drafter with its settings and counters; the scheduler's speculation.
pub struct Speculator {
    /// The drafter.
    pub drafter: Box<dyn Drafter>,
    /// How much.
    pub cfg: SpecConfig,
    /// Counters.
    pub stats: SpecStats,
    /// The adaptive tree size (when `cfg.adaptive`).
    pub sizer: Option<sizer::TreeSizer>,
}

impl std::fmt::Debug for Speculator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speculator").field("drafter", &self.drafter.name()).field("cfg", &self.cfg).finish()
    }
}

impl Speculator {
    /// Speculation with `drafter`.
    pub fn new(drafter: Box<dyn Drafter>, cfg: SpecConfig) -> Self {
        let sizer = cfg.adaptive.then(|| sizer::TreeSizer::new(cfg.tree));
        Speculator { drafter, cfg, stats: SpecStats::default(), sizer }
    }
}

/// The speculative-sampling choice at one node (see the module docs): tries
/// `candidates` (the node's children's tokens, in the drafter's order, each
/// proposed with `q = 1`) against the target distribution `p`, accepting `x`
/// with probability `min(1, p(x) / q(x)) = p(x)` and otherwise continuing
/// with the residual `p` without `x`; draws from what is left when no
/// candidate is accepted. `uniform` gives numbers in `[0, 1)`. A point mass
/// (greedy) needs no random numbers.
pub fn choose(mut p: Distribution, candidates: &[u32], mut uniform: impl FnMut() -> f32) -> u32 {
    if p.ids.len() == 1 {
        return p.ids[0];
    }
    for &x in candidates {
        let px = p.prob(x);
        if px > 0.0 && uniform() < px.min(1.0) {
            return x;
        }
        if !p.remove(x) {
            // All the mass was on rejected candidates (only possible by rounding).
            return x;
        }
    }
    p.draw(uniform())
}

/// The children of every node of a verify tree (`parents` with the root as
/// node 0), in node order.
pub fn children(parents: &[u32]) -> Vec<Vec<u32>> {
    let mut c = vec![Vec::new(); parents.len()];
    for (j, &p) in parents.iter().enumerate() {
        if p != ROOT {
            c[p as usize].push(j as u32);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn draft_trees_validate_and_take_a_root() {
        let mut t = DraftTree::default();
        let a = t.push(5, ROOT);
        t.push(6, ROOT);
        t.push(7, a);
        t.validate().unwrap();
        assert_eq!(t.child(ROOT, 6), Some(1));
        assert_eq!(t.child(a, 7), Some(2));
        let (tok, par) = t.with_root(9);
        assert_eq!(tok, vec![9, 5, 6, 7]);
        assert_eq!(par, vec![ROOT, 0, 0, 1]);
        assert_eq!(children(&par), vec![vec![1, 2], vec![3], vec![], vec![]]);
        t.push(5, ROOT);
        assert!(t.validate().is_err(), "a repeated sibling token is refused");
    }

    /// The rule's output distribution is the target's, whatever the
    /// candidates: a chi-square test of 40000 draws per case at the 0.1% level.
    #[test]
    fn choose_keeps_the_target_distribution() {
        let p = Distribution { ids: vec![3, 1, 4, 0, 2], probs: vec![0.4, 0.25, 0.2, 0.1, 0.05] };
        let mut rng = StdRng::seed_from_u64(11);
        for cands in [vec![], vec![3], vec![2], vec![0, 4], vec![4, 1, 3], vec![7, 2]] {
            let n = 40_000;
            let mut counts = [0usize; 8];
            for _ in 0..n {
                counts[choose(p.clone(), &cands, || rng.random()) as usize] += 1;
            }
            let chi2: f64 = p
                .ids
                .iter()
                .zip(&p.probs)
                .map(|(&id, &pr)| {
                    let e = n as f64 * pr as f64;
                    (counts[id as usize] as f64 - e).powi(2) / e
                })
                .sum();
            // 4 degrees of freedom: P(chi2 > 18.47) = 0.001.
            assert!(chi2 < 18.47, "candidates {cands:?}: counts {counts:?}, chi2 {chi2}");
            assert_eq!(counts[5..].iter().sum::<usize>(), 0, "tokens outside p are never chosen");
        }
        // Greedy: the arg-max, whatever is proposed.
        let g = Distribution { ids: vec![4], probs: vec![1.0] };
        assert_eq!(choose(g.clone(), &[1, 2], || panic!("no randomness for greedy")), 4);
        assert_eq!(choose(g, &[4], || 0.99), 4);
    }
}

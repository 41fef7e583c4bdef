//! Prompt lookup: proposals from the text itself. When the last few tokens
//! occurred before (in the prompt or the output so far), what followed them
//! then is a good guess for what follows now; edits, code and summaries
//! repeat long spans. No model runs, so drafting costs microseconds.

use super::{DraftRequest, DraftTree, Drafter};
use crate::engine::{Engine, ROOT};
use crate::error::Result;

/// The prompt-lookup drafter.
#[derive(Clone, Debug)]
pub struct PromptLookup {
    /// Longest suffix matched (longer matches are tried first: more reliable).
    pub max_ngram: usize,
    /// Shortest suffix matched.
    pub min_ngram: usize,
    /// Distinct earlier occurrences followed, each a branch of the tree.
    pub max_branches: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup { max_ngram: 4, min_ngram: 1, max_branches: 4 }
    }
}

impl PromptLookup {
    /// The tree for `context` (the last token is the root) of at most
    /// `budget` nodes: the continuations of the most recent earlier
    /// occurrences of its longest matching suffix, merged into a trie. The
    /// first branch (longest suffix, latest occurrence) gets the budget it
    /// needs; later ones fill what is left.
    pub fn tree(&self, context: &[u32], budget: usize) -> DraftTree {
        let mut tree = DraftTree::default();
        let len = context.len();
        let mut branches = 0;
        let mut seen_starts = Vec::new();
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if n >= len || tree.len() >= budget || branches >= self.max_branches {
                continue;
            }
            let suffix = &context[len - n..];
            // Earlier occurrences, latest first (an occurrence must be followed by a token).
            for i in (0..len - n).rev() {
                if tree.len() >= budget || branches >= self.max_branches {
                    break;
                }
                if &context[i..i + n] != suffix {
                    continue;
                }
                let start = i + n;
                if seen_starts.contains(&start) {
                    continue;
                }
                seen_starts.push(start);
                // Follow the continuation through the trie, adding new nodes.
                let mut parent = ROOT;
                let mut added = false;
                for &t in &context[start..len] {
                    match tree.child(parent, t) {
                        Some(c) => parent = c,
                        None if tree.len() < budget => {
                            parent = tree.push(t, parent);
                            added = true;
                        }
                        None => break,
                    }
                }
                if added {
                    branches += 1;
                }
            }
            if branches > 0 {
                // Shorter suffixes match more and mean less: only when nothing longer did.
                break;
            }
        }
        tree
    }
}

impl Drafter for PromptLookup {
    fn name(&self) -> &'static str {
        "prompt-lookup"
    }

    fn propose(&mut self, _target: &mut Engine, req: DraftRequest<'_>) -> Result<DraftTree> {
        Ok(self.tree(req.context, req.budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_latest_longest_match() {
        let l = PromptLookup::default();
        // "a b c d x ... a b c" -> proposes "d x" then what follows.
        let ctx = [1, 2, 3, 4, 9, 8, 1, 2, 3];
        let t = l.tree(&ctx, 3);
        assert_eq!(t.tokens, vec![4, 9, 8]);
        assert_eq!(t.parents, vec![ROOT, 0, 1]);
        t.validate().unwrap();
        // Two occurrences of "5 6" with different continuations become two branches.
        let ctx = [5, 6, 7, 1, 5, 6, 8, 2, 5, 6];
        let t = l.tree(&ctx, 8);
        t.validate().unwrap();
        assert_eq!(t.child(ROOT, 8), Some(0), "the latest occurrence first");
        assert!(t.child(ROOT, 7).is_some());
        // No earlier occurrence of the last token: nothing.
        assert!(l.tree(&[1, 2, 3], 8).is_empty());
        // The budget is a hard cap.
        let ctx: Vec<u32> = (0..50).chain(0..3).collect();
        assert_eq!(l.tree(&ctx, 5).len(), 5);
    }
}

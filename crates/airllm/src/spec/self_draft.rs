//! Self-drafting: the target's own resident layers, then its final norm and
//! head, propose the tree (an early exit, as in LayerSkip). Those layers are
//! already in VRAM (or on the CPU), so drafting streams nothing; the
//! proposals are as good as the first layers' view of the text, which
//! depends on the model (models trained with early-exit losses do best).
//!
//! The draft passes write KV for the early layers at the tree's slots; the
//! sequence is cut back afterwards, and the verify pass rewrites every layer
//! at those slots, so nothing of the draft survives in the cache.

use super::draft_model::expand;
use super::{DraftRequest, DraftTree, Drafter};
use crate::engine::{Engine, Logits, StepItem, Tree};
use crate::error::{EngineError, Result};

/// Candidates scored per early-exit pass.
const WIDTH: usize = 6;

/// The self-drafting drafter.
#[derive(Clone, Debug, Default)]
pub struct SelfDraft {
    /// Layers before the exit (None: the leading resident layers, at most half
    /// the model: an exit after every layer would be the model itself, as dear).
    pub layers: Option<usize>,
}

impl SelfDraft {
    /// Checks that `target` can self-draft at all: some leading layers and
    /// the head are not streamed.
    pub fn check(&self, target: &Engine) -> Result<()> {
        let n = target.early_exit_layers();
        let want = self.layers.unwrap_or_else(|| Self::default_layers(target));
        if n == 0 || want == 0 || want > n {
            return Err(EngineError::invalid(
                "--self-draft",
                format!(
                    "self-drafting runs the leading resident layers and the head; this plan keeps {n} leading \
                     layers resident{} (raise --resident-layers or --max-vram, or use --prompt-lookup / --draft-model)",
                    if n == 0 { " or streams the head" } else { "" }
                ),
            ));
        }
        Ok(())
    }
}

impl SelfDraft {
    /// The exit when none is given: the leading resident layers, at most half the model.
    pub fn default_layers(target: &Engine) -> usize {
        target.early_exit_layers().min(target.spec().num_layers.div_ceil(2))
    }
}

impl Drafter for SelfDraft {
    fn name(&self) -> &'static str {
        "self-draft"
    }

    fn propose(&mut self, target: &mut Engine, req: DraftRequest<'_>) -> Result<DraftTree> {
        let layers = self.layers.unwrap_or_else(|| Self::default_layers(target));
        let Some(&root) = req.context.last() else { return Ok(DraftTree::default()) };
        let len = target
            .sequence_len(req.seq)
            .ok_or_else(|| EngineError::invalid("self-draft", format!("no {}", req.seq)))?;
        let room = target.max_context().saturating_sub(len + 1);
        let budget = req.budget.min(room).min(crate::engine::MAX_TREE_NODES);
        if budget == 0 {
            return Ok(DraftTree::default());
        }
        let result = (|| {
            let out = target.step_early_exit(&[StepItem::new(req.seq, &[root], Logits::Last)], layers)?;
            let root_logits = out.into_iter().next().unwrap_or_default();
            let base = len + 1;
            let cap = target.capacity();
            let width = WIDTH.min(cap.rows).min(cap.logit_rows).max(1);
            expand(&root_logits, budget, width, |new, parents| {
                let item =
                    StepItem { seq: req.seq, tokens: new, logits: Logits::All, tree: Some(Tree { base, parents }) };
                let out = target.step_early_exit(&[item], layers)?;
                Ok(out.into_iter().next().unwrap_or_default())
            })
        })();
        // Back to the committed prefix, whatever happened.
        target.truncate(req.seq, len)?;
        match result {
            Ok(t) => Ok(t),
            Err(EngineError::KvFull { .. }) => Ok(DraftTree::default()),
            Err(e) => Err(e),
        }
    }
}

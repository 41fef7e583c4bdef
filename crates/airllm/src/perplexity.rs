//! Quality evaluation: perplexity of a text and the divergence of a model's
//! next-token distributions from a reference model's.
//!
//! Definitions (llama.cpp's `llama-perplexity` is the anchor; the one difference
//! is which positions are scored):
//!
//! - The text's ids are cut into chunks of `ctx` tokens (the last may be
//!   shorter; a text shorter than `ctx` is one chunk). Each chunk is run from an
//!   empty context, and every token after the first of each chunk is scored:
//!   `nll_i = -ln softmax(logits_{i-1})[id_i]`. (llama.cpp scores only the second
//!   half of each chunk, so its numbers on the same text are a little lower.)
//! - Perplexity `PPL = exp(mean nll)`. Its 95% confidence interval is
//!   `exp(mean ± 1.96·se)`, `se = sd(nll)/sqrt(n)` (the tokens taken as
//!   independent draws, as llama.cpp's `±` does; it prints `PPL·se`).
//! - Against a reference (`--kl-base`), per scored position with `P` the
//!   reference's distribution and `Q` the model's: `KL(P‖Q) = Σ P·(ln P − ln Q)`,
//!   reported as mean (with its standard error), median, 99th percentile and max;
//!   "top-1 agreement" is the share of positions where both arg-maxes agree
//!   (llama.cpp's "Same top p").
//!
//! All sums run in f64.

/// `ln Σ exp(x)`, stable.
fn log_sum_exp(x: &[f32]) -> f64 {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    if !m.is_finite() {
        return m;
    }
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// `-ln softmax(logits)[target]`.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits.get(target as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64
}

/// `KL(P‖Q)` of the softmaxes of two logit rows.
pub fn kl_divergence(reference: &[f32], model: &[f32]) -> f64 {
    let (lp, lq) = (log_sum_exp(reference), log_sum_exp(model));
    reference
        .iter()
        .zip(model)
        .map(|(&a, &b)| {
            let lpa = a as f64 - lp;
            let p = lpa.exp();
            if p > 0.0 { p * (lpa - (b as f64 - lq)) } else { 0.0 }
        })
        .sum::<f64>()
        .max(0.0)
}

/// The chunks a text's ids are scored in: `ctx` tokens each, the last one shorter.
/// Chunks of one token score nothing and are dropped.
pub fn chunks(ids: &[u32], ctx: usize) -> Vec<&[u32]> {
    ids.chunks(ctx.max(2)).filter(|c| c.len() >= 2).collect()
}

/// Negative log-likelihoods of a chunk from its per-position logits
/// (`logits` is `[chunk.len(), vocab]`): one per token after the first.
pub fn chunk_nlls(logits: &[f32], chunk: &[u32], vocab: usize) -> Vec<f64> {
    (1..chunk.len()).map(|i| nll(&logits[(i - 1) * vocab..i * vocab], chunk[i])).collect()
}

/// A mean with its standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct MeanSe {
    /// Mean.
    pub mean: f64,
    /// Standard error of the mean (0 with fewer than two samples).
    pub se: f64,
}

fn mean_se(x: &[f64]) -> MeanSe {
    let n = x.len() as f64;
    if x.is_empty() {
        return MeanSe::default();
    }
    let mean = x.iter().sum::<f64>() / n;
    let se = if x.len() > 1 {
        (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
    } else {
        0.0
    };
    MeanSe { mean, se }
}

/// Perplexity of a scored text.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// Tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood (nats per token) and its standard error.
    pub nll: MeanSe,
    /// `exp(mean nll)`.
    pub perplexity: f64,
    /// 95% confidence interval of the perplexity: `exp(mean ± 1.96·se)`.
    pub ci95: [f64; 2],
}

/// Perplexity from per-token negative log-likelihoods.
pub fn perplexity(nlls: &[f64]) -> Perplexity {
    let nll = mean_se(nlls);
    Perplexity {
        tokens: nlls.len(),
        nll,
        perplexity: nll.mean.exp(),
        ci95: [(nll.mean - 1.96 * nll.se).exp(), (nll.mean + 1.96 * nll.se).exp()],
    }
}

/// How a model's next-token distributions differ from a reference model's.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Divergence {
    /// Positions compared.
    pub positions: usize,
    /// Mean `KL(reference‖model)` with its standard error (nats).
    pub kl: MeanSe,
    /// Median KL.
    pub kl_median: f64,
    /// 99th percentile of KL.
    pub kl_p99: f64,
    /// Largest KL.
    pub kl_max: f64,
    /// Share of positions whose arg-max tokens agree.
    pub top1_agreement: f64,
}

/// Accumulates per-position comparisons with a reference.
#[derive(Clone, Debug, Default)]
pub struct DivergenceAcc {
    kls: Vec<f64>,
    agree: usize,
}

impl DivergenceAcc {
    /// Compare the rows of one chunk that predict a scored token (`rows` positions,
    /// both `[rows, vocab]` or longer; only the first `rows` are read).
    pub fn add_chunk(&mut self, reference: &[f32], model: &[f32], rows: usize, vocab: usize) {
        for i in 0..rows {
            let (p, q) = (&reference[i * vocab..(i + 1) * vocab], &model[i * vocab..(i + 1) * vocab]);
            self.kls.push(kl_divergence(p, q));
            self.agree += usize::from(crate::sampler::argmax(p) == crate::sampler::argmax(q));
        }
    }

    /// The summary.
    pub fn finish(&self) -> Divergence {
        let mut sorted = self.kls.clone();
        sorted.sort_by(f64::total_cmp);
        let q = |f: f64| {
            if sorted.is_empty() { 0.0 } else { sorted[((sorted.len() - 1) as f64 * f).round() as usize] }
        };
        Divergence {
            positions: self.kls.len(),
            kl: mean_se(&self.kls),
            kl_median: q(0.5),
            kl_p99: q(0.99),
            kl_max: sorted.last().copied().unwrap_or(0.0),
            top1_agreement: if self.kls.is_empty() { 0.0 } else { self.agree as f64 / self.kls.len() as f64 },
        }
    }
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluation {
    /// Chunk length in tokens.
    pub ctx: usize,
    /// Chunks run.
    pub chunks: usize,
    /// The model's perplexity.
    pub model: Perplexity,
    /// The reference's perplexity on the same tokens (with a reference).
    pub base: Option<Perplexity>,
    /// The model's divergence from the reference (with a reference).
    pub divergence: Option<Divergence>,
}

/// Score `ids` (a text as [`AutoModel::encode`](crate::AutoModel::encode) gives it)
/// in chunks of `ctx` tokens with `model`, and compare with `base` when given.
/// `progress(done, total)` is called after each chunk.
pub fn evaluate(
    model: &mut crate::AutoModel,
    mut base: Option<&mut crate::AutoModel>,
    ids: &[u32],
    ctx: usize,
    mut progress: impl FnMut(usize, usize),
) -> crate::Result<Evaluation> {
    let vocab = model.spec().vocab_size;
    if let Some(b) = &base {
        if b.spec().vocab_size != vocab {
            return Err(crate::EngineError::invalid(
                "--kl-base",
                format!(
                    "the reference has a vocabulary of {} tokens, the model {vocab}; compare models that share a tokenizer",
                    b.spec().vocab_size
                ),
            ));
        }
    }
    let parts = chunks(ids, ctx);
    if parts.is_empty() {
        return Err(crate::EngineError::invalid(
            "--file",
            "the text has fewer than two tokens, so there is nothing to score; give a longer text",
        ));
    }
    let (mut nlls, mut base_nlls, mut acc) = (Vec::new(), Vec::new(), DivergenceAcc::default());
    for (k, chunk) in parts.iter().enumerate() {
        let logits = model.forward_logits(&[chunk.to_vec()])?.remove(0);
        nlls.extend(chunk_nlls(&logits, chunk, vocab));
        if let Some(b) = base.as_deref_mut() {
            let reference = b.forward_logits(&[chunk.to_vec()])?.remove(0);
            base_nlls.extend(chunk_nlls(&reference, chunk, vocab));
            acc.add_chunk(&reference, &logits, chunk.len() - 1, vocab);
        }
        progress(k + 1, parts.len());
    }
    let with_base = base.is_some();
    Ok(Evaluation {
        ctx,
        chunks: parts.len(),
        model: perplexity(&nlls),
        base: with_base.then(|| perplexity(&base_nlls)),
        divergence: with_base.then(|| acc.finish()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_the_vocabulary_size() {
        let v = 50;
        let ids: Vec<u32> = (0..20).map(|i| i % 50).collect();
        let logits = vec![0.25f32; ids.len() * v];
        let p = perplexity(&chunk_nlls(&logits, &ids, v));
        assert_eq!(p.tokens, 19);
        assert!((p.perplexity - 50.0).abs() < 1e-9, "{p:?}");
        assert!((p.ci95[0] - 50.0).abs() < 1e-9 && (p.ci95[1] - 50.0).abs() < 1e-9);
    }

    #[test]
    fn nll_matches_a_hand_computed_softmax() {
        // softmax([0, ln 3]) = [1/4, 3/4]
        let l = [0.0f32, 3f32.ln()];
        assert!((nll(&l, 1) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!((nll(&l, 0) - 4f64.ln()).abs() < 1e-6);
        // Large logits do not overflow.
        assert!((nll(&[1000.0, 1000.0], 0) - 2f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn confidence_interval_brackets_the_estimate_and_shrinks_with_more_tokens() {
        let few: Vec<f64> = (0..9).map(|i| 1.0 + (i % 3) as f64).collect();
        let many: Vec<f64> = (0..999).map(|i| 1.0 + (i % 3) as f64).collect();
        let (a, b) = (perplexity(&few), perplexity(&many));
        assert!((a.perplexity - b.perplexity).abs() < 0.1);
        assert!(a.ci95[0] < a.perplexity && a.perplexity < a.ci95[1]);
        assert!(b.ci95[1] - b.ci95[0] < a.ci95[1] - a.ci95[0]);
    }

    #[test]
    fn chunks_cover_the_text_and_short_texts_are_one_chunk() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(chunks(&ids, 512), vec![&ids[..]]);
        let c = chunks(&ids, 4);
        assert_eq!(c.len(), 3);
        assert_eq!(c[2], &[8, 9]);
        // A lone trailing token scores nothing.
        assert_eq!(chunks(&ids[..9], 4).len(), 2);
    }

    #[test]
    fn kl_is_zero_for_identical_rows_and_matches_a_hand_value() {
        let p = [1.0f32, 2.0, 3.0];
        assert!(kl_divergence(&p, &p).abs() < 1e-12);
        // P = [1/2, 1/2], Q = [1/4, 3/4]: KL = 0.5 ln 2 + 0.5 ln(2/3)
        let kl = kl_divergence(&[0.0, 0.0], &[0.0, 3f32.ln()]);
        assert!((kl - (0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln())).abs() < 1e-6, "{kl}");
        let mut acc = DivergenceAcc::default();
        acc.add_chunk(&[0.0, 1.0, 5.0, 0.0], &[0.0, 2.0, 0.0, 5.0], 2, 2);
        let d = acc.finish();
        assert_eq!(d.positions, 2);
        assert!((d.top1_agreement - 0.5).abs() < 1e-12);
        assert!(d.kl_max >= d.kl_p99 && d.kl_p99 >= d.kl_median);
    }
}

//! Next-token choice from logits: greedy at temperature 0, otherwise
//! temperature, top-k, top-p (nucleus) and a repetition penalty, with the same
//! semantics as transformers' logits processors.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (arg-max).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
    /// > 1 discourages tokens already in the context (1.0 = off).
    pub repetition_penalty: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

/// A sampler with its own RNG stream.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
}

impl Sampler {
    /// New sampler.
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Sampler { cfg, rng }
    }

    /// Choose the next id. `context` holds the ids seen so far (for the penalty).
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        let d = self.distribution(logits, context);
        if d.ids.len() == 1 {
            return d.ids[0];
        }
        let r: f32 = self.rng.random();
        d.draw(r)
    }

    /// The distribution [`Sampler::sample`] draws from (after the penalty,
    /// temperature, top-k and top-p): at temperature 0 all mass on the
    /// arg-max. `logits` is changed by the penalty.
    pub fn distribution(&self, logits: &mut [f32], context: &[u32]) -> Distribution {
        if self.cfg.repetition_penalty != 1.0 {
            // transformers' RepetitionPenaltyLogitsProcessor: each distinct id once.
            let mut seen = std::collections::HashSet::new();
            for &id in context {
                if seen.insert(id) {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = if *l > 0.0 { *l / self.cfg.repetition_penalty } else { *l * self.cfg.repetition_penalty };
                    }
                }
            }
        }
        if self.cfg.temperature <= 0.0 {
            return Distribution { ids: vec![argmax(logits)], probs: vec![1.0] };
        }
        let t = self.cfg.temperature;
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.cfg.top_k > 0 && self.cfg.top_k < idx.len() {
            idx.truncate(self.cfg.top_k);
        }
        let max = logits[idx[0]] / t;
        let mut probs: Vec<f32> = idx.iter().map(|&i| (logits[i] / t - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        idx.truncate(probs.len());
        Distribution { ids: idx.into_iter().map(|i| i as u32).collect(), probs }
    }

    /// A uniform number in `[0, 1)` from this sampler's stream.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random()
    }
}

/// A sparse next-token distribution: `ids[i]` has probability `probs[i]`
/// (most likely first; ids not listed have none).
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Their probabilities (summing to 1).
    pub probs: Vec<f32>,
}

impl Distribution {
    /// The id at cumulative probability `r` (in `[0, 1)`).
    pub fn draw(&self, r: f32) -> u32 {
        let mut acc = 0.0;
        for (i, p) in self.probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return self.ids[i];
            }
        }
        // Rounding: the last id with any mass.
        let last = self.probs.iter().rposition(|&p| p > 0.0).unwrap_or(0);
        self.ids[last]
    }

    /// The probability of `id`.
    pub fn prob(&self, id: u32) -> f32 {
        self.ids.iter().position(|&i| i == id).map(|i| self.probs[i]).unwrap_or(0.0)
    }

    /// Removes `id`'s mass and renormalises (the residual after a rejected
    /// point-mass proposal); false if no mass is left.
    pub fn remove(&mut self, id: u32) -> bool {
        if let Some(i) = self.ids.iter().position(|&x| x == id) {
            self.probs[i] = 0.0;
        }
        let total: f32 = self.probs.iter().sum();
        if total <= 0.0 {
            return false;
        }
        self.probs.iter_mut().for_each(|p| *p /= total);
        true
    }
}

/// A hook on the sampling path (issue 19): `mask` runs on a sequence's logits
/// before sampling (set disallowed ids to `f32::NEG_INFINITY`), `accept` sees the
/// id chosen. Errors are messages for the user (a grammar that rejects a token).
pub trait LogitsHook: Send + std::fmt::Debug {
    /// Restrict sequence `seq`'s next token.
    fn mask(&mut self, seq: usize, logits: &mut [f32]) -> Result<(), String>;
    /// Sequence `seq` produced `id`.
    fn accept(&mut self, seq: usize, id: u32) -> Result<(), String>;
}

/// Index of the largest value (the first one on ties, like torch.argmax).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplerConfig { temperature: 2.0, top_k: 1, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 0.2, 5.0, 0.3], &[]), 2);
        }
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut s = Sampler::new(SamplerConfig { repetition_penalty: 2.0, ..Default::default() });
        let mut l = [4.0, 3.0, -1.0];
        // 4.0 / 2 = 2.0 < 3.0, so the penalised id 0 loses.
        assert_eq!(s.sample(&mut l, &[0, 0, 2]), 1);
        assert_eq!(l, [2.0, 3.0, -2.0]);
    }

    #[test]
    fn same_seed_same_samples() {
        let cfg = SamplerConfig { temperature: 1.0, seed: 7, ..Default::default() };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..30).map(|_| s.sample(&mut logits.clone(), &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..30).map(|_| s.sample(&mut logits.clone(), &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 3);
    }
}

//! Choosing the next token: greedy (argmax, on the GPU) or sampling from the softmax at a
//! temperature (computed on the GPU) restricted to top-k and top-p, with a seeded RNG so a run
//! can be reproduced.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// How to pick each token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Keep the smallest set of most probable tokens whose mass reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Keep at most this many most probable tokens (0 = no limit).
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// A sampling option out of range: which one (`temperature`, `top_p`), and why. Each front
/// end names the option in its own words (`--top-p`, `top_p`, `sampling.topP`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSampling {
    pub option: &'static str,
    pub message: String,
}

impl std::fmt::Display for InvalidSampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.option, self.message)
    }
}

impl SamplingOptions {
    /// The one check of sampling options, for the CLI, the server, the batch command and the
    /// web API: the temperature a finite number >= 0, top-p in (0, 1].
    pub fn check(&self) -> Result<(), InvalidSampling> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(InvalidSampling {
                option: "temperature",
                message: format!("must be a finite number >= 0, got {t}"),
            });
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(InvalidSampling {
                option: "top_p",
                message: format!("must be in (0, 1], got {p}"),
            });
        }
        Ok(())
    }

    /// Greedy when the temperature is 0 (or so small that 1 / T is not a finite f32, where
    /// softmax(logits / T) is the argmax anyway).
    pub fn is_greedy(&self) -> bool {
        !(self.temperature > 0.0 && (1.0 / self.temperature).is_finite())
    }
}

/// Draws token ids from probability vectors.
pub struct Sampler {
    opts: SamplingOptions,
    rng: StdRng,
}

impl Sampler {
    pub fn new(opts: &SamplingOptions) -> Sampler {
        Sampler {
            opts: opts.clone(),
            rng: StdRng::seed_from_u64(opts.seed),
        }
    }

    /// Draws from `probs` (already softmax(logits / temperature)) after top-k and top-p
    /// filtering and renormalisation; `None` when no token has a finite, positive probability.
    pub fn sample(&mut self, probs: &[f32]) -> Option<u32> {
        let kept = nucleus(probs, self.opts.top_k, self.opts.top_p);
        let total: f64 = kept.iter().map(|&(_, p)| p as f64).sum();
        let mut u = self.rng.random::<f64>() * total;
        for &(id, p) in &kept {
            u -= p as f64;
            if u < 0.0 {
                return Some(id);
            }
        }
        kept.last().map(|&(id, _)| id)
    }
}

/// The tokens kept by top-k then top-p, most probable first, as transformers' warpers apply
/// them: the k most probable, then the smallest prefix of those, renormalised, whose mass
/// reaches `top_p` (at least one token when any probability is positive and finite).
pub fn nucleus(probs: &[f32], top_k: usize, top_p: f32) -> Vec<(u32, f32)> {
    let mut order: Vec<(u32, f32)> = probs
        .iter()
        .enumerate()
        .filter(|(_, p)| **p > 0.0 && p.is_finite())
        .map(|(i, &p)| (i as u32, p))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_k > 0 {
        order.truncate(top_k);
    }
    if top_p < 1.0 {
        let total: f64 = order.iter().map(|&(_, p)| p as f64).sum();
        let mut mass = 0.0f64;
        let mut keep = 0;
        for &(_, p) in &order {
            keep += 1;
            mass += p as f64;
            if mass >= top_p as f64 * total {
                break;
            }
        }
        order.truncate(keep);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_keeps_the_smallest_set_reaching_top_p() {
        let p = [0.1, 0.5, 0.05, 0.3, 0.05];
        assert_eq!(
            nucleus(&p, 0, 0.45).iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(
            nucleus(&p, 0, 0.75).iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(
            nucleus(&p, 2, 1.0).iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(nucleus(&p, 0, 1.0).len(), 5);
        // top-p measures the mass of the top-k set renormalised: of [0.6, 0.2, 0.2] the top 2
        // are 0.75 / 0.25, and 0.75 alone reaches 0.7.
        let q = [0.6, 0.2, 0.2];
        assert_eq!(
            nucleus(&q, 2, 0.7).iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![0]
        );
        // Nothing usable: nothing kept, and sampling says so.
        assert!(nucleus(&[f32::NAN, 0.0], 0, 0.9).is_empty());
        let mut s = Sampler::new(&SamplingOptions {
            temperature: 1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[f32::NAN, f32::NAN]), None);
    }

    #[test]
    fn vanishing_temperatures_are_greedy() {
        let at = |t: f32| {
            SamplingOptions {
                temperature: t,
                ..Default::default()
            }
            .is_greedy()
        };
        assert!(at(0.0) && at(-1.0) && at(1e-40) && at(f32::NAN));
        assert!(!at(0.7) && !at(1e-6));
    }

    #[test]
    fn sampling_is_reproducible_and_follows_the_distribution() {
        let p = [0.1f32, 0.6, 0.3];
        let opts = SamplingOptions {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |n| {
            let mut s = Sampler::new(&opts);
            (0..n).map(|_| s.sample(&p).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(50), draw(50));
        let d = draw(20_000);
        let freq = |id| d.iter().filter(|&&x| x == id).count() as f64 / d.len() as f64;
        assert!(
            (freq(1) - 0.6).abs() < 0.02 && (freq(0) - 0.1).abs() < 0.02,
            "{}",
            freq(1)
        );
    }
}

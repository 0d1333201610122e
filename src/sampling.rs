//! How the next token is chosen: greedy (argmax), or a draw from softmax(logits / T)
//! restricted to top-k and top-p, both on the GPU (`ops::argmax`, `ops::sample`, whose
//! `sample_ref` states the distribution exactly). A draw is the seed's draw for the position
//! being chosen, so a run can be reproduced, and a sequence samples the same tokens alone or
//! in any batch.

/// How to pick each token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Keep the smallest set of most probable tokens whose mass reaches `top_p` of the top-k
    /// set's (1 = all), and any tied with the least of them.
    pub top_p: f32,
    /// Keep the `top_k` most probable tokens, and any tied with the k-th, as transformers'
    /// top-k does (0 = no limit).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

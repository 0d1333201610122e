//! The GPU's sampler draws from the distribution its CPU reference states
//! (`testing::sample_ref`: softmax(logits / T) over the tokens top-k and top-p keep): every
//! draw is a kept token, and the draws' counts pass Pearson's chi-square test against the
//! reference's probabilities at a significance of 1e-6, over several seeds, on rows with
//! masked (-inf) and NaN logits, ties at the top-k boundary, and the real vocabulary.

mod common;

use common::gpu;
use paligemma::sampling::SamplingOptions;
use paligemma::testing::{sample_draws, sample_ref};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::HashMap;

fn logits(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn opts(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingOptions {
    SamplingOptions {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

/// The chi-square value a statistic with `df` degrees of freedom exceeds with probability
/// 1e-6 (Wilson-Hilferty: z = 4.753).
fn critical(df: usize) -> f64 {
    let d = df as f64;
    let a = 2.0 / (9.0 * d);
    d * (1.0 - a + 4.753 * a.sqrt()).powi(3)
}

/// Draws `per_seed` tokens for each of `seeds` and checks them against the reference; returns
/// the chi-square statistic and its degrees of freedom.
fn check(what: &str, x: &[f32], o: SamplingOptions, seeds: u64, per_seed: usize) {
    let want = sample_ref(x, &o);
    let kept: HashMap<u32, f64> = want.iter().copied().collect();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for seed in 0..seeds {
        let o = SamplingOptions {
            seed: o.seed + seed,
            ..o.clone()
        };
        let first = (seed * 1000) as u32;
        for id in sample_draws(gpu(), x, &o, first, per_seed).unwrap() {
            assert!(
                kept.contains_key(&id),
                "{what}: drew {id}, outside the {} kept tokens",
                kept.len()
            );
            *counts.entry(id).or_default() += 1;
        }
    }
    let n = (seeds as usize * per_seed) as f64;
    // Tokens expected at least 5 times are bins of their own, the rest one pooled bin.
    let (mut stat, mut bins) = (0.0, 0);
    let (mut pooled_want, mut pooled_got) = (0.0, 0.0);
    let mut tvd = 0.0;
    for &(id, p) in &want {
        let got = *counts.get(&id).unwrap_or(&0) as f64;
        tvd += (got / n - p).abs() / 2.0;
        if n * p >= 5.0 {
            stat += (got - n * p).powi(2) / (n * p);
            bins += 1;
        } else {
            (pooled_want, pooled_got) = (pooled_want + n * p, pooled_got + got);
        }
    }
    if pooled_want >= 5.0 {
        stat += (pooled_got - pooled_want).powi(2) / pooled_want;
        bins += 1;
    }
    let df = bins.max(2) - 1;
    eprintln!(
        "{what}: {} kept, {n} draws, chi-square {stat:.1} on {df} df (critical {:.1}), TVD {tvd:.4}",
        want.len(),
        critical(df)
    );
    assert!(bins >= 2 || want.len() == 1, "{what}: too few bins to test");
    assert!(
        stat <= critical(df),
        "{what}: chi-square {stat:.1} > {:.1}",
        critical(df)
    );
}

#[test]
fn draws_follow_the_reference_distribution() {
    let x = logits(1000, 3.0, 1);
    check("temperature alone", &x, opts(1.0, 0, 1.0, 10), 4, 1000);
    let x = logits(1537, 5.0, 2);
    check("top-k 20", &x, opts(0.7, 20, 1.0, 20), 4, 1000);
    let x = logits(3001, 4.0, 3);
    check("top-p 0.8", &x, opts(1.3, 0, 0.8, 30), 4, 1000);
    check(
        "top-k 50 and top-p 0.9",
        &x,
        opts(0.9, 50, 0.9, 40),
        4,
        1000,
    );
}

/// Ties at the top-k boundary are kept together; masked (-inf) and NaN logits never drawn.
#[test]
fn ties_masks_and_nans() {
    let mut x = logits(700, 2.0, 4);
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
    let tenth = x[order[9]];
    for &i in &order[10..14] {
        x[i] = tenth;
    }
    let o = opts(1.0, 10, 1.0, 50);
    assert_eq!(
        sample_ref(&x, &o).len(),
        14,
        "the ties are kept with the tenth"
    );
    check("top-k 10 with 5 tied at the tenth", &x, o, 4, 1000);
    for i in (0..x.len()).step_by(3) {
        x[i] = f32::NEG_INFINITY;
    }
    x[order[0]] = f32::NAN;
    check("masked and NaN", &x, opts(0.8, 0, 0.95, 60), 4, 1000);
}

/// The vocabulary's size (the sort spans 252 workgroups): every draw is kept, and a peaked
/// row's draws follow the reference.
#[test]
fn the_vocabulary() {
    let mut x = logits(257_216, 4.0, 5);
    for (i, v) in [(17, 14.0), (100_000, 13.5), (257_215, 13.0), (5000, 12.0)] {
        x[i] = v;
    }
    check("vocabulary, top-p 0.95", &x, opts(1.0, 0, 0.95, 70), 2, 100);
    check("vocabulary, top-k 40", &x, opts(0.8, 40, 1.0, 80), 2, 100);
}

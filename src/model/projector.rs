//! From the vision tower's patches to the rows that enter the decoder, and where they enter.
//!
//! ```text
//! PaliGemma:  features = linear(vision_out)                                   one row per patch
//! Gemma 3:    features = rms_norm(avg_pool(vision_out)) @ mm_input_projection   tokens_per_image rows
//! ```
//!
//! PaliGemma's image rows are the prompt's first rows; Gemma 3's replace each run of image soft
//! tokens, wherever the chat template put it.

use super::Loader;
use super::config::PaliGemmaConfig;
use super::decoder::ImageRows;
use super::transpose;
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::ops::avg_pool::avg_pool;
use crate::ops::linear::Linear;
use crate::ops::norm::RmsNorm;
use crate::ops::{HostWeight, View, Weight};
use crate::tokenizer::check_image_prefix;

/// The multimodal projector.
pub enum Projector {
    /// PaliGemma's `multi_modal_projector.linear`: `[text hidden, vision hidden]` + bias.
    Linear(Linear),
    /// Gemma 3's: the `side` x `side` patch grid averaged over `kernel` x `kernel` tiles,
    /// `mm_soft_emb_norm`, then `mm_input_projection_weight` (no bias).
    Pooled {
        side: usize,
        kernel: usize,
        norm: RmsNorm,
        proj: Linear,
    },
}

impl Projector {
    pub(crate) async fn load(l: &Loader<'_>, cfg: &PaliGemmaConfig) -> Result<Projector> {
        let (v, dt) = (&cfg.vision, cfg.text.hidden_size);
        let dv = v.hidden_size;
        let Some((side, kernel)) = cfg.pooling() else {
            return Ok(Projector::Linear(
                l.linear("projector.linear", dt, dv, true).await?,
            ));
        };
        Ok(Projector::Pooled {
            side,
            kernel,
            norm: l
                .rms_norm("projector.mm_soft_emb_norm", dv, v.layer_norm_eps)
                .await?,
            // Stored [vision hidden, text hidden] (transformers computes x @ W).
            proj: Linear {
                weight: l
                    .weight_transposed("projector.mm_input_projection_weight", dt, dv)
                    .await?,
                bias: None,
            },
        })
    }

    /// Rows per image.
    pub fn tokens(&self, patches: usize) -> usize {
        match self {
            Projector::Linear(_) => patches,
            Projector::Pooled { side, kernel, .. } => (side / kernel).pow(2),
        }
    }

    /// `out` `[tokens, text hidden]` from the vision tower's `vision` `[patches, vision hidden]`.
    pub fn forward(&self, rec: &mut Recorder, vision: View, out: View) -> Result<()> {
        match self {
            Projector::Linear(linear) => linear.forward(rec, vision, out),
            Projector::Pooled {
                side,
                kernel,
                norm,
                proj,
            } => {
                let (n, dv) = (self.tokens(vision.rows), vision.width);
                let gpu = rec.gpu().clone();
                let pooled = gpu.storage("pooled patches", (n * dv * 4) as u64)?;
                let normed = gpu.storage("pooled patches normed", (n * dv * 4) as u64)?;
                let (pooled, normed) = (View::new(&pooled, n, dv), View::new(&normed, n, dv));
                avg_pool(rec, vision, *side, *kernel, pooled)?;
                norm.forward(rec, pooled, normed)?;
                proj.forward(rec, normed, out)
            }
        }
    }
}

/// Where the rows of `images` (each `(buffer, rows)`) enter the prompt `ids`: PaliGemma's one
/// image in the prompt's first rows; Gemma 3's in each run of image tokens, in order, each run
/// exactly one image's rows long.
pub(crate) fn place_images<'a>(
    cfg: &PaliGemmaConfig,
    ids: &[u32],
    images: &[(&'a wgpu::Buffer, usize)],
) -> Result<Vec<ImageRows<'a>>> {
    let image_id = cfg.image_token_index;
    if cfg.image_tokens.is_none() {
        return match images {
            [] => Ok(Vec::new()),
            [(features, n)] => {
                check_image_prefix(ids, *n, image_id)?;
                Ok(vec![ImageRows {
                    features,
                    rows: *n,
                    at: 0,
                }])
            }
            _ => Err(Error::invalid(format!(
                "PaliGemma takes one image per prompt, not {}",
                images.len()
            ))),
        };
    }
    let runs = image_runs(ids, image_id);
    if runs.len() != images.len() {
        return Err(Error::invalid(format!(
            "the prompt holds {} runs of image tokens (id {image_id}) for {} images",
            runs.len(),
            images.len()
        )));
    }
    runs.iter()
        .zip(images)
        .enumerate()
        .map(|(i, (r, &(features, n)))| {
            if r.len() != n {
                return Err(Error::invalid(format!(
                    "image {i}'s run of image tokens is {} long, its features are {n} rows",
                    r.len()
                )));
            }
            Ok(ImageRows {
                features,
                rows: n,
                at: r.start,
            })
        })
        .collect()
}

/// The runs of consecutive `image_id` tokens in `ids`.
fn image_runs(ids: &[u32], image_id: u32) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, &t) in ids.iter().enumerate() {
        if t != image_id {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.end == i => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

impl Loader<'_> {
    /// The matrix `name` stored `[cols, rows]` (as `x @ W` uses it), uploaded transposed as
    /// the `[rows, cols]` the linear kernels take, in the precision's 16-bit or f32 format.
    pub async fn weight_transposed(&self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let stored = self.stored_format(name, &[cols, rows])?;
        let values = transpose(&self.values(name, &[cols, rows]).await?, cols, rows);
        let format = self.precision.format_for(stored, cols, false);
        let host = HostWeight::encode(&values, format, rows, cols);
        let w = Weight::upload(self.gpu, name, &host)?;
        Ok(self.loaded(w))
    }
}

#[cfg(test)]
mod tests {
    use super::image_runs;

    #[test]
    fn runs_of_image_tokens() {
        assert_eq!(image_runs(&[1, 9, 9, 2, 9, 3], 9), vec![1..3, 4..5]);
        assert!(image_runs(&[1, 2], 9).is_empty());
        assert_eq!(image_runs(&[9, 9], 9), vec![0..2]);
    }
}

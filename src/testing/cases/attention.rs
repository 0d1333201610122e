//! Attention (per-row, blocked, split) and the patch embedding.
use super::{gather_rows, prepared, scatter};
use crate::ops::View;
use crate::ops::attention::*;
use crate::ops::patch_embed::*;
use crate::testing::{KernelCase, TOL};

/// Attention on random q and a KV cache of `capacity` rows whose rows past `kv_len` hold NaN,
/// proving they are never read; every kernel that takes the shape.
fn attention_case(
    v: &mut Vec<KernelCase>,
    what: &str,
    p: AttentionParams,
    capacity: usize,
    real: bool,
) {
    let mut kernels = vec!["per-row", "blocked"];
    if p.q_rows == 1 {
        kernels.push("split");
    }
    for kernel in kernels {
        let case = KernelCase::new(
            "attention",
            format!("attention {kernel} {what} {p:?}"),
            TOL,
            move |io| {
                let q = io.rand(
                    p.q_offset as usize + p.q_rows as usize * p.q_stride as usize,
                    1.0,
                );
                let valid = p.kv_len as usize * p.kv_stride as usize;
                let mut kv = |scale: f32| {
                    let mut x: Vec<f32> = io.rand(capacity * p.kv_stride as usize, scale);
                    x[valid..].fill(f32::NAN);
                    x
                };
                // Larger scores make the softmax peaky, as trained models do.
                let (k, vv) = (kv(3.0), kv(1.0));
                let width = p.n_heads as usize * p.head_dim as usize;
                let (oo, os) = (p.o_offset as usize, p.o_stride as usize);
                let o_len = oo + (p.q_rows as usize - 1) * os + width;
                let o0 = io.rand(o_len, 1.0);
                let (qb, kb, vb, ob) = (
                    io.upload(&q)?,
                    io.upload(&k)?,
                    io.upload(&vv)?,
                    io.upload(&o0)?,
                );
                let partial = io.gpu.storage(
                    "partial",
                    (partial_len(p.n_heads as usize, p.head_dim as usize, capacity) * 4) as u64,
                )?;
                prepared(
                    ob.clone(),
                    o_len,
                    move |rec| {
                        let kernel = match kernel {
                            "per-row" => AttentionKernel::PerRow,
                            "blocked" => AttentionKernel::Blocked,
                            _ => AttentionKernel::Split { partial: &partial },
                        };
                        attention(rec, kernel, &qb, &kb, &vb, &ob, &p)
                    },
                    move || {
                        let r = attention_ref(&q, &k, &vv, &p);
                        let rows = gather_rows(&r, p.q_rows as usize, width, oo, os);
                        scatter(&o0, &rows, width, oo, os, |_, new| new)
                    },
                )
            },
        );
        v.push(if real { case.real() } else { case });
    }
}

pub(super) fn attention_cases(v: &mut Vec<KernelCase>) {
    let a = |rows, heads, kv_heads, hd, kv_len, pos0, prefix| AttentionParams {
        prefix_len: prefix,
        ..AttentionParams::packed(heads, kv_heads, hd, rows, pos0, kv_len)
    };
    attention_case(
        v,
        "one key, one dimension",
        a(1, 1, 1, 1, 1, 0, 1),
        3,
        false,
    );
    attention_case(
        v,
        "GQA 6 over 2, prefix 7 then causal",
        a(13, 6, 2, 32, 13, 0, 7),
        16,
        false,
    );
    attention_case(
        v,
        "MQA, more keys than a tile",
        a(67, 3, 1, 24, 67, 0, 61),
        70,
        false,
    );
    attention_case(
        v,
        "decode after a prefix of 59",
        a(1, 4, 2, 16, 67, 66, 59),
        80,
        false,
    );
    let strided = AttentionParams {
        q_offset: 3,
        q_stride: 21,
        o_stride: 19,
        o_offset: 2,
        kv_stride: 11,
        ..a(5, 2, 1, 8, 9, 4, 6)
    };
    attention_case(v, "strided q, out and cache rows", strided, 12, false);
    // One sequence of a decoding batch: its query and output are row 3 of the batch's.
    let batch_row = AttentionParams {
        q_offset: 3 * 64,
        o_offset: 3 * 64,
        ..a(1, 4, 2, 16, 37, 36, 30)
    };
    attention_case(v, "row 3 of a decoding batch", batch_row, 40, false);
    // Gemma 2: soft-capping and a sliding window of 5, shorter than the bidirectional prefix of
    // 9 (prefix queries still see the whole prefix; later ones only the window).
    let g2 = AttentionParams {
        softcap: 50.0,
        window: 5,
        scale: 0.25,
        ..a(14, 4, 2, 16, 14, 0, 9)
    };
    attention_case(v, "Gemma 2 prefill", g2, 16, false);
    let g2 = AttentionParams {
        softcap: 2.0,
        window: 4,
        ..a(1, 4, 2, 16, 23, 22, 6)
    };
    attention_case(v, "Gemma 2 decode", g2, 30, false);
    attention_case(
        v,
        "SigLIP at 224px",
        a(256, 16, 16, 72, 256, 0, 256),
        256,
        true,
    );
    attention_case(
        v,
        "Gemma prefill at 224px",
        a(261, 8, 1, 256, 261, 0, 261),
        300,
        true,
    );
    attention_case(
        v,
        "Gemma decode, 12th token",
        a(1, 8, 1, 256, 273, 272, 261),
        300,
        true,
    );
    attention_case(
        v,
        "Gemma decode at 896px",
        a(1, 8, 1, 256, 4108, 4107, 4101),
        4200,
        true,
    );
    let g2 = AttentionParams {
        softcap: 50.0,
        window: 128,
        ..a(1, 8, 4, 256, 700, 699, 600)
    };
    attention_case(v, "Gemma 2 decode, window 128", g2, 700, true);
    // head_dim beyond the kernels' limit is an error, not a wrong answer.
    v.push(
        KernelCase::new(
            "attention",
            "attention head_dim 512".into(),
            TOL,
            move |io| {
                let b = io.gpu.storage("x", 4 * 512)?;
                prepared(
                    b.clone(),
                    1,
                    move |rec| {
                        attention(
                            rec,
                            AttentionKernel::Blocked,
                            &b,
                            &b,
                            &b,
                            &b,
                            &a(1, 1, 1, 512, 1, 0, 1),
                        )
                    },
                    Vec::new,
                )
            },
        )
        .refused("head_dim"),
    );
}

pub(super) fn patch_cases() -> Vec<KernelCase> {
    [(30, 6, 3, 7), (32, 8, 3, 48), (224, 14, 3, 1152)]
        .into_iter()
        .map(|(image_size, patch, channels, dim)| {
            let g = PatchGeometry {
                image_size,
                patch,
                channels,
                dim,
            };
            let case = KernelCase::new(
                "patch_embed",
                format!("patch_embed {g:?}"),
                TOL,
                move |io| {
                    let (s, n) = (g.image_size, g.n_patches());
                    let px = io.rand(g.channels * s * s, 1.0);
                    let w = io.rand(g.dim * g.channels * g.patch * g.patch, 0.1);
                    let (b, pos, y0) = (
                        io.rand(g.dim, 1.0),
                        io.rand(n * g.dim, 1.0),
                        io.rand(n * g.dim, 1.0),
                    );
                    let e = PatchEmbedding::new(io.gpu, g, &w, &b, &pos)?;
                    io.bytes += 4 * (w.len() + b.len() + pos.len()) as u64;
                    let (pb, ob) = (io.upload(&px)?, io.upload(&y0)?);
                    prepared(
                        ob.clone(),
                        n * g.dim,
                        move |rec| e.forward(rec, &pb, View::new(&ob, n, g.dim)),
                        move || patch_embed_ref(&g, &px, &w, &b, &pos),
                    )
                },
            );
            if image_size == 224 { case.real() } else { case }
        })
        .collect()
}

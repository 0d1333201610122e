//! Attention (per-row, blocked, split), the patch embedding and the pooling of its grid.
use super::{gather_rows, placed, prepared, scatter};
use crate::gpu::Recorder;
use crate::ops::View;
use crate::ops::attention::*;
use crate::ops::avg_pool::*;
use crate::ops::patch_embed::*;
use crate::testing::{KernelCase, TOL};

/// Where q, the cache and out lie in their buffers, in f32 elements.
#[derive(Clone, Copy, Debug)]
struct Layout {
    q_offset: usize,
    q_stride: usize,
    kv_stride: usize,
    o_offset: usize,
    o_stride: usize,
}

impl Layout {
    /// Rows back to back from each buffer's start.
    fn packed(p: &AttentionParams) -> Layout {
        let width = (p.n_heads * p.head_dim) as usize;
        Layout {
            q_offset: 0,
            q_stride: width,
            kv_stride: (p.n_kv_heads * p.head_dim) as usize,
            o_offset: 0,
            o_stride: width,
        }
    }
}

/// [`attention_placed`] with everything packed.
fn attention_case(
    v: &mut Vec<KernelCase>,
    what: &str,
    p: AttentionParams,
    capacity: usize,
    real: bool,
) {
    attention_placed(v, what, p, Layout::packed(&p), capacity, real)
}

/// Attention on random q and a KV cache of `capacity` rows whose rows past `kv_len` hold NaN,
/// proving they are never read, the operands placed as `l` says; every kernel that takes the
/// shape. The reference sees the same rows packed.
fn attention_placed(
    v: &mut Vec<KernelCase>,
    what: &str,
    p: AttentionParams,
    l: Layout,
    capacity: usize,
    real: bool,
) {
    let mut kernels = vec!["per-row", "blocked"];
    if p.q_rows == 1 {
        kernels.push("split");
    }
    let (rows, keys) = (p.q_rows as usize, p.kv_len as usize);
    let width = (p.n_heads * p.head_dim) as usize;
    let kv_width = (p.n_kv_heads * p.head_dim) as usize;
    for kernel in kernels {
        let case = KernelCase::new(
            "attention",
            format!("attention {kernel} {what} {p:?} {l:?}"),
            TOL,
            move |io| {
                let q = io.rand(l.q_offset + rows * l.q_stride, 1.0);
                let valid = keys * l.kv_stride;
                let mut kv = |scale: f32| {
                    let mut x: Vec<f32> = io.rand(capacity * l.kv_stride, scale);
                    x[valid..].fill(f32::NAN);
                    x
                };
                // Larger scores make the softmax peaky, as trained models do.
                let (k, vv) = (kv(3.0), kv(1.0));
                let o_len = l.o_offset + (rows - 1) * l.o_stride + width;
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
                        let q = placed(&qb, rows, width, l.q_offset, l.q_stride);
                        let k = placed(&kb, keys, kv_width, 0, l.kv_stride);
                        let v = placed(&vb, keys, kv_width, 0, l.kv_stride);
                        let out = placed(&ob, rows, width, l.o_offset, l.o_stride);
                        attention(rec, kernel, q, k, v, out, &p)
                    },
                    move || {
                        let q = gather_rows(&q, rows, width, l.q_offset, l.q_stride);
                        let cache = |x: &[f32]| gather_rows(x, keys, kv_width, 0, l.kv_stride);
                        let r = attention_ref(&q, &cache(&k), &cache(&vv), &p);
                        scatter(&o0, &r, width, l.o_offset, l.o_stride, |_, new| new)
                    },
                )
            },
        );
        v.push(if real { case.real() } else { case });
    }
}

pub(super) fn attention_cases(v: &mut Vec<KernelCase>) {
    let a = problem;
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
    let strided = Layout {
        q_offset: 3,
        q_stride: 21,
        o_stride: 19,
        o_offset: 2,
        kv_stride: 11,
    };
    let what = "strided q, out and cache rows";
    attention_placed(v, what, a(5, 2, 1, 8, 9, 4, 6), strided, 12, false);
    // One sequence of a decoding batch: its query and output are row 3 of the batch's.
    let p = a(1, 4, 2, 16, 37, 36, 30);
    let batch_row = Layout {
        q_offset: 3 * 64,
        o_offset: 3 * 64,
        ..Layout::packed(&p)
    };
    attention_placed(v, "row 3 of a decoding batch", p, batch_row, 40, false);
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
    gemma3_cases(v);
    real_attention_cases(v);
    attention_refusals(v);
}

/// Gemma 3: text causal, each image's block bidirectional, all of it within the sliding window;
/// no PaliGemma prefix.
fn gemma3_cases(v: &mut Vec<KernelCase>) {
    let blocks = |r: &[(usize, usize)]| {
        let ranges: Vec<_> = r.iter().map(|&(start, end)| start..end).collect();
        Blocks::new(&ranges).expect("few blocks")
    };
    // Two images of 7 tokens with text around them, a window of 5 shorter than a block (so the
    // window hides the start of a block from its own end), in one blocked prefill.
    let two = AttentionParams {
        blocks: blocks(&[(3, 10), (12, 19)]),
        window: 5,
        scale: 0.3,
        ..problem(23, 4, 2, 16, 23, 0, 0)
    };
    attention_case(v, "Gemma 3 prefill, two images, window 5", two, 24, false);
    // Full-attention layer (no window), a block that straddles a tile of BLOCK_ROWS rows.
    let full = AttentionParams {
        blocks: blocks(&[(9, 30)]),
        ..problem(40, 2, 1, 32, 40, 0, 0)
    };
    attention_case(
        v,
        "Gemma 3 prefill, full layer, block over tiles",
        full,
        40,
        false,
    );
    // A chunk of rows from position 10: the first rows are inside a block begun before them.
    let chunk = AttentionParams {
        blocks: blocks(&[(4, 15)]),
        window: 8,
        ..problem(9, 2, 2, 8, 19, 10, 0)
    };
    attention_case(
        v,
        "Gemma 3, rows from the middle of a block",
        chunk,
        20,
        false,
    );
    // Decoding after an image: the text token sees only the window.
    let step = AttentionParams {
        blocks: blocks(&[(2, 18)]),
        window: 6,
        ..problem(1, 4, 2, 16, 25, 24, 0)
    };
    attention_case(v, "Gemma 3 decode after an image", step, 30, false);
    let real = AttentionParams {
        blocks: blocks(&[(6, 262)]),
        window: 1024,
        scale: 1.0 / 16.0,
        ..problem(280, 8, 4, 256, 280, 0, 0)
    };
    attention_case(v, "Gemma 3 4B prefill, one image", real, 300, true);
}

/// The real models' shapes (the bench times these).
fn real_attention_cases(v: &mut Vec<KernelCase>) {
    let a = problem;
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
}

/// `rows` queries from position `pos0` over `kv_len` keys, positions below `prefix` one block.
fn problem(
    rows: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    kv_len: usize,
    pos0: usize,
    prefix: u32,
) -> AttentionParams {
    AttentionParams {
        prefix_len: prefix,
        ..AttentionParams::new(heads, kv_heads, hd, rows, pos0, kv_len)
    }
}

/// Bad input, refused with an error containing `message`: `record` runs attention with views
/// into one buffer of `floats` f32 values.
fn refusal(
    name: &str,
    message: &'static str,
    floats: u64,
    record: fn(&mut Recorder, View) -> crate::error::Result<()>,
) -> KernelCase {
    KernelCase::new("attention", name.into(), TOL, move |io| {
        let b = io.gpu.storage("x", 4 * floats)?;
        prepared(
            b.clone(),
            1,
            move |rec| record(rec, View::new(&b, 1, floats as usize)),
            Vec::new,
        )
    })
    .refused(message)
}

fn attention_refusals(v: &mut Vec<KernelCase>) {
    // head_dim beyond the kernels' limit is an error, not a wrong answer.
    v.push(refusal(
        "attention head_dim 512",
        "head_dim",
        512,
        |rec, x| {
            let p = problem(1, 1, 1, 512, 1, 0, 1);
            attention(rec, AttentionKernel::Blocked, x, x, x, x, &p)
        },
    ));
    // The shader reads the caches from their buffers' first element: a view of a cache at an
    // offset is refused, not read from the wrong rows.
    let name = "attention over a cache at an offset";
    v.push(refusal(name, "caches must start", 32, |rec, x| {
        let p = problem(1, 1, 1, 16, 1, 0, 1);
        let (q, cache) = (x.cols(0, 16), x.cols(16, 16));
        attention(rec, AttentionKernel::Blocked, q, cache, cache, q, &p)
    }));
}

/// Gemma 3's pooling of the patch grid: a 1x1 grid, awkward sizes (a 6x6 grid in 3x3 tiles, odd
/// widths) and the real 64x64 grid of So400m at 896px in 4x4 tiles to 256 rows.
pub(super) fn avg_pool_cases() -> Vec<KernelCase> {
    [
        (1usize, 1usize, 1usize),
        (6, 3, 5),
        (8, 2, 33),
        (64, 4, 1152),
    ]
    .into_iter()
    .map(|(side, k, d)| {
        let name = format!("avg_pool {side}x{side}x{d} k{k}");
        let case = KernelCase::new("avg_pool", name, TOL, move |io| {
            let out_rows = (side / k).pow(2);
            let (x, y0) = (io.rand(side * side * d, 2.0), io.rand(out_rows * d, 1.0));
            let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
            prepared(
                yb.clone(),
                out_rows * d,
                move |rec| {
                    let (xv, yv) = (View::new(&xb, side * side, d), View::new(&yb, out_rows, d));
                    avg_pool(rec, xv, side, k, yv)
                },
                move || avg_pool_ref(&x, side, k, d),
            )
        });
        if side == 64 { case.real() } else { case }
    })
    .collect()
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

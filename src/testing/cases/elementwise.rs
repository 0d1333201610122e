//! Norms, activations, the residual add, argmax, sampling and RoPE.
use super::{gather_rows, placed, prepared, scatter};
use crate::error::Result;
use crate::gpu::Recorder;
use crate::ops::View;
use crate::ops::activation::*;
use crate::ops::add::*;
use crate::ops::argmax::*;
use crate::ops::norm::*;
use crate::ops::rope::*;
use crate::ops::sample::*;
use crate::testing::{Io, KernelCase, Prepared, TOL};

pub(super) fn norm_cases(v: &mut Vec<KernelCase>) {
    for (rows, n) in [(1, 1), (3, 7), (5, 257), (13, 1000), (256, 1152)] {
        let case = KernelCase::new("norm", format!("layer_norm {rows}x{n}"), TOL, move |io| {
            // A large common offset checks the two-pass variance.
            let x: Vec<f32> = io.rand(rows * n, 1.0).iter().map(|v| v + 3.0).collect();
            let (w, b, y0) = (io.rand(n, 1.0), io.rand(n, 1.0), io.rand(rows * n, 1.0));
            let norm = LayerNorm {
                weight: io.upload(&w)?,
                bias: io.upload(&b)?,
                n,
                eps: 1e-6,
            };
            let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
            prepared(
                yb.clone(),
                rows * n,
                move |rec| norm.forward(rec, View::new(&xb, rows, n), View::new(&yb, rows, n)),
                move || layer_norm_ref(&x, &w, &b, rows, n, 1e-6),
            )
        });
        v.push(if n == 1152 { case.real() } else { case });
    }
    for (rows, n) in [(1, 1), (3, 7), (5, 257), (17, 2048), (2, 2304)] {
        let case = KernelCase::new("norm", format!("rms_norm {rows}x{n}"), TOL, move |io| {
            let (x, w, y0) = (
                io.rand(rows * n, 4.0),
                io.rand(n, 1.0),
                io.rand(rows * n, 1.0),
            );
            let norm = RmsNorm {
                weight: io.upload(&w)?,
                n,
                eps: 1e-6,
            };
            let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
            prepared(
                yb.clone(),
                rows * n,
                move |rec| norm.forward(rec, View::new(&xb, rows, n), View::new(&yb, rows, n)),
                move || rms_norm_ref(&x, &w, rows, n, 1e-6),
            )
        });
        v.push(if n == 2048 { case.real() } else { case });
    }
    rms_norm_in_place_cases(v);
}

/// Gemma 3's QK-norm: rows of head_dim at an offset and stride inside a larger buffer (a cache's
/// rows), replaced in place; the gaps must stay untouched. The real sizes: 4B's 8 query heads of
/// 256 over a 64-row prefill block, 27B's 16 KV heads of 128.
fn rms_norm_in_place_cases(v: &mut Vec<KernelCase>) {
    for (rows, n, offset, stride, real) in [
        (1, 1, 0, 1, false),
        (7, 16, 5, 19, false),
        (33, 72, 130, 72, false),
        (64 * 8, 256, 0, 256, true),
        (3 * 16, 128, 128 * 16, 128, true),
    ] {
        let name = format!("rms_norm_in_place {rows}x{n} at {offset}+r*{stride}");
        let case = KernelCase::new("norm", name, TOL, move |io| {
            let len = offset + (rows - 1) * stride + n + 3;
            let (y0, w) = (io.rand(len, 4.0), io.rand(n, 1.0));
            let norm = RmsNorm {
                weight: io.upload(&w)?,
                n,
                eps: 1e-6,
            };
            let yb = io.upload(&y0)?;
            prepared(
                yb.clone(),
                len,
                move |rec| norm.forward_in_place(rec, placed(&yb, rows, n, offset, stride)),
                move || {
                    let x = gather_rows(&y0, rows, n, offset, stride);
                    let normed = rms_norm_ref(&x, &w, rows, n, 1e-6);
                    scatter(&y0, &normed, n, offset, stride, |_, new| new)
                },
            )
        });
        v.push(if real { case.real() } else { case });
    }
}

pub(super) fn elementwise_cases(v: &mut Vec<KernelCase>) {
    activation_cases(v);
    add_cases(v);
    argmax_cases(v);
    sample_cases(v);
}

/// GELU, gated GELU and the soft-cap, from one element to SigLIP's fc1 output at 224px.
fn activation_cases(v: &mut Vec<KernelCase>) {
    for n in [1usize, 7, 1000, 256 * 4304] {
        // Saturated arguments must not overflow to NaN.
        let input = move |io: &mut Io| {
            let mut x = io.rand(n, 6.0);
            x[0] = 60.0;
            if n > 1 {
                x[1] = -60.0;
            }
            x
        };
        let real = n == 256 * 4304;
        let mark = |c: KernelCase| if real { c.real() } else { c };
        v.push(mark(KernelCase::new(
            "activation",
            format!("gelu_tanh n={n}"),
            TOL,
            move |io| {
                let (x, y0) = (input(io), io.rand(n, 1.0));
                let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
                prepared(
                    yb.clone(),
                    n,
                    move |rec| gelu_tanh(rec, View::new(&xb, 1, n), View::new(&yb, 1, n)),
                    move || gelu_tanh_ref(&x),
                )
            },
        )));
        v.push(mark(KernelCase::new(
            "activation",
            format!("gelu_tanh_gated n={n}"),
            TOL,
            move |io| {
                let (x, u) = (input(io), io.rand(n, 2.0));
                let (xb, ub) = (io.upload(&x)?, io.upload(&u)?);
                prepared(
                    ub.clone(),
                    n,
                    move |rec| gelu_tanh_gated(rec, View::new(&xb, 1, n), View::new(&ub, 1, n)),
                    move || gelu_tanh_gated_ref(&x, &u),
                )
            },
        )));
        v.push(mark(KernelCase::new(
            "activation",
            format!("softcap n={n}"),
            TOL,
            move |io| {
                let x = input(io);
                let xb = io.upload(&x)?;
                prepared(
                    xb.clone(),
                    n,
                    move |rec| softcap(rec, View::new(&xb, 1, n), 3.0),
                    move || softcap_ref(&x, 3.0),
                )
            },
        )));
    }
}

fn add_cases(v: &mut Vec<KernelCase>) {
    for n in [1usize, 257, 1_000_003] {
        v.push(KernelCase::new(
            "add",
            format!("add_inplace n={n}"),
            0.0,
            move |io| {
                let (x, y) = (io.rand(n, 1.0), io.rand(n, 1.0));
                let (xb, yb) = (io.upload(&x)?, io.upload(&y)?);
                prepared(
                    xb.clone(),
                    n,
                    move |rec| add_inplace(rec, View::new(&xb, 1, n), View::new(&yb, 1, n)),
                    move || add_ref(&x, &y),
                )
            },
        ));
    }
}

/// One value, ties (the first wins), the vocabulary's last id, negatives.
fn argmax_cases(v: &mut Vec<KernelCase>) {
    let argmax_cases: [(&str, usize); 5] = [
        ("one", 1),
        ("ties", 300),
        ("seven", 7),
        ("vocabulary", 257_216),
        ("negative with a tie", 1001),
    ];
    for (what, n) in argmax_cases {
        let case = KernelCase::new("argmax", format!("argmax {what} n={n}"), 0.0, move |io| {
            let mut x = match what {
                "ties" => vec![1.0; n],
                "one" => vec![-3.0],
                _ => io.rand(n, 10.0),
            };
            if what == "vocabulary" {
                x[n - 1] = 11.0; // the very last id
            }
            if what.starts_with("negative") {
                x.iter_mut().for_each(|v| *v = *v / 10.0 - 5.0);
                (x[500], x[700]) = (-0.5, -0.5); // a tie: the first wins
            }
            let want = argmax_ref(&x) as u32;
            chosen_id(io, &x, argmax, want)
        });
        v.push(if n == 257_216 { case.real() } else { case });
    }
}

/// A token choice's case (argmax, sample): the row `x` placed 3 values into its buffer, the
/// id written at index 1 of a u32 buffer whose index 0 must stay untouched, `want` the id.
fn chosen_id(
    io: &mut Io,
    x: &[f32],
    choose: impl Fn(&mut Recorder, View, &wgpu::Buffer, usize) -> Result<()> + 'static,
    want: u32,
) -> Result<Prepared> {
    let n = x.len();
    let mut padded = vec![100.0; 3];
    padded.extend(x);
    let xb = io.upload(&padded)?;
    let ob = io.upload_bytes(&[0xff; 8])?;
    let mut p = prepared(
        ob.clone(),
        2,
        move |rec| choose(rec, View::new(&xb, 1, n + 3).cols(3, n), &ob, 1),
        move || vec![u32::MAX as f32, want as f32],
    )?;
    p.u32_out = true;
    Ok(p)
}

/// Sampling where the kept set is one token, so the draw is certain: top-k 1 and a tiny top-p
/// (the sort and threshold passes run), temperatures so low that only a clear maximum can be
/// drawn (they do not; 1e-38, where logits / T would overflow), on awkward sizes and the
/// vocabulary; logits that are NaN or infinite are never drawn (u32::MAX when none is
/// finite); a temperature of 0 is refused.
fn sample_cases(v: &mut Vec<KernelCase>) {
    let cases: [(&str, usize, usize, f32, f32); 9] = [
        ("one", 1, 0, 1.0, 1.0),
        ("top-k 1", 1000, 1, 1.0, 1.0),
        ("top-p tiny", 3001, 0, 0.8, 1e-6),
        ("top-k 1 beside NaN and infinities", 777, 1, 1.0, 0.9),
        ("all NaN", 300, 5, 1.0, 0.5),
        ("cold", 1025, 0, 1e-3, 1.0),
        ("cold", 1025, 0, 1e-38, 1.0),
        ("vocabulary top-k 1", 257_216, 1, 1.0, 1.0),
        ("temperature 0", 10, 0, 0.0, 1.0),
    ];
    for (what, n, top_k, temperature, top_p) in cases {
        let name = format!("sample {what} n={n} k={top_k} T={temperature} p={top_p}");
        let case = KernelCase::new("sample", name, 0.0, move |io| {
            let mut x = io.rand(n, 10.0);
            if what.contains("infinities") {
                (x[3], x[400], x[776]) = (f32::NAN, f32::INFINITY, f32::NEG_INFINITY);
            }
            if what == "cold" {
                x[n / 3] = 11.0; // a clear maximum: a draw at T = 1e-3 cannot miss it
            }
            if what == "all NaN" {
                x.fill(f32::NAN);
            }
            let opts = crate::sampling::SamplingOptions {
                temperature,
                top_p,
                top_k,
                seed: rand::Rng::random(&mut io.rng),
            };
            let want = sample_ref(&x, &opts).first().map_or(u32::MAX, |k| k.0);
            let draw = move |rec: &mut Recorder, x: View, out: &wgpu::Buffer, at| {
                sample(rec, x, &opts, 7, out, at)
            };
            chosen_id(io, &x, draw, want)
        });
        v.push(match (n, temperature) {
            (_, 0.0) => case.refused("temperature above 0"),
            (257_216, _) => case.real(),
            _ => case,
        });
    }
}

pub(super) fn rope_cases(v: &mut Vec<KernelCase>) {
    // (rows, heads, head_dim, first position, offset, extra stride): awkward sizes, a strided
    // placement (a K projection written into a KV-cache row), Gemma's q and k at 224px (261
    // rows from position 1) and a decode step deep into a 896px prompt.
    for (rows, heads, hd, pos0, off, pad) in [
        (1, 1, 2, 0, 0, 0),
        (5, 3, 6, 1, 0, 0),
        (7, 2, 30, 11, 0, 0),
        (3, 2, 8, 2, 7, 5),
        (261, 8, 256, 1, 0, 0),
        (261, 1, 256, 1, 0, 0),
        (1, 8, 256, 4101, 0, 0),
    ] {
        let case = KernelCase::new(
            "rope",
            format!("rope {rows}x{heads}x{hd} @{pos0} offset {off}"),
            1e-6,
            move |io| {
                let (w, stride) = (heads * hd, heads * hd + pad);
                let x = io.rand(off + rows * stride, 1.0);
                let tables = RopeTables::new(io.gpu, hd, Rope::new(10000.0), pos0 + rows + 3)?;
                let xb = io.upload(&x)?;
                prepared(
                    xb.clone(),
                    x.len(),
                    move |rec| rope(rec, placed(&xb, rows, w, off, stride), &tables, heads, pos0),
                    move || {
                        let r = rope_ref(
                            &gather_rows(&x, rows, w, off, stride),
                            rows,
                            heads,
                            hd,
                            pos0,
                            Rope::new(10000.0),
                        );
                        scatter(&x, &r, w, off, stride, |_, new| new)
                    },
                )
            },
        );
        v.push(if rows == 261 { case.real() } else { case });
    }
}

pub(super) fn rope_qk_cases(v: &mut Vec<KernelCase>) {
    // Queries and keys in one dispatch, placed in one buffer as a layer's q scratch and a KV
    // cache row would be (keys after the queries, at an odd offset and stride): awkward sizes,
    // Gemma's 8 query heads over 1 key head at 224px, and a decode step deep into a 896px
    // prompt with PaliGemma 2 10B's 16 over 8; Gemma 3 4B's full layers (base 1e6, positions
    // scaled by 1/8) over a 280-token prompt.
    let (plain, gemma3) = (
        Rope::new(10000.0),
        Rope {
            theta: 1e6,
            factor: 8.0,
        },
    );
    for (rows, heads, k_heads, hd, pos0, rope) in [
        (1, 1, 1, 2, 0, plain),
        (5, 3, 2, 6, 1, plain),
        (
            7,
            4,
            1,
            30,
            11,
            Rope {
                theta: 500.0,
                factor: 3.0,
            },
        ),
        (261, 8, 1, 256, 1, plain),
        (1, 16, 8, 256, 4101, plain),
        (280, 8, 4, 256, 1, gemma3),
    ] {
        let case = KernelCase::new(
            "rope",
            format!("rope_qk {rows}x({heads}+{k_heads})x{hd} @{pos0} {rope:?}"),
            1e-6,
            move |io| {
                let (qw, kw) = (heads * hd, k_heads * hd);
                let (ko, ks) = (rows * qw + 3, kw + 5);
                let x = io.rand(ko + rows * ks, 1.0);
                let tables = RopeTables::new(io.gpu, hd, rope, pos0 + rows + 3)?;
                let xb = io.upload(&x)?;
                prepared(
                    xb.clone(),
                    x.len(),
                    move |rec| {
                        let q = View::new(&xb, rows, qw);
                        let k = placed(&xb, rows, kw, ko, ks);
                        rope_qk(rec, q, k, &tables, heads, k_heads, pos0)
                    },
                    move || {
                        let q = rope_ref(&x[..rows * qw], rows, heads, hd, pos0, rope);
                        let k = gather_rows(&x, rows, kw, ko, ks);
                        let k = rope_ref(&k, rows, k_heads, hd, pos0, rope);
                        let y = scatter(&x, &q, qw, 0, qw, |_, new| new);
                        scatter(&y, &k, kw, ko, ks, |_, new| new)
                    },
                )
            },
        );
        v.push(if hd == 256 { case.real() } else { case });
    }
}

pub(super) fn rope_at_cases(v: &mut Vec<KernelCase>) {
    // A batch of sequences at their own positions: awkward sizes, then 16 of Gemma's q rows at
    // positions across a 896px prompt's range.
    for (rows, heads, hd, max_pos) in [(1, 1, 2, 3), (5, 3, 6, 40), (16, 8, 256, 4300)] {
        let case = KernelCase::new(
            "rope",
            format!("rope_at {rows}x{heads}x{hd} up to @{max_pos}"),
            1e-6,
            move |io| {
                let w = heads * hd;
                let x = io.rand(rows * w, 1.0);
                let positions: Vec<usize> = io
                    .rand(rows, 1.0)
                    .iter()
                    .map(|u| ((u.abs() * max_pos as f32) as usize).min(max_pos))
                    .collect();
                let tables = RopeTables::new(io.gpu, hd, Rope::new(10000.0), max_pos + 1)?;
                let xb = io.upload(&x)?;
                let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
                let pb = io.upload_bytes(bytemuck::cast_slice(&pos))?;
                prepared(
                    xb.clone(),
                    x.len(),
                    move |rec| {
                        let xv = View::new(&xb, rows, w);
                        rope_at(rec, xv, &tables, heads, &pb, max_pos)
                    },
                    move || rope_at_ref(&x, &positions, heads, hd, Rope::new(10000.0)),
                )
            },
        );
        v.push(if hd == 256 { case.real() } else { case });
    }
}

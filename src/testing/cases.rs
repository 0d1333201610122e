//! The case table: awkward sizes (1, primes, not multiples of a workgroup), operands placed at
//! offsets and strides inside larger buffers, and the real model's sizes. Outputs start random,
//! so an element a kernel fails to write, or writes where it must not, is caught.

use super::{Io, KernelCase, Prepared, TOL};
use crate::error::Result;
use crate::ops::activation::*;
use crate::ops::add::*;
use crate::ops::argmax::*;
use crate::ops::attention::*;
use crate::ops::gather::*;
use crate::ops::linear::*;
use crate::ops::norm::*;
use crate::ops::patch_embed::*;
use crate::ops::rope::*;
use crate::ops::softmax::*;
use crate::ops::{ChunkedTable, View, Weight, WeightFormat};

const FORMATS: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16];

/// Every case, in family order.
pub fn kernel_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    linear_cases(&mut v);
    table_cases(&mut v);
    norm_cases(&mut v);
    elementwise_cases(&mut v);
    rope_cases(&mut v);
    attention_cases(&mut v);
    v.extend(patch_cases());
    v
}

/// `m` rows of `width` inside a buffer of `init`, at `offset` and `stride`.
fn placed(b: &wgpu::Buffer, rows: usize, width: usize, offset: usize, stride: usize) -> View<'_> {
    View {
        buffer: b,
        rows,
        width,
        offset,
        stride,
    }
}

/// `init` with rows of `width` at `offset + r * stride` replaced by `f(old, new)` of `rows`.
fn scatter(
    init: &[f32],
    rows: &[f32],
    width: usize,
    offset: usize,
    stride: usize,
    f: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    let mut y = init.to_vec();
    for (r, row) in rows.chunks(width).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let i = offset + r * stride + c;
            y[i] = f(y[i], v);
        }
    }
    y
}

/// The rows of `width` at `offset + r * stride`, packed.
fn gather_rows(x: &[f32], rows: usize, width: usize, offset: usize, stride: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| x[offset + r * stride..][..width].to_vec())
        .collect()
}

fn prepared(
    out: wgpu::Buffer,
    out_len: usize,
    record: impl Fn(&mut crate::gpu::Recorder) -> Result<()> + 'static,
    want: impl FnOnce() -> Vec<f32> + 'static,
) -> Result<Prepared> {
    Ok(Prepared {
        record: Box::new(record),
        out,
        out_len,
        want: Box::new(want),
        u32_out: false,
    })
}

fn linear_case(
    m: usize,
    n: usize,
    k: usize,
    format: WeightFormat,
    kernel: LinearKernel,
    add: bool,
    real: bool,
) -> KernelCase {
    let name = format!(
        "linear {kernel:?} {format:?} m={m} n={n} k={k}{}",
        if add { " +=" } else { "" }
    );
    let case = KernelCase::new("linear", name, TOL, move |io: &mut Io| {
        // Awkward cases: x rows at offset 3 and stride k + 2, y at 5 and n + 1, with a bias.
        let (xo, xs, yo, ys) = if real {
            (0, k, 0, n)
        } else {
            (3, k + 2, 5, n + 1)
        };
        let w = io.rand(n * k, if real { 0.05 } else { 1.0 });
        let b = (!real).then(|| io.rand(n, 1.0));
        let (x, y0) = (io.rand(xo + m * xs, 1.0), io.rand(yo + m * ys, 1.0));
        let lin = Linear {
            weight: Weight::from_f32(io.gpu, "w", &w, format, n, k)?,
            bias: b.as_deref().map(|b| io.upload(b)).transpose()?,
        };
        io.bytes += (n * k * format.bytes_per_element()) as u64;
        let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
        let out = yb.clone();
        prepared(
            out,
            y0.len(),
            move |rec| {
                let (x, y) = (placed(&xb, m, k, xo, xs), placed(&yb, m, n, yo, ys));
                lin.forward_with(rec, kernel, x, y, add)
            },
            move || {
                let r = linear_ref(
                    &gather_rows(&x, m, k, xo, xs),
                    &format.round_trip(&w),
                    b.as_deref(),
                    m,
                    n,
                    k,
                );
                scatter(
                    &y0,
                    &r,
                    n,
                    yo,
                    ys,
                    |old, new| if add { old + new } else { new },
                )
            },
        )
    });
    if real { case.real() } else { case }
}

fn linear_cases(v: &mut Vec<KernelCase>) {
    let shapes = [
        (1, 1, 1),
        (1, 7, 5),
        (3, 7, 5),
        (67, 131, 97),
        (65, 64, 17),
        (2, 257, 1153),
        (1, 1031, 1152),
        (1, 7, 8),
        (1, 33, 24),
    ];
    for (m, n, k) in shapes {
        for format in FORMATS {
            let mut kernels = vec![LinearKernel::Matmul];
            if m == 1 {
                kernels.push(LinearKernel::Gemv);
                if format.rows_vec4_aligned(k) {
                    kernels.push(LinearKernel::GemvVec);
                }
            }
            for kernel in kernels {
                for add in [false, true] {
                    v.push(linear_case(m, n, k, format, kernel, add, false));
                }
            }
        }
    }
    // SigLIP fc1 at 224px (256 tokens, 1152 -> 4304); a Gemma MLP row (decode) in 16 bits.
    for (m, n, k, format) in [
        (256, 4304, 1152, WeightFormat::F32),
        (1, 16384, 2048, WeightFormat::Bf16),
        (1, 2048, 16384, WeightFormat::F16),
    ] {
        v.push(linear_case(
            m,
            n,
            k,
            format,
            LinearKernel::choose(m, k, format),
            false,
            true,
        ));
    }
    // The gated decode MLP: awkward sizes, then Gemma's 16384 x 2048.
    for (n, k) in [(1, 8), (13, 24), (257, 40), (16384, 2048)] {
        for format in FORMATS {
            let case = KernelCase::new(
                "linear",
                format!("gemv_gated {format:?} {n}x{k}"),
                TOL,
                move |io| {
                    let (wg, wu) = (io.rand(n * k, 0.1), io.rand(n * k, 0.1));
                    let (x, y0) = (io.rand(2 + k, 1.0), io.rand(3 + n, 1.0));
                    let gate = Weight::from_f32(io.gpu, "gate", &wg, format, n, k)?;
                    let up = Weight::from_f32(io.gpu, "up", &wu, format, n, k)?;
                    io.bytes += (2 * n * k * format.bytes_per_element()) as u64;
                    let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
                    prepared(
                        yb.clone(),
                        y0.len(),
                        move |rec| {
                            gemv_gated(
                                rec,
                                placed(&xb, 1, k, 2, k),
                                &gate,
                                &up,
                                placed(&yb, 1, n, 3, n),
                            )
                        },
                        move || {
                            let g = linear_ref(&x[2..], &format.round_trip(&wg), None, 1, n, k);
                            let u = linear_ref(&x[2..], &format.round_trip(&wu), None, 1, n, k);
                            scatter(&y0, &gelu_tanh_gated_ref(&g, &u), n, 3, n, |_, new| new)
                        },
                    )
                },
            );
            v.push(if n == 16384 { case.real() } else { case });
        }
    }
    // Weights the fused kernel cannot combine are refused, not miscomputed.
    v.push(
        KernelCase::new("linear", "gemv_gated unaligned".into(), TOL, |io| {
            let a = Weight::from_f32(io.gpu, "a", &[0.0; 14], WeightFormat::Bf16, 2, 7)?;
            let xb = io.upload(&[0.0; 7])?;
            prepared(
                xb.clone(),
                7,
                move |rec| gemv_gated(rec, View::new(&xb, 1, 7), &a, &a, View::new(&xb, 1, 2)),
                Vec::new,
            )
        })
        .refused("16 bytes"),
    );
}

/// Logits of `rows` rows and the embedding gather of `ids` (and, with `boundaries`, of the ids
/// either side of every chunk boundary) over a vocabulary split into chunks of `chunk_rows`
/// (the device's largest when `None`).
fn table_case(
    vocab: usize,
    hidden: usize,
    chunk_rows: Option<usize>,
    format: WeightFormat,
    rows: usize,
    ids: Vec<u32>,
    boundaries: bool,
) -> KernelCase {
    let name = format!(
        "logits and gather {format:?} {vocab}x{hidden} rows={rows} ids={ids:?}{}",
        if boundaries {
            " and chunk boundaries"
        } else {
            ""
        }
    );
    // The gather copies (and scales by a power of two's neighbour): exact alone.
    let tol = if rows == 0 { 0.0 } else { TOL };
    KernelCase::new("gather", name, tol, move |io| {
        let tq = format.round_trip(&io.rand(vocab * hidden, 0.05));
        let chunk_rows =
            chunk_rows.unwrap_or_else(|| ChunkedTable::max_chunk_rows(io.gpu, hidden, format));
        let t = ChunkedTable::from_bytes(
            io.gpu,
            "table",
            &format.encode(&tq),
            format,
            vocab,
            hidden,
            chunk_rows,
        )?;
        io.bytes += (vocab * hidden * format.bytes_per_element()) as u64;
        let mut ids = ids.clone();
        if boundaries {
            ids.extend(
                t.chunks
                    .iter()
                    .skip(1)
                    .flat_map(|(start, _)| [*start as u32 - 1, *start as u32]),
            );
        }
        // The output: the gathered rows first, then the logits of rows 2.. of x.
        let x = io.rand((rows + 2) * hidden, 1.0);
        let n_ids = ids.len();
        let g_len = n_ids * hidden;
        let y0 = io.rand(g_len + rows * vocab, 1.0);
        let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
        let idb = io.upload_bytes(bytemuck::cast_slice(&ids))?;
        let scale = 45.254834;
        prepared(
            yb.clone(),
            y0.len(),
            move |rec| {
                if n_ids > 0 {
                    gather(rec, &idb, &t, scale, View::new(&yb, n_ids, hidden))?;
                }
                if rows > 0 {
                    let y = placed(&yb, rows, vocab, g_len, vocab);
                    logits(rec, View::new(&xb, rows + 2, hidden).rows(2, rows), &t, y)?;
                }
                Ok(())
            },
            move || {
                let mut want = gather_ref(&ids, &tq, hidden, scale);
                want.extend(linear_ref(&x[2 * hidden..], &tq, None, rows, vocab, hidden));
                want
            },
        )
    })
}

fn table_cases(v: &mut Vec<KernelCase>) {
    for format in [WeightFormat::F32, WeightFormat::Bf16] {
        // 97 rows per chunk: 11 chunks, the last one partial.
        v.push(table_case(1000, 64, Some(97), format, 5, vec![], false));
        v.push(table_case(1000, 64, Some(97), format, 1, vec![], false));
        v.push(table_case(
            1000,
            64,
            Some(97),
            format,
            0,
            vec![0, 96, 97, 999, 500, 0, 194, 3],
            false,
        ));
    }
    // PaliGemma's tied embedding, 257216 x 2048 in bf16 (1.05 GB): over the 128 MiB binding
    // limit of lavapipe and many other devices, so split.
    v.push(
        table_case(
            257_216,
            2048,
            None,
            WeightFormat::Bf16,
            1,
            vec![0, 257_215, 257_152],
            true,
        )
        .real(),
    );
}

fn norm_cases(v: &mut Vec<KernelCase>) {
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
}

fn elementwise_cases(v: &mut Vec<KernelCase>) {
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
    for (rows, n, t) in [
        (1, 1, 1.0),
        (3, 7, 0.7),
        (2, 1000, 1.3),
        (1, 257_216, 1.0),
        (1, 5, 0.0),
    ] {
        let case = KernelCase::new(
            "softmax",
            format!("softmax {rows}x{n} T={t}"),
            TOL,
            move |io| {
                let (x, y0) = (io.rand(rows * n, 20.0), io.rand(rows * n, 1.0));
                let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
                prepared(
                    yb.clone(),
                    rows * n,
                    move |rec| softmax(rec, View::new(&xb, rows, n), View::new(&yb, rows, n), t),
                    move || softmax_ref(&x, rows, n, t),
                )
            },
        );
        v.push(match (n, t) {
            (_, 0.0) => case.refused("temperature"),
            (257_216, _) => case.real(),
            _ => case,
        });
    }
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
            let mut padded = vec![100.0; 3];
            padded.extend(&x);
            let xb = io.upload(&padded)?;
            let ob = io.upload_bytes(&[0xff; 8])?;
            let mut p = prepared(
                ob.clone(),
                2,
                move |rec| argmax(rec, View::new(&xb, 1, n + 3).cols(3, n), &ob, 1),
                move || vec![u32::MAX as f32, argmax_ref(&x) as f32],
            )?;
            p.u32_out = true;
            Ok(p)
        });
        v.push(if n == 257_216 { case.real() } else { case });
    }
}

fn rope_cases(v: &mut Vec<KernelCase>) {
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
                let tables = RopeTables::new(io.gpu, hd, 10000.0, pos0 + rows + 3)?;
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
                            10000.0,
                        );
                        scatter(&x, &r, w, off, stride, |_, new| new)
                    },
                )
            },
        );
        v.push(if rows == 261 { case.real() } else { case });
    }
}

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
                let o_len = (p.q_rows as usize - 1) * p.o_stride as usize + width;
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
                        let rows =
                            gather_rows(&r, p.q_rows as usize, width, 0, p.o_stride as usize);
                        scatter(&o0, &rows, width, 0, p.o_stride as usize, |_, new| new)
                    },
                )
            },
        );
        v.push(if real { case.real() } else { case });
    }
}

fn attention_cases(v: &mut Vec<KernelCase>) {
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
        kv_stride: 11,
        ..a(5, 2, 1, 8, 9, 4, 6)
    };
    attention_case(v, "strided q, out and cache rows", strided, 12, false);
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

fn patch_cases() -> Vec<KernelCase> {
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
                    let e = PatchEmbedding {
                        geometry: g,
                        weight: io.upload(&w)?,
                        bias: io.upload(&b)?,
                        position: io.upload(&pos)?,
                    };
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

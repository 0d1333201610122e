//! Every WGSL kernel against its CPU reference on fresh seeded random inputs: awkward sizes
//! (1, primes, not multiples of the workgroup size) and the real model's sizes.
//!
//! Tolerances are relative to max |reference| (the fixtures' measure). The GPU computes in f32
//! and the references in f64, so the error is f32 rounding: about 1e-7 per operation, growing
//! like sqrt(k) for a k-term sum. 2e-5 covers sums of up to 16384 terms with margin; a kernel
//! with a wrong index or a missed element is off by O(1).

mod common;

use common::{assert_close, gpu, rand_vec, rng};
use paligemma::gpu::Recorder;
use paligemma::ops::activation::*;
use paligemma::ops::add::*;
use paligemma::ops::argmax::*;
use paligemma::ops::attention::*;
use paligemma::ops::embedding::*;
use paligemma::ops::linear::*;
use paligemma::ops::norm::*;
use paligemma::ops::patch_embed::*;
use paligemma::ops::rope::*;
use paligemma::ops::softmax::*;
use paligemma::ops::{ChunkedTable, Rows, Weight, WeightFormat};
use paligemma::{Gpu, Result};

const TOL: f64 = 2e-5;

/// Records with `f`, submits, and waits.
fn run(f: impl FnOnce(&mut Recorder) -> Result<()>) {
    let g = gpu();
    let mut rec = g.recorder();
    f(&mut rec).expect("recording failed");
    rec.submit("test").expect("submit failed");
    g.wait().expect("wait failed");
}

fn up(g: &Gpu, data: &[f32]) -> wgpu::Buffer {
    g.upload_f32("test input", data).unwrap()
}

fn out(g: &Gpu, n: usize) -> wgpu::Buffer {
    // Poisoned with NaN so an element the kernel fails to write cannot pass.
    g.upload_f32("test output", &vec![f32::NAN; n]).unwrap()
}

fn read(g: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    g.read_f32(b, 0, n).unwrap()
}

#[test]
fn linear_matches_reference() {
    let g = gpu();
    let mut r = rng(1);
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
    for &(m, n, k) in &shapes {
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16] {
            let w = rand_vec(&mut r, n * k, 1.0);
            let wq = format.round_trip(&w);
            let b = rand_vec(&mut r, n, 1.0);
            // x rows with a leading offset and a stride wider than k; y likewise.
            let (x_at, y_at) = (
                Rows {
                    offset: 3,
                    stride: k + 2,
                },
                Rows {
                    offset: 5,
                    stride: n + 1,
                },
            );
            let x = rand_vec(&mut r, 3 + m * (k + 2), 1.0);
            let xs: Vec<f32> = (0..m)
                .flat_map(|i| x[3 + i * (k + 2)..][..k].to_vec())
                .collect();
            let want = linear_ref(&xs, &wq, Some(&b), m, n, k);
            let wbuf = Weight::from_f32(g, "w", &w, format, n, k).unwrap();
            let (xb, bb) = (up(g, &x), up(g, &b));
            let mut kernels = vec![LinearKernel::Matmul];
            if m == 1 {
                kernels.push(LinearKernel::Gemv);
                if format.rows_vec4_aligned(k) {
                    kernels.push(LinearKernel::GemvVec);
                }
            }
            // Rows r of y live at 5 + r * (n + 1): gaps the kernel must not touch.
            let pick = |v: &[f32]| -> Vec<f32> {
                (0..m)
                    .flat_map(|i| v[5 + i * (n + 1)..][..n].to_vec())
                    .collect()
            };
            for &kernel in &kernels {
                let what = format!("linear {kernel:?} {format:?} m={m} n={n} k={k}");
                let yb = out(g, 5 + m * (n + 1));
                run(|rec| {
                    linear_with(
                        rec,
                        kernel,
                        &xb,
                        x_at,
                        &wbuf,
                        Some(&bb),
                        &yb,
                        y_at,
                        m,
                        false,
                    )
                });
                assert_close(&what, &pick(&read(g, &yb, 5 + m * (n + 1))), &want, TOL);
                // Accumulating: y0 + x W^T + b, and nothing written outside the rows.
                let y0 = rand_vec(&mut r, 5 + m * (n + 1), 1.0);
                let yb = up(g, &y0);
                run(|rec| {
                    linear_with(rec, kernel, &xb, x_at, &wbuf, Some(&bb), &yb, y_at, m, true)
                });
                let y = read(g, &yb, y0.len());
                let want_acc: Vec<f32> = pick(&y0).iter().zip(&want).map(|(a, b)| a + b).collect();
                assert_close(&format!("{what} (accumulate)"), &pick(&y), &want_acc, TOL);
                assert_eq!(y[..5], y0[..5], "{what}: wrote before its first row");
            }
        }
    }
}

#[test]
fn linear_real_model_sizes() {
    let g = gpu();
    let mut r = rng(2);
    // SigLIP fc1 at 224px (256 tokens, 1152 -> 4304) in f32; a Gemma MLP row (decode) in bf16.
    for &(m, n, k, format) in &[
        (256, 4304, 1152, WeightFormat::F32),
        (1, 16384, 2048, WeightFormat::Bf16),
        (1, 2048, 16384, WeightFormat::F16),
    ] {
        let w = rand_vec(&mut r, n * k, 0.05);
        let x = rand_vec(&mut r, m * k, 1.0);
        let want = linear_ref(&x, &format.round_trip(&w), None, m, n, k);
        let wbuf = Weight::from_f32(g, "w", &w, format, n, k).unwrap();
        let (xb, yb) = (up(g, &x), out(g, m * n));
        run(|rec| {
            linear(
                rec,
                &xb,
                Rows::packed(k),
                &wbuf,
                None,
                &yb,
                Rows::packed(n),
                m,
            )
        });
        assert_close(
            &format!("linear {m}x{n}x{k} {format:?}"),
            &read(g, &yb, m * n),
            &want,
            TOL,
        );
    }
}

#[test]
fn gemv_gated_matches_reference() {
    let g = gpu();
    let mut r = rng(70);
    // Awkward sizes, then Gemma's decode MLP (16384 x 2048).
    for &(n, k) in &[(1, 8), (13, 24), (257, 40), (16384, 2048)] {
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16] {
            let (wg, wu) = (rand_vec(&mut r, n * k, 0.1), rand_vec(&mut r, n * k, 0.1));
            let x = rand_vec(&mut r, 2 + k, 1.0);
            let gate = Weight::from_f32(g, "gate", &wg, format, n, k).unwrap();
            let upw = Weight::from_f32(g, "up", &wu, format, n, k).unwrap();
            let (xb, yb) = (up(g, &x), out(g, 3 + n));
            let x_at = Rows {
                offset: 2,
                stride: k,
            };
            run(|rec| gemv_gated(rec, &xb, x_at, &gate, &upw, &yb, 3));
            let gv = linear_ref(&x[2..], &format.round_trip(&wg), None, 1, n, k);
            let uv = linear_ref(&x[2..], &format.round_trip(&wu), None, 1, n, k);
            let want = gelu_tanh_gated_ref(&gv, &uv);
            assert_close(
                &format!("gemv_gated {n}x{k} {format:?}"),
                &read(g, &yb, 3 + n)[3..],
                &want,
                TOL,
            );
        }
    }
    // Mismatched or unaligned weights are refused, not miscomputed.
    let a = Weight::from_f32(g, "a", &[0.0; 14], WeightFormat::Bf16, 2, 7).unwrap();
    let xb = up(g, &[0.0; 7]);
    assert!(gemv_gated(&mut g.recorder(), &xb, Rows::packed(7), &a, &a, &xb, 0).is_err());
}

#[test]
fn logits_and_embedding_over_a_split_table() {
    let g = gpu();
    let mut r = rng(3);
    let (vocab, hidden) = (1000, 64);
    let table = rand_vec(&mut r, vocab * hidden, 1.0);
    for format in [WeightFormat::F32, WeightFormat::Bf16] {
        let tq = format.round_trip(&table);
        // 97 rows per chunk: 11 chunks, the last one partial.
        let t = ChunkedTable::from_bytes(
            g,
            "table",
            &format.encode(&table),
            format,
            vocab,
            hidden,
            97,
        )
        .unwrap();
        assert_eq!(t.chunks.len(), 11);
        let m = 5;
        let x = rand_vec(&mut r, m * hidden, 1.0);
        let (xb, yb) = (up(g, &x), out(g, m * vocab));
        run(|rec| {
            logits(
                rec,
                &xb,
                Rows::packed(hidden),
                &t,
                &yb,
                Rows::packed(vocab),
                m,
            )
        });
        assert_close(
            "logits (5 rows)",
            &read(g, &yb, m * vocab),
            &linear_ref(&x, &tq, None, m, vocab, hidden),
            TOL,
        );
        let y1 = out(g, vocab);
        run(|rec| {
            logits(
                rec,
                &xb,
                Rows::from_row(4, hidden),
                &t,
                &y1,
                Rows::packed(vocab),
                1,
            )
        });
        let want1 = linear_ref(&x[4 * hidden..], &tq, None, 1, vocab, hidden);
        assert_close("logits (last row)", &read(g, &y1, vocab), &want1, TOL);

        let ids: Vec<u32> = vec![0, 96, 97, 999, 500, 0, 194, 3];
        let idb = g.storage_init("ids", bytemuck::cast_slice(&ids)).unwrap();
        let eb = out(g, ids.len() * hidden);
        run(|rec| gather(rec, &idb, ids.len(), &t, 8.0, &eb));
        assert_close(
            "embedding gather",
            &read(g, &eb, ids.len() * hidden),
            &gather_ref(&ids, &tq, hidden, 8.0),
            0.0,
        );
    }
}

#[test]
fn logits_real_vocabulary_split_across_bindings() {
    // PaliGemma's tied embedding, 257216 x 2048 in bf16 (1.05 GB): over the 128 MiB binding
    // limit of lavapipe and many other devices, so it must be split.
    let g = gpu();
    let mut r = rng(4);
    let (vocab, hidden) = (257_216, 2048);
    let format = WeightFormat::Bf16;
    let bits: Vec<half::bf16> = (0..vocab * hidden)
        .map(|_| half::bf16::from_f32(rand::Rng::random_range(&mut r, -0.05f32..0.05)))
        .collect();
    let chunk_rows = ChunkedTable::max_chunk_rows(g, hidden, format);
    let t = ChunkedTable::from_bytes(
        g,
        "embed",
        bytemuck::cast_slice(&bits),
        format,
        vocab,
        hidden,
        chunk_rows,
    )
    .unwrap();
    eprintln!("{} chunks of up to {chunk_rows} rows", t.chunks.len());
    let x = rand_vec(&mut r, hidden, 1.0);
    let (xb, yb) = (up(g, &x), out(g, vocab));
    run(|rec| {
        logits(
            rec,
            &xb,
            Rows::packed(hidden),
            &t,
            &yb,
            Rows::packed(vocab),
            1,
        )
    });
    let want: Vec<f32> = (0..vocab)
        .map(|v| {
            let row = &bits[v * hidden..(v + 1) * hidden];
            row.iter()
                .zip(&x)
                .map(|(w, x)| w.to_f64() * *x as f64)
                .sum::<f64>() as f32
        })
        .collect();
    assert_close(
        "logits 257216 x 2048 bf16",
        &read(g, &yb, vocab),
        &want,
        TOL,
    );
    // The last id and the ids either side of every chunk boundary gather the right rows.
    let mut ids = vec![0u32, (vocab - 1) as u32, 257_152];
    for (start, _) in t.chunks.iter().skip(1) {
        ids.extend([*start as u32 - 1, *start as u32]);
    }
    let idb = g.storage_init("ids", bytemuck::cast_slice(&ids)).unwrap();
    let eb = out(g, ids.len() * hidden);
    run(|rec| gather(rec, &idb, ids.len(), &t, 45.254834, &eb));
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&id| {
            bits[id as usize * hidden..][..hidden]
                .iter()
                .map(|w| w.to_f32() * 45.254834)
        })
        .collect();
    assert_close(
        "embedding gather (real vocabulary)",
        &read(g, &eb, ids.len() * hidden),
        &want,
        0.0,
    );
}

#[test]
fn layer_norm_matches_reference() {
    let g = gpu();
    let mut r = rng(5);
    for &(rows, n) in &[(1, 1), (3, 7), (5, 257), (13, 1000), (256, 1152)] {
        // A large common offset checks the two-pass variance.
        let x: Vec<f32> = rand_vec(&mut r, rows * n, 1.0)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        let (w, b) = (rand_vec(&mut r, n, 1.0), rand_vec(&mut r, n, 1.0));
        let (xb, wb, bb, yb) = (up(g, &x), up(g, &w), up(g, &b), out(g, rows * n));
        run(|rec| layer_norm(rec, &xb, &wb, &bb, &yb, rows, n, 1e-6));
        let want = layer_norm_ref(&x, &w, &b, rows, n, 1e-6);
        assert_close(
            &format!("layer_norm {rows}x{n}"),
            &read(g, &yb, rows * n),
            &want,
            TOL,
        );
    }
}

#[test]
fn rms_norm_matches_reference() {
    let g = gpu();
    let mut r = rng(6);
    for &(rows, n) in &[(1, 1), (3, 7), (5, 257), (17, 2048), (2, 2304)] {
        let x = rand_vec(&mut r, rows * n, 4.0);
        let w = rand_vec(&mut r, n, 1.0);
        let (xb, wb, yb) = (up(g, &x), up(g, &w), out(g, rows * n));
        run(|rec| rms_norm(rec, &xb, &wb, &yb, rows, n, 1e-6));
        let want = rms_norm_ref(&x, &w, rows, n, 1e-6);
        assert_close(
            &format!("rms_norm {rows}x{n}"),
            &read(g, &yb, rows * n),
            &want,
            TOL,
        );
    }
}

#[test]
fn activation_matches_reference() {
    let g = gpu();
    let mut r = rng(7);
    for &n in &[1usize, 7, 1000, 256 * 4304] {
        let mut x = rand_vec(&mut r, n, 6.0);
        // Saturated arguments must not overflow to NaN.
        x[0] = 60.0;
        if n > 1 {
            x[1] = -60.0;
        }
        let up_v = rand_vec(&mut r, n, 2.0);
        let (xb, ub, yb, cb) = (up(g, &x), up(g, &up_v), out(g, n), up(g, &x));
        run(|rec| {
            gelu_tanh(rec, &xb, &yb, n)?;
            gelu_tanh_gated(rec, &xb, &ub, n)?;
            softcap(rec, &cb, n, 3.0)
        });
        assert_close(
            &format!("gelu_tanh n={n}"),
            &read(g, &yb, n),
            &gelu_tanh_ref(&x),
            TOL,
        );
        assert_close(
            &format!("gelu_tanh_gated n={n}"),
            &read(g, &ub, n),
            &gelu_tanh_gated_ref(&x, &up_v),
            TOL,
        );
        assert_close(
            &format!("softcap n={n}"),
            &read(g, &cb, n),
            &softcap_ref(&x, 3.0),
            TOL,
        );
    }
}

#[test]
fn add_matches_reference() {
    let g = gpu();
    let mut r = rng(8);
    for &n in &[1usize, 257, 1_000_003] {
        let (x, y) = (rand_vec(&mut r, n, 1.0), rand_vec(&mut r, n, 1.0));
        let (xb, yb) = (up(g, &x), up(g, &y));
        run(|rec| add_inplace(rec, &xb, &yb, n));
        assert_close(
            &format!("add n={n}"),
            &read(g, &xb, n),
            &add_ref(&x, &y),
            0.0,
        );
    }
}

#[test]
fn rope_matches_reference() {
    let g = gpu();
    let mut r = rng(9);
    // (rows, heads, head_dim, first position): awkward sizes, then Gemma's q and k at 224px
    // (261 prompt rows from position 1) and a decode step deep into a 896px prompt.
    for &(rows, heads, hd, pos0) in &[
        (1, 1, 2, 0),
        (5, 3, 6, 1),
        (7, 2, 30, 11),
        (261, 8, 256, 1),
        (261, 1, 256, 1),
        (1, 8, 256, 4101),
    ] {
        let tables = RopeTables::new(g, hd, 10000.0, pos0 + rows + 3).unwrap();
        let x = rand_vec(&mut r, rows * heads * hd, 1.0);
        let xb = up(g, &x);
        run(|rec| {
            rope(
                rec,
                &xb,
                Rows::packed(heads * hd),
                &tables,
                rows,
                heads,
                pos0,
            )
        });
        let want = rope_ref(&x, rows, heads, hd, pos0, 10000.0);
        assert_close(
            &format!("rope {rows}x{heads}x{hd} @{pos0}"),
            &read(g, &xb, x.len()),
            &want,
            1e-6,
        );
    }
    // Rows placed inside a wider buffer (a K projection written into a KV-cache row).
    let (rows, heads, hd) = (3, 2, 8);
    let at = Rows {
        offset: 7,
        stride: heads * hd + 5,
    };
    let x = rand_vec(&mut r, 7 + rows * at.stride, 1.0);
    let tables = RopeTables::new(g, hd, 10000.0, 16).unwrap();
    let xb = up(g, &x);
    run(|rec| rope(rec, &xb, at, &tables, rows, heads, 2));
    let y = read(g, &xb, x.len());
    let packed: Vec<f32> = (0..rows)
        .flat_map(|i| x[7 + i * at.stride..][..heads * hd].to_vec())
        .collect();
    let want = rope_ref(&packed, rows, heads, hd, 2, 10000.0);
    let got: Vec<f32> = (0..rows)
        .flat_map(|i| y[7 + i * at.stride..][..heads * hd].to_vec())
        .collect();
    assert_close("rope strided", &got, &want, 1e-6);
    assert_eq!(y[..7], x[..7], "rope wrote outside its rows");
}

/// Runs attention on random q and a KV cache of `capacity` rows whose rows past `kv_len` hold
/// NaN, proving they are never read.
fn check_attention(seed: u64, p: AttentionParams, capacity: usize, tol: f64) {
    let g = gpu();
    let mut r = rng(seed);
    let q_len = p.q_offset as usize + p.q_rows as usize * p.q_stride as usize;
    let q = rand_vec(&mut r, q_len, 1.0);
    let mut k = rand_vec(&mut r, capacity * p.kv_stride as usize, 1.0);
    let mut v = rand_vec(&mut r, capacity * p.kv_stride as usize, 1.0);
    let valid = p.kv_len as usize * p.kv_stride as usize;
    k[valid..].fill(f32::NAN);
    v[valid..].fill(f32::NAN);
    // Larger scores make the softmax peaky, as trained models do.
    let k: Vec<f32> = k.iter().map(|x| x * 3.0).collect();
    let want = attention_ref(&q, &k, &v, &p);
    let (qb, kb, vb, ob) = (up(g, &q), up(g, &k), up(g, &v), out(g, want.len()));
    run(|rec| attention_with(rec, AttentionKernel::PerRow, &qb, &kb, &vb, &ob, &p));
    let got = read(g, &ob, want.len());
    let ob_blocked = out(g, want.len());
    run(|rec| {
        attention_with(
            rec,
            AttentionKernel::Blocked,
            &qb,
            &kb,
            &vb,
            &ob_blocked,
            &p,
        )
    });
    let got_blocked = read(g, &ob_blocked, want.len());
    if p.q_rows == 1 {
        // The split (decode) path must agree too.
        let heads = p.n_heads as usize;
        let partial = out(g, partial_len(heads, p.head_dim as usize, capacity));
        let ob2 = out(g, want.len());
        run(|rec| attention_split(rec, &qb, &kb, &vb, &ob2, &partial, &p));
        let got2 = read(g, &ob2, heads * p.head_dim as usize);
        assert_close(
            &format!("split attention {p:?}"),
            &got2,
            &want[..got2.len()],
            tol,
        );
    }
    // Compare only the written head vectors (gaps between strided rows are not outputs).
    let hd = p.head_dim as usize;
    let width = p.n_heads as usize * hd;
    let pick = |x: &[f32]| -> Vec<f32> {
        (0..p.q_rows as usize)
            .flat_map(|i| x[i * p.o_stride as usize..][..width].to_vec())
            .collect()
    };
    assert_close(&format!("attention {p:?}"), &pick(&got), &pick(&want), tol);
    assert_close(
        &format!("blocked attention {p:?}"),
        &pick(&got_blocked),
        &pick(&want),
        tol,
    );
}

fn attn(
    q_rows: u32,
    heads: u32,
    kv_heads: u32,
    hd: u32,
    kv_len: u32,
    q_pos0: u32,
    prefix: u32,
) -> AttentionParams {
    AttentionParams {
        q_rows,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
        q_offset: 0,
        q_stride: heads * hd,
        kv_stride: kv_heads * hd,
        kv_len,
        q_pos0,
        prefix_len: prefix,
        window: 0,
        o_stride: heads * hd,
        scale: 1.0 / (hd as f32).sqrt(),
        ..Default::default()
    }
}

#[test]
fn attention_matches_reference() {
    // Edge: one key, one dimension.
    check_attention(10, attn(1, 1, 1, 1, 1, 0, 1), 3, TOL);
    // GQA (6 heads over 2), prefix of 7 then causal, prime sizes, more keys than a tile.
    check_attention(11, attn(13, 6, 2, 32, 13, 0, 7), 16, TOL);
    check_attention(12, attn(67, 3, 1, 24, 67, 0, 61), 70, TOL);
    // Decode: one query at the end of the cache, prefix 59 of 67 keys.
    check_attention(13, attn(1, 4, 2, 16, 67, 66, 59), 80, TOL);
    // Strided q and output, wider KV rows.
    let mut p = attn(5, 2, 1, 8, 9, 4, 6);
    p.q_offset = 3;
    p.q_stride = 21;
    p.o_stride = 19;
    p.kv_stride = 11;
    check_attention(14, p, 12, TOL);
    // Gemma 2: soft-capping and a sliding window of 5, shorter than the bidirectional prefix
    // of 9 (prefix queries still see the whole prefix; later ones only the window).
    let mut p = attn(14, 4, 2, 16, 14, 0, 9);
    p.softcap = 50.0;
    p.window = 5;
    p.scale = 0.25;
    check_attention(15, p, 16, TOL);
    let mut p = attn(1, 4, 2, 16, 23, 22, 6);
    p.softcap = 2.0;
    p.window = 4;
    check_attention(16, p, 30, TOL);
}

#[test]
fn attention_real_model_sizes() {
    // SigLIP at 224px: 256 tokens, 16 heads of 72, no mask.
    check_attention(20, attn(256, 16, 16, 72, 256, 0, 256), 256, TOL);
    // Gemma prefill at 224px: 261 rows, 8 query heads over 1 KV head of 256, all prefix.
    check_attention(21, attn(261, 8, 1, 256, 261, 0, 261), 300, TOL);
    // Gemma decode: the 12th generated token after a 261-token prefix, and deep into a 896px
    // prompt (4101 + 7 keys: many chunks).
    check_attention(22, attn(1, 8, 1, 256, 273, 272, 261), 300, TOL);
    check_attention(23, attn(1, 8, 1, 256, 4108, 4107, 4101), 4200, TOL);
    // Gemma 2 decode: 4 KV heads, soft-cap, a window shorter than the cache.
    let mut p = attn(1, 8, 4, 256, 700, 699, 600);
    p.softcap = 50.0;
    p.window = 128;
    check_attention(24, p, 700, TOL);
    // head_dim beyond the kernel's limit is an error, not a wrong answer.
    let g = gpu();
    let b = g.storage("x", 4 * 512).unwrap();
    let mut rec = g.recorder();
    let err = attention(&mut rec, &b, &b, &b, &b, &attn(1, 1, 1, 512, 1, 0, 1)).unwrap_err();
    assert!(err.to_string().contains("head_dim"), "{err}");
}

#[test]
fn softmax_matches_reference() {
    let g = gpu();
    let mut r = rng(30);
    for &(rows, n, t) in &[(1, 1, 1.0), (3, 7, 0.7), (2, 1000, 1.3), (1, 257_216, 1.0)] {
        let x = rand_vec(&mut r, rows * n, 20.0);
        let (xb, yb) = (up(g, &x), out(g, rows * n));
        run(|rec| softmax(rec, &xb, &yb, rows, n, t));
        assert_close(
            &format!("softmax {rows}x{n} T={t}"),
            &read(g, &yb, rows * n),
            &softmax_ref(&x, rows, n, t),
            TOL,
        );
    }
    let b = g.storage("x", 16).unwrap();
    assert!(softmax(&mut g.recorder(), &b, &b, 1, 1, 0.0).is_err());
}

#[test]
fn argmax_matches_reference() {
    let g = gpu();
    let mut r = rng(31);
    let mut cases: Vec<Vec<f32>> = vec![vec![-3.0], vec![1.0; 300], rand_vec(&mut r, 7, 1.0)];
    let mut big = rand_vec(&mut r, 257_216, 10.0);
    big[257_215] = 11.0; // the very last id
    cases.push(big);
    let mut neg: Vec<f32> = rand_vec(&mut r, 1001, 1.0)
        .iter()
        .map(|v| v - 5.0)
        .collect();
    neg[500] = -0.5;
    neg[700] = -0.5; // a tie: the first wins
    cases.push(neg);
    for x in &cases {
        let offset = 3;
        let mut padded = vec![100.0; offset];
        padded.extend(x);
        let xb = up(g, &padded);
        let ob = g.storage_init("out", &[0xff; 8]).unwrap();
        run(|rec| argmax(rec, &xb, offset, x.len(), &ob, 1));
        let got = g.read_u32(&ob, 1, 1).unwrap()[0] as usize;
        assert_eq!(got, argmax_ref(x), "argmax over {} values", x.len());
    }
}

#[test]
fn patch_embed_matches_reference() {
    let g = gpu();
    let mut r = rng(40);
    for geo in [
        PatchGeometry {
            image_size: 30,
            patch: 6,
            channels: 3,
            dim: 7,
        },
        PatchGeometry {
            image_size: 32,
            patch: 8,
            channels: 3,
            dim: 48,
        },
        PatchGeometry {
            image_size: 224,
            patch: 14,
            channels: 3,
            dim: 1152,
        },
    ] {
        let (s, p, c, d, n) = (
            geo.image_size,
            geo.patch,
            geo.channels,
            geo.dim,
            geo.n_patches(),
        );
        let px = rand_vec(&mut r, c * s * s, 1.0);
        let w = rand_vec(&mut r, d * c * p * p, 0.1);
        let (b, pos) = (rand_vec(&mut r, d, 1.0), rand_vec(&mut r, n * d, 1.0));
        let (pb, wb, bb, posb, ob) = (up(g, &px), up(g, &w), up(g, &b), up(g, &pos), out(g, n * d));
        run(|rec| patch_embed(rec, &geo, &pb, &wb, &bb, &posb, &ob));
        let want = patch_embed_ref(&geo, &px, &w, &b, &pos);
        assert_close(
            &format!("patch_embed {geo:?}"),
            &read(g, &ob, n * d),
            &want,
            TOL,
        );
    }
}

#[test]
fn gpu_errors_are_err_not_panics() {
    let g = gpu();
    // A buffer without STORAGE usage bound as storage: a validation error.
    let bad = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("not storage"),
        size: 64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let ok = g.storage("ok", 64).unwrap();
    let mut rec = g.recorder();
    add_inplace(&mut rec, &ok, &bad, 16).unwrap();
    let err = rec.submit("adding into a mapped buffer").unwrap_err();
    assert!(
        err.to_string().contains("adding into a mapped buffer"),
        "{err}"
    );
    // Too large a buffer is refused with its name.
    let err = g.storage("huge", u64::MAX / 2).unwrap_err();
    assert!(err.to_string().contains("huge"), "{err}");
    // And the device still works afterwards.
    let x = up(g, &[1.0, 2.0]);
    let y = up(g, &[3.0, 4.0]);
    run(|rec| add_inplace(rec, &x, &y, 2));
    assert_eq!(read(g, &x, 2), vec![4.0, 6.0]);
}

#[test]
fn runs_on_a_device_the_caller_owns() {
    // A game engine creates its own device; the library borrows it.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("no adapter");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("no device");
    let g = Gpu::from_device(device, queue, Some(adapter.get_info()));
    let mut r = rng(50);
    let (rows, n) = (4, 300);
    let x = rand_vec(&mut r, rows * n, 1.0);
    let w = rand_vec(&mut r, n, 1.0);
    let (xb, wb) = (
        g.upload_f32("x", &x).unwrap(),
        g.upload_f32("w", &w).unwrap(),
    );
    let yb = g.storage("y", (rows * n * 4) as u64).unwrap();
    let mut rec = g.recorder();
    rms_norm(&mut rec, &xb, &wb, &yb, rows, n, 1e-6).unwrap();
    rec.submit("rms_norm on the caller's device").unwrap();
    assert_close(
        "rms_norm (caller's device)",
        &g.read_f32(&yb, 0, rows * n).unwrap(),
        &rms_norm_ref(&x, &w, rows, n, 1e-6),
        TOL,
    );
}

#[test]
fn runs_without_optional_features() {
    // The portable path: no SHADER_F16, SUBGROUP or timestamps requested.
    let g = Gpu::new(&paligemma::GpuOptions {
        no_optional_features: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!g.has_f16());
    let mut r = rng(60);
    let (m, n, k) = (3, 37, 70);
    let w = rand_vec(&mut r, n * k, 1.0);
    let x = rand_vec(&mut r, m * k, 1.0);
    let wb = Weight::from_f32(&g, "w", &w, WeightFormat::F16, n, k).unwrap();
    let xb = g.upload_f32("x", &x).unwrap();
    let yb = g.storage("y", (m * n * 4) as u64).unwrap();
    let mut rec = g.recorder();
    linear(
        &mut rec,
        &xb,
        Rows::packed(k),
        &wb,
        None,
        &yb,
        Rows::packed(n),
        m,
    )
    .unwrap();
    rec.submit("linear without optional features").unwrap();
    let want = linear_ref(&x, &WeightFormat::F16.round_trip(&w), None, m, n, k);
    assert_close(
        "linear (no optional features)",
        &g.read_f32(&yb, 0, m * n).unwrap(),
        &want,
        TOL,
    );
}

#[test]
fn a_lost_device_is_an_error_not_a_panic() {
    let g = Gpu::new(&paligemma::GpuOptions::default()).unwrap();
    let x = g.upload_f32("x", &[1.0; 64]).unwrap();
    let y = g.upload_f32("y", &[2.0; 64]).unwrap();
    // The same work succeeds before the device goes.
    let mut rec = g.recorder();
    add_inplace(&mut rec, &x, &y, 64).unwrap();
    rec.submit("work on a live device").unwrap();
    g.device().destroy();
    let mut rec = g.recorder();
    let recorded =
        add_inplace(&mut rec, &x, &y, 64).and_then(|_| rec.submit("work on a destroyed device"));
    let read = g.read_f32(&x, 0, 64);
    assert!(
        recorded.is_err() || read.is_err(),
        "a destroyed device reported no error"
    );
}

#[test]
fn submissions_are_timed_on_the_gpu_when_profiling() {
    // A device of its own: profiling serialises every submission on it.
    let g = Gpu::new(&paligemma::GpuOptions::default()).unwrap();
    assert_eq!(g.take_gpu_ms(), None, "not profiling yet");
    g.set_profiling(true, false);
    let x = g.upload_f32("x", &vec![1.0; 1 << 20]).unwrap();
    let y = g.upload_f32("y", &vec![2.0; 1 << 20]).unwrap();
    let mut rec = g.recorder();
    add_inplace(&mut rec, &x, &y, 1 << 20).unwrap();
    rec.copy(&y, 0, &x, 0, 16); // a copy between passes must not break the timing
    add_inplace(&mut rec, &x, &y, 1 << 20).unwrap();
    rec.submit("timed work").unwrap();
    let ms = g.take_gpu_ms();
    if g.has_timestamps() {
        let ms = ms.expect("profiling on a device with timestamps");
        assert!(ms > 0.0 && ms < 10_000.0, "{ms} ms");
    } else {
        assert_eq!(ms, Some(0.0));
    }
    assert_eq!(g.read_f32(&x, 0, 2).unwrap(), vec![4.0, 4.0]);
    // Per kernel: both dispatches land under the add pipeline's name.
    g.set_profiling(true, true);
    let mut rec = g.recorder();
    add_inplace(&mut rec, &x, &y, 1 << 20).unwrap();
    add_inplace(&mut rec, &x, &y, 1 << 20).unwrap();
    rec.submit("timed kernels").unwrap();
    let times = g.take_kernel_times();
    if g.has_timestamps() {
        assert_eq!(times.len(), 1, "{times:?}");
        assert!(
            times[0].0.contains("add_inplace") && times[0].1 == 2,
            "{times:?}"
        );
    }
    g.set_profiling(false, false);
    assert_eq!(g.take_gpu_ms(), None);
}

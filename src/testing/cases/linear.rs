//! Linear layers (every kernel, every weight format), the gated GEMV, logits and gather over chunked tables.
use super::{FORMATS, gather_rows, placed, prepared, scatter};
use crate::ops::activation::gelu_tanh_gated_ref;
use crate::ops::gather::*;
use crate::ops::linear::*;
use crate::ops::{ChunkedTable, HostWeight, View, Weight, WeightFormat};
use crate::testing::{Io, KernelCase, TOL};

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
    // The tensor-core kernel has its own family (and shader), and f16 operands' tolerance.
    let (family, tol) = match kernel {
        LinearKernel::MatmulCoop => ("matmul_coop", crate::ops::matmul_coop::TOLERANCE),
        _ => ("linear", TOL),
    };
    let case = KernelCase::new(family, name, tol, move |io: &mut Io| {
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
        io.bytes += lin.weight.bytes();
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
    let mut case = if real { case.real() } else { case };
    case.flops = (2 * m * n * k) as u64;
    case
}

pub(super) fn linear_cases(v: &mut Vec<KernelCase>) {
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
        // Whole 32-weight blocks, for the quantized formats.
        (1, 13, 96),
        (3, 37, 64),
        (70, 65, 32),
        // Batched GEMV: each power-of-two variant, partly filled.
        (5, 33, 24),
        (9, 19, 64),
        (16, 40, 96),
        (17, 9, 32),
    ];
    for (m, n, k) in shapes {
        for format in FORMATS.into_iter().filter(|f| f.holds(k)) {
            let mut kernels = vec![LinearKernel::Matmul];
            if m <= GEMV_BATCH {
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
    real_linear_cases(v);
    matmul_coop_cases(v);
    gemv_gated_cases(v);
}

/// SigLIP fc1 at 224px (256 tokens, 1152 -> 4304); Gemma's MLP rows (decode) in 16, 8 and 4
/// bits, alone and for a batch of 16 sequences; a 261-row prefill projection in 4 bits.
fn real_linear_cases(v: &mut Vec<KernelCase>) {
    for (m, n, k, format) in [
        (256, 4304, 1152, WeightFormat::F32),
        (1, 16384, 2048, WeightFormat::Bf16),
        (16, 2048, 16384, WeightFormat::Bf16),
        (1, 2048, 16384, WeightFormat::F16),
        (1, 2048, 16384, WeightFormat::Q8),
        (1, 2048, 16384, WeightFormat::Q4),
        (261, 2048, 2048, WeightFormat::Q4),
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
}

/// matmul_coop (tensor cores; run where the device has them): awkward shapes in every format it
/// serves (not f32), then SigLIP's fc1 and fc2 at 224px and a 261-row prefill projection in 4
/// bits.
fn matmul_coop_cases(v: &mut Vec<KernelCase>) {
    for (m, n, k) in [
        (1, 1, 1),
        (3, 7, 5),
        (67, 131, 97),
        (65, 64, 17),
        (70, 65, 32),
        (17, 9, 32),
        (130, 200, 96),
    ] {
        for format in FORMATS
            .into_iter()
            .filter(|f| f.holds(k) && *f != WeightFormat::F32)
        {
            for add in [false, true] {
                v.push(linear_case(
                    m,
                    n,
                    k,
                    format,
                    LinearKernel::MatmulCoop,
                    add,
                    false,
                ));
            }
        }
    }
    for (m, n, k, format) in [
        (256, 4304, 1152, WeightFormat::F16),
        (256, 1152, 4304, WeightFormat::Bf16),
        (261, 2048, 2048, WeightFormat::Q4),
    ] {
        v.push(linear_case(
            m,
            n,
            k,
            format,
            LinearKernel::MatmulCoop,
            false,
            true,
        ));
    }
}

/// The gated decode MLP: awkward sizes and batches, then Gemma's 16384 x 2048 for one sequence
/// and for a batch of 8; weights the fused kernel cannot combine are refused.
fn gemv_gated_cases(v: &mut Vec<KernelCase>) {
    for (m, n, k) in [
        (1, 1, 8),
        (3, 13, 24),
        (16, 257, 40),
        (1, 3, 64),
        (5, 19, 96),
        (1, 16384, 2048),
        (8, 16384, 2048),
    ] {
        for format in FORMATS.into_iter().filter(|f| f.holds(k)) {
            if n == 16384 && m > 1 && format != WeightFormat::Bf16 {
                continue;
            }
            let case = gemv_gated_case(m, n, k, format);
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

fn gemv_gated_case(m: usize, n: usize, k: usize, format: WeightFormat) -> KernelCase {
    let name = format!("gemv_gated {format:?} m={m} {n}x{k}");
    KernelCase::new("linear", name, TOL, move |io| {
        let (wg, wu) = (io.rand(n * k, 0.1), io.rand(n * k, 0.1));
        // x rows at offset 2 and stride k + 1, y rows at 3 and n + 2.
        let (x, y0) = (io.rand(2 + m * (k + 1), 1.0), io.rand(3 + m * (n + 2), 1.0));
        let gate = Weight::from_f32(io.gpu, "gate", &wg, format, n, k)?;
        let up = Weight::from_f32(io.gpu, "up", &wu, format, n, k)?;
        io.bytes += gate.bytes() + up.bytes();
        let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
        prepared(
            yb.clone(),
            y0.len(),
            move |rec| {
                let (x, y) = (placed(&xb, m, k, 2, k + 1), placed(&yb, m, n, 3, n + 2));
                gemv_gated(rec, x, &gate, &up, y)
            },
            move || {
                let xr = gather_rows(&x, m, k, 2, k + 1);
                let g = linear_ref(&xr, &format.round_trip(&wg), None, m, n, k);
                let u = linear_ref(&xr, &format.round_trip(&wu), None, m, n, k);
                let r = gelu_tanh_gated_ref(&g, &u);
                scatter(&y0, &r, n, 3, n + 2, |_, new| new)
            },
        )
    })
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
    // The gather copies and scales: exact alone, but for a dequantization the GPU may fuse
    // into one rounding (code * scale + min).
    let tol = match (rows, format.is_quantized()) {
        (0, false) => 0.0,
        (0, true) => 1e-6,
        _ => TOL,
    };
    KernelCase::new("gather", name, tol, move |io| {
        let host = HostWeight::encode(&io.rand(vocab * hidden, 0.05), format, vocab, hidden);
        let tq = host.decode();
        let chunk_rows =
            chunk_rows.unwrap_or_else(|| ChunkedTable::max_chunk_rows(io.gpu, hidden, format));
        let t = ChunkedTable::upload(io.gpu, "table", &host, chunk_rows)?;
        drop(host);
        io.bytes += t.bytes();
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

pub(super) fn table_cases(v: &mut Vec<KernelCase>) {
    for format in [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::Q8,
        WeightFormat::Q4,
    ] {
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

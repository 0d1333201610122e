//! The segmentation decoder's convolutions: awkward sizes and the decoder's own shapes.

use super::prepared;
use crate::ops::View;
use crate::ops::conv::*;
use crate::testing::{Io, KernelCase, TOL};

/// A convolution of `[side, side, c_in]` to `c_out` channels with a `k` kernel (transposed:
/// 4 x 4, stride 2), then `then`; the output starts random, so `Add` adds to it.
fn conv_case(
    side: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    transposed: bool,
    then: Then,
    real: bool,
) -> KernelCase {
    let what = if transposed {
        "conv_transpose2d"
    } else {
        "conv2d"
    };
    let name = format!("{what} {side}x{side}x{c_in} -> {c_out} k{k} {then:?}");
    let case = KernelCase::new("conv", name, TOL, move |io: &mut Io| {
        let out_side = if transposed { 2 * side } else { side };
        let x = io.rand(side * side * c_in, 1.0);
        let wt = io.rand(c_in * c_out * k * k, 0.3);
        let (b, y0) = (
            io.rand(c_out, 1.0),
            io.rand(out_side * out_side * c_out, 1.0),
        );
        let conv = Conv {
            weight: io.upload(&wt)?,
            bias: io.upload(&b)?,
            c_in,
            c_out,
            k,
        };
        let (xb, yb) = (io.upload(&x)?, io.upload(&y0)?);
        let n_out = out_side * out_side * c_out;
        prepared(
            yb.clone(),
            n_out,
            move |rec| {
                let (xv, yv) = (
                    View::new(&xb, side * side, c_in),
                    View::new(&yb, out_side * out_side, c_out),
                );
                if transposed {
                    conv.forward_transposed(rec, xv, (side, side), yv, then)
                } else {
                    conv.forward(rec, xv, (side, side), yv, then)
                }
            },
            move || {
                let mut y = y0;
                if transposed {
                    conv_transpose2d_ref(&x, (side, side), &wt, &b, (c_in, c_out), &mut y, then);
                } else {
                    conv2d_ref(&x, (side, side), &wt, &b, (c_in, c_out, k), &mut y, then);
                }
                y
            },
        )
    });
    if real { case.real() } else { case }
}

pub(super) fn conv_cases(v: &mut Vec<KernelCase>) {
    for then in [Then::Nothing, Then::Relu, Then::Add] {
        v.push(conv_case(1, 1, 1, 1, false, then, false));
        v.push(conv_case(5, 3, 7, 3, false, then, false));
        v.push(conv_case(3, 5, 2, 4, true, then, false));
    }
    v.push(conv_case(7, 2, 3, 1, false, Then::Relu, false));
    v.push(conv_case(1, 4, 3, 4, true, Then::Nothing, false));
    // The decoder's shapes: the input 1x1 over the 512-wide codebook, a ResBlock's 3x3, every
    // transposed convolution, the output 1x1.
    v.push(conv_case(4, 512, 128, 1, false, Then::Relu, true));
    v.push(conv_case(4, 128, 128, 3, false, Then::Relu, true));
    v.push(conv_case(4, 128, 128, 4, true, Then::Relu, true));
    v.push(conv_case(8, 128, 64, 4, true, Then::Relu, true));
    v.push(conv_case(16, 64, 32, 4, true, Then::Relu, true));
    v.push(conv_case(32, 32, 16, 4, true, Then::Relu, true));
    v.push(conv_case(64, 16, 1, 1, false, Then::Nothing, true));
    // An even kernel for a same-size convolution is refused.
    v.push(
        KernelCase::new("conv", "conv2d even kernel".into(), TOL, |io| {
            let b = io.upload(&[0.0; 16])?;
            let conv = Conv {
                weight: b.clone(),
                bias: b.clone(),
                c_in: 1,
                c_out: 1,
                k: 2,
            };
            prepared(
                b.clone(),
                1,
                move |rec| {
                    conv.forward(
                        rec,
                        View::new(&b, 4, 1),
                        (2, 2),
                        View::new(&b, 4, 1),
                        Then::Nothing,
                    )
                },
                Vec::new,
            )
        })
        .refused("odd kernel"),
    );
}

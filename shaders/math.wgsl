// Prelude prepended (by src/shaders.rs) to the shaders that need these functions.

/// tanh that cannot overflow: drivers may lower tanh(x) as a ratio of exponentials, which is
/// inf / inf = NaN for large |x|.
fn tanh_stable(v: f32) -> f32 {
    let e = exp(-2.0 * abs(v));
    return sign(v) * (1.0 - e) / (1.0 + e);
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
fn gelu_tanh_of(v: f32) -> f32 {
    let c = 0.7978845608028654; // sqrt(2 / pi)
    return 0.5 * v * (1.0 + tanh_stable(c * (v + 0.044715 * v * v * v)));
}

// Prelude prepended (by src/shaders.rs) to every shader that reads linear weights.
//
// Weights are bound as `array<u32>` whatever their format, so one shader serves f32, f16 and
// bf16 checkpoints without the SHADER_F16 feature: element i lives in word `w_word(i)` and is
// widened to f32 by `w_value`. bf16 widens exactly by a 16-bit shift, so a checkpoint's bf16
// bytes are used as they are. The format is a pipeline-overridable constant, so each variant
// compiles to straight-line code.
//   W_DTYPE: 0 = f32, 1 = f16, 2 = bf16 (see `WeightFormat` in src/ops/mod.rs)
override W_DTYPE: u32 = 0u;

fn w_word(i: u32) -> u32 {
    if (W_DTYPE == 0u) {
        return i;
    }
    return i >> 1u;
}

fn w_value(word: u32, i: u32) -> f32 {
    if (W_DTYPE == 0u) {
        return bitcast<f32>(word);
    }
    // Little-endian: element 2j is the low half of word j.
    let bits = select(word & 0xffffu, word >> 16u, (i & 1u) == 1u);
    if (W_DTYPE == 1u) {
        return unpack2x16float(bits).x;
    }
    return bitcast<f32>(bits << 16u);
}

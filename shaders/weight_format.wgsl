// Prelude prepended (by src/shaders.rs) to every shader that reads linear weights.
//
// Weights are bound as `w: array<vec4<u32>>` whatever their format (each including shader
// declares `w`; buffers are padded to 16 bytes), so one shader serves f32, f16 and bf16
// checkpoints without the SHADER_F16 feature and can load 16 bytes at a time: element i lives in
// 32-bit word `w_word(i)` and is widened to f32 by `w_value`; `w_at(i)` does both. bf16 widens exactly by a 16-bit shift, so a checkpoint's bf16
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

/// Element i of `w`, widened to f32.
fn w_at(i: u32) -> f32 {
    let word = w_word(i);
    return w_value(w[word >> 2u][word & 3u], i);
}

/// The two 16-bit weights packed in one word, widened (W_DTYPE 1 or 2).
fn w_pair(word: u32) -> vec2<f32> {
    if (W_DTYPE == 1u) {
        return unpack2x16float(word);
    }
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

// Prelude prepended (by src/shaders.rs) to every shader that reads weight matrices.
//
// Weights are bound as `w: array<vec4<u32>>` whatever their format (each including shader
// declares `w`, and `p.w_scales` in its Params; buffers are padded to 16 bytes), so one shader
// serves every format without the SHADER_F16 feature and can load 16 bytes at a time. The
// format is a pipeline-overridable constant, so each variant compiles to straight-line code:
//   W_DTYPE: 0 = f32, 1 = f16, 2 = bf16, 3 = q8, 4 = q4 (see `WeightFormat`, src/ops/weights.rs)
// - f32, f16, bf16: element i lives in 32-bit word `w_word(i)`; bf16 widens exactly by a 16-bit
//   shift, so a checkpoint's bf16 bytes are used as they are.
// - q8, q4: codes in blocks of QBLOCK = 32 along each row, element i in block i / 32, whose
//   (scale, min) pair of f16 is the u32 word `p.w_scales + i / 32` of the same buffer (after
//   the codes); w = code * scale + min. q8 codes are int8, one per byte; q4 codes are 0..15,
//   two per byte, low nibble first. Rows are whole blocks.
override W_DTYPE: u32 = 0u;

const QBLOCK: u32 = 32u;

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

/// The signed byte `b` (0..3) of `word`, as f32 (shifts rather than extractBits, which older
/// MSL and GLSL targets lack).
fn q8_of(word: u32, b: u32) -> f32 {
    return f32(bitcast<i32>(word << (24u - 8u * b)) >> 24u);
}

/// The nibble `n` (0..7) of `word`, as f32.
fn q4_of(word: u32, n: u32) -> f32 {
    return f32((word >> (4u * n)) & 15u);
}

/// The quantization code of element i, as f32.
fn q_code(i: u32) -> f32 {
    if (W_DTYPE == 3u) {
        return q8_of(w[i >> 4u][(i >> 2u) & 3u], i & 3u);
    }
    return q4_of(w[i >> 5u][(i >> 3u) & 3u], i & 7u);
}

/// The u32 word j of `w`.
fn w_word_at(j: u32) -> u32 {
    return w[j >> 2u][j & 3u];
}

/// Element i of `w`, widened to f32.
fn w_at(i: u32) -> f32 {
    if (W_DTYPE >= 3u) {
        let s = unpack2x16float(w_word_at(p.w_scales + i / QBLOCK));
        return q_code(i) * s.x + s.y;
    }
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

/// Weights in one 16-byte load: 4 in f32, 8 in 16 bits, 16 in q8, 32 in q4.
fn per_vec() -> u32 {
    if (W_DTYPE == 0u) {
        return 4u;
    }
    if (W_DTYPE == 3u) {
        return 16u;
    }
    return select(8u, 32u, W_DTYPE == 4u);
}

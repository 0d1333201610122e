"""Writes the web tests' large model (tests only): a PaliGemma with random bf16 weights,
sharded as transformers shards a checkpoint (`model-0000k-of-0000n.safetensors` and the index),
with the bf16 fixture's tokenizer. About 330 MB: a 1024-wide, 6-layer Gemma decoder with a
65536-row embedding table (128 MiB, the largest tensor, as the real models' tables are) and a
small SigLIP at 112 px. The values are bf16 numbers of magnitude 2^-8 to 2^-5 with random signs
and mantissas, made from random bytes (no numpy needed).

Usage: python3 scripts/make-web-model.py OUT_DIR
"""

import json
import os
import random
import shutil
import struct
import sys

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "bf16", "model")
MAX_SHARD = 160 << 20

H, HEADS, HD, KV, I, LAYERS, VOCAB = 1024, 8, 128, 1, 4096, 6, 65536
DV, IV, VHEADS, VLAYERS, IMAGE, PATCH = 256, 1024, 4, 2, 112, 14
N = (IMAGE // PATCH) ** 2


def tensors():
    """(name, shape) of every tensor, as transformers names them."""
    t = [("language_model.model.embed_tokens.weight", [VOCAB, H])]
    for i in range(LAYERS):
        p = f"language_model.model.layers.{i}."
        t += [(p + "input_layernorm.weight", [H]), (p + "post_attention_layernorm.weight", [H]),
              (p + "mlp.gate_proj.weight", [I, H]), (p + "mlp.up_proj.weight", [I, H]),
              (p + "mlp.down_proj.weight", [H, I]),
              (p + "self_attn.q_proj.weight", [HEADS * HD, H]),
              (p + "self_attn.k_proj.weight", [KV * HD, H]),
              (p + "self_attn.v_proj.weight", [KV * HD, H]),
              (p + "self_attn.o_proj.weight", [H, HEADS * HD])]
    t += [("language_model.model.norm.weight", [H]),
          ("multi_modal_projector.linear.weight", [H, DV]),
          ("multi_modal_projector.linear.bias", [H])]
    v = "vision_tower.vision_model."
    t += [(v + "embeddings.patch_embedding.weight", [DV, 3, PATCH, PATCH]),
          (v + "embeddings.patch_embedding.bias", [DV]),
          (v + "embeddings.position_embedding.weight", [N, DV]),
          (v + "post_layernorm.weight", [DV]), (v + "post_layernorm.bias", [DV])]
    for i in range(VLAYERS):
        p = f"{v}encoder.layers.{i}."
        for n in ["layer_norm1", "layer_norm2"]:
            t += [(p + n + ".weight", [DV]), (p + n + ".bias", [DV])]
        t += [(p + "mlp.fc1.weight", [IV, DV]), (p + "mlp.fc1.bias", [IV]),
              (p + "mlp.fc2.weight", [DV, IV]), (p + "mlp.fc2.bias", [DV])]
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            t += [(p + f"self_attn.{n}.weight", [DV, DV]), (p + f"self_attn.{n}.bias", [DV])]
    return t


# bf16's high byte: sign, then exponent 0x77..0x7A (2^-8 .. 2^-5) from the random byte's bits.
HIGH = bytes((x & 0x80) | (0x3B + (x & 3)) for x in range(256))


def values(rng, count):
    b = bytearray(rng.randbytes(2 * count))
    b[1::2] = bytes(b[1::2]).translate(HIGH)
    return bytes(b)


def write_shard(path, items):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, data in items:
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, _, data in items:
            f.write(data)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261204)
    groups, size = [[]], 0
    for name, shape in sorted(tensors()):
        count = 1
        for d in shape:
            count *= d
        if size and size + 2 * count > MAX_SHARD:
            groups.append([])
            size = 0
        groups[-1].append((name, shape, values(rng, count)))
        size += 2 * count
    weight_map, total = {}, 0
    for k, items in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        write_shard(os.path.join(out, file), items)
        for name, _, data in items:
            weight_map[name] = file
            total += len(data)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    config = json.load(open(os.path.join(FIXTURE, "config.json")))
    config.update(hidden_size=H, projection_dim=H, vocab_size=VOCAB)
    config["text_config"].update(hidden_size=H, head_dim=HD, num_attention_heads=HEADS,
                                 num_key_value_heads=KV, intermediate_size=I,
                                 num_hidden_layers=LAYERS, num_image_tokens=N, vocab_size=VOCAB)
    config["vision_config"].update(hidden_size=DV, intermediate_size=IV,
                                   num_attention_heads=VHEADS, num_hidden_layers=VLAYERS,
                                   image_size=IMAGE, patch_size=PATCH, projection_dim=H)
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)
    shutil.copy(os.path.join(FIXTURE, "tokenizer.json"), out)
    print(f"{out}: {len(groups)} shards, {total / 1e6:.1f} MB of bf16 weights, largest tensor "
          f"{2 * VOCAB * H / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

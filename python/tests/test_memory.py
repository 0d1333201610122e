"""`del model` frees the model's GPU memory. On lavapipe GPU buffers are host memory, so they
show in the process's anonymous memory: a model with 64 MiB of weights must take about that
much when loaded and give it back when deleted, load after load."""

from __future__ import annotations

import gc
import json
import shutil
import struct

import numpy as np

import paligemma_wgpu as pg
from conftest import MQA

MIB = 1 << 20


def anonymous_bytes() -> int:
    """RssAnon + RssShmem of this process."""
    fields = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
    )
    return sum(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssShmem"))


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    tensors = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], np.float32).reshape(t["shape"])
    return tensors


def write_safetensors(path, tensors):
    header, offset, chunks = {}, 0, []
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(chunks))


def big_model(folder):
    """The tiny model with a 262144-row vocabulary (Gemma 3's): 64 MiB of f32 embeddings."""
    folder.mkdir()
    shutil.copy(MQA / "model" / "tokenizer.json", folder)
    config = json.loads((MQA / "model" / "config.json").read_text())
    vocab = 262144
    config["vocab_size"] = config["text_config"]["vocab_size"] = vocab
    (folder / "config.json").write_text(json.dumps(config))
    tensors = read_safetensors(MQA / "model" / "model.safetensors")
    name = "language_model.model.embed_tokens.weight"
    small = tensors[name]
    table = np.random.default_rng(0).uniform(-0.03, 0.03, (vocab, small.shape[1])).astype(np.float32)
    table[: small.shape[0]] = small
    tensors[name] = table
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


def test_del_model_frees_its_gpu_memory(tmp_path):
    folder = big_model(tmp_path / "big")
    weights = 64 * MIB

    def load_and_answer():
        model = pg.PaliGemma(folder, precision="f32")
        assert model.weight_bytes >= weights
        model.generate(MQA / "image.png", "caption en", max_new_tokens=3)
        return model

    del_model = load_and_answer()  # warm-up: the driver's own allocations stay
    del del_model
    gc.collect()
    before = anonymous_bytes()
    for round in range(3):
        model = load_and_answer()
        held = anonymous_bytes() - before
        del model
        gc.collect()
        after = anonymous_bytes() - before
        print(f"round {round}: {held / MIB:.0f} MiB held while loaded, {after / MIB:.0f} MiB after del")
        assert held > 0.9 * weights, f"the weights do not show: {held / MIB:.0f} MiB"
        assert after < 16 * MIB, f"round {round}: {after / MIB:.0f} MiB kept after del"

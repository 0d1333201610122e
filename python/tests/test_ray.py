"""examples/ray_batch.py on a local Ray cluster (2 CPUs, 2 actors, 32 images, the tiny model):
every answer equals `paligemma batch`'s for the same image. And the mapping from Ray's GPU ids to
wgpu adapters."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import paligemma_wgpu as pg
from conftest import MQA, ROOT, cli


def test_ray_data_answers_as_the_batch_command(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    base = np.asarray(Image.open(MQA / "image.png").convert("RGB"))
    for i in range(32):
        picture = np.roll(base, i, axis=i % 2) if i % 4 else rng.integers(0, 256, (24 + i, 48 - i, 3), np.uint8)
        Image.fromarray(np.ascontiguousarray(picture)).save(folder / f"img{i:02d}.png")
    prompt, model = "detect cat", str(MQA / "model")
    batch = subprocess.run(
        [cli(), "batch", "--model", model, "--prompt", prompt, "--out", str(tmp_path / "batch.jsonl"),
         "--max-new-tokens", "16", str(folder)],
        capture_output=True, text=True,
    )
    assert batch.returncode == 0, batch.stderr
    ray = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ray_batch.py"), "--model", model, "--images",
         str(folder), "--prompt", prompt, "--out", str(tmp_path / "ray.jsonl"), "--max-new-tokens",
         "16", "--concurrency", "2", "--batch-size", "5", "--num-cpus", "2", "--cpus-per-actor",
         "0.5"],
        capture_output=True, text=True, timeout=600,
    )
    assert ray.returncode == 0, ray.stdout + ray.stderr
    print(ray.stdout.strip().splitlines()[-1])

    def answers(path):
        lines = [json.loads(l) for l in open(path)]
        return {l["image"].rsplit("/", 1)[-1]: l for l in lines}

    from_batch, from_ray = answers(tmp_path / "batch.jsonl"), answers(tmp_path / "ray.jsonl")
    assert len(from_ray) == 32 and from_ray.keys() == from_batch.keys()
    for name, want in from_batch.items():
        got = from_ray[name]
        for key in ("prompt", "text", "generated_ids", "finish_reason"):
            assert got[key] == want[key], (name, key)
        boxes = [{k: d[k] for k in ("label", "x_min", "y_min", "x_max", "y_max")} for d in want["detections"]]
        assert got["detections"] == boxes, name


def adapter(index, name, backend="vulkan", kind="DiscreteGpu", bus=""):
    return {"index": index, "name": name, "backend": backend, "device_type": kind, "pci_bus_id": bus}


def test_ray_gpu_ids_map_to_adapters_in_pci_bus_order():
    # Two identical GPUs enumerated out of bus order, each also on GL, and a CPU rasteriser.
    found = [
        adapter(0, "NVIDIA H200", bus="0000:9a:00.0"),
        adapter(1, "NVIDIA H200", bus="0000:1b:00.0"),
        adapter(2, "llvmpipe", kind="Cpu"),
        adapter(3, "NVIDIA H200", backend="gl"),
        adapter(4, "NVIDIA H200", backend="gl"),
    ]
    assert pg.adapter_for_gpu(0, found) == 1
    assert pg.adapter_for_gpu("1", found) == 0
    assert pg.ray_adapter([1], found) == 0
    assert pg.ray_adapter([], found) is None
    with pytest.raises(ValueError, match="gpu_id 2: wgpu finds 2 GPUs"):
        pg.adapter_for_gpu(2, found)
    with pytest.raises(ValueError, match="UUID"):
        pg.adapter_for_gpu("GPU-3f2a", found)
    # Without bus ids (a driver lacking VK_EXT_pci_bus_info): the enumeration order.
    plain = [adapter(0, "A"), adapter(1, "B"), adapter(2, "C", kind="IntegratedGpu")]
    assert [pg.adapter_for_gpu(i, plain) for i in range(3)] == [0, 1, 2]
    # Only Metal (a Mac): that backend.
    assert pg.adapter_for_gpu(0, [adapter(0, "Apple M3", backend="metal", kind="IntegratedGpu")]) == 0
    # No GPU at all: a clear error, not adapter 0.
    with pytest.raises(ValueError, match="finds 0 GPUs"):
        pg.adapter_for_gpu(0, [adapter(0, "llvmpipe", kind="Cpu")])

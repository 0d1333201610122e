"""PaliGemma over a folder of images with Ray Data: one model per actor, one actor per GPU.

    python examples/ray_batch.py --model paligemma-3b-mix-224 --images photos/ \\
        --prompt "caption en" --out answers.jsonl --concurrency 4 --num-gpus 1

Ray reads the images (``ray.data.read_images``), hands batches to a pool of ``concurrency``
actors, each holding one model on the GPU Ray gave it, and the answers come back as JSON lines
(path, prompt, text, generated_ids, finish_reason, detections), one per image, in the shape
``paligemma batch`` writes. Inside an actor the library's continuous batching runs
``--batch-size`` images together. On a cluster, start Ray on each machine (``ray start --head``
on one, ``ray start --address HEAD:6379`` on the others) and pass ``--address auto``; the
folder must be readable from every machine (a shared file system or ``s3://...``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict

import numpy as np
import ray

import paligemma_wgpu as pg


class Answerer:
    """A Ray actor: one model on the GPU Ray assigned to it (none: the default adapter)."""

    def __init__(self, model: str, prompt: str, precision: str, options: Dict[str, Any]):
        adapter = pg.ray_adapter()
        self.model = pg.PaliGemma(model, precision=precision, adapter=adapter)
        self.prompt = prompt
        self.options = options

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        images = list(batch["image"])
        outs = self.model.generate_batch(
            images, self.prompt, batch_size=max(1, len(images)), **self.options
        )
        lines = [_line(path, self.prompt, out) for path, out in zip(batch["path"], outs)]
        return {"path": batch["path"], "line": np.array(lines, dtype=object)}


def _line(path: str, prompt: str, out: pg.Generation) -> str:
    line: Dict[str, Any] = {
        "image": str(path),
        "prompt": prompt,
        "text": out.text,
        "generated_ids": out.generated_ids,
        "finish_reason": out.finish_reason,
    }
    if prompt.lstrip().startswith(("detect ", "segment ")):
        line["detections"] = [
            {k: d[k] for k in ("label", "x_min", "y_min", "x_max", "y_max")}
            for d in out.detections
        ]
    return json.dumps(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a PaliGemma folder, readable by every worker")
    p.add_argument("--images", required=True, help="a folder of images (or s3://...)")
    p.add_argument("--prompt", required=True, help='e.g. "caption en" or "detect cat"')
    p.add_argument("--out", required=True, help="the JSON-lines file to write")
    p.add_argument("--precision", default="f16", choices=["f32", "f16", "q8", "q4"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=1, help="actors (models) at once")
    p.add_argument("--batch-size", type=int, default=16, help="images per actor call")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (1 on GPU nodes)")
    p.add_argument("--cpus-per-actor", type=float, default=1)
    p.add_argument("--address", default=None, help="a running cluster (auto, or HOST:PORT)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster")
    args = p.parse_args()

    ray.init(address=args.address, num_cpus=args.num_cpus, include_dashboard=False)
    images = ray.data.read_images(args.images, include_paths=True, mode="RGB")
    answers = images.map_batches(
        Answerer,
        fn_constructor_kwargs={
            "model": args.model,
            "prompt": args.prompt,
            "precision": args.precision,
            "options": {"max_new_tokens": args.max_new_tokens},
        },
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        num_gpus=args.num_gpus,
        num_cpus=args.cpus_per_actor,
    )
    count = 0
    with open(args.out, "w") as f:
        for row in answers.iter_rows():
            f.write(row["line"] + "\n")
            count += 1
    print(f"{count} answers written to {args.out}")


if __name__ == "__main__":
    main()

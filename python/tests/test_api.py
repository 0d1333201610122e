"""The package's API against the command line and transformers: ids equal on every fixture, every
image input alike, streams and batches equal single calls, errors name their culprit."""

from __future__ import annotations

import io
import re
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

import paligemma_wgpu as pg
from conftest import MQA, cli_json, fixture_cases


@pytest.mark.parametrize("case", fixture_cases(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_fixture_ids_equal_the_cli_and_transformers(case):
    expected = json.loads((case / "expected.json").read_text())
    n, prompt = expected["max_new_tokens"], expected["prompt"]
    model = pg.PaliGemma(case / "model", precision="f32")
    out = model.generate(case / "image.png", prompt, max_new_tokens=n)
    cli = cli_json(
        "--model", str(case / "model"), "--image", str(case / "image.png"), "--prompt", prompt,
        "--max-new-tokens", str(n), "--precision", "f32",
    )
    assert out.generated_ids == cli["generated_ids"]
    assert out.prompt_ids == cli["prompt_ids"] == expected["input_ids"]
    assert out.text == cli["text"]
    # transformers generated without stopping; the library stops at <eos>.
    assert out.generated_ids == expected["generated_ids"][: len(out.generated_ids)]
    assert out.finish_reason in ("stop", "length")


def test_a_gemma3_folder_answers_as_the_cli_and_transformers():
    # Gemma 3: the prompt is the user's message, laid out by the checkpoint's chat template.
    case = MQA.parent / "gemma3"
    expected = json.loads((case / "expected.json").read_text())
    model = pg.PaliGemma(case / "model", precision="f32")
    prompt = "What is in this picture?"
    out = model.generate(case / "image.png", prompt, max_new_tokens=12)
    assert out.prompt_ids == expected["input_ids"]
    assert out.generated_ids == expected["generated_ids"]


def test_every_image_input_answers_alike(mqa):
    path = MQA / "image.png"
    pil = Image.open(path)
    rgb = np.asarray(pil.convert("RGB"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    inputs = {
        "str": str(path),
        "Path": path,
        "bytes": path.read_bytes(),
        "PIL": pil,
        "PIL RGBA": pil.convert("RGBA"),
        "numpy RGB": rgb,
        "numpy RGBA": rgba,
        "numpy non-contiguous": np.asfortranarray(rgb),
    }
    want = mqa.generate(path, "caption en", max_new_tokens=8).generated_ids
    for name, image in inputs.items():
        assert mqa.generate(image, "caption en", max_new_tokens=8).generated_ids == want, name
    gray = np.asarray(pil.convert("L"))
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    want_gray = mqa.generate(buf.getvalue(), "caption en", max_new_tokens=8).generated_ids
    assert mqa.generate(gray, "caption en", max_new_tokens=8).generated_ids == want_gray
    assert mqa.generate(gray[:, :, None], "caption en", max_new_tokens=8).generated_ids == want_gray


def test_streaming_equals_generate(mqa):
    for options in ({}, {"temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 7}):
        whole = mqa.generate(MQA / "image.png", "caption en", max_new_tokens=12, **options)
        stream = mqa.stream(MQA / "image.png", "caption en", max_new_tokens=12, **options)
        pieces = list(stream)
        assert "".join(pieces) == whole.text
        assert stream.generation.generated_ids == whole.generated_ids
        assert stream.generation.finish_reason == whole.finish_reason
    # Dropped early, a stream stops its generation; the model goes on answering.
    stream = mqa.stream(MQA / "image.png", "caption en", max_new_tokens=12)
    next(stream)
    del stream
    assert mqa.generate(MQA / "image.png", "caption en").text


def images(n):
    """`n` different pictures: the fixture's, flipped, rolled, and noise."""
    base = np.asarray(Image.open(MQA / "image.png").convert("RGB"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(np.roll(base, 7 * i, axis=1))
        elif i % 3 == 1:
            out.append(np.ascontiguousarray(base[::-1]))
        else:
            out.append(rng.integers(0, 256, (40 + i, 30 + 2 * i, 3), dtype=np.uint8))
    return out


def test_batch_equals_one_at_a_time(mqa):
    pictures = images(7)
    prompts = ["caption en", "detect cat", "answer en what is this", "ocr"] * 2
    prompts = prompts[: len(pictures)]
    for options in ({}, {"temperature": 0.8, "seed": 3}):
        outs = mqa.generate_batch(pictures, prompts, batch_size=3, max_new_tokens=10, **options)
        alone = [mqa.generate(i, p, max_new_tokens=10, **options) for i, p in zip(pictures, prompts)]
        assert [o.generated_ids for o in outs] == [a.generated_ids for a in alone]
        assert [o.text for o in outs] == [a.text for a in alone]
    same_prompt = mqa.generate_batch(pictures[:2], "caption en", max_new_tokens=4)
    assert [o.generated_ids for o in same_prompt] == [
        mqa.generate(p, "caption en", max_new_tokens=4).generated_ids for p in pictures[:2]
    ]


def test_detections_have_boxes_in_image_pixels(mqa):
    # The tiny model's answers are random words and <loc> tokens; the batch command's boxes are
    # the reference.
    out = mqa.generate(MQA / "image.png", "detect cat", max_new_tokens=32)
    cli = cli_json(
        "--model", str(MQA / "model"), "--image", str(MQA / "image.png"), "--prompt",
        "detect cat", "--max-new-tokens", "32", "--precision", "f32",
    )
    boxes = [{k: d[k] for k in ("label", "x_min", "y_min", "x_max", "y_max")} for d in out.detections]
    assert boxes == [
        {k: d[k] for k in ("label", "x_min", "y_min", "x_max", "y_max")} for d in cli["detections"]
    ]
    assert all(d["mask"] is None for d in out.detections)


@pytest.mark.parametrize(
    "call, kind, words",
    [
        (lambda m: m.generate(MQA / "image.png", "caption en", temperature=-1), ValueError, "temperature"),
        (lambda m: m.generate(MQA / "image.png", "caption en", top_p=2.0), ValueError, "top_p"),
        (lambda m: m.generate(MQA / "image.png", "caption en", top_k=-1), ValueError, "top_k"),
        (lambda m: m.generate(MQA / "image.png", "caption en", max_new_tokens=0), ValueError, "max_new_tokens"),
        (lambda m: m.generate(MQA / "image.png", "caption en", seed=-1), ValueError, "seed"),
        (lambda m: m.generate(MQA / "image.png", 42), ValueError, "prompt"),
        (lambda m: m.generate(MQA / "image.png", "  "), ValueError, "the prompt is empty"),
        (lambda m: m.stream(MQA / "image.png", ""), ValueError, "the prompt is empty"),
        (lambda m: m.generate_batch([MQA / "image.png"], [""]), ValueError, "prompts[0]: the prompt is empty"),
        (lambda m: m.generate(b"not an image", "caption en"), ValueError, "image bytes"),
        (lambda m: m.generate(np.zeros((8, 8, 3), np.float32), "caption en"), ValueError, "uint8"),
        (lambda m: m.generate(np.zeros((8, 8, 2), np.uint8), "caption en"), ValueError, "shape"),
        (lambda m: m.generate(np.zeros((0, 8, 3), np.uint8), "caption en"), ValueError, "empty"),
        (lambda m: m.generate(3.5, "caption en"), ValueError, "image"),
        (lambda m: m.generate(MQA / "nothere.png", "caption en"), FileNotFoundError, "nothere.png"),
        (lambda m: m.generate_batch([MQA / "image.png"], ["a", "b"]), ValueError, "prompts"),
        (lambda m: m.generate_batch([MQA / "image.png"], "caption en", batch_size=0), ValueError, "batch_size"),
        (lambda m: m.generate_batch([MQA / "image.png", 1], "caption en"), ValueError, "images[1]"),
    ],
)
def test_bad_input_raises_naming_the_culprit(mqa, call, kind, words):
    with pytest.raises(kind, match=re.escape(words)) as raised:
        call(mqa)
    print(f"{kind.__name__}: {raised.value}")
    assert mqa.generate(MQA / "image.png", "caption en", max_new_tokens=2).generated_ids


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="precision"):
        pg.PaliGemma(MQA / "model", precision="q3")
    with pytest.raises(FileNotFoundError, match="no-such-model: not a folder"):
        pg.PaliGemma(MQA / "no-such-model")
    with pytest.raises(RuntimeError, match="no adapter name contains"):
        pg.PaliGemma(MQA / "model", adapter="no-such-gpu")
    with pytest.raises(RuntimeError, match="adapter index 99"):
        pg.PaliGemma(MQA / "model", adapter=99)
    with pytest.raises(ValueError, match="adapter"):
        pg.PaliGemma(MQA / "model", adapter=-1)


def test_list_adapters_and_choosing_by_index():
    adapters = pg.list_adapters()
    assert adapters, "wgpu finds no adapter"
    assert {"index", "name", "backend", "device_type", "pci_bus_id"} <= set(adapters[0])
    model = pg.PaliGemma(MQA / "model", adapter=adapters[0]["index"])
    assert model.adapter.startswith(adapters[0]["name"])


def test_threads_keep_running_while_generating(mqa):
    pictures = images(6)
    done = threading.Event()
    took = {}

    def work():
        t0 = time.perf_counter()
        mqa.generate_batch(pictures, "caption en", batch_size=2, max_new_tokens=12)
        took["s"] = time.perf_counter() - t0
        done.set()

    thread = threading.Thread(target=work)
    ticks, longest, last = 0, 0.0, time.perf_counter()
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest, last, ticks = max(longest, now - last), now, ticks + 1
    thread.join()
    # With the GIL held for the call, this loop would stall for all of it.
    assert ticks > 1000, ticks
    assert longest < 0.5 * took["s"], (longest, took)


def test_segment_masks_equal_the_cli_draw(tmp_path):
    import subprocess

    from conftest import ROOT, cli

    decoder = ROOT / "tests" / "fixtures" / "seg" / "vae.npz"
    model = pg.PaliGemma(MQA / "model", seg_decoder=decoder)
    segs = "".join(f"<seg{c:03d}>" for c in (5, 17, 99, 3, 64, 127, 0, 42, 8, 77, 31, 120, 2, 56, 90, 11))
    answer = f"<loc0137><loc0180><loc0895><loc0881>{segs} cat ; <loc0010><loc0010><loc0500><loc0500> dog"
    objects = model.detections(MQA / "image.png", answer)
    out = subprocess.run(
        [cli(), "draw", "--image", str(MQA / "image.png"), "--answer", answer, "--seg-decoder",
         str(decoder), "--out", str(tmp_path / "drawn.png"), "--json"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    drawn = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("{")))["detections"]
    assert [d["label"] for d in objects] == ["cat", "dog"] == [d["label"] for d in drawn]
    height, width = np.asarray(Image.open(MQA / "image.png")).shape[:2]
    cat, dog = objects
    assert cat["mask"].shape == (height, width) and cat["mask"].dtype == bool
    assert (cat["mask"] == pg._mask(drawn[0]["mask"], width, height)).all()
    assert cat["mask"].sum() > 0 and dog["mask"] is None
    # Outside its box a mask is empty.
    box = np.zeros_like(cat["mask"])
    box[int(cat["y_min"]) : int(cat["y_max"]), int(cat["x_min"]) : int(cat["x_max"])] = True
    assert not (cat["mask"] & ~box).any()


def test_threads_may_share_a_model(mqa):
    pictures = images(4)
    want = [mqa.generate(p, "caption en", max_new_tokens=8).generated_ids for p in pictures]
    got = [None] * len(pictures)

    def work(i):
        got[i] = mqa.generate(pictures[i], "caption en", max_new_tokens=8).generated_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pictures))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_a_hub_id_is_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--test--tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ["config.json", "tokenizer.json", "model.safetensors"]:
        (snapshot / name).write_bytes((MQA / "model" / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_id = pg.PaliGemma("test/tiny", precision="f32")
    by_folder = pg.PaliGemma(MQA / "model", precision="f32")
    args = (MQA / "image.png", "caption en")
    assert by_id.generate(*args).generated_ids == by_folder.generate(*args).generated_ids
    with pytest.raises(OSError, match="test/missing: not in the Hugging Face cache"):
        pg.PaliGemma("test/missing")

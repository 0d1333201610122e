"""PaliGemma and PaliGemma 2 on any GPU through wgpu (Vulkan, Metal, DX12), from Python.

    import paligemma_wgpu as pg
    model = pg.PaliGemma("paligemma-3b-mix-224", precision="q4")
    out = model.generate("cat.jpg", "detect cat", max_new_tokens=32)
    print(out.text, out.detections)

The model, its checks and its batching are the Rust library's (the ``paligemma`` command line
runs the same code), so an answer here equals the command line's for the same image, prompt
and options. The GIL is released while the GPU works. Bad input raises ``ValueError`` naming
what is wrong (``FileNotFoundError`` for a missing file), a GPU failure ``RuntimeError``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _native
from ._ray import adapter_for_gpu, ray_adapter

__all__ = [
    "PaliGemma",
    "Generation",
    "Stream",
    "list_adapters",
    "adapter_for_gpu",
    "ray_adapter",
]

#: What ``image`` may be: a PIL image, a numpy ``uint8`` array ``(H, W)``, ``(H, W, 1)``,
#: ``(H, W, 3)`` or ``(H, W, 4)`` (what ``ray.data.read_images`` yields), the bytes of an
#: encoded image (PNG, JPEG, WebP, ...), or a path.
ImageLike = Union[Any, np.ndarray, bytes, str, "os.PathLike[str]"]


def list_adapters() -> List[Dict[str, Any]]:
    """Every GPU adapter wgpu finds: ``index`` (what ``adapter=`` takes as an int), ``name``,
    ``vendor``, ``device``, ``device_type``, ``backend``, ``driver``, ``driver_info``,
    ``pci_bus_id``."""
    return json.loads(_native.list_adapters())


@dataclass
class Generation:
    """A finished generation."""

    #: The answer, special tokens removed.
    text: str
    #: The ids the model chose (``<eos>`` included when it stopped there).
    generated_ids: List[int]
    #: The whole prompt's ids, image placeholders included.
    prompt_ids: List[int]
    #: ``"stop"`` (``<eos>``), ``"length"`` (``max_new_tokens``) or ``"cancelled"``.
    finish_reason: str
    #: Milliseconds per phase: ``preprocess_ms``, ``vision_ms``, ``prefill_ms``,
    #: ``time_to_first_token_ms``, ``decode_ms``, and ``decode_tokens_per_s``.
    timings: Dict[str, float]
    #: For ``detect``/``segment`` prompts: ``label``, ``x_min``, ``y_min``, ``x_max``,
    #: ``y_max`` (pixels of the input image) and ``mask`` (a ``bool`` array of the image's
    #: ``(height, width)``, or ``None`` without ``<seg>`` codes or without ``seg_decoder``).
    detections: List[Dict[str, Any]] = field(default_factory=list)


class Stream:
    """The text pieces of one generation as they come; ``generation`` once exhausted.
    Dropping it early stops the generation and frees its GPU memory."""

    def __init__(self, native: Any) -> None:
        self._native = native
        #: The whole generation, once every piece was taken.
        self.generation: Optional[Generation] = None

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._native)
        except StopIteration:
            if self.generation is None:
                self.generation = _generation(self._native.result())
            raise


class PaliGemma:
    """A PaliGemma or PaliGemma 2 checkpoint on a GPU.

    ``model``: a folder as published on the Hugging Face hub (``config.json``, safetensors,
    ``tokenizer.json``), one written by ``paligemma quantize``, or a hub id
    (``"google/paligemma2-3b-pt-224"``, ``"owner/name@revision"``) found in the Hugging Face
    cache or downloaded into it (``HF_TOKEN`` for the gated checkpoints; ``OSError`` when it
    cannot be fetched). ``precision``: ``"f32"``,
    ``"f16"`` (the default), ``"q8"`` or ``"q4"``. ``adapter``: a substring of the adapter's
    name, or its index in :func:`list_adapters` (see :func:`ray_adapter`); ``None`` takes the
    fastest. ``seg_decoder``: big_vision's mask decoder (``vae-oid.npz``), so that ``segment``
    answers come with masks. The GPU memory is freed when the object is.
    """

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]"],
        precision: Optional[str] = None,
        adapter: Union[str, int, None] = None,
        seg_decoder: Union[str, "os.PathLike[str]", None] = None,
    ) -> None:
        if adapter is not None and (isinstance(adapter, bool) or not isinstance(adapter, (str, int))):
            raise ValueError(f"adapter: expected a name (str) or an index (int), got {adapter!r}")
        if isinstance(adapter, int) and adapter < 0:
            raise ValueError(f"adapter: an index must be >= 0, got {adapter}")
        if precision is not None and not isinstance(precision, str):
            raise ValueError(f"precision: expected f32, f16, q8 or q4, got {precision!r}")
        seg = None if seg_decoder is None else os.fspath(seg_decoder)
        self._native = _native.Model(os.fspath(model), precision, adapter, seg)

    def __repr__(self) -> str:
        return f"PaliGemma(adapter={self.adapter!r}, weight_bytes={self.weight_bytes})"

    @property
    def adapter(self) -> str:
        """The adapter the model runs on."""
        return self._native.adapter

    @property
    def weight_bytes(self) -> int:
        """GPU memory the weights hold, in bytes."""
        return self._native.weight_bytes

    def generate(
        self,
        image: ImageLike,
        prompt: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> Generation:
        """Answers ``prompt`` (a PaliGemma task: ``"caption en"``, ``"detect cat"``,
        ``"segment cat"``, ``"answer en what is this?"``, ...) about ``image``.
        ``temperature`` 0 is greedy; above 0 samples (``top_p``, ``top_k``), seeded by
        ``seed``."""
        options = _options(max_new_tokens, temperature, top_p, top_k, seed)
        answer = self._native.generate(_image(image), _prompt(prompt), options)
        return _generation(answer)

    def stream(
        self,
        image: ImageLike,
        prompt: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> Stream:
        """As :meth:`generate`, the text coming piece by piece; the pieces join to
        ``generate``'s text. The returned :class:`Stream` has ``generation`` once exhausted."""
        options = _options(max_new_tokens, temperature, top_p, top_k, seed)
        return Stream(self._native.stream(_image(image), _prompt(prompt), options))

    def detections(self, image: ImageLike, answer: str) -> List[Dict[str, Any]]:
        """The objects of a ``detect`` or ``segment`` answer's text (one saved earlier, say)
        about ``image``, as :attr:`Generation.detections` gives them: boxes in the image's
        pixels, masks from ``<seg>`` codes when the model has a ``seg_decoder``."""
        native = _image(image)
        objects = json.loads(self._native.detections(native, _prompt(answer, "answer")))
        return _with_masks(objects, native.width, native.height)

    def generate_batch(
        self,
        images: Sequence[ImageLike],
        prompts: Union[str, Sequence[str]],
        batch_size: int = 16,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> List[Generation]:
        """Every image with its prompt (one prompt for all, or one per image), up to
        ``batch_size`` decoding together by continuous batching; answers in input order, each
        equal to that image's :meth:`generate` answer."""
        images = list(images)
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        prompts = [_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if len(prompts) != len(images):
            raise ValueError(f"prompts: {len(prompts)} prompts for {len(images)} images")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
        natives = [_image(image, f"images[{i}]") for i, image in enumerate(images)]
        options = _options(max_new_tokens, temperature, top_p, top_k, seed)
        answers = self._native.generate_batch(natives, prompts, batch_size, options)
        return [_generation(a) for a in answers]


def _options(max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any, seed: Any) -> Any:
    for name, value in (("max_new_tokens", max_new_tokens), ("top_k", top_k), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}: expected an int, got {value!r}")
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
    if seed < 0 or seed >= 2**64:
        raise ValueError(f"seed: must be in 0..2**64, got {seed}")
    for name, value in (("max_new_tokens", max_new_tokens), ("top_k", top_k)):
        if value >= 2**63:
            raise ValueError(f"{name}: too large, got {value}")
    return _native.Options(int(max_new_tokens), float(temperature), float(top_p), int(top_k), int(seed))


def _prompt(prompt: Any, name: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"{name}: expected a str, got {type(prompt).__name__}")
    return prompt


def _image(image: Any, name: str = "image") -> Any:
    """Any accepted image as the native ``Image`` (decoded once, in Rust)."""
    if isinstance(image, _native.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return _native.Image.open(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _native.Image.decode(bytes(image))
    if isinstance(image, np.ndarray):
        return _from_array(image, name)
    if type(image).__module__.startswith("PIL.") and hasattr(image, "tobytes"):
        return _from_pil(image)
    raise ValueError(
        f"{name}: expected a PIL image, a numpy uint8 array (H, W[, 1|3|4]), encoded image "
        f"bytes or a path; got {type(image).__name__}"
    )


def _from_array(array: np.ndarray, name: str) -> Any:
    if array.dtype != np.uint8:
        raise ValueError(
            f"{name}: a numpy image must be uint8 (0..255), got {array.dtype}; "
            "scale and cast it with (x * 255).clip(0, 255).astype(np.uint8)"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{name}: a numpy image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got shape {array.shape}"
        )
    height, width, channels = array.shape
    data = np.ascontiguousarray(array).tobytes()
    return _native.Image.from_pixels(width, height, channels, data)


def _from_pil(image: Any) -> Any:
    # As the command line reads files: gray stays gray, alpha is kept, the rest becomes RGB.
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode == "LA":
        image = image.convert("RGBA")
    elif image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[image.mode]
    return _native.Image.from_pixels(image.width, image.height, channels, image.tobytes())


def _generation(answer: str) -> Generation:
    fields = json.loads(answer)
    width, height = fields.pop("image_size")
    fields["detections"] = _with_masks(fields["detections"], width, height)
    return Generation(**fields)


def _with_masks(objects: List[Dict[str, Any]], width: int, height: int) -> List[Dict[str, Any]]:
    for d in objects:
        if d["mask"] is not None:
            d["mask"] = _mask(d["mask"], width, height)
    return objects


def _mask(mask: Dict[str, Any], width: int, height: int) -> np.ndarray:
    """The library's mask (a box and run lengths over it, outside first) as a boolean array
    over the whole image."""
    runs = np.asarray(mask["rle"], dtype=np.int64)
    inside = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    box = inside.reshape(mask["height"], mask["width"])
    full = np.zeros((height, width), dtype=bool)
    x, y = mask["x"], mask["y"]
    h, w = min(box.shape[0], height - y), min(box.shape[1], width - x)
    full[y : y + h, x : x + w] = box[:h, :w]
    return full

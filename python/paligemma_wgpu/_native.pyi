"""Type stubs of the Rust extension (``python/src``). Use the package's ``PaliGemma``; these
are its building blocks."""

from typing import List, Optional, Union

def list_adapters() -> str:
    """Every adapter wgpu finds, as a JSON list."""

class Image:
    """A decoded image."""

    @staticmethod
    def open(path: str) -> Image: ...
    @staticmethod
    def decode(data: bytes) -> Image: ...
    @staticmethod
    def from_pixels(width: int, height: int, channels: int, data: bytes) -> Image: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...

class Options:
    """Generation options, checked when made (``ValueError`` naming the option)."""

    def __init__(
        self, max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int
    ) -> None: ...

class Stream:
    """Text pieces of one generation."""

    def __iter__(self) -> Stream: ...
    def __next__(self) -> str: ...
    def result(self) -> Optional[str]:
        """The generation as JSON once every piece was taken."""

class Model:
    """A loaded model; generations come back as JSON."""

    def __init__(
        self,
        path: str,
        precision: Optional[str] = None,
        adapter: Union[str, int, None] = None,
        seg_decoder: Optional[str] = None,
    ) -> None: ...
    @property
    def adapter(self) -> str: ...
    @property
    def weight_bytes(self) -> int: ...
    def generate(self, image: Image, prompt: str, options: Options) -> str: ...
    def stream(self, image: Image, prompt: str, options: Options) -> Stream: ...
    def detections(self, image: Image, answer: str) -> str: ...
    def generate_batch(
        self, images: List[Image], prompts: List[str], batch_size: int, options: Options
    ) -> List[str]: ...

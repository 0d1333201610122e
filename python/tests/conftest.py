"""Where the tests find the repository's fixtures and the command line they compare with."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[2]
MQA = ROOT / "tests" / "fixtures" / "mqa"


def fixture_cases() -> List[Path]:
    """Every fixture with a tokenizer: the repository's and, when beside it, the shared ones
    (cases this repository does not hold)."""
    found = sorted((ROOT / "tests" / "fixtures").glob("*/expected.json"))
    found += sorted((ROOT.parent / "shared" / "fixtures").glob("*/expected.json"))
    # Gemma 3's chat fixtures (a "messages" conversation, not a PaliGemma prompt) are tested by
    # tests/gemma3.rs; the Python API does not take conversations yet.
    return [p.parent for p in found
            if (p.parent / "model" / "tokenizer.json").exists() and '"messages"' not in p.read_text()]


def cli() -> str:
    """The `paligemma` binary (`PALIGEMMA_BIN`, else the one `cargo build` made)."""
    path = os.environ.get("PALIGEMMA_BIN") or str(ROOT / "target" / "debug" / "paligemma")
    if not Path(path).exists():
        pytest.fail(f"{path} is missing: run `cargo build` first, or set PALIGEMMA_BIN")
    return path


def cli_json(*args: str) -> Dict[str, Any]:
    """The command line's `--json` answer."""
    out = subprocess.run([cli(), *args, "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def mqa():
    import paligemma_wgpu as pg

    return pg.PaliGemma(MQA / "model", precision="f32")

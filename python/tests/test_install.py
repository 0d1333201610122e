"""The package as a new user meets it: `pip install ./python` in a fresh virtual environment,
which then holds the package and numpy only (no Pillow, no Ray); the README's Python snippet
runs there as typed and answers as the command line does. (The build reuses the target folder,
so it is quick after the first; CI sets MATURIN_PEP517_ARGS="--profile dev", which pip passes
through.)"""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import MQA, ROOT, cli_json


def readme_snippet() -> str:
    """The README's Python example: the first python block of its Python section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_a_fresh_environment_with_only_numpy_runs_the_readme(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "numpy", str(ROOT / "python")],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    listed = subprocess.run([python, "-m", "pip", "list"], capture_output=True, text=True).stdout
    assert "pillow" not in listed.lower() and "ray" not in listed.lower(), listed
    run = subprocess.run(
        [python, "-c", readme_snippet()], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    cli = cli_json(
        "--model", str(MQA / "model"), "--image", str(MQA / "image.png"), "--prompt",
        "caption en", "--max-new-tokens", "12",
    )
    # The snippet prints the answer's text and ids on its first line.
    assert str(cli["generated_ids"]) in run.stdout, run.stdout

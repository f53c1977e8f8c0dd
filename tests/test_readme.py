"""The README's Python example runs as it is written (the Quick start's ```python block)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_python() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Quick start has one Python example"
    return blocks[0]


def test_readme_python_example_runs_verbatim(builtin_cache, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("LUMINA_RT_CACHE", str(builtin_cache))  # the session's built-in engines (else ~/.cache)
    monkeypatch.chdir(tmp_path)
    exec(compile(quick_start_python(), str(README), "exec"), {"__name__": "__readme__"})
    with Image.open(tmp_path / "demo.gif") as im:
        assert im.n_frames == 8 and im.size == (128, 128)  # what `lumina-rt generate --builtin` writes

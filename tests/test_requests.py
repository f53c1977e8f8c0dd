"""Every bad generation request, through the CLI (a subprocess each, as a user runs it) and through the Python API
(`Runtime.builtin().generate` / `GenerationResult.save`): the same typed error and the same one-line message, the
field named as each caller writes it (`--frames 0` / `frames=0`), no traceback, no file left behind (issue 25;
the rules: docs/requests.md). Also Ctrl-C, a closed stdout pipe, `--version` and what a warm run says.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from lumina_rt.errors import LuminaError

PROMPT = "a red circle moving right quickly"
G = ["generate", "--builtin", "--no-progress"]  # + --prompt PROMPT (unless the row drops it) + --out DIR/o.gif


@dataclass
class Row:
    id: str
    cli: list[str]  # flags after G (and the prompt); "{d}" is the row's folder
    error: str  # the error type's name; "argparse": a flag argparse refuses (no Python form)
    cli_said: str  # how the message names the field and value on the CLI ...
    py_said: str | None = None  # ... and in Python (None: the row has no Python form)
    py: dict[str, Any] = field(default_factory=dict)  # generate keywords (besides the prompt), or save's with "save"
    prompt: bool = True  # give --prompt PROMPT / prompt=PROMPT
    not_in: str | None = None  # must not appear in the message


WORDS = " ".join(["red circle moving right"] * 1250)  # 5,000 words

ROWS = [
    # ---- the table
    Row("empty-prompt", ["--prompt", ""], "InputError", "--prompt ''", "prompt=''", dict(prompt=""), prompt=False),
    Row(
        "blank-prompt",
        ["--prompt", "   "],
        "InputError",
        "--prompt '   '",
        "prompt='   '",
        dict(prompt="   "),
        prompt=False,
    ),
    Row("no-prompt", [], "InputError", "--prompt is missing", "prompt is missing", dict(prompt=None), prompt=False),
    Row("frames-0", ["--frames", "0"], "InputError", "--frames 0", "frames=0", dict(frames=0)),
    Row("height-0", ["--height", "0"], "InputError", "--height 0", "height=0", dict(height=0)),
    Row("fps-0", ["--fps", "0"], "InputError", "--fps 0", "fps=0", dict(fps=0)),
    Row("scale-0", ["--scale", "0"], "InputError", "--scale 0", "scale=0", dict(save=True, scale=0)),
    Row("scale-negative", ["--scale", "-2"], "InputError", "--scale -2", "scale=-2", dict(save=True, scale=-2)),
    Row("cfg-negative", ["--cfg", "-5"], "ScheduleError", "--cfg -5", "cfg=-5", dict(cfg=-5)),
    Row("seed-negative", ["--seed", "-1"], "InputError", "--seed -1", "seed=-1", dict(seed=-1)),
    Row("seed-2**70", ["--seed", str(2**70)], "InputError", f"--seed {2**70}", f"seed={2**70}", dict(seed=2**70)),
    Row("motion-1e308", ["--motion", "1e308"], "ScheduleError", "--motion 1e308", "motion=1e+308", dict(motion=1e308)),
    Row(
        "caption-features-missing",
        ["--caption-features", "{d}/nosuch.safetensors"],
        "InputError",
        "--caption-features {d}/nosuch.safetensors",
    ),
    Row(
        "caption-features-binary",
        ["--caption-features", "{d}/random.bin"],
        "InputError",
        "--caption-features {d}/random.bin",
    ),
    Row("steps-100000", ["--steps", "100000"], "ScheduleError", "--steps 100000", "steps=100000", dict(steps=100000)),
    Row(
        "out-folder-missing",
        ["--out", "{d}/nonexistent_dir/x.mp4"],
        "InputError",
        "--out {d}/nonexistent_dir/x.mp4",
        "path='{d}/nonexistent_dir/x.mp4'",
        dict(save=True, path="{d}/nonexistent_dir/x.mp4"),
    ),
    Row(
        "out-read-only",
        ["--out", "{d}/ro.gif"],
        "InputError",
        "--out {d}/ro.gif",
        "path='{d}/ro.gif'",
        dict(save=True, path="{d}/ro.gif"),
    ),
    Row(
        "prompt-5000-words",
        ["--prompt", WORDS],
        "EngineError",
        "--prompt",
        "prompt",
        dict(prompt=WORDS),
        prompt=False,
        not_in="--max-caption",
    ),
    Row(
        "audio-steps-0",
        ["--audio", "--audio-steps", "0", "--out", "{d}/o.mp4"],
        "InputError",
        "--audio-steps 0",
        "audio_steps=0",
        dict(audio=True, audio_steps=0),
    ),
    Row("frames-7", ["--frames", "7"], "InputError", "--frames 7", "frames=7", dict(frames=7), not_in="latent"),
    # ---- cases that already gave clear errors (none may regress)
    Row("preset-unknown", ["--preset", "nope"], "ScheduleError", "--preset nope", "preset='nope'", dict(preset="nope")),
    Row(
        "schedule-unknown-combo",
        ["--schedule", "3x3"],
        "ScheduleError",
        "--schedule 3x3",
        "schedule='3x3'",
        dict(schedule="3x3"),
    ),
    Row(
        "schedule-bad-json",
        ["--schedule", '["1x2", [2, "2x2"]]'],
        "ScheduleError",
        '--schedule \'["1x2", [2, "2x2"]]\'',
        "schedule=['1x2', [2, '2x2']]",
        dict(schedule=["1x2", [2, "2x2"]]),
    ),
    Row("cache-unknown", ["--cache", "quick"], "ScheduleError", "--cache quick", "cache='quick'", dict(cache="quick")),
    Row("cache-negative", ["--cache", "-0.5"], "ScheduleError", "--cache -0.5", "cache='-0.5'", dict(cache="-0.5")),
    Row("height-30", ["--height", "30"], "InputError", "--height 30", "height=30", dict(height=30)),
    Row(
        "width-1000",
        ["--width", "1000"],
        "EngineError",
        "--frames 8 --height 32 --width 1000",
        "frames=8, height=32, width=1000",
        dict(width=1000),
    ),
    Row(
        "frames-128",
        ["--frames", "128"],
        "EngineError",
        "--frames 128 --height 32 --width 32",
        "frames=128, height=32, width=32",
        dict(frames=128),
    ),
    Row(
        "too-many-prompts",
        ["--prompt", "a", "--prompt", "b", "--prompt", "c"],
        "EngineError",
        "--prompt",
        "prompt",
        dict(prompt=["a", "b", "c"]),
        prompt=False,
    ),
    Row("steps-1", ["--steps", "1"], "ScheduleError", "--steps 1", "steps=1", dict(steps=1)),
    Row("cfg-nan", ["--cfg", "NaN"], "ScheduleError", "--cfg NaN", "cfg=nan", dict(cfg=float("nan"))),
    Row(
        "cfg-time-aware-inf",
        ["--cfg", "[4, [0.5, 1e999]]"],
        "ScheduleError",
        "--cfg '[4, [0.5, 1e999]]'",
        "cfg=[4, [0.5, inf]]",
        dict(cfg=[4, [0.5, float("inf")]]),
    ),
    Row(
        "motion-huge-negative",
        ["--neg-motion", "-1000"],
        "ScheduleError",
        "--neg-motion -1000",
        "neg_motion=-1000",
        dict(neg_motion=-1000),
    ),
    Row("fps-too-high", ["--fps", "1000"], "InputError", "--fps 1000", "fps=1000", dict(fps=1000)),
    Row("scale-too-high", ["--scale", "100"], "InputError", "--scale 100", "scale=100", dict(save=True, scale=100)),
    Row("audio-gif", ["--audio"], "InputError", "--out {d}/o.gif", None),
    Row(
        "audio-steps-without-audio",
        ["--audio-steps", "4"],
        "InputError",
        "--audio-steps 4",
        "audio_steps=4",
        dict(audio_steps=4),
    ),
    Row(
        "unconditional-with-prompt",
        ["--unconditional"],
        "InputError",
        "--unconditional",
        "unconditional=True",
        dict(unconditional=True),
    ),
    Row(
        "out-suffix",
        ["--out", "{d}/o.avi"],
        "InputError",
        "--out {d}/o.avi",
        "path='{d}/o.avi'",
        dict(save=True, path="{d}/o.avi"),
    ),
    Row(
        "out-is-a-folder",
        ["--out", "{d}/folder.gif"],
        "InputError",
        "--out {d}/folder.gif",
        "path='{d}/folder.gif'",
        dict(save=True, path="{d}/folder.gif"),
    ),
    Row("seed-not-a-number", ["--seed", "abc"], "argparse", "argument --seed: invalid int value: 'abc'"),
    Row("frames-not-a-number", ["--frames", "x"], "argparse", "argument --frames: invalid int value: 'x'"),
    Row("backend-unknown", ["--backend", "nonsense"], "argparse", "argument --backend: invalid choice: 'nonsense'"),
    Row("precision-unknown", ["--precision", "fp8"], "argparse", "argument --precision: invalid choice: 'fp8'"),
    Row("upscale-unknown", ["--upscale", "lanczos"], "argparse", "argument --upscale: invalid choice: 'lanczos'"),
]


def _prepare(d: Path) -> None:
    """The files some rows name: a read-only GIF, a random binary, a folder named like a video."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "random.bin").write_bytes(os.urandom(256))
    (d / "ro.gif").write_bytes(b"GIF89a old")
    (d / "ro.gif").chmod(0o444)
    (d / "folder.gif").mkdir()


def _listing(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mode, p.stat().st_size) for p in d.iterdir()}


def _fill(value: Any, d: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{d}", str(d))
    if isinstance(value, list):
        return [_fill(v, d) for v in value]
    return value


def _in_python_words(message: str, cli_said: str, py_said: str) -> str:
    """A CLI message with the fields spelled as in Python (`--frames 0` -> `frames=0`, `--audio` -> `audio=True`)."""
    from lumina_rt.request import NAMES

    message = message.replace(cli_said, py_said)
    for flag, keyword, _ in sorted(NAMES.values(), key=lambda names: -len(names[0])):
        message = message.replace(flag, f"{keyword}=True" if flag in ("--audio", "--unconditional") else keyword)
    return message


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "LUMINA_RT_CACHE": str(cache)}


def _cli(args: list[str], cache: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lumina_rt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(cache),
        cwd=cwd,
    )


def _cli_args(row: Row, d: Path) -> list[str]:
    out = [] if any(a == "--out" for a in row.cli) else ["--out", str(d / "o.gif")]
    return [*G, *(["--prompt", PROMPT] if row.prompt else []), *_fill(row.cli, d), *out]


@pytest.fixture(scope="module")
def runtime(builtin_cache):
    from lumina_rt.runtime import Runtime

    before = os.environ.get("LUMINA_RT_CACHE")
    os.environ["LUMINA_RT_CACHE"] = str(builtin_cache)
    try:
        yield Runtime.builtin()
    finally:
        if before is None:
            del os.environ["LUMINA_RT_CACHE"]
        else:
            os.environ["LUMINA_RT_CACHE"] = before


@pytest.fixture(scope="module")
def result(runtime):
    return runtime.generate(PROMPT, progress=False)


@pytest.fixture(scope="module")
def cli_messages():
    return {}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_cli_refuses_with_one_line(row, builtin_cache, tmp_path, cli_messages):
    d = tmp_path / "row"
    _prepare(d)
    before = _listing(d)
    res = _cli(_cli_args(row, d), builtin_cache, cwd=d)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    said = _fill(row.cli_said, d)
    if row.error == "argparse":
        assert lines[0].startswith(f"lumina-rt generate: error: {said}"), lines[0]
    else:
        prefix = f"lumina-rt generate: error: {row.error}: "
        assert lines[0].startswith(prefix) and said in lines[0], lines[0]
        cli_messages[row.id] = lines[0].removeprefix(prefix).replace(str(d), "{d}")
    if row.not_in:
        assert row.not_in not in lines[0]
    assert _listing(d) == before  # nothing written, nothing replaced, no folder made
    assert not (d / "nonexistent_dir").exists()


@pytest.mark.parametrize("row", [r for r in ROWS if r.py_said is not None], ids=lambda r: r.id)
def test_python_refuses_with_the_same_words(row, runtime, result, builtin_cache, tmp_path, cli_messages):
    d = tmp_path / "row"
    _prepare(d)
    before = _listing(d)
    kw = {k: _fill(v, d) for k, v in row.py.items()}
    with pytest.raises(LuminaError) as info:
        if kw.pop("save", False):
            result.save(kw.pop("path", str(d / "o.gif")), **kw)
        else:
            prompt = kw.pop("prompt", PROMPT)
            runtime.generate(prompt, progress=False, **kw)
    assert type(info.value).__name__ == row.error
    message = str(info.value)
    assert "\n" not in message
    cli_said, py_said = _fill(row.cli_said, d), _fill(row.py_said, d)
    assert py_said in message, message
    if row.id not in cli_messages:  # the CLI row did not run in this session (-k): run it here
        res = _cli(_cli_args(row, d), builtin_cache, cwd=d)
        cli_messages[row.id] = res.stderr.strip().splitlines()[-1].split(f"{row.error}: ", 1)[1].replace(str(d), "{d}")
    assert _in_python_words(_fill(cli_messages[row.id], d), cli_said, py_said) == message
    assert _listing(d) == before


def test_http_spelling(runtime):
    from lumina_rt.errors import InputError
    from lumina_rt.request import GenerationRequest

    with pytest.raises(InputError, match=r'^"frames": 0: must be a whole number >= 1$'):
        GenerationRequest.from_http({"prompt": PROMPT, "frames": 0})
    with pytest.raises(InputError, match=r"^unknown fields \['nope'\]"):
        GenerationRequest.from_http({"prompt": PROMPT, "nope": 1})
    req = GenerationRequest.from_http({"prompt": PROMPT, "frames": 7})
    with pytest.raises(InputError, match=r'^"frames": 7: scale 2x2 of this schedule takes 1 frame'):
        req.check(runtime.pipeline)


def test_upscale_is_refused_in_each_callers_words(result, tmp_path):
    from lumina_rt.errors import InputError
    from lumina_rt.request import GenerationRequest

    choices = r"choose one of \['nearest', 'bilinear', 'bicubic'\]$"
    with pytest.raises(InputError, match=rf'^"upscale": "lanczos": {choices}'):
        GenerationRequest.from_http({"prompt": PROMPT, "upscale": "lanczos"})
    with pytest.raises(InputError, match=rf"^upscale='lanczos': {choices}"):
        result.save(tmp_path / "o.gif", upscale="lanczos")
    assert list(tmp_path.iterdir()) == []


def test_cli_upscale_filter_reaches_the_file(builtin_cache, tmp_path, result):
    from lumina_rt.builtin import BUILTIN_SCALE, BUILTIN_UPSCALE
    from lumina_rt.video import read_video

    assert result.upscale == BUILTIN_UPSCALE and result.scale == BUILTIN_SCALE  # Runtime.builtin's defaults
    videos = {}
    for name, flags in (("default", []), ("nearest", ["--upscale", "nearest"]), ("bicubic", ["--upscale", "bicubic"])):
        res = _cli([*G, "--prompt", PROMPT, "--scale", "2", *flags, "--out", f"{name}.gif"], builtin_cache, tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        videos[name] = read_video(tmp_path / f"{name}.gif")[0]
    assert videos["nearest"].shape == videos["bicubic"].shape == (3, 8, 64, 64)  # the same size, 2x
    assert not torch.equal(videos["nearest"], videos["bicubic"])
    assert torch.equal(videos["default"], videos[BUILTIN_UPSCALE])
    blocks = videos["nearest"][..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.equal(blocks, videos["nearest"])  # nearest: 2x2 blocks of one colour


def test_parity_refuses_a_file_that_is_not_safetensors(tmp_path, builtin_cache):
    (tmp_path / "random.bin").write_bytes(os.urandom(256))
    res = _cli(["parity", str(tmp_path / "random.bin")], builtin_cache, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        f"lumina-rt parity: error: InputError: fixture '{tmp_path / 'random.bin'}' is not a safetensors file "
        "(SafetensorError)"
    )


# ------------------------------------------------------------------------------------------------ signals, pipes
def _interrupt(args: list[str], cache: Path, cwd: Path, wait_for: str, delay: float) -> tuple[int, str, str]:
    """Run a command, send SIGINT `delay` s after `wait_for` appears on its stderr (as Ctrl-C does)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lumina_rt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cache),
        cwd=cwd,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if wait_for in line:
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, "".join(seen) + err


def test_ctrl_c_during_the_first_engine_build_leaves_no_engine_folder(tmp_path):
    cache = tmp_path / "cache"
    rc, out, err = _interrupt([*G, "--prompt", PROMPT, "--out", "o.gif"], cache, tmp_path, "build target", 1.0)
    assert rc == 130, err[-2000:]
    assert err.splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not (cache / "engines" / "builtin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_ctrl_c_while_sampling_leaves_no_output(builtin_cache, tmp_path):
    args = [*G, "--prompt", PROMPT, "--steps", "1000", "--out", "o.gif"]
    rc, out, err = _interrupt(args, builtin_cache, tmp_path, "engine backend", 1.0)
    assert rc == 130, err[-2000:]
    assert err.splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_closed_stdout_pipe_ends_quietly(tmp_path):
    # The listing (~32 KB) must not fit in the pipe, or the command could finish writing before the reader closes
    # it: a one-page pipe buffer (Linux F_SETPIPE_SZ) makes the write meet the closed pipe every time.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lumina_rt", "inspect", "f24R960", "--keys", "--json"],
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    assert proc.stderr is not None
    with os.fdopen(read_end, "rb") as stdout:
        assert len(stdout.read(10)) == 10  # `| head -c 10`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def test_version():
    from lumina_rt.version import __version__

    res = subprocess.run([sys.executable, "-m", "lumina_rt", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"lumina-rt {__version__}"


# ------------------------------------------------------------------------------------------------ honest logs
def test_warm_run_reuses_the_engines_and_builds_no_v2a_engine(builtin_cache, tmp_path):
    res = _cli([*G, "--unconditional", "--out", "u.gif"], builtin_cache, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "reusing the built-in model's engines" in res.stderr and "building" not in res.stderr
    manifest = json.loads((builtin_cache / "engines" / "builtin" / "manifest.json").read_text())
    assert manifest.get("v2a") is None and not (builtin_cache / "engines" / "builtin" / "v2a").exists()
    line = res.stdout.strip().splitlines()[0]
    assert line.startswith("wrote u.gif in ") and ", sampling " in line, line
    total = float(line.split(" in ", 1)[1].split(" s ", 1)[0])
    sampling = float(line.rsplit("sampling ", 1)[1].split(" s)")[0])
    assert total > sampling > 0

    from PIL import Image

    with Image.open(tmp_path / "u.gif") as im:
        assert im.n_frames == 8 and im.size == (128, 128)  # the built-in size, upscaled 4x
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
    assert delays == [130, 120] * 4  # 8 fps in GIF's 10 ms unit: 1 s for 8 frames


def test_python_builds_the_v2a_engine_on_the_first_audio_request(builtin_cache, tmp_path, monkeypatch):
    import shutil

    from lumina_rt.runtime import Runtime

    cache = tmp_path / "cache"
    shutil.copytree(builtin_cache, cache)  # the session's engines stay without a V2A engine
    monkeypatch.setenv("LUMINA_RT_CACHE", str(cache))
    runtime = Runtime.builtin()
    manifest = cache / "engines" / "builtin" / "manifest.json"
    assert json.loads(manifest.read_text()).get("v2a") is None
    result = runtime.generate(PROMPT, audio=True, audio_steps=3, progress=False)
    assert result.audio is not None and result.audio.shape[0] == 1
    assert json.loads(manifest.read_text())["v2a"] is not None

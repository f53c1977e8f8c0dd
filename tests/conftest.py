"""Shared pytest setup.

Without CUDA, the Triton kernels run in the Triton interpreter; TRITON_INTERPRET must be set before any
`@triton.jit` decorator runs, i.e. before lumina_rt.kernels' Triton modules are imported (conftest runs first).
"""

import os

import pytest
import torch

from lumina_rt.thirdparty import unshadow_kernels

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
unshadow_kernels()  # the checkout's kernels/ folder is on sys.path here; transformers imports the real `kernels`


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory):
    """A LUMINA_RT_CACHE holding the built-in model's engines (`lumina-rt generate --builtin`'s, no V2A engine),
    built once per test session; tests hand it to subprocesses with LUMINA_RT_CACHE=... or set it with monkeypatch."""
    from lumina_rt.builtin.engines import builtin_engines

    cache = tmp_path_factory.mktemp("builtin_cache")
    before = os.environ.get("LUMINA_RT_CACHE")
    os.environ["LUMINA_RT_CACHE"] = str(cache)
    try:
        builtin_engines("fp32")
    finally:
        if before is None:
            del os.environ["LUMINA_RT_CACHE"]
        else:
            os.environ["LUMINA_RT_CACHE"] = before
    return cache

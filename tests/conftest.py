"""Shared pytest setup.

Without CUDA, the Triton kernels run in the Triton interpreter; TRITON_INTERPRET must be set before any
`@triton.jit` decorator runs, i.e. before lumina_rt.kernels' Triton modules are imported (conftest runs first).
"""

import os

import torch

from lumina_rt.thirdparty import unshadow_kernels

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
unshadow_kernels()  # the checkout's kernels/ folder is on sys.path here; transformers imports the real `kernels`

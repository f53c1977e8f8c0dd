"""Build script: the Python packages plus the C++ fused-op extension (csrc/, pybind11 + OpenMP)."""

import glob
import os

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pybind11 is a build requirement; without it the C++ ops are simply not built
    Pybind11Extension = None
    build_ext = None

ext_modules = []
cmdclass = {}
sources = sorted(glob.glob("csrc/*.cpp"))
if Pybind11Extension is not None and sources and os.environ.get("LUMINA_RT_NO_CPP") != "1":
    # Portable by default: the compiler's baseline target (x86-64 / aarch64), so the wheel runs on any CPU of the
    # architecture; csrc/lumina_ops.cpp compiles its AVX2 / AVX-512 kernels per function and picks one from CPUID at
    # run time. LUMINA_RT_MARCH_NATIVE=1 compiles everything for this CPU (the binary may then fail on another).
    # LUMINA_RT_PORTABLE, the former opt-out of -march=native, is ignored: portable is the default now.
    compile_args = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("LUMINA_RT_MARCH_NATIVE") == "1":
        compile_args += ["-march=native", "-DLUMINA_RT_MARCH_NATIVE"]
    ext_modules.append(
        Pybind11Extension(
            "lumina_rt._C",
            sources,
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=["-fopenmp"],
        )
    )
    cmdclass["build_ext"] = build_ext

# lumina_rt and its subpackages, plus the top-level kernels/ and export/ folders installed as lumina_rt.kernels and
# lumina_rt.export (the repository keeps them at the top; the installed package holds them inside lumina_rt).
packages = [
    "lumina_rt",
    *(f"lumina_rt.{p}" for p in find_packages("lumina_rt")),
    "lumina_rt.kernels",
    "lumina_rt.export",
]

setup(
    packages=packages,
    package_dir={"lumina_rt": "lumina_rt", "lumina_rt.kernels": "kernels", "lumina_rt.export": "export"},
    package_data={"lumina_rt": ["builtin/*", "builtin/v2a/*", "serve/static/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

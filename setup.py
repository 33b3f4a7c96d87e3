"""Build script: the package, ``kernels/`` installed as ``omnifast.kernels``, and ``omnifast._C``.

The build parameters (sources, flags, when to build CUDA) live in ``omnifast/_build_config.py``;
this file only hands them to torch's extension tooling.
"""

import importlib.util
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
os.chdir(ROOT)


def _load_build_config():
    spec = importlib.util.spec_from_file_location(
        "_omnifast_build_config", os.path.join(ROOT, "omnifast", "_build_config.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _extensions():
    cfg = _load_build_config()
    if os.environ.get("OMNIFAST_BUILD_NO_EXT", "0").lower() in ("1", "true", "yes", "on"):
        print("omnifast: OMNIFAST_BUILD_NO_EXT is set; building the pure-Python package only",
              file=sys.stderr)
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda, why = cfg.cuda_build_decision()
    sources = cfg.cpu_sources()
    define_macros = []
    extra = {"cxx": list(cfg.CXX_FLAGS)}
    if with_cuda:
        print(f"omnifast: building CUDA sources: {why}", file=sys.stderr)
        sources += cfg.cuda_sources()
        define_macros.append(("OMNIFAST_WITH_CUDA", "1"))
        extra["nvcc"] = list(cfg.NVCC_FLAGS)
        ext_cls = CUDAExtension
    else:
        print(f"omnifast: skipping CUDA sources ({why}); building the C++ CPU kernels only",
              file=sys.stderr)
        ext_cls = CppExtension
    ext = ext_cls(
        name=cfg.EXTENSION_NAME,
        sources=sources,
        include_dirs=[os.path.join(ROOT, d) for d in ("csrc",)],
        define_macros=define_macros + [("OMNIFAST_SOURCE_DIGEST", f'"{cfg.source_digest()}"')],
        extra_compile_args=extra,
        extra_link_args=list(cfg.LD_FLAGS),
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

packages = find_packages(include=["omnifast", "omnifast.*"]) + ["omnifast.kernels"]

setup(
    packages=packages,
    package_dir={"omnifast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

"""Builds wslfast and its extension wslfast._C from csrc/ (the file list is csrc/sources.txt).

    pip install --no-build-isolation .          # torch comes from the environment

CUDA kernels compile whenever nvcc is found (CUDA_HOME, PATH or /usr/local/cuda), CPU-only otherwise.
Environment: WSLFAST_CUDA_ARCHS (default "90a;80"), MAX_JOBS (ninja parallelism),
WSLFAST_FORCE_CPU=1 (skip CUDA even where nvcc is found). Supported torch: 2.11 to 2.14 (built and tested
with 2.11.0 and 2.14.1); the C++ standard is named here (cxx_standard), not left to torch.
"""
import glob
import os
import re
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def set_cuda_home():
    """torch guesses CUDA_HOME from `which nvcc`; an nvcc wrapper in /usr/local/bin makes that /usr/local,
    which has no CUDA headers. Pick the first candidate that is a whole toolkit, unless the user said."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    import shutil

    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and \
                os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


set_cuda_home()  # before torch.utils.cpp_extension is imported: it reads CUDA_HOME once


def read_version():
    text = open(os.path.join(HERE, "wslfast", "_version.py")).read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def read_sources():
    """csrc/sources.txt split into (C++ sources, CUDA sources), paths relative to this folder."""
    cpp, cu = [], []
    for line in open(os.path.join(HERE, "csrc", "sources.txt")):
        line = line.split("#", 1)[0].strip()
        if line:
            (cu if line.endswith(".cu") else cpp).append(os.path.join("csrc", line))
    return cpp, cu


def cuda_arch_flags(archs):
    """'90a;80' -> nvcc -gencode flags: SASS for each arch, plus PTX of the oldest for newer GPUs."""
    names = [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]
    if not names:
        raise SystemExit("WSLFAST_CUDA_ARCHS is empty; give e.g. '90a;80'")
    flags = []
    for a in names:
        if not re.fullmatch(r"\d+[af]?", a):
            raise SystemExit(f"WSLFAST_CUDA_ARCHS: {a!r} is not an arch like 80, 90a or 100a")
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    plain = [a for a in names if a.isdigit()]
    if plain:
        oldest = min(plain, key=int)
        flags.append(f"-gencode=arch=compute_{oldest},code=compute_{oldest}")
    return names, flags


def cxx_standard():
    """The C++ standard for the sources that include torch's headers, named rather than left to torch's
    BuildExtension: C++17 where the installed torch's headers allow it (torch 2.11, the GPU machine's),
    C++20 where they require it (torch 2.14's ATen.h refuses anything older). The CUDA kernels include no
    torch headers and always build as C++17."""
    import torch

    aten = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "ATen.h")
    try:
        text = open(aten).read()
    except OSError:
        return "c++17"
    return "c++20" if "C++20 or later" in text else "c++17"


def wheel_cuda_include_dirs():
    """Include folders of the nvidia-* pip wheels torch depends on (cuBLAS/cuSPARSE headers that
    torch's CUDA headers include live there, not in the CUDA toolkit nvcc came with)."""
    import site

    roots = site.getsitepackages() + [site.getusersitepackages()]
    found = []
    for root in roots:
        for pattern in ("nvidia/*/include", "nvidia/*/*/include"):
            found += sorted(glob.glob(os.path.join(root, pattern)))
    wanted = ("cublas_v2.h", "cusparse.h")
    return [d for d in found if any(os.path.exists(os.path.join(d, h)) for h in wanted)]


def openmp_flags():
    """-fopenmp where torch itself runs on OpenMP (Linux wheels): ATen's at::parallel_for is an inline
    template that runs serially in a translation unit compiled without it, so our CPU kernels would use
    one core whatever torch.set_num_threads says. The library it links, libgomp.so.1, is the one torch
    has already loaded (same soname), so there is one OpenMP thread pool, torch's."""
    import torch

    if sys.platform != "linux" or not torch.backends.openmp.is_available():
        return []
    return ["-fopenmp"]


def extensions():
    import torch
    from torch.utils import cpp_extension

    cpp, cu = read_sources()
    force_cpu = os.environ.get("WSLFAST_FORCE_CPU", "0") not in ("", "0")
    with_cuda = bool(cu) and not force_cpu and cpp_extension.CUDA_HOME is not None
    # -fno-trapping-math lets GCC if-convert the clamps in our CPU loops, which then vectorize.
    cxx = ["-O3", f"-std={cxx_standard()}", "-fno-trapping-math", "-DWSLFAST_VERSION=\"%s\"" % read_version(),
           "-DWSLFAST_TORCH_VERSION=\"%s\"" % torch.__version__] + openmp_flags()
    link = openmp_flags()
    archs = []
    if with_cuda:
        archs, gencode = cuda_arch_flags(os.environ.get("WSLFAST_CUDA_ARCHS", "90a;80"))
        # torch adds its own arch flags unless told; ours come from WSLFAST_CUDA_ARCHS.
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(a.rstrip("af") for a in archs)
        defines = ["-DWSLFAST_WITH_CUDA", "-DWSLFAST_CUDA_ARCHS=\"%s\"" % ";".join(archs)]
        # -idirafter: wheel headers only fill what the toolkit lacks, they never shadow it.
        wheel_inc = [f for d in wheel_cuda_include_dirs() for f in ("-idirafter", d)]
        nvcc = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", *gencode, *defines]
        return [cpp_extension.CUDAExtension(
            "wslfast._C", cpp + cu,
            extra_compile_args={"cxx": cxx + defines + wheel_inc, "nvcc": nvcc}, extra_link_args=link,
        )], True
    del torch
    return [cpp_extension.CppExtension("wslfast._C", cpp, extra_compile_args={"cxx": cxx},
                                       extra_link_args=link)], False


# wslfast._dedup: the near-duplicate index's lookup loop, plain C++ and pybind11 with no torch, so that
# the data tools (and their Ray workers) never load libtorch.
DEDUP_SOURCES = ["csrc/dedup/hamming_index.cpp"]


def pybind11_include():
    """pybind11's headers: the pybind11 package's, else the copy every torch ships in torch/include (the GPU
    machine's environment has torch but may lack the package)."""
    try:
        import pybind11

        return pybind11.get_include()
    except ImportError:
        import torch

        return os.path.join(os.path.dirname(torch.__file__), "include")


def dedup_extension():
    from setuptools import Extension

    return Extension("wslfast._dedup", DEDUP_SOURCES, include_dirs=[pybind11_include()], language="c++",
                     depends=["csrc/dedup/hamming_lookup.h"], extra_compile_args=["-O3", "-std=c++17"])


def main():
    from torch.utils.cpp_extension import BuildExtension

    ext, with_cuda = extensions()
    ext.append(dedup_extension())
    print(f"wslfast: building {'with' if with_cuda else 'without'} CUDA", file=sys.stderr)
    setup(
        name="wslfast",
        version=read_version(),
        description="Weakly supervised pretraining of ResNeXt, RegNetY and ViT on hashtag- or caption-labelled "
                    "images, fast.",
        packages=find_packages(include=["wslfast", "wslfast.*"]),
        package_data={"wslfast": ["data/*.txt", "data/*.json", "data/*/*.txt", "data/*/*.json"]},
        ext_modules=ext,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        python_requires=">=3.10",
        install_requires=["numpy", "pyyaml", "pillow", "nltk", "jsonargparse>=4.30", "docstring-parser"],
        zip_safe=False,
    )


if __name__ == "__main__":
    main()

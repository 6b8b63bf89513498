"""The project's CUDA kernels built for the host and run on the CPU (README.md here): transform.py rewrites
csrc/, shim/ is the CUDA language and the SIMT scheduler, drivers/ call every launcher against float64
references, build.py builds (ASan+UBSan, TSan, plain) and caches under build/emu/."""

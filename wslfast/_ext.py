"""Loads the compiled extension wslfast._C (which registers the torch.ops.wslfast kernels)."""
import torch  # noqa: F401  (first: the extension links against libtorch)

try:
    from . import _C  # noqa: F401
except ImportError as err:  # pragma: no cover - only on a broken install
    raise ImportError(
        "wslfast._C, the compiled extension, could not be loaded "
        f"({err}). Build it with `pip install --no-build-isolation .` "
        "(or `python setup.py build_ext --inplace` in a checkout)."
    ) from err

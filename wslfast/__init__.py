"""wslfast: weakly supervised pretraining of ResNeXt, RegNetY and ViT on images labelled by hashtags or captions, fast.

Subpackages: wslfast.ops (fused kernels), wslfast.nn (modules over them), wslfast.models (ResNeXt-101
32xCd, SWAG's RegNetY and ViT), wslfast.data (inputs, WordNet labels, shards, DALI loaders), wslfast.engine
(what the train/ scripts share), wslfast.transfer (EMA, mixup, zero-shot). The map and the import rules:
README.md. The compiled extension wslfast._C is loaded by wslfast.ops on first use, so the data tools
import without it.
"""
from ._version import __version__

__all__ = ["__version__", "build_info"]


def build_info() -> dict:
    """What the compiled extension holds: version, torch, cuda_compiled, cuda_archs, ops."""
    import torch  # first: _C links against libtorch

    from . import _C  # loading it registers the torch.ops.wslfast kernels

    info = dict(_C.build_info())
    info["cuda_archs"] = [a for a in info.get("cuda_archs", "").split(";") if a]
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    return info

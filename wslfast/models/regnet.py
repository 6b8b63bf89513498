"""RegNetY (Radosavovic et al. 2020), SWAG's convolutional backbone, on torchvision's own RegNet code.

The model IS torchvision's `RegNet` (same module tree, same state_dict keys: stem.*, trunk_output.blockN.
blockN-i.{proj,f.a,f.b,f.se,f.c}.*, fc.*), so torchvision's checkpoints, SWAG's included
(`RegNet_Y_16GF_Weights.IMAGENET1K_SWAG_E2E_V1`, ...), load unchanged. Only the residual block is ours
(torchvision's `block_type` hook): with `fused=True` its conv+BN(+ReLU) pairs run through
wslfast.ops.conv_bn_relu, with the block's tail relu(bn_c(conv_c(x)) + shortcut) in the same pass as
bn_c, as for ResNeXt. The squeeze-and-excitation (SE) step between f.b and f.c stays stock PyTorch (a
global pool and two 1x1 convs on [B, C, 1, 1]: no conv+BN in it); so does the stem (3 input channels).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.regnet import BlockParams, RegNet, ResBottleneckBlock

from ..nn.conv_bn import fused_conv_bn

__all__ = ["RegNetY", "RegNetYBlock", "REGNET_Y_PARAMS", "regnet_y_block_params"]

# The RegNetY design parameters (depth d, initial width w_0, slope w_a, width multiplier w_m, group width
# g; SE ratio 0.25): Radosavovic et al. 2020, Table/appendix; torchvision's builders use the same numbers.
REGNET_Y_PARAMS = {
    "regnet_y_16gf": dict(depth=18, w_0=200, w_a=106.23, w_m=2.48, group_width=112, se_ratio=0.25),
    "regnet_y_32gf": dict(depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232, se_ratio=0.25),
    "regnet_y_128gf": dict(depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264, se_ratio=0.25),
}


def regnet_y_block_params(name: str) -> BlockParams:
    if name == "regnet_y_tiny":
        # One block per stage, widths 16..128, groups of 8 channels (2..16 groups), SE: every kind of layer
        # of the big ones (projection shortcut, grouped conv, SE), seconds on a CPU at 32-64 px.
        return BlockParams(depths=[1, 1, 1, 1], widths=[16, 32, 64, 128], group_widths=[8, 8, 8, 8],
                           bottleneck_multipliers=[1.0] * 4, strides=[2, 2, 2, 2], se_ratio=0.25)
    if name not in REGNET_Y_PARAMS:
        raise ValueError(f"unknown RegNetY {name!r}; choose one of regnet_y_tiny, {', '.join(REGNET_Y_PARAMS)}")
    with torch.device("cpu"):  # its width arithmetic is host-side (tolist), also under a meta-device context
        return BlockParams.from_init_params(**REGNET_Y_PARAMS[name])


class RegNetYBlock(ResBottleneckBlock):
    """torchvision's ResBottleneckBlock (same submodules) with a fused forward. Its `fused` flag is set by
    RegNetY.set_fused."""

    fused = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.fused:
            return super().forward(x)
        f = self.f
        shortcut = x if self.proj is None else fused_conv_bn(self.proj[0], self.proj[1], x, relu=False)
        out = fused_conv_bn(f.a[0], f.a[1], x, relu=True)
        out = fused_conv_bn(f.b[0], f.b[1], out, relu=True)
        if "se" in f._modules:
            out = f.se(out)
        # relu(bn_c(conv_c(out)) + shortcut): the block's tail in the pass that applies bn_c.
        return fused_conv_bn(f.c[0], f.c[1], out, relu=True, residual=shortcut)


class RegNetY(RegNet):
    """torchvision's RegNet with RegNetYBlock, forward_features, set_fused and zero-init residuals."""

    def __init__(self, block_params: BlockParams, num_classes: int = 1000, stem_width: int = 32,
                 fused: bool = True, zero_init_residual: bool = False):
        if num_classes < 1:
            raise ValueError(f"RegNetY: num_classes must be >= 1, got {num_classes}")
        super().__init__(block_params, num_classes=num_classes, stem_width=stem_width, block_type=RegNetYBlock,
                         norm_layer=partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1))
        self.num_features = self.fc.in_features
        if zero_init_residual:  # each block starts as relu(shortcut) (Goyal et al. 2017; pycls ZERO_INIT_FINAL_GAMMA)
            for m in self.modules():
                if isinstance(m, ResBottleneckBlock):
                    nn.init.zeros_(m.f.c[1].weight)
        self.set_fused(fused)

    def set_fused(self, fused: bool) -> "RegNetY":
        """Switches every block between the fused op and torchvision's own forward (same weights)."""
        self.fused = bool(fused)
        for m in self.modules():
            if isinstance(m, RegNetYBlock):
                m.fused = self.fused
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> average-pooled features [B, num_features]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"RegNetY: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        return torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))

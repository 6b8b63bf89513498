"""ResNeXt (Xie et al. 2017) with bottleneck blocks, the backbone of the WSL models.

The module tree and state_dict match torchvision's ResNet/Bottleneck key for key (conv1, bn1, layer1..4
with conv1/bn1/conv2/bn2/conv3/bn3/downsample.{0,1}, fc), so torchvision-format IG/WSL checkpoints load
unchanged. `fused=True` runs each conv+BN(+ReLU) of the blocks through wslfast.ops.conv_bn_relu;
`fused=False` runs the same modules as plain PyTorch layers. The stem stays plain PyTorch: its input
(images) needs no gradient and its 3 input channels suit no grouped kernel.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.conv_bn import fused_conv_bn

__all__ = ["ResNeXt", "Bottleneck"]


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 grouped (stride here, as torchvision's "ResNet v1.5") -> 1x1 expand, + shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, width_per_group: int,
                 downsample: Optional[nn.Sequential], fused: bool):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = _conv(inplanes, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            identity = x if self.downsample is None else fused_conv_bn(self.downsample[0], self.downsample[1], x,
                                                                       relu=False)
            out = fused_conv_bn(self.conv1, self.bn1, x, relu=True)
            out = fused_conv_bn(self.conv2, self.bn2, out, relu=True)
            # The block's tail, relu(bn3(conv3(out)) + identity), in the same pass as bn3.
            return fused_conv_bn(self.conv3, self.bn3, out, relu=True, residual=identity)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNeXt(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages of bottlenecks, global average pool, fc."""

    def __init__(self, layers: Sequence[int], groups: int, width_per_group: int, num_classes: int = 1000,
                 base_planes: int = 64, fused: bool = True, zero_init_residual: bool = True):
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"ResNeXt: layers must be four block counts >= 1, got {layers}")
        if groups < 1 or width_per_group < 1 or base_planes < 1 or num_classes < 1:
            raise ValueError("ResNeXt: groups, width_per_group, base_planes and num_classes must be >= 1")
        self.groups, self.width_per_group, self.fused = groups, width_per_group, fused
        self.inplanes = base_planes
        self.conv1 = nn.Conv2d(3, base_planes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(base_planes, layers[0], 1)
        self.layer2 = self._stage(base_planes * 2, layers[1], 2)
        self.layer3 = self._stage(base_planes * 4, layers[2], 2)
        self.layer4 = self._stage(base_planes * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = base_planes * 8 * Bottleneck.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)
        del self.inplanes

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(_conv(self.inplanes, planes * Bottleneck.expansion, 1, stride),
                                       nn.BatchNorm2d(planes * Bottleneck.expansion))
        mods = [Bottleneck(self.inplanes, planes, stride, self.groups, self.width_per_group, downsample, self.fused)]
        self.inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self.inplanes, planes, 1, self.groups, self.width_per_group, None, self.fused)
                 for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def set_fused(self, fused: bool) -> "ResNeXt":
        """Switches every block between the fused op and plain PyTorch layers (same weights)."""
        self.fused = bool(fused)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                m.fused = self.fused
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> average-pooled features [B, num_features] (2048 for the 101 family)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNeXt: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))

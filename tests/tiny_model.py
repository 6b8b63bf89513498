"""The smallest model with the interface of wslfast.models (forward_features + fc) and BatchNorm buffers (so a
skipped step has statistics to undo), and one process's DistInfo: shared by the engine and script tests."""
import torch
import torch.nn as nn

from wslfast.engine import DistInfo

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


class TinyNet(nn.Module):
    def __init__(self, classes=7):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.fc = nn.Linear(5, classes)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.fc(self.forward_features(x))

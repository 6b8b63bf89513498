"""Worker for test_sync_bn: each of 2 ranks takes half of a fixed batch through DDP + GlobalBatchNorm2d
for two SGD steps; rank 0 saves the resulting state_dict to argv[1]."""
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from wslfast.engine import convert_sync_batchnorm, setup_distributed


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, stride=2), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))


def make_batches(total_batch):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(total_batch, 3, 9, 9, generator=g) * 3 + 1, torch.randint(0, 4, (total_batch,), generator=g))
            for _ in range(2)]


def main():
    out, b = sys.argv[1], int(sys.argv[2])
    info = setup_distributed("cpu")
    net = convert_sync_batchnorm(make_net(), info.device)
    ddp = DDP(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    for x, y in make_batches(b * info.world_size):
        part = slice(info.rank * b, (info.rank + 1) * b)
        loss = nn.functional.cross_entropy(ddp(x[part]), y[part])
        loss.backward()
        opt.step()
        opt.zero_grad()
    if info.rank == 0:
        torch.save(net.state_dict(), out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""A DDP step with --sync-bn over 2 x b images equals one process over the same 2b images."""
import os

import pytest
import torch
import torch.nn as nn

from tests.engine.dist_launch import torchrun
from tests.engine.sync_bn_worker import make_batches, make_net
from wslfast.engine import GlobalBatchNorm2d, convert_sync_batchnorm

WORKER = os.path.join(os.path.dirname(__file__), "sync_bn_worker.py")


def test_conversion_keeps_state_and_is_plain_bn_without_group():
    net = make_net()
    net[1].running_mean.fill_(0.5)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    conv = convert_sync_batchnorm(make_net(), torch.device("cpu"))
    conv.load_state_dict(sd)
    assert isinstance(conv[1], GlobalBatchNorm2d) and isinstance(conv[4], GlobalBatchNorm2d)
    assert set(conv.state_dict()) == set(sd)
    x = torch.randn(4, 3, 9, 9)
    ref = make_net()
    ref.load_state_dict(sd)
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)


@pytest.mark.dist
@pytest.mark.slow
def test_ddp_sync_bn_two_ranks_equals_one_process(tmp_path):
    b = 3
    out = tmp_path / "rank0.pt"
    proc = torchrun(WORKER, [out, b])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = torch.load(out, weights_only=True)

    # Reference: one process, plain BatchNorm over all 2b images, same init, same steps, float64.
    ref = make_net().double()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    for x, y in make_batches(2 * b):
        nn.functional.cross_entropy(ref(x.double()), y).backward()
        opt.step()
        opt.zero_grad()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got[k].to(v.dtype), v, rtol=1e-4, atol=1e-5, msg=k)

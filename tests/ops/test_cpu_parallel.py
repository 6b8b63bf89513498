"""The extension's CPU kernels run on torch's threads: ATen's at::parallel_for is an inline template that
runs serially where the extension was compiled without the OpenMP torch runs on (setup.py openmp_flags),
which once left every CPU kernel of ours on one core."""
import sys

import pytest
import torch

import wslfast

_C = pytest.importorskip("wslfast._C")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(sys.platform != "linux" or not torch.backends.openmp.is_available(),
                    reason="torch runs on OpenMP only in its Linux builds")
def test_parallel_for_uses_every_thread(two_threads):
    assert wslfast.build_info()["openmp"] is True
    assert _C.cpu_parallel_threads(64) == 2  # OpenMP starts the threads asked for, cores or not
    assert _C.cpu_parallel_threads(1) == 1  # one item: one chunk
    with pytest.raises(ValueError, match="items must be >= 1"):
        _C.cpu_parallel_threads(0)


@pytest.mark.skipif(sys.platform != "linux", reason="as above")
def test_check_reports_the_thread_row(two_threads):
    from wslfast.check import cpu_threads_row

    row = cpu_threads_row()
    assert row.ok is True and row.note == "at::parallel_for ran on 2 of 2 threads"

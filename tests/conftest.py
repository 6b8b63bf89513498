"""Shared test set-up: the `cuda` marker skips cleanly where no CUDA device is present, and the suite runs on
every core by default (pytest-xdist, when installed) so `pytest -q` takes minutes.

Parallel by default: `pytest` alone runs as `pytest -n <cores, at most 8> --dist loadgroup`; any -n given on
the command line wins (`-n0`: one process, as before), and so does `-p no:xdist` or a missing pytest-xdist.
`loadgroup` hands out tests one by one, except those marked `@pytest.mark.xdist_group(name)`, which run on
one worker together: tests that share an expensive module fixture, or that must not run beside each other.
Expensive session fixtures are built once for all workers: tests/shared_build.py.
"""
import os

import pytest
import torch

MAX_WORKERS = 8  # past this, start-up (each worker imports torch) outweighs the gain for this suite


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Turn on xdist unless the command line chose (runs before xdist's own hook, which expands -n)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    if hasattr(config, "workerinput"):  # a worker parses the command line, not what we chose: tell it
        config.option.loadgroup = config.workerinput.get("wslfast_dist") == "loadgroup"
        return
    opt = config.option
    if opt.numprocesses is not None or opt.tx or opt.usepdb or opt.collectonly or getattr(opt, "looponfail", False):
        return
    workers = min(_cores(), MAX_WORKERS)
    if workers > 1:
        opt.numprocesses = workers
        if opt.dist == "no" and not getattr(opt, "distload", False):
            opt.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist, on the controller: a worker learns the distribution mode chosen above (it sets the groups)."""
    node.workerinput["wslfast_dist"] = node.config.option.dist


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):
        # Slow tests first (stable: modules stay in order), so no minute-long test starts last and runs
        # alone at the end; every worker sorts alike, as xdist requires.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (runs on the GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class _GroupSuffix:
    """loadgroup tells xdist's controller each test's group by a suffix on its node id, `id@group`. xdist 3.8
    sets it on an attribute pytest 9.2 no longer reads (the groups are then silently ignored): set it here."""

    @pytest.hookimpl(trylast=True)  # after xdist's own hook, which should have done it
    def pytest_collection_modifyitems(self, config, items):
        if not getattr(config.option, "loadgroup", False):
            return
        for item in items:
            names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                            for m in item.iter_markers("xdist_group")})
            if names and "@" not in item.nodeid.rpartition("]")[2]:
                nodeid = f"{item.nodeid}@{'_'.join(names)}"
                if hasattr(item, "_id"):  # pytest >= 9.2: a NodeId
                    from _pytest.nodeid import NodeId

                    item._id = NodeId.parse(nodeid)
                else:
                    item._nodeid = nodeid


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        config.pluginmanager.register(_GroupSuffix(), "wslfast-xdist-group-suffix")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

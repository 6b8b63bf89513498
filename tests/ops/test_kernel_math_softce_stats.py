"""The CUDA kernels' own soft-CE and BN-statistics helpers (csrc/soft_ce/soft_ce_math.h,
csrc/conv_bn/conv_bn_stats.h), compiled for the host and run on the CPU against float64 references: the
merge of two (max, sum of exp) states keeps NaN, CSR rows are checked and clamped, splits cover the
vocabulary once, Chan's merge equals two-pass statistics. The kernels that use them run whole in the emulated
tests (tests/ops/test_kernels_emulated.py): the forward's per-thread state and block merge on finite, NaN
and -inf rows (softce_forward), the statistics epilogue and finalize at mean/std up to 10^4 with constant
and NaN channels (conv_fast_forward), the simple path's Welford partials (conv_simple)."""
import math

import numpy as np
import pytest
import torch

from host_math import library, ptr


def merge(a, b):
    out = np.zeros(2, np.float32)
    library().softce_merge(*a, *b, ptr(out))
    return float(out[0]), float(out[1])


def test_merge_is_exact_on_empties_and_keeps_nan_either_side():
    empty = (-math.inf, 0.0)
    assert merge(empty, empty) == empty
    assert merge(empty, (1.5, 2.0)) == (1.5, 2.0) and merge((1.5, 2.0), empty) == (1.5, 2.0)
    m, s = merge((0.0, 1.0), (math.log(2.0), 1.0))
    assert m == pytest.approx(math.log(2.0)) and s == pytest.approx(1.5)
    for a, b in [((math.nan, math.nan), (3.0, 1.0)), ((3.0, 1.0), (math.nan, math.nan)),
                 (empty, (math.nan, math.nan)), ((3.0, math.nan), (1.0, 1.0))]:
        assert math.isnan(sum(merge(a, b))), (a, b)


def check_rows(indices, offsets):
    ids, offs = torch.tensor(indices, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)
    rows = offs.numel() - 1
    out = torch.zeros(3 * rows, dtype=torch.int64)
    library().softce_check_rows(ptr(ids), ptr(offs), rows, ids.numel(), ptr(out))
    return out.view(rows, 3).tolist()


def test_canonical_rows_pass_with_their_ranges():
    assert check_rows([1, 5, 0, 2, 3], [0, 2, 2, 5]) == [[1, 0, 2], [1, 2, 2], [1, 2, 5]]


@pytest.mark.parametrize("indices,offsets,bad_rows", [
    ([5, 1], [0, 2], [0]),                     # unsorted
    ([1, 1, 2], [0, 2, 3], [0]),               # duplicate
    ([-3, 1], [0, 1, 2], [0]),                 # negative id
    ([0, 1, 2], [0, 3, 1, 3], [1]),            # offsets decrease
    ([0, 1], [1, 2], [0]),                     # does not start at 0
    ([0, 1], [0, 1, 99], [1]),                 # ends past nnz
    ([0, 1], [0, -7, 2], [0, 1]),              # negative offset
    ([0, 1, 2], [0, 1, 2], [1]),               # ends before nnz
])
def test_broken_rows_are_flagged_and_their_ranges_stay_inside_the_targets(indices, offsets, bad_rows):
    res = check_rows(indices, offsets)
    assert [r for r, (ok, _, _) in enumerate(res) if not ok] == bad_rows
    nnz = len(indices)
    assert all(0 <= b <= e <= nnz for _, b, e in res)


def test_split_plan_covers_every_column_once():
    lib = library()
    out = np.zeros(2, np.int64)
    for cols in (0, 1, 7, 8, 9, 1500, 17011, 131073, 1_000_003):
        for unit in (1, 4, 8):
            for splits in (1, 2, 3, 7, 64, 256):
                seen = np.zeros(cols, np.int64)
                for sp in range(splits):
                    lib.softce_split_range(cols, unit, splits, sp, ptr(out))
                    c0, c1 = out
                    assert 0 <= c0 <= c1 <= cols
                    assert c0 % unit == 0 and (c1 % unit == 0 or c1 == cols)
                    seen[c0:c1] += 1
                assert (seen == 1).all(), (cols, unit, splits)


def test_split_choice_fills_the_gpu_only_where_rows_do_not():
    f = library().softce_choose_splits
    assert f(1024, 1_000_000, 132) == 1          # enough rows: one block per row
    assert f(1, 1_000_000, 132) == 122           # B = 1, V = 1M: 8192+ columns per split
    assert f(1, 100_000_000, 132) == 256         # capped
    assert f(32, 17_000, 132) == 2               # the paper's per-GPU batch at V = 17k
    assert f(32, 1_500, 132) == 1                # small V: the split's merge would cost more than it saves
    for rows, cols in [(1, 8192), (3, 50_000), (24, 300_000), (64, 1 << 20)]:
        s = f(rows, cols, 132)
        assert 1 <= s <= 256 and (s == 1 or cols // s >= 8192)


# ---- BN statistics ----

def chan(a, b):
    a, b, out = (np.asarray(v, np.float64) for v in (a, b, np.zeros(3)))
    library().stats_chan_merge(ptr(a), ptr(b), ptr(out))
    return out


def stats(x):
    return np.array([x.size, x.mean(), ((x - x.mean()) ** 2).sum()]) if x.size else np.zeros(3)


def test_chan_merge_equals_two_pass_statistics_of_the_union():
    rng = np.random.default_rng(1)
    for na, nb in [(0, 5), (5, 0), (1, 1), (128, 3), (1000, 1000)]:
        a, b = rng.standard_normal(na) * 3 + 7, rng.standard_normal(nb) * 0.1 - 2
        got, want = chan(stats(a), stats(b)), stats(np.concatenate([a, b]))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

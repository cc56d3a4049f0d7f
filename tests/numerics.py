"""Equivalence checks whose tolerance is a property of the computation, not of the CPU the suite first ran on.

Two programs that compute the same thing in a different order (sharded vs unsharded, scanned vs unrolled, a fused
kernel vs plain XLA, one process vs two) differ by rounding. Rounding is relative to the magnitude of the terms that
were summed, not to the element that came out: an element near zero in a sum of large terms carries the rounding of
those terms. So each element is compared against the scale of its whole tensor:

    |actual - expected| <= ulps * eps(dtype) * max|expected|

``ulps`` counts rounding steps with headroom: about the number of reduction levels and chained operations between
the inputs and the compared value (each adds a few eps of the scale), times a safety margin. It is written beside
each call, derived from what the test computes, so a reader sees why the bound is what it is.
"""
from __future__ import annotations

import os

import jax
import numpy as np

# Set to a file path to append every comparison's measured error (in ulps) there: how the margins were chosen.
_LOG = os.environ.get("STIV_TEST_ULPS_LOG")


def eps(dtype) -> float:
    """Machine epsilon of a floating dtype (float32 for integer and bool inputs, which must then match exactly)."""
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0


def assert_close(actual, expected, *, ulps: float, what: str = "", precision=None) -> float:
    """Asserts ``|actual - expected| <= ulps * eps * max|expected|`` elementwise; returns the error in those units.

    Args:
      actual: the array under test.
      expected: the reference array (same shape); its dtype and scale set the tolerance. Computations in a lower
        precision than their inputs (bf16 compute) pass ``expected`` in that dtype or raise ``ulps`` accordingly.
      ulps: allowed error in units of ``eps(precision) * max|expected|``.
      what: a name for the message (a parameter path).
      precision: the dtype whose rounding bounds the difference (default: ``expected``'s), e.g. float16 when one
        side went through float16 storage.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return 0.0
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    assert np.isfinite(a).all() == np.isfinite(e).all(), f"{what}: non-finite values differ"
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    unit = eps(precision or expected.dtype) * scale
    error = float(np.max(np.abs(a - e))) if e.size else 0.0
    if unit == 0.0:  # an all-zero reference: only an exact zero matches
        assert error == 0.0, f"{what}: expected all zeros, max |actual| = {error:.3g}"
        return 0.0
    measured = error / unit
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]} {what} {measured:.2f} {ulps}\n")
    assert measured <= ulps, (f"{what}: max error {error:.3g} is {measured:.1f} eps of the tensor's scale "
                              f"{scale:.3g} ({expected.dtype}); allowed {ulps}")
    return measured


def assert_trees_close(actual, expected, *, ulps: float, what: str = "", precision=None) -> float:
    """``assert_close`` on every leaf of two pytrees of the same structure; returns the largest error in ulps."""
    paths = jax.tree_util.tree_flatten_with_path(actual)[0]
    expected_leaves = jax.tree.leaves(expected)
    assert len(paths) == len(expected_leaves), f"{what}: {len(paths)} leaves vs {len(expected_leaves)}"
    return max([assert_close(x, y, ulps=ulps, what=f"{what}{jax.tree_util.keystr(path)}",
                             precision=precision)
                for (path, x), y in zip(paths, expected_leaves)], default=0.0)

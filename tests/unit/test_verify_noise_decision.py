"""The reference-noise decision of compiler/verify.py on arrays: an artifact that fails the plain
tolerance is accepted only where onnxruntime disagrees with itself beyond the tolerance under
one-ulp input nudges, and one nudged run dominates the artifact's errors rank by rank."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.verify import judge_reference_noise, nudge_feed

TOL = 1e-3


def _moved(base: np.ndarray, rng: np.random.Generator, fraction: float, lo: float, hi: float
           ) -> np.ndarray:
    """``base`` with ``fraction`` of its elements moved by a relative error in [lo, hi)."""
    out = base.astype(np.float64).copy()
    idx = rng.choice(base.size, round(fraction * base.size), replace=False)
    rel = rng.uniform(lo, hi, idx.size)
    out.flat[idx] += rel * (np.abs(out.flat[idx]) + 1.0) * rng.choice([-1.0, 1.0], idx.size)
    return out.astype(base.dtype)


@pytest.fixture
def expected() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 1000)).astype(np.float32)


def _ulp_noise(e: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.nextafter(e, np.where(rng.integers(0, 2, e.shape) > 0, np.inf, -np.inf)
                        .astype(e.dtype))


def _ill(e: np.ndarray) -> list[list[np.ndarray]]:
    """Nudged onnxruntime runs of an ill-conditioned model: sparse, as observed (most nudges
    cross no rounding tie and change nothing; one moves half of the output by up to 10%)."""
    rng = np.random.default_rng(1)
    return [[e.copy()], [_moved(e, rng, 0.5, 0.0, 0.1)], [e.copy()]]


def test_well_conditioned_model_with_a_real_error_fails(expected):
    actual = _moved(expected, np.random.default_rng(2), 0.002, 0.005, 0.01)  # 8 elements wrong
    v = judge_reference_noise([actual], [expected],
                              [[_ulp_noise(expected, s)] for s in range(8)], TOL)
    assert not v.accepted and not v.ill_conditioned
    assert v.record["dominating_run"] is None and v.record["runs_beyond_tolerance"] == 0
    assert "well-conditioned" in v.summary


def test_ill_conditioned_model_within_the_noise_is_accepted_and_recorded(expected):
    actual = _moved(expected, np.random.default_rng(3), 0.05, 0.0, 0.05)
    v = judge_reference_noise([actual], [expected], _ill(expected), TOL)
    assert v.accepted and v.ill_conditioned
    r = v.record
    assert r["runs"] == 3 and r["runs_beyond_tolerance"] == 1 and r["unusable_runs"] == 0
    assert r["dominating_run"]["run"] == 1
    assert 0.09 < r["max_rel_error"] <= 0.1
    assert r["ours_fraction_beyond_tolerance"] < r["fraction_beyond_tolerance"] < 0.51
    assert "within that noise" in v.summary


@pytest.mark.parametrize("how", ["max", "fraction", "tail"])
def test_ill_conditioned_model_beyond_the_noise_fails(expected, how):
    rng = np.random.default_rng(4)
    if how == "max":  # a few elements far beyond anything onnxruntime does to itself
        actual = _moved(_moved(expected, rng, 0.05, 0.0, 0.05), rng, 0.001, 0.3, 0.5)
    elif how == "fraction":  # small errors, but on more elements than onnxruntime's
        actual = _moved(expected, rng, 0.8, 0.002, 0.01)
    else:  # max (0.095 < 0.1) and fraction (40% < 50%) within, but a heavier tail:
        actual = _moved(expected, rng, 0.4, 0.09, 0.095)  # only ~5% of theirs exceed 0.09
    v = judge_reference_noise([actual], [expected], _ill(expected), TOL)
    assert v.ill_conditioned and not v.accepted
    assert "exceed that noise" in v.summary


def test_a_wrong_output_cannot_hide_behind_another_outputs_noise(expected):
    other = expected[:2] * 3
    actual = [_moved(expected, np.random.default_rng(5), 0.01, 0.0, 0.01),
              _moved(other, np.random.default_rng(6), 0.001, 0.005, 0.01)]
    runs = [[p[0], _ulp_noise(other, k)] for k, p in enumerate(_ill(expected))]
    v = judge_reference_noise(actual, [expected, other], runs, TOL)
    assert v.ill_conditioned and not v.accepted
    # the same, with the second output right: accepted
    v = judge_reference_noise([actual[0], other], [expected, other], runs, TOL)
    assert v.accepted


def test_non_finite_outputs_are_never_noise(expected):
    actual = _moved(expected, np.random.default_rng(7), 0.01, 0.0, 0.01)
    actual[0, 0] = np.nan
    assert not judge_reference_noise([actual], [expected], _ill(expected), TOL).accepted
    bad_run = _ill(expected)
    bad_run[1][0] = bad_run[1][0].copy()
    bad_run[1][0][0, 0] = np.inf  # an unusable run is no floor
    v = judge_reference_noise([_moved(expected, np.random.default_rng(7), 0.01, 0.0, 0.01)],
                              [expected], bad_run, TOL)
    assert not v.accepted and v.record["unusable_runs"] == 1


def test_nudge_feed_moves_every_float_element_one_ulp_and_nothing_else():
    import ml_dtypes

    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((3, 50)).astype(np.float32),
            "h": rng.standard_normal(40).astype(np.float16),
            "b": rng.standard_normal(40).astype(ml_dtypes.bfloat16),
            "ids": rng.integers(0, 9, (2, 7)), "mask": rng.integers(0, 2, 5).astype(bool)}
    feed["x"][0, :3] = [0.0, -0.0, 1.0]
    a, b = nudge_feed(feed, 0, 0), nudge_feed(feed, 0, 1)
    for name, bits in [("x", np.uint32), ("h", np.uint16), ("b", np.uint16)]:
        x, y = feed[name], a[name]
        assert y.dtype == x.dtype and (y != x).all()
        up = np.nextafter(x, np.array(np.inf, x.dtype))
        down = np.nextafter(x, np.array(-np.inf, x.dtype))
        assert ((y.view(bits) == up.view(bits)) | (y.view(bits) == down.view(bits))).all()
    assert {int(np.sign(d)) for d in (a["x"] - feed["x"]).ravel()} == {-1, 1}
    assert (a["ids"] is feed["ids"]) and (a["mask"] is feed["mask"])
    assert (nudge_feed(feed, 0, 0)["x"] == a["x"]).all()  # seeded
    assert (b["x"] != a["x"]).any()  # another run, other directions


def test_the_plain_measure_never_drops_a_nan():
    """An artifact returning NaN where onnxruntime has a number used to pass verification:
    the NaN error was dropped by Python's max (max(0.0, nan) is 0.0)."""
    from compiler.verify import _rel_errors

    e = np.array([1.0, np.inf, -np.inf, np.nan, 2.0, 3.0], np.float32)
    a = np.array([1.0, np.inf, -np.inf, np.nan, 2.0, 3.0], np.float32)
    rels, max_abs = _rel_errors([a], [e])
    assert max_abs == 0.0 and not rels[0].any()  # equal, also the same infinity and NaN
    for i, bad in [(0, np.nan), (0, np.inf), (1, 1.0), (1, -np.inf), (3, 0.0), (4, np.nan)]:
        b = a.copy()
        b[i] = bad
        rels, max_abs = _rel_errors([b], [e])
        assert rels[0][i] == np.inf and max_abs == np.inf, (i, bad)
        assert np.count_nonzero(rels[0]) == 1

"""IRT: response probabilities, information, calibration by marginal maximum likelihood, EAP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners import irt
from learners.irt import ItemParams

N_PERSONS, N_ITEMS = 1000, 50


@pytest.fixture(scope="module")
def simulated_2pl() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1000 persons x 50 items answered under a known 2PL (fixed seed)."""
    rng = np.random.default_rng(20240607)
    theta = rng.standard_normal(N_PERSONS)
    a = rng.uniform(0.6, 2.0, N_ITEMS)
    b = rng.uniform(-2.0, 2.0, N_ITEMS)
    p = 1.0 / (1.0 + np.exp(-a[None, :] * (theta[:, None] - b[None, :])))
    responses = (rng.random((N_PERSONS, N_ITEMS)) < p).astype(np.float64)
    return responses, theta, a, b


@pytest.fixture(scope="module")
def calibrated(simulated_2pl: tuple[np.ndarray, ...]) -> irt.Calibration:
    return irt.calibrate(simulated_2pl[0], model="2PL")


def test_it_matches_hand_computed_probabilities() -> None:
    # 1PL at theta = b: a coin flip.
    assert irt.probability(0.0) == pytest.approx(0.5)
    # 1PL, theta - b = -1: 1 / (1 + e) = 0.268941...
    assert irt.probability(-0.5, b=0.5) == pytest.approx(0.2689414213699951)
    # 2PL, a = 1.7, theta - b = 1: 1 / (1 + e^-1.7) = 0.845534...
    assert irt.probability(1.5, a=1.7, b=0.5) == pytest.approx(0.8455347349164652)
    # 3PL, a = 1.2, theta - b = 1, c = 0.2: 0.2 + 0.8 / (1 + e^-1.2) = 0.814819...
    assert irt.probability(0.5, a=1.2, b=-0.5, c=0.2) == pytest.approx(0.8148198267992142)
    assert ItemParams(a=1.2, b=-0.5, c=0.2).probability(0.5) == pytest.approx(0.8148198267992142)
    # Vectorised over theta.
    values = irt.probability(np.array([-0.5, 0.0, 1.5]), a=1.7, b=0.5)
    assert values == pytest.approx([1 / (1 + math.exp(1.7)), 1 / (1 + math.exp(0.85)), 0.84553473])


def test_it_gives_the_closed_form_information() -> None:
    # 2PL at theta = b: a^2 * 1/2 * 1/2.
    assert irt.information(0.0, a=1.5, b=0.0) == pytest.approx(0.5625)
    thetas = np.linspace(-3.0, 3.0, 13)
    for a, b, c in [(1.0, 0.0, 0.0), (1.8, -0.7, 0.0), (0.9, 1.2, 0.25)]:
        p = irt.probability(thetas, a, b, c)
        closed = a**2 * ((1 - p) / p) * ((p - c) / (1 - c)) ** 2
        assert irt.information(thetas, a, b, c) == pytest.approx(closed, rel=1e-9)
        # Fisher information is p'(theta)^2 / (p q): check against a numerical derivative.
        h = 1e-5
        slope = (irt.probability(thetas + h, a, b, c) - irt.probability(thetas - h, a, b, c)) / (
            2 * h
        )
        assert irt.information(thetas, a, b, c) == pytest.approx(slope**2 / (p * (1 - p)), rel=1e-5)
    # With c = 0 information peaks at theta = b.
    grid = np.linspace(-4, 4, 801)
    assert grid[np.argmax(irt.information(grid, 1.3, 0.6))] == pytest.approx(0.6)


@settings(max_examples=200, deadline=None)
@given(
    theta=st.floats(-10, 10),
    a=st.floats(0.2, 4.0),
    b=st.floats(-4.0, 4.0),
    c=st.floats(0.0, 0.35),
)
def test_it_keeps_probabilities_in_range_and_information_non_negative(
    theta: float, a: float, b: float, c: float
) -> None:
    p = irt.probability(theta, a, b, c)
    assert c <= p <= 1.0
    assert irt.probability(theta + 0.5, a, b, c) >= p  # never falls as ability rises
    information = irt.information(theta, a, b, c)
    assert information >= 0.0
    assert math.isfinite(information)
    assert information <= a * a / 4 + 1e-12  # at most the 2PL peak a^2 / 4


def test_it_recovers_2pl_parameters(
    simulated_2pl: tuple[np.ndarray, ...], calibrated: irt.Calibration
) -> None:
    _, _, a, b = simulated_2pl
    estimated_a = np.array([item.a for item in calibrated.items])
    estimated_b = np.array([item.b for item in calibrated.items])
    corr_b = float(np.corrcoef(b, estimated_b)[0, 1])
    corr_a = float(np.corrcoef(a, estimated_a)[0, 1])
    print(f"2PL recovery 1000 x 50: corr(b) = {corr_b:.4f}, corr(a) = {corr_a:.4f}")
    assert calibrated.converged
    assert corr_b >= 0.95
    assert corr_a >= 0.8
    # The scale is fixed by the N(0, 1) prior, so estimates are close in value too.
    assert float(np.sqrt(np.mean((estimated_b - b) ** 2))) < 0.3
    assert all(0.2 <= item.a <= 4.0 and item.c == 0.0 for item in calibrated.items)


def test_it_is_deterministic_and_reads_triples_with_gaps(
    simulated_2pl: tuple[np.ndarray, ...], calibrated: irt.Calibration
) -> None:
    responses = simulated_2pl[0]
    assert irt.calibrate(responses, model="2PL") == calibrated
    # Half the answers missing, given as (person, item, correct) triples.
    keep = np.random.default_rng(3).random(responses.shape) < 0.5
    triples = [
        (int(i), int(j), bool(responses[i, j])) for i, j in zip(*np.nonzero(keep), strict=True)
    ]
    from_triples = irt.calibrate(triples, n_items=N_ITEMS)
    gappy = np.where(keep, responses, np.nan)
    assert from_triples == irt.calibrate(gappy)
    b = simulated_2pl[3]
    estimated_b = np.array([item.b for item in from_triples.items])
    assert float(np.corrcoef(b, estimated_b)[0, 1]) >= 0.95


def test_it_calibrates_1pl_and_3pl_within_bounds(simulated_2pl: tuple[np.ndarray, ...]) -> None:
    responses, _, _, b = simulated_2pl
    one = irt.calibrate(responses[:300], model="1PL")
    assert all(item.a == 1.0 and item.c == 0.0 for item in one.items)
    assert float(np.corrcoef(b, [item.b for item in one.items])[0, 1]) >= 0.95
    three = irt.calibrate(responses[:300], model="3PL")
    assert all(0.0 <= item.c <= 0.35 and 0.2 <= item.a <= 4.0 for item in three.items)
    assert all(-4.0 <= item.b <= 4.0 for item in three.items)
    assert float(np.corrcoef(b, [item.b for item in three.items])[0, 1]) >= 0.9


def test_it_estimates_ability_by_eap(
    simulated_2pl: tuple[np.ndarray, ...], calibrated: irt.Calibration
) -> None:
    responses, theta, _, _ = simulated_2pl
    means, sds = irt.eap_matrix(responses, calibrated.items)
    assert float(np.corrcoef(theta, means)[0, 1]) >= 0.9
    assert np.all((sds > 0.1) & (sds < 0.6))
    # One learner: the same as the matrix row; fewer answers, wider posterior.
    row = [bool(value) for value in responses[0]]
    single = irt.eap(calibrated.items, row)
    assert single.theta == pytest.approx(means[0])
    assert single.sd == pytest.approx(sds[0])
    half = irt.eap(calibrated.items, [*row[:10], *[None] * (N_ITEMS - 10)])
    assert half.sd > single.sd
    # No answers: the prior.
    nothing = irt.eap(calibrated.items, [None] * N_ITEMS)
    assert nothing.theta == pytest.approx(0.0, abs=1e-9)
    assert nothing.sd == pytest.approx(1.0, abs=0.01)
    # All right beats all wrong.
    items = [ItemParams(a=1.0, b=float(b)) for b in np.linspace(-1, 1, 5)]
    assert irt.eap(items, [True] * 5).theta > 0.5 > -0.5 > irt.eap(items, [False] * 5).theta


def test_it_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="only 0, 1 and NaN"):
        irt.calibrate(np.array([[0.0, 2.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="model"):
        irt.calibrate(np.zeros((2, 2)), model="4PL")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        irt.response_matrix([(-1, 0, True)])
    with pytest.raises(ValueError, match="positive"):
        ItemParams(a=0.0)
    with pytest.raises(ValueError, match="responses for"):
        irt.eap([ItemParams()], [True, False])

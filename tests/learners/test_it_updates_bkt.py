"""The BKT update of one learner: hand-computed values, properties, the log-odds live state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners import bkt

PARAMS = bkt.BKTParams(p_l0=0.3, p_t=0.15, p_g=0.2, p_s=0.1)
FORGETFUL = bkt.BKTParams(p_l0=0.3, p_t=0.15, p_g=0.2, p_s=0.1, p_f=0.05)

probability = st.floats(min_value=0.0, max_value=1.0)
positive_probability = st.floats(min_value=1e-9, max_value=1.0 - 1e-9)


@st.composite
def params_strategy(draw: st.DrawFn) -> bkt.BKTParams:
    guess = draw(st.floats(min_value=0.0, max_value=0.499))
    slip = draw(st.floats(min_value=0.0, max_value=0.499))
    forget = draw(probability)
    learn = draw(st.floats(min_value=0.0, max_value=1.0 - forget))
    return bkt.BKTParams(p_l0=draw(probability), p_t=learn, p_g=guess, p_s=slip, p_f=forget)


def test_it_predicts_a_correct_answer_by_hand() -> None:
    # 0.3 * (1 - 0.1) + (1 - 0.3) * 0.2 = 0.27 + 0.14 = 0.41
    assert bkt.predict_correct(0.3, PARAMS) == pytest.approx(0.41, abs=1e-15)


def test_it_updates_after_a_correct_answer_by_hand() -> None:
    # posterior = 0.27 / 0.41 = 27/41 = 0.658536585...
    assert bkt.posterior(0.3, True, PARAMS) == pytest.approx(27 / 41, abs=1e-15)
    # learning: 27/41 + (14/41) * 0.15 = (27 + 2.1) / 41 = 29.1/41 = 0.709756097...
    assert bkt.update(0.3, True, PARAMS) == pytest.approx(0.7097560975609756, abs=1e-15)


def test_it_updates_after_a_wrong_answer_by_hand() -> None:
    # posterior = 0.3 * 0.1 / (0.3 * 0.1 + 0.7 * 0.8) = 0.03 / 0.59 = 0.050847457...
    assert bkt.posterior(0.3, False, PARAMS) == pytest.approx(0.03 / 0.59, abs=1e-15)
    # learning: 3/59 + (56/59) * 0.15 = (3 + 8.4) / 59 = 11.4/59 = 0.193220338...
    assert bkt.update(0.3, False, PARAMS) == pytest.approx(0.1932203389830508, abs=1e-15)


def test_it_forgets_by_hand() -> None:
    # posterior 27/41, then 27/41 * (1 - 0.05) + 14/41 * 0.15 = (25.65 + 2.1)/41 = 27.75/41
    assert bkt.update(0.3, True, FORGETFUL) == pytest.approx(27.75 / 41, abs=1e-15)
    assert bkt.transition(1.0, FORGETFUL) == pytest.approx(0.95, abs=1e-15)
    assert bkt.transition(0.0, FORGETFUL) == pytest.approx(0.15, abs=1e-15)


def test_it_keeps_the_state_when_an_answer_is_impossible() -> None:
    certain = bkt.BKTParams(p_l0=0.0, p_t=0.0, p_g=0.0, p_s=0.0)
    assert bkt.posterior(0.0, True, certain) == 0.0
    assert bkt.posterior(1.0, False, certain) == 1.0
    assert bkt.update_logit(-math.inf, True, certain) == -math.inf
    assert bkt.update_logit(math.inf, False, certain) == math.inf


@given(p=probability, correct=st.booleans(), params=params_strategy())
@settings(max_examples=300, database=None)
def test_it_keeps_mastery_a_probability(p: float, correct: bool, params: bkt.BKTParams) -> None:
    new = bkt.update(p, correct, params)
    assert 0.0 <= new <= 1.0
    assert 0.0 <= bkt.from_logit(bkt.update_logit(bkt.to_logit(p), correct, params)) <= 1.0


@given(p=probability, params=params_strategy())
@settings(max_examples=300, database=None)
def test_it_never_rewards_a_wrong_answer(p: float, params: bkt.BKTParams) -> None:
    assert bkt.update(p, True, params) >= bkt.update(p, False, params) - 1e-12
    x = bkt.to_logit(p)
    after_right = bkt.from_logit(bkt.update_logit(x, True, params))
    assert after_right >= bkt.from_logit(bkt.update_logit(x, False, params)) - 1e-12


@given(p=probability, params=params_strategy())
@settings(max_examples=300, database=None)
def test_it_predicts_between_guess_and_no_slip(p: float, params: bkt.BKTParams) -> None:
    for value in (
        bkt.predict_correct(p, params),
        bkt.predict_correct_logit(bkt.to_logit(p), params),
    ):
        assert params.p_g - 1e-12 <= value <= 1.0 - params.p_s + 1e-12


@given(p=positive_probability, correct=st.booleans(), params=params_strategy())
@settings(max_examples=300, database=None)
def test_it_agrees_on_probability_and_log_odds(
    p: float, correct: bool, params: bkt.BKTParams
) -> None:
    x = bkt.to_logit(p)
    assert bkt.from_logit(x) == pytest.approx(p, rel=1e-12, abs=1e-300)
    assert bkt.predict_correct_logit(x, params) == pytest.approx(
        bkt.predict_correct(p, params), abs=1e-12
    )
    assert bkt.from_logit(bkt.update_logit(x, correct, params)) == pytest.approx(
        bkt.update(p, correct, params), abs=1e-12
    )


def test_it_lets_wrong_answers_wear_down_a_long_streak() -> None:
    # With no forgetting, 40 correct answers put 1 - p(L) below float64's resolution:
    # p(L) rounds to exactly 1.0 and no wrong answer can ever lower it again.
    easy = bkt.BKTParams(p_l0=0.5, p_t=0.1, p_g=0.05, p_s=0.2)
    p, x = easy.p_l0, bkt.to_logit(easy.p_l0)
    for _ in range(40):
        p, x = bkt.update(p, True, easy), bkt.update_logit(x, True, easy)
    assert p == 1.0
    # Each correct answer multiplies the odds of L by (1 - s) / g = 16 (and learning adds a
    # little): log-odds about 40 * ln(16 / 0.9) = 115. Each wrong answer multiplies them by
    # s / (1 - g) = 0.21 (ln: -1.56, learning gives back about 0.1): 80 undo the streak.
    assert 100 < x < 130
    for _ in range(120):
        p, x = bkt.update(p, False, easy), bkt.update_logit(x, False, easy)
    assert p == 1.0
    assert bkt.predict_correct(p, easy) == pytest.approx(0.8)
    assert bkt.from_logit(x) < 0.5
    assert bkt.predict_correct_logit(x, easy) < 0.3


def test_it_vectorises_the_same_arithmetic() -> None:
    rng = np.random.default_rng(7)
    p = rng.random(500)
    correct = rng.random(500) < 0.5
    table = bkt.ParamArrays.of(
        [
            bkt.BKTParams(p_l0=0.5, p_t=float(t), p_g=float(g), p_s=float(s), p_f=float(f))
            for t, g, s, f in rng.random((500, 4)) * [0.5, 0.49, 0.49, 0.5]
        ]
    )
    for params in (PARAMS, table):
        expected_update = []
        expected_predict = []
        for i in range(500):
            one = params if isinstance(params, bkt.BKTParams) else _row(table, i)
            expected_update.append(bkt.update(float(p[i]), bool(correct[i]), one))
            expected_predict.append(bkt.predict_correct(float(p[i]), one))
        assert bkt.update_array(p, correct, params).tolist() == expected_update
        assert bkt.predict_correct_array(p, params).tolist() == expected_predict


def test_it_predicts_sequences_as_the_live_loop_does() -> None:
    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, 2, size=n) for n in (0, 1, 5, 17, 60)]
    sequences.append(np.ones(200, dtype=int))
    for params in (PARAMS, FORGETFUL):
        predicted = bkt.one_step_predictions(sequences, params)
        for seq, got in zip(sequences, predicted, strict=True):
            x = bkt.to_logit(params.p_l0)
            expected = []
            for answer in seq:
                expected.append(bkt.predict_correct_logit(x, params))
                x = bkt.update_logit(x, bool(answer), params)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_it_refuses_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="guess \\+ slip"):
        bkt.BKTParams(p_g=0.6, p_s=0.4)
    with pytest.raises(ValueError, match="p_t"):
        bkt.BKTParams(p_t=1.5)
    with pytest.raises(ValueError, match="learn \\+ forget"):
        bkt.BKTParams(p_t=0.7, p_f=0.4)
    with pytest.raises(ValueError, match="p_l0"):
        bkt.BKTParams(p_l0=math.nan)
    with pytest.raises(ValueError, match="p must be"):
        bkt.to_logit(1.2)


def _row(table: bkt.ParamArrays, i: int) -> bkt.BKTParams:
    return bkt.BKTParams(
        p_l0=float(table.p_l0[i]),
        p_t=float(table.p_t[i]),
        p_g=float(table.p_g[i]),
        p_s=float(table.p_s[i]),
        p_f=float(table.p_f[i]),
    )

"""Item response theory: 1PL, 2PL and 3PL items, calibration, ability and information.

Pure maths (numpy and scipy, no ORM). The response model is

    p(theta; a, b, c) = c + (1 - c) / (1 + exp(-a (theta - b)))

with discrimination `a`, difficulty `b` and lower asymptote (guessing) `c`; the 1PL fixes
a = 1 and c = 0, the 2PL fixes c = 0.

Calibration is marginal maximum likelihood by EM (Bock and Aitkin): abilities are integrated
out over a fixed quadrature grid (41 points on [-4, 4] by default) under a standard normal
prior, which also fixes the scale. The E-step gives, per item and grid point, the expected
number of learners who answered and who answered correctly; the M-step maximises each item's
expected log-likelihood plus light priors (normal on log a with sd 0.5, normal on b with sd 2,
normal on c around 0.15 with sd 0.1) within bounds a in [0.2, 4], b in [-4, 4], c in
[0, 0.35]. The priors keep items that everyone (or no one) answered correctly finite; with a
few hundred learners per item the data outweigh them. Everything is deterministic: no random
starts, fixed iteration order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

FloatArray = npt.NDArray[np.float64]
Model = Literal["1PL", "2PL", "3PL"]
Triple = tuple[int, int, bool | int | float]

A_BOUNDS = (0.2, 4.0)
B_BOUNDS = (-4.0, 4.0)
C_BOUNDS = (0.0, 0.35)
LOG_A_PRIOR_SD = 0.5
B_PRIOR_SD = 2.0
C_PRIOR_MEAN = 0.15
C_PRIOR_SD = 0.1
_EPS = 1e-10


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run BLAS on one thread. The matrices here are small (1000 x 50 x 41), and on a busy
    machine OpenBLAS's worker threads made calibration 10-30 times slower than one thread
    (measured: 2.0 s against 0.25 s for 1000 x 50 on two loaded cores). threadpoolctl
    arrives with scikit-learn; without it, BLAS keeps its own settings."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class ItemParams:
    """One item's parameters: discrimination a, difficulty b, guessing c."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b) and math.isfinite(self.c)):
            raise ValueError(f"item parameters must be finite, got {self}")
        if self.a <= 0:
            raise ValueError(f"discrimination a must be positive, got {self.a}")
        if not 0 <= self.c < 1:
            raise ValueError(f"guessing c must be in [0, 1), got {self.c}")

    def probability(self, theta: float) -> float:
        """The probability that a learner of ability `theta` answers correctly."""
        return probability(theta, self.a, self.b, self.c)

    def information(self, theta: float) -> float:
        """The Fisher information the item gives about ability at `theta`."""
        return information(theta, self.a, self.b, self.c)

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> ItemParams:
        return cls(a=float(data.get("a", 1.0)), b=float(data["b"]), c=float(data.get("c", 0.0)))


@dataclass(frozen=True)
class Ability:
    """An expected-a-posteriori ability estimate and its posterior standard deviation."""

    theta: float
    sd: float


@dataclass(frozen=True)
class Calibration:
    """The result of `calibrate`: one `ItemParams` per item column, in column order."""

    items: tuple[ItemParams, ...]
    model: Model
    log_likelihood: float  # the marginal log-likelihood at the last E-step
    iterations: int
    converged: bool


def _p(
    theta: FloatArray | float,
    a: FloatArray | float,
    b: FloatArray | float,
    c: FloatArray | float,
) -> FloatArray:
    out: FloatArray = np.asarray(c + (1.0 - c) * expit(a * (np.subtract(theta, b))))
    return out


@overload
def probability(theta: float, a: float = ..., b: float = ..., c: float = ...) -> float: ...
@overload
def probability(
    theta: FloatArray, a: float = ..., b: float = ..., c: float = ...
) -> FloatArray: ...
def probability(
    theta: float | FloatArray, a: float = 1.0, b: float = 0.0, c: float = 0.0
) -> float | FloatArray:
    """p(theta; a, b, c) = c + (1 - c) / (1 + exp(-a (theta - b))), for a number or an array."""
    out = _p(np.asarray(theta, dtype=np.float64), a, b, c)
    return float(out) if np.ndim(theta) == 0 else out


@overload
def information(theta: float, a: float = ..., b: float = ..., c: float = ...) -> float: ...
@overload
def information(
    theta: FloatArray, a: float = ..., b: float = ..., c: float = ...
) -> FloatArray: ...
def information(
    theta: float | FloatArray, a: float = 1.0, b: float = 0.0, c: float = 0.0
) -> float | FloatArray:
    """Fisher information of a 1/2/3PL item at `theta`:

        I(theta) = a^2 * (q / p) * ((p - c) / (1 - c))^2,   q = 1 - p,

    which for c = 0 is the familiar a^2 p q. Never negative; largest at theta = b when c = 0
    and a little above b when c > 0.
    """
    t = np.asarray(theta, dtype=np.float64)
    s = expit(a * (t - b))
    p = c + (1.0 - c) * s
    # (p - c) / (1 - c) is s, and q / p is (1 - c)(1 - s) / p: written so it stays exact and
    # non-negative far from b, where p or q underflow.
    out = a * a * s * s * (1.0 - c) * (1.0 - s) / np.maximum(p, np.finfo(np.float64).tiny)
    return float(out) if np.ndim(theta) == 0 else out


def quadrature(points: int = 41, bound: float = 4.0) -> tuple[FloatArray, FloatArray]:
    """Equally spaced nodes on [-bound, bound] and standard normal weights summing to one."""
    if points < 3 or bound <= 0:
        raise ValueError("quadrature needs at least 3 points and a positive bound")
    nodes = np.linspace(-bound, bound, points)
    weights = np.exp(-0.5 * nodes**2)
    return nodes, weights / weights.sum()


def response_matrix(
    triples: Sequence[Triple], *, n_persons: int | None = None, n_items: int | None = None
) -> FloatArray:
    """A persons x items matrix (1.0 correct, 0.0 incorrect, NaN not answered) from
    (person index, item index, correct) triples. When a person answered an item more than
    once, the last triple wins."""
    persons = np.array([int(t[0]) for t in triples], dtype=np.int64)
    items = np.array([int(t[1]) for t in triples], dtype=np.int64)
    values = np.array([float(t[2]) for t in triples], dtype=np.float64)
    if len(triples) and (persons.min() < 0 or items.min() < 0):
        raise ValueError("person and item indices must be non-negative")
    if not np.all((values == 0.0) | (values == 1.0)):
        raise ValueError("correct must be 0/1 or False/True")
    rows = int(persons.max()) + 1 if len(triples) else 0
    cols = int(items.max()) + 1 if len(triples) else 0
    rows = rows if n_persons is None else n_persons
    cols = cols if n_items is None else n_items
    if len(triples) and (persons.max() >= rows or items.max() >= cols):
        raise ValueError("a triple's person or item index is outside n_persons x n_items")
    matrix = np.full((rows, cols), np.nan)
    matrix[persons, items] = values
    return matrix


def _as_matrix(
    responses: FloatArray | Sequence[Triple], n_persons: int | None, n_items: int | None
) -> FloatArray:
    if isinstance(responses, np.ndarray):
        if responses.ndim != 2:
            raise ValueError("a response matrix must be 2-D: persons x items")
        matrix = responses.astype(np.float64)
        seen = matrix[~np.isnan(matrix)]
        if not np.all((seen == 0.0) | (seen == 1.0)):
            raise ValueError("a response matrix holds only 0, 1 and NaN")
        return matrix
    return response_matrix(responses, n_persons=n_persons, n_items=n_items)


def _unpack(x: FloatArray, model: Model, n: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    if model == "1PL":
        return np.ones(n), x, np.zeros(n)
    if model == "2PL":
        return x[:n], x[n:], np.zeros(n)
    return x[:n], x[n : 2 * n], x[2 * n :]


def _negative_objective(
    x: FloatArray, model: Model, nodes: FloatArray, right: FloatArray, total: FloatArray
) -> tuple[float, FloatArray]:
    """Minus the expected complete-data log-likelihood plus log-priors, and its gradient."""
    n = right.shape[0]
    a, b, c = _unpack(x, model, n)
    diff = nodes[None, :] - b[:, None]
    s = expit(a[:, None] * diff)
    p = np.clip(c[:, None] + (1.0 - c[:, None]) * s, _EPS, 1.0 - _EPS)
    value = float(np.sum(right * np.log(p) + (total - right) * np.log1p(-p)))
    d_p = (right - total * p) / (p * (1.0 - p))
    ds = s * (1.0 - s)
    grad_b = -np.sum(d_p * (1.0 - c[:, None]) * ds * a[:, None], axis=1)
    value -= float(np.sum(b**2)) / (2 * B_PRIOR_SD**2)
    grad_b -= b / B_PRIOR_SD**2
    grads = [grad_b]
    if model != "1PL":
        grad_a = np.sum(d_p * (1.0 - c[:, None]) * ds * diff, axis=1)
        log_a = np.log(a)
        value -= float(np.sum(log_a**2)) / (2 * LOG_A_PRIOR_SD**2)
        grad_a -= log_a / (a * LOG_A_PRIOR_SD**2)
        grads.insert(0, grad_a)
    if model == "3PL":
        grad_c = np.sum(d_p * (1.0 - s), axis=1)
        value -= float(np.sum((c - C_PRIOR_MEAN) ** 2)) / (2 * C_PRIOR_SD**2)
        grad_c -= (c - C_PRIOR_MEAN) / C_PRIOR_SD**2
        grads.append(grad_c)
    return -value, -np.concatenate(grads)


def calibrate(
    responses: FloatArray | Sequence[Triple],
    *,
    model: Model = "2PL",
    n_persons: int | None = None,
    n_items: int | None = None,
    points: int = 41,
    bound: float = 4.0,
    max_iter: int = 500,
    tol: float = 1e-4,
) -> Calibration:
    """Estimate item parameters by marginal maximum likelihood (EM over a quadrature grid).

    `responses` is a persons x items numpy array (1 correct, 0 incorrect, NaN not answered)
    or a sequence of (person index, item index, correct) triples; `n_persons` and `n_items`
    size the matrix built from triples (default: the largest index + 1). Stops when no
    parameter moves by more than `tol` in an EM step, or after `max_iter` steps.
    """
    with _one_blas_thread():
        return _calibrate(
            responses,
            model=model,
            n_persons=n_persons,
            n_items=n_items,
            points=points,
            bound=bound,
            max_iter=max_iter,
            tol=tol,
        )


def _calibrate(
    responses: FloatArray | Sequence[Triple],
    *,
    model: Model,
    n_persons: int | None,
    n_items: int | None,
    points: int,
    bound: float,
    max_iter: int,
    tol: float,
) -> Calibration:
    if model not in ("1PL", "2PL", "3PL"):
        raise ValueError(f"unknown model {model!r}; use '1PL', '2PL' or '3PL'")
    matrix = _as_matrix(responses, n_persons, n_items)
    n_items_ = matrix.shape[1]
    if n_items_ == 0:
        return Calibration((), model, 0.0, 0, True)
    answered = (~np.isnan(matrix)).astype(np.float64)
    correct = np.nan_to_num(matrix, nan=0.0) * answered
    wrong = answered - correct
    nodes, weights = quadrature(points, bound)
    log_weights = np.log(weights)

    # Start: difficulty from the share correct, unit discrimination, c at its prior mean.
    c0 = C_PRIOR_MEAN if model == "3PL" else 0.0
    share = (correct.sum(axis=0) + 0.5) / (answered.sum(axis=0) + 1.0)
    share = np.clip((share - c0) / (1.0 - c0), 0.02, 0.98)
    b0 = np.clip(-1.2 * np.log(share / (1.0 - share)), -3.0, 3.0)
    parts: list[FloatArray] = [b0]
    bounds: list[tuple[float, float]] = [B_BOUNDS] * n_items_
    if model != "1PL":
        parts.insert(0, np.ones(n_items_))
        bounds = [A_BOUNDS] * n_items_ + bounds
    if model == "3PL":
        parts.append(np.full(n_items_, c0))
        bounds = bounds + [C_BOUNDS] * n_items_
    x = np.concatenate(parts)

    log_likelihood = -math.inf
    converged = False
    iterations = 0
    for iteration in range(1, max_iter + 1):
        iterations = iteration
        a, b, c = _unpack(x, model, n_items_)
        p = np.clip(_p(nodes[None, :], a[:, None], b[:, None], c[:, None]), _EPS, 1 - _EPS)
        joint = correct @ np.log(p) + wrong @ np.log1p(-p) + log_weights[None, :]
        marginal = logsumexp(joint, axis=1)
        log_likelihood = float(marginal.sum())
        posterior = np.exp(joint - marginal[:, None])
        right = correct.T @ posterior
        total = answered.T @ posterior
        result = minimize(
            _negative_objective,
            x,
            args=(model, nodes, right, total),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 100},
        )
        step = float(np.max(np.abs(result.x - x)))
        x = np.asarray(result.x, dtype=np.float64)
        if step < tol:
            converged = True
            break
    a, b, c = _unpack(x, model, n_items_)
    items = tuple(
        ItemParams(a=float(ai), b=float(bi), c=float(ci))
        for ai, bi, ci in zip(a, b, c, strict=True)
    )
    return Calibration(items, model, log_likelihood, iterations, converged)


def _item_arrays(items: Sequence[ItemParams]) -> tuple[FloatArray, FloatArray, FloatArray]:
    return (
        np.array([item.a for item in items], dtype=np.float64),
        np.array([item.b for item in items], dtype=np.float64),
        np.array([item.c for item in items], dtype=np.float64),
    )


def eap_matrix(
    responses: FloatArray, items: Sequence[ItemParams], *, points: int = 41, bound: float = 4.0
) -> tuple[FloatArray, FloatArray]:
    """EAP abilities and posterior SDs for every row of a persons x items matrix (NaN missing),
    under a standard normal prior on the quadrature grid. A row with no answers gets the prior:
    0 with SD 1 (as far as the grid resolves it)."""
    with _one_blas_thread():
        return _eap_matrix(responses, items, points=points, bound=bound)


def _eap_matrix(
    responses: FloatArray, items: Sequence[ItemParams], *, points: int, bound: float
) -> tuple[FloatArray, FloatArray]:
    matrix = _as_matrix(np.asarray(responses, dtype=np.float64), None, None)
    if matrix.shape[1] != len(items):
        raise ValueError(f"{matrix.shape[1]} response columns but {len(items)} items")
    answered = ~np.isnan(matrix)
    correct = np.where(answered, matrix, 0.0)
    wrong = np.where(answered, 1.0 - matrix, 0.0)
    nodes, weights = quadrature(points, bound)
    a, b, c = _item_arrays(items)
    p = np.clip(_p(nodes[None, :], a[:, None], b[:, None], c[:, None]), _EPS, 1 - _EPS)
    joint = correct @ np.log(p) + wrong @ np.log1p(-p) + np.log(weights)[None, :]
    posterior = np.exp(joint - logsumexp(joint, axis=1)[:, None])
    mean = posterior @ nodes
    variance = np.maximum(posterior @ nodes**2 - mean**2, 0.0)
    return mean, np.sqrt(variance)


def eap(
    items: Sequence[ItemParams],
    responses: Sequence[bool | float | None],
    *,
    points: int = 41,
    bound: float = 4.0,
) -> Ability:
    """The EAP ability of one learner who answered `items` with `responses` (True/1 correct,
    False/0 incorrect, None or NaN not answered), standard normal prior."""
    if len(items) != len(responses):
        raise ValueError(f"{len(responses)} responses for {len(items)} items")
    row = np.array(
        [[np.nan if r is None else float(r) for r in responses]], dtype=np.float64
    ).reshape(1, len(items))
    mean, sd = eap_matrix(row, items, points=points, bound=bound)
    return Ability(theta=float(mean[0]), sd=float(sd[0]))

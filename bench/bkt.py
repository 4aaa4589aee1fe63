"""BKT fitting and one-step-ahead scoring: ours (`kt_evaluate`) against pyBKT 1.4.3 (C++ build).

    .venv/bin/python bench/bkt.py [--data ../shared/data/assistments2009] \
        [--pybkt-python /tmp/pybkt-venv/bin/python]

For BKT and BKT + forgets, fits one model per skill on `builder_train.csv` (20 restarts,
seed 0) and predicts every answer of `builder_test.csv` one step ahead, with both
implementations, each in its own process with OMP_NUM_THREADS=1. Both sides are scored here,
by the same functions, on the same answers: those whose skill the training file has. Prints
one table (AUC, RMSE, fit seconds wall and CPU, fit time against pyBKT) and one summary line;
progress goes to stderr. Without pyBKT (see bench/README-bkt.md) it prints ours only and
says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import load, log, table  # noqa: E402
from learners import kt_data  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "assistments2009"
DEFAULT_PYBKT = Path("/tmp/pybkt-venv/bin/python")

# Runs under pyBKT's own interpreter: fit one model per skill, predict the test answers with
# pyBKT's own one-step-ahead `predict`, print one JSON object.
PYBKT_SCRIPT = r"""
import json, sys, time
import pandas as pd
from pyBKT.fit import E_step
from pyBKT.models import Model

if not E_step.__file__.endswith((".so", ".pyd")):
    print(json.dumps({"error": "pyBKT is the pure-Python build, not the C++ one"}))
    sys.exit(0)

def read(path):
    lines = [line.strip() for line in open(path) if line.strip()]
    rows = []
    for block in range(0, len(lines), 3):
        skills = lines[block + 1].rstrip(",").split(",")
        marks = lines[block + 2].rstrip(",").split(",")
        for skill, mark in zip(skills, marks):
            rows.append((block // 3, skill.strip(), int(mark), len(rows)))
    return pd.DataFrame(rows, columns=["user_id", "skill_name", "correct", "order_id"])

train_path, test_path, forgets, restarts, seed = sys.argv[1:6]
train, test = read(train_path), read(test_path)
model = Model(seed=int(seed), num_fits=int(restarts))
wall, cpu = time.perf_counter(), time.process_time()
model.fit(data=train, forgets=forgets == "1")
fit_seconds, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
predicted = model.predict(data=test).sort_values("order_id")
print(json.dumps({
    "fit_seconds": fit_seconds,
    "fit_cpu_seconds": fit_cpu,
    "skills": sorted(model.fit_model),
    "predictions": predicted["correct_predictions"].astype(float).tolist(),
}))
"""


def single_thread_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def run_ours(train: Path, test: Path, forgets: bool, restarts: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.csv"
        command = [
            sys.executable,
            str(ROOT / "manage.py"),
            "kt_evaluate",
            "--train", str(train),
            "--test", str(test),
            "--format", "dkt",
            "--predictions", str(out),
            "--restarts", str(restarts),
            "--seed", str(seed),
        ] + (["--forgets"] if forgets else [])  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, env=single_thread_env(), cwd=ROOT
        )
        if done.returncode != 0:
            raise SystemExit(f"kt_evaluate failed:\n{done.stderr}")
        lines = done.stdout.strip().splitlines()
        if len(lines) != 1:
            raise SystemExit(f"kt_evaluate printed {len(lines)} lines, expected one JSON line")
        summary = json.loads(lines[0])
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
    summary["predictions"] = np.array([float(row["p"]) for row in rows])
    return summary


def run_pybkt(
    python: Path, train: Path, test: Path, forgets: bool, restarts: int, seed: int
) -> dict:
    command = [str(python), "-c", PYBKT_SCRIPT, str(train), str(test), str(int(forgets))]
    command += [str(restarts), str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, env=single_thread_env())
    if done.returncode != 0:
        raise SystemExit(f"pyBKT failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise SystemExit(f"{python}: {result['error']}; see bench/README-bkt.md")
    result["predictions"] = np.array(result["predictions"], dtype=np.float64)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pybkt-python", type=Path, default=None)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train, test = args.data / "builder_train.csv", args.data / "builder_test.csv"
    for path in (train, test):
        if not path.exists():
            raise SystemExit(f"no {path}; pass --data")
    python = args.pybkt_python or (DEFAULT_PYBKT if DEFAULT_PYBKT.exists() else None)
    if python is not None and not Path(python).exists():
        raise SystemExit(f"no {python}; see bench/README-bkt.md")

    test_answers = kt_data.read_dkt(test)
    y = test_answers.correct
    train_skills = set(kt_data.read_dkt(train).skill)
    scored = np.array([skill in train_skills for skill in test_answers.skill])

    headers = ["model", "implementation", "test AUC", "test RMSE", "fit s", "fit CPU s", "fit time"]
    rows: list[list[str]] = []
    ratios: list[str] = []
    gaps: list[str] = []
    for forgets in (False, True):
        name = "BKT + forgets" if forgets else "BKT"
        log(f"{name}: ours")
        ours = run_ours(train, test, forgets, args.restarts, args.seed)
        if len(ours["predictions"]) != len(y):
            raise SystemExit("kt_evaluate wrote the wrong number of predictions")
        ours_auc = kt_data.auc(y[scored], ours["predictions"][scored])
        ours_rmse = kt_data.rmse(y[scored], ours["predictions"][scored])
        theirs = None
        if python is not None:
            log(f"{name}: pyBKT")
            theirs = run_pybkt(Path(python), train, test, forgets, args.restarts, args.seed)
            if set(theirs["skills"]) != train_skills or len(theirs["predictions"]) != len(y):
                raise SystemExit("pyBKT fitted other skills or predicted other answers")
        ratio = "" if theirs is None else f"{ours['fit_seconds'] / theirs['fit_seconds']:.2f}x"
        rows.append(
            [
                name,
                "ours (numpy)",
                f"{ours_auc:.4f}",
                f"{ours_rmse:.4f}",
                f"{ours['fit_seconds']:.2f}",
                f"{ours['fit_cpu_seconds']:.2f}",
                ratio,
            ]
        )
        if theirs is not None:
            their_auc = kt_data.auc(y[scored], theirs["predictions"][scored])
            their_rmse = kt_data.rmse(y[scored], theirs["predictions"][scored])
            rows.append(
                [
                    name,
                    "pyBKT 1.4.3 (C++)",
                    f"{their_auc:.4f}",
                    f"{their_rmse:.4f}",
                    f"{theirs['fit_seconds']:.2f}",
                    f"{theirs['fit_cpu_seconds']:.2f}",
                    "1.00x",
                ]
            )
            cpu_ratio = ours["fit_cpu_seconds"] / theirs["fit_cpu_seconds"]
            ratios.append(f"{name} {ratio} wall, {cpu_ratio:.2f}x CPU")
            gaps.append(
                f"{name} AUC {ours_auc - their_auc:+.4f} RMSE {ours_rmse - their_rmse:+.4f}"
            )

    print(table(headers, rows, [False, False, True, True, True, True, True]))
    scored_note = f"{int(scored.sum())} of {len(y)} test answers scored"
    if ratios:
        scored_note += " by both"
    if ratios:
        print(
            f"fit time ours/pyBKT: {'; '.join(ratios)}; ours - pyBKT: {'; '.join(gaps)}; "
            f"{scored_note}; {load()}"
        )
    else:
        note = "pyBKT not available (see bench/README-bkt.md): ours only"
        print(f"{note}; {scored_note}; {load()}")


if __name__ == "__main__":
    main()

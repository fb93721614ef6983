"""Is method A's AA above method B's? A paired bootstrap over the test records both methods scored.

Two methods scored on the same test records differ record by record, and most of the noise in
an AA (a mean over a hundred records a task) is which records were drawn; comparing the two
means as if they were independent throws that pairing away. So the interval is of the AA
*difference*, resampling test records with replacement, the same resample for both methods:

    AA_run(m) = mean over tasks t of (mean over the run's records i of s_m[run][t][i])
    diff      = mean over runs of (AA_run(A) - AA_run(B))

Each run (a task order, a training seed) is a stratum: the records of a task are resampled
within it, never across tasks, and the AA difference is averaged over the runs. When the runs
score the same test records (the orders of one experiment do: prepare cuts one split), one
resample of a task's records serves every run, so a record that is hard for both methods in
every order counts once, not once per order (`shared_records`); otherwise each run draws its
own. The 95 % interval is the 2.5th to 97.5th percentile of `n_boot` resampled differences;
"above" only where the whole interval lies above 0, "below" where it lies below, "level"
otherwise.

Pure numpy: no torch, no pipeline state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RecordScores = Mapping[str, Sequence[float]]  # task -> every test record's score, in test-split order


def aa_difference(a: Sequence[RecordScores], b: Sequence[RecordScores]) -> float:
    """The mean over runs of AA(A) - AA(B), AA being the mean of the per-task mean scores."""
    _check(a, b)
    return float(np.mean([np.mean([np.mean(ra[t]) - np.mean(rb[t]) for t in ra]) for ra, rb in zip(a, b,
                                                                                                   strict=True)]))


def paired_bootstrap(a: Sequence[RecordScores], b: Sequence[RecordScores], n_boot: int = 10_000, seed: int = 0,
                     shared_records: bool = True, level: float = 0.95) -> dict[str, Any]:
    """{diff, low, high, verdict, n_boot, runs, records} for AA(a) - AA(b) over the runs (see module doc).

    `a[r][t]` and `b[r][t]` are the per-record scores of run r, task t, on the same records in the
    same order. `shared_records`: the runs scored the same records (one resample serves all);
    it needs each task to have as many records in every run.
    """
    _check(a, b)
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: at least one resample is needed")
    rng = np.random.default_rng(seed)
    tasks = list(a[0])
    # d[r][t]: per-record differences A - B, shape (n_records,)
    d = [{t: np.asarray(ra[t], float) - np.asarray(rb[t], float) for t in ra} for ra, rb in zip(a, b, strict=True)]
    if shared_records and any(len(run[t]) != len(d[0][t]) for run in d for t in tasks):
        raise ValueError("shared_records=True needs every run to score a task on as many records; the runs "
                         "differ, so they did not score the same records: pass shared_records=False")
    boot = np.zeros(n_boot)
    for t in tasks:
        shared = rng.integers(0, len(d[0][t]), size=(n_boot, len(d[0][t]))) if shared_records else None
        for run in d:
            idx = shared if shared is not None else rng.integers(0, len(run[t]), size=(n_boot, len(run[t])))
            boot += run[t][idx].mean(axis=1)  # (n_boot, n) -> (n_boot,): the task's resampled mean difference
    boot /= len(tasks) * len(d)  # mean over tasks within a run, then over runs (every run has every task)
    tail = (1 - level) / 2 * 100
    low, high = (float(x) for x in np.percentile(boot, [tail, 100 - tail]))
    diff = aa_difference(a, b)
    return {"diff": diff, "low": low, "high": high, "verdict": verdict(low, high), "n_boot": n_boot,
            "runs": len(d), "records": {t: len(d[0][t]) for t in tasks}}


def verdict(low: float, high: float) -> str:
    """"above" when the whole interval is above 0, "below" when it is below 0, else "level"."""
    if low > 0:
        return "above"
    if high < 0:
        return "below"
    return "level"


def _check(a: Sequence[RecordScores], b: Sequence[RecordScores]) -> None:
    if not a or len(a) != len(b):
        raise ValueError(f"{len(a)} runs of A against {len(b)} of B: pair each run of A with B's run of the same "
                         "order (and seed)")
    for r, (ra, rb) in enumerate(zip(a, b, strict=True)):
        if not ra or set(ra) != set(rb) or set(ra) != set(a[0]):
            raise ValueError(f"run {r}: A scores tasks {sorted(ra)}, B {sorted(rb)} (run 0: {sorted(a[0])}); "
                             "every run of both must score the same tasks")
        for t in ra:
            if len(ra[t]) != len(rb[t]) or not len(ra[t]):
                raise ValueError(f"run {r}, task {t!r}: {len(ra[t])} records scored for A, {len(rb[t])} for B; "
                                 "a paired test needs the same (non-empty) test records for both")

"""The CL_Benchmark tasks of the public O-LoRA repository, in the layout the shipped benchmark
configs read (`data_root=<OUT>`): one folder per task with train.json, test.json and labels.json,
and instruction_config.json beside them.

    git clone https://github.com/cmnfriend/O-LoRA
    python scripts/get_cl_benchmark.py O-LoRA/CL_Benchmark data/cl_benchmark
    slm run -c cl_benchmark_cpu.yaml data_root=data/cl_benchmark

Upstream keeps each task as CL_Benchmark/<family>/<task>/{train,dev,test}.json (a JSON list of
{"sentence", "label"}) plus labels.json. Per task this copies train.json and labels.json, and takes
as test split: test.json; else dev.json (upstream's dev files are copies of test where both
exist); else a seeded split of train.json (TEST_SHARE of the de-duplicated sentences, so no
sentence is in both files). A task folder without labels.json is skipped with a warning (the
loader would refuse it as a classification task). Nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

TEST_SHARE = 0.2
SEED = 0


def task_folders(upstream: Path) -> list[Path]:
    """Every <family>/<task>/ folder that holds a train.json."""
    return sorted(p.parent for p in upstream.glob("*/*/train.json"))


def split(records: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """De-duplicate by sentence (first label wins), then a seeded train / test split."""
    unique = list({r["sentence"]: r for r in reversed(records)}.values())[::-1]
    random.Random(seed).shuffle(unique)
    n_test = max(1, round(share * len(unique)))
    return unique[n_test:], unique[:n_test]


def convert(task: Path, out: Path) -> str:
    """Write `task` into `out/<task name>/`; returns where its test split came from."""
    if not (task / "labels.json").is_file():
        return "skipped: no labels.json"
    target = out / task.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(task / "labels.json", target / "labels.json")
    train = json.loads((task / "train.json").read_text())
    for name in ("test.json", "dev.json"):
        if (task / name).is_file():
            shutil.copyfile(task / "train.json", target / "train.json")
            shutil.copyfile(task / name, target / "test.json")
            return f"test = upstream {name}"
    train, test = split(train, TEST_SHARE, SEED)
    (target / "train.json").write_text(json.dumps(train, ensure_ascii=False))
    (target / "test.json").write_text(json.dumps(test, ensure_ascii=False))
    return f"test = a seeded {TEST_SHARE:.0%} of the de-duplicated train.json ({len(test)} records)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("upstream", type=Path, help="the CL_Benchmark folder of a clone of cmnfriend/O-LoRA")
    p.add_argument("out", type=Path, help="where the task folders go (data_root= of the configs)")
    args = p.parse_args(argv)
    tasks = task_folders(args.upstream)
    if not tasks:
        raise SystemExit(f"error: no <family>/<task>/train.json under {args.upstream}; give the CL_Benchmark folder "
                         "of a clone of https://github.com/cmnfriend/O-LoRA")
    args.out.mkdir(parents=True, exist_ok=True)
    for config in (args.upstream / "instruction_config.json", args.upstream.parent / "instruction_config.json"):
        if config.is_file():
            shutil.copyfile(config, args.out / "instruction_config.json")
            break
    for task in tasks:
        print(f"{task.relative_to(args.upstream)} -> {args.out / task.name}: {convert(task, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

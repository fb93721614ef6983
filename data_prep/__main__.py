"""`python -m data_prep FORMAT SOURCE OUT`: a public dataset -> the pipeline's JSONL records.

    python -m data_prep gsm8k ../shared/data/cross_domain/math data/math          # data/math/{train,test}.jsonl
    python -m data_prep chatdoctor chatdoctor5k.json data/medical.jsonl --test-ratio 0.1 --max-test 500
    python -m data_prep trace ../shared/data/cross_domain/finance data/finance --task FOMC
    python -m data_prep cl_benchmark O-LoRA/CL_Benchmark data/cl_benchmark        # an O-LoRA clone: task folders

Each output line is `{"instruction", "input", "output"}` (plus `references` when a record has
several accepted answers, and `history` for earlier turns); a task reads them with
`source: {type: file, path: OUT/train.jsonl, test_split: OUT/test.jsonl}`. OUT is a folder
(train.jsonl and test.jsonl inside) or a `.jsonl` name (the test file beside it as
`<name>.test.jsonl`). Both files are complete or not written at all. The counts printed say what
was read, skipped, de-duplicated and removed as overlap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep import FORMATS, ReadOptions, cl_benchmark, convert, read
from data_prep.common import DataPrepError, write_jsonl


def output_files(out: Path) -> tuple[Path, Path]:
    """(train file, test file) for OUT: a folder, or a `.jsonl` file name."""
    if out.suffix == ".jsonl":
        return out, out.with_name(f"{out.stem}.test.jsonl")
    return out / "train.jsonl", out / "test.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=list(FORMATS))
    p.add_argument("source", type=Path, help="the dataset's file or folder, as its repository ships it")
    p.add_argument("out", type=Path, help="an output folder, or OUT.jsonl (the test split beside it)")
    p.add_argument("--test-ratio", type=float, default=0.1,
                   help="share of a source without its own test split that becomes the test split (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the shuffle before caps (default 0)")
    p.add_argument("--max-train", type=int, help="keep this many training records (after a seeded shuffle)")
    p.add_argument("--max-test", type=int, help="keep this many test records (after a seeded shuffle)")
    p.add_argument("--test-split", help="the source's test file (a name in the folder for trace / cl_benchmark)")
    p.add_argument("--task", help="trace: the task's key in instructions.json (default: the folder's name)")
    p.add_argument("--instructions", help="trace: TRACE's instructions.json (default: in the folder or above)")
    p.add_argument("--instruction", help="gsm8k: the instruction every record gets")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.format == "cl_benchmark" and cl_benchmark.is_upstream(args.source):
            for line in cl_benchmark.convert_upstream(args.source, args.out):
                print(line)
            return 0
        options = ReadOptions(args.test_split, args.task, args.instructions, args.instruction)
        result = convert(read(args.format, args.source, options), args.test_ratio, args.seed, args.max_train,
                         args.max_test)
        train_file, test_file = output_files(args.out)
        write_jsonl(train_file, result.train)
        write_jsonl(test_file, result.test)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.format} {args.source}: {result.counts.line()}")
    print(f"wrote {train_file} ({result.counts.train} records) and {test_file} ({result.counts.test} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

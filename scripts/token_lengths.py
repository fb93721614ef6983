"""Token lengths of each task's prompts and answers, as the experiment's tokenizer and prompt
format see them, and what the experiment's caps cut: the numbers behind a config's
max_prompt_len / max_answer_len / eval.max_new_tokens (slm prepare prints totals only).

    python scripts/token_lengths.py -c cross_domain_cpu.yaml data_root=../shared/data/cross_domain

Reads and splits the data as `slm prepare` does (nothing is written), over the training and test
records the caps keep. An answer longer than eval.max_new_tokens cannot be generated whole, so its
share is the ceiling of what a free-text metric loses at eval.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.build import build_task, token_lengths  # noqa: E402
from pipeline.experiment import load_config  # noqa: E402
from pipeline.prompts.truncation import TokenCaps  # noqa: E402
from pipeline.runtime.models import load_tokenizer  # noqa: E402


def percentile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def share_over(values: list[int], cap: int | None) -> str:
    return "-" if cap is None else f"{sum(v > cap for v in values) / len(values):.1%}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    caps = TokenCaps.of(cfg.model)
    print(f"prompt cap {caps.prompt_cap()}, answer cap {caps.answer_cap()}, max_new_tokens "
          f"{cfg.eval.max_new_tokens} ({cfg.model.prompt_format}, {cfg.model.name_or_path})")
    print(f"{'task':<10} {'records':>7}  prompt p50/p90/p95/max  >cap   answer p50/p90/p95/max  >cap   "
          f">new_tokens (test)")
    for task in cfg.tasks:
        prepared = build_task(task, cfg)
        lengths = token_lengths(tokenizer, cfg.model.prompt_format, prepared.train + prepared.test)
        prompts, answers = [p for p, _ in lengths], [a for _, a in lengths]
        test_answers = answers[len(prepared.train):]

        def stats(v: list[int]) -> str:
            return "/".join(str(percentile(v, q)) for q in (0.5, 0.9, 0.95, 1.0))

        print(f"{task.name:<10} {len(lengths):>7}  {stats(prompts):<22} {share_over(prompts, caps.prompt_cap()):>5}   "
              f"{stats(answers):<22} {share_over(answers, caps.answer_cap()):>5}   "
              f"{share_over(test_answers, cfg.eval.max_new_tokens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`slm chat` as a person uses it: a real terminal (a pseudo-terminal, stdlib `pty`), two turns
answered with the history kept and the retrieved tasks shown, `/reset`, `/exit`."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.experiment import Experiment, load_config
from pipeline.serve.chat import Chat, banner
from pipeline.serve.sampling import Sampling
from tests.tiny import finish_tasks, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
TWO_TASKS = "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}}, " \
            "{name: geography, source: {type: synthetic, generator: geography}}]"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> list[str]:
    out = tmp_path_factory.mktemp("chat") / "run"
    return finish_tasks([*tiny_overrides(out, tiny_model_dir, steps=2), "dtkr.key_epochs=1", TWO_TASKS], tasks=2)


class Terminal:
    """A child process on a pseudo-terminal: type lines, read until a pattern shows."""

    def __init__(self, argv: list[str]) -> None:
        self.fd, child = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, cwd=REPO, env=env,
                                     close_fds=True)
        os.close(child)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.seen)
            if found:
                self.seen = self.seen[found.end():]
                return found
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.fd], [], [], 0)[0]:
                raise AssertionError(f"no {pattern!r} in the terminal; it shows:\n{self.seen[-3000:]}")
            if select.select([self.fd], [], [], min(left, 1.0))[0]:
                try:
                    self.seen += os.read(self.fd, 4096).decode("utf-8", errors="replace").replace("\r\n", "\n")
                except OSError:  # the child closed the terminal
                    pass

    def type(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.fd)


@pytest.mark.slow
def test_slm_chat_answers_two_turns_in_a_terminal_keeping_the_history_until_reset(finished_run) -> None:
    term = Terminal([sys.executable, "-m", "pipeline.cli", "chat", *finished_run, "--max-new-tokens", "4"])
    try:
        term.expect(r"chat: default \(slm\), DTKR retrieval per turn over 2 task\(s\): sentiment, geography")
        term.expect(r"you> ")
        term.type("Which continent is Kenya on?")
        first = term.expect(r"slm> .*\n +\[retrieved: (\w+) slot 0 \(1\.00\); (\d+) prompt tokens, 0 earlier turn")
        assert first.group(1) in ("sentiment", "geography")
        term.expect(r"you> ")
        term.type("And Peru?")
        second = term.expect(r"\[retrieved: \w+ slot 0 \(1\.00\); (\d+) prompt tokens, 1 earlier turn")
        assert int(second.group(1)) > int(first.group(2))  # the first exchange is in the prompt
        term.expect(r"you> ")
        term.type("/reset")
        term.expect(r"\(history cleared\)")
        term.type("And Peru?")
        again = term.expect(r"(\d+) prompt tokens, 0 earlier turn")
        assert int(again.group(1)) < int(second.group(1))
        term.expect(r"you> ")
        term.type("/exit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


@pytest.mark.slow
def test_the_chat_prompt_is_the_served_chat_prompt_of_the_same_turns(finished_run) -> None:
    from pipeline.serve.session import load_session

    exp = Experiment.of(load_config(None, finished_run))
    session = load_session(exp)
    chat = Chat(session, system="Answer with one word.")
    assert "2 task(s): sentiment, geography" in banner(session, None)
    first = chat.answer("Which continent is Kenya on?", Sampling(3))
    record = chat.record("And Peru?")
    assert record["history"] == [{"role": "system", "content": "Answer with one word."},
                                 {"role": "user", "content": "Which continent is Kenya on?"},
                                 {"role": "assistant", "content": first.text}]
    served = {"instruction": "And Peru?", "input": "", "history": record["history"]}  # protocol.ChatRequest.record
    assert session.encode(record) == session.encode(served)
    chat.reset()
    assert chat.record("And Peru?")["history"] == [{"role": "system", "content": "Answer with one word."}]

"""`slm chat`: talk to a finished run in the terminal (llamafactory-cli chat, for continual learning).

Each turn is answered like a `slm serve` chat request: the history so far in the prompt (the
experiment's prompt format; the chat template by default), retrieval on the last user message, the
answer streamed as it decodes, then the tasks and slots the turn used. `/reset` forgets the
history, `/exit` (or Ctrl-D) ends. The model loads once (pipeline.serve.session.load_session), so
every method chats; methods without slots answer with their model after the last finished task.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline import preflight

if TYPE_CHECKING:
    from pipeline.experiment import Experiment
    from pipeline.serve.session import InferenceSession

RESET, EXIT = "/reset", ("/exit", "/quit")
PROMPT = "you> "


@dataclass(frozen=True)
class Args:
    system: str | None = None
    task: str | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default=None, metavar="TEXT", help="a system prompt kept before every turn")
    p.add_argument("--task", default=None, metavar="NAME",
                   help="answer with this task's slots only, no retrieval (oracle_task_id needs it)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="tokens per answer at most (default: serve.max_tokens)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampled")


def main(experiment: Experiment, args: Args) -> int:
    from pipeline.serve.session import load_session

    exp = experiment.single()
    preflight.use_faiss_of(exp)
    session = load_session(exp)
    session.check_task(args.task)
    chat = Chat(session, args.system, args.task)
    print(banner(session, args.task), flush=True)
    run_loop(chat, args.max_new_tokens or exp.cfg.serve.max_tokens, args.temperature)
    return 0


def banner(session: InferenceSession, task: str | None) -> str:
    cfg = session.cfg
    if task is not None:
        how = f"the slots of task {task}"
    elif session.retrieves:
        how = f"DTKR retrieval per turn over {len(session.tasks)} task(s): {', '.join(session.tasks)}"
    else:
        how = f"{cfg.method}'s model after task {session.tasks[-1]} (no retrieval)"
    return f"chat: {cfg.name} ({cfg.method}), {how}. {RESET} clears the history, {EXIT[0]} or Ctrl-D ends."


@dataclass(frozen=True)
class Turn:
    """One answer and what it came from."""

    text: str
    retrieval: list[dict]  # [{task, slot, weight}] ([] for a method without slots)
    prompt_tokens: int
    earlier: int  # user/assistant exchanges before this one in the prompt

    def describe(self) -> str:
        used = ", ".join(f"{r['task']} slot {r['slot']} ({r['weight']:.2f})" for r in self.retrieval)
        return (f"[{'retrieved: ' + used + '; ' if used else ''}{self.prompt_tokens} prompt tokens, "
                f"{self.earlier} earlier turn(s)]")


@dataclass
class Chat:
    """The conversation: the turns so far, answered one user message at a time."""

    session: InferenceSession
    system: str | None = None
    task: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def record(self, message: str) -> dict:
        """{instruction: the new message, input, history: [system] + the turns so far}, as a served chat request."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return {"instruction": message, "input": "", "history": [*system, *self.turns]}

    def answer(self, message: str, sampling, emit: Callable[[str], None] | None = None) -> Turn:
        """The answer to `message` (streamed through `emit`), what it was answered from; the turn is kept."""
        from pipeline.serve.decode import Row, decode

        record = self.record(message)
        ids = self.session.encode(record, truncate=True)  # a history too long for the model loses its start
        routed = self.session.route([record], [self.task])
        row = Row(ids, sampling, emit=emit)
        decode(self.session, [row], routed.routing)
        turn = Turn(row.text.strip(), routed.retrieval[0], len(ids), len(self.turns) // 2)
        self.turns += [{"role": "user", "content": message}, {"role": "assistant", "content": turn.text}]
        return turn

    def reset(self) -> None:
        self.turns = []


def run_loop(chat: Chat, max_new_tokens: int, temperature: float) -> None:
    from pipeline.serve.sampling import Sampling

    sampling = Sampling(max_new_tokens, temperature=temperature)
    while True:
        try:
            message = input(PROMPT).strip()
        except EOFError:
            print()
            return
        if message in EXIT:
            return
        if message == RESET:
            chat.reset()
            print("(history cleared)", flush=True)
            continue
        if not message:
            continue
        print("slm> ", end="", flush=True)
        turn = chat.answer(message, sampling, emit=lambda piece: print(piece, end="", flush=True))
        print(f"\n     {turn.describe()}", flush=True)

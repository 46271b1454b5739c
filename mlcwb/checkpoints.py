"""Checkpoints of a training run: save them atomically, find the newest, load and resume one.

``OUTPUT/steps/step-N/`` and ``OUTPUT/final/`` are save_pretrained model dirs (``load_model(path)``
loads them) plus ``extractor.safetensors`` and, for steps, ``training_state.pt`` (optimizer,
scheduler, RNG, step, reference log-probs). Each is written to a temp dir and renamed into place,
so an interrupted write never leaves a checkpoint that looks complete. Kept apart from the loop
(``mlcwb.train``) because reading a checkpoint back (``load_extractor``, ``latest_checkpoint``)
needs none of it.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mlcwb.errors import TrainingError
from mlcwb.mlc import Extractor, MLCConfig
from mlcwb.train_config import RENAMED, LoraSettings, TrainConfig

if TYPE_CHECKING:
    from mlcwb.train_module import TrainModule

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption (the rest must match).
_RESUMABLE_CHANGES = {"lr", "weight_decay", "warmup_steps", "max_grad_norm", "epochs",
                      "sequential_mlc_epochs", "max_steps", "save_every", "keep_checkpoints",
                      "keep_phase_end", "output_dir", "resume", "device", "precision", "report_to"}


def step_dirs(output_dir: Path) -> list[Path]:
    steps = output_dir / "steps"
    found = [p for p in steps.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if steps.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete step checkpoint (incomplete ones never get their final name)."""
    found = step_dirs(Path(output_dir))
    return found[-1] if found else None


def _replace_dir(tmp: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, accelerator: Any, module: TrainModule, tokenizer: Any,
                    training_state: dict[str, Any] | None) -> Path:
    """Model (save_pretrained) + extractor.safetensors (+ training_state.pt), atomically."""
    state_dict = accelerator.get_state_dict(module)  # gathers FSDP/DeepSpeed shards
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".*.tmp-*"):  # what a killed run was writing
            shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            _write_checkpoint(tmp, accelerator.unwrap_model(module), tokenizer, state_dict, training_state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not leave half a checkpoint
            raise
        _replace_dir(tmp, path)
    accelerator.wait_for_everyone()
    return path


def _write_checkpoint(tmp: Path, unwrapped: Any, tokenizer: Any, state_dict: dict[str, Tensor],
                      training_state: dict[str, Any] | None) -> None:
    from safetensors.torch import save_file

    model_sd = {k[6:]: v for k, v in state_dict.items() if k.startswith("model.")}
    if hasattr(unwrapped.model, "peft_config"):
        unwrapped.model.save_pretrained(tmp)  # the adapter
    else:
        unwrapped.model.save_pretrained(tmp, state_dict=model_sd)
    tokenizer.save_pretrained(tmp)
    ext = unwrapped.extractor
    ext_sd = {k[10:]: v.detach().cpu().contiguous() for k, v in state_dict.items()
              if k.startswith("extractor.")}
    save_file(ext_sd, tmp / "extractor.safetensors",
              metadata={"kind": ext.kind, "hidden_size": str(ext.hidden_size), "dim": str(ext.dim)})
    if training_state is not None:
        torch.save(training_state, tmp / "training_state.pt")


def load_extractor(path: str | Path) -> Extractor:
    """The extractor saved beside a checkpoint (``extractor.safetensors``)."""
    from safetensors import safe_open

    path = Path(path)
    file = path / "extractor.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise TrainingError(f"{file} does not exist; is {path} an mlcwb checkpoint?")
    with safe_open(str(file), "pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    n_langs = len(tensors["lang_means"]) if "lang_means" in tensors else 0
    extractor = Extractor(int(meta["hidden_size"]), int(meta["dim"]), meta["kind"], n_langs=n_langs)
    extractor.load_state_dict(tensors)
    return extractor


def _load_model_weights(model: nn.Module, ckpt: Path) -> None:
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors"))
        return
    state: dict[str, Tensor] = {}
    for file in sorted(ckpt.glob("*.safetensors")):
        if file.name != "extractor.safetensors":
            state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    by_storage: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_storage.setdefault(param.data_ptr(), []).append(name)
    tied = {n for names in by_storage.values() if len(names) > 1 for n in names}
    if unexpected or set(missing) - tied:
        raise TrainingError(f"Checkpoint {ckpt} does not fit the model: missing "
                            f"{sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}.")


def load_checkpoint(config: TrainConfig, model: nn.Module, extractor: Extractor,
                     accelerator: Any) -> dict[str, Any] | None:
    """Resume: the newest checkpoint's weights into model and extractor, and its training state
    returned. A fresh run instead clears the steps and log an earlier run left."""
    output_dir = Path(config.output_dir)
    ckpt = latest_checkpoint(output_dir) if config.resume else None
    if ckpt is None:
        if accelerator.is_main_process and output_dir.exists():
            shutil.rmtree(output_dir / "steps", ignore_errors=True)
            (output_dir / "log.jsonl").unlink(missing_ok=True)
        return None
    saved = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=True)
    _check_resumable(saved["config"], config, ckpt)
    _load_model_weights(model, ckpt)
    extractor.load_state_dict(load_extractor(ckpt).state_dict())
    log.info("resuming from %s (step %d)", ckpt, saved["step"])
    return saved


def _check_resumable(saved: dict[str, Any], config: TrainConfig, ckpt: Path) -> None:
    """Refuse a checkpoint of a different run. A key the checkpoint lacks (at the top or in
    ``mlc:``/``lora:``) was added after the run began and counts as its default, and a key saved
    under its old name (``train_config.RENAMED``) counts under the new one, so such a run still
    resumes."""
    current = config.to_dict()
    defaults = TrainConfig().to_dict()
    saved = {**defaults, **saved}
    for old, new in RENAMED.items():
        if old in saved:
            section, _, key = new.rpartition(".")
            value = saved.pop(old)
            if not section:
                saved[key] = value
            elif isinstance(saved[section], dict):
                saved[section].setdefault(key, value)
    for section, cls in (("mlc", MLCConfig), ("lora", LoraSettings)):
        if isinstance(saved[section], dict):
            saved[section] = {**asdict(cls()), **saved[section]}
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        raise TrainingError(
            f"{ckpt} belongs to a run with different {changed} "
            f"({ {k: saved.get(k) for k in changed} }). Use another output_dir, or resume: false "
            f"to start this one afresh.")



__all__ = ["latest_checkpoint", "load_checkpoint", "load_extractor", "rng_state", "save_checkpoint",
           "set_rng_state", "step_dirs"]

"""Training: an alignment loss (SFT or DPO) plus the MLC term, on accelerate, with resume.

The loop is written for the cost structure docs/design.md ("Training and checkpoints")
describes: on small hardware speed comes from not doing work. So

* DPO's reference log-probs are computed once, before training (no reference model in memory);
* the MLC prompts run in their own prompt-only forward through the backbone (no LM head, no padding
  to the response length); ``mlc.batching="official"`` reproduces the paper's code (prompts appended
  to the policy batch, padded to it, logits computed) so both can be measured;
* LM-head logits are computed only for response positions (``logits_to_keep``).

Encoder-decoder models (T5, mT5, mT0, Flan-T5) train through the same loop: alignment losses score
the decoder's answer and the MLC states come from the encoder (``mlcwb.seq2seq``). The alignment
loss of DPO pairs is ``pref_loss`` (``mlcwb.preference``: sigmoid, IPO, hinge, ORPO, SimPO).

The model and the extractor sit in one ``nn.Module`` whose single forward does both passes, so
accelerate's wrappers (DDP, FSDP, DeepSpeed) see one forward per step: the distributed engine is
accelerate's, ``accelerate launch -m mlcwb train CONFIG`` runs it on many GPUs.

Checkpoints (``OUTPUT/steps/step-N/``, ``mlcwb.checkpoints``) are save_pretrained model dirs plus
the extractor and the training state, each written to a temp dir and renamed into place. Data
order is a pure function of (seed, phase, epoch) (``mlcwb.train_plan``), so a resumed run replays
exactly the batches it would have seen. A non-finite loss or gradient never reaches the optimizer:
the run saves its last good state and stops with a TrainingError.

This module is the loop and what only the loop uses (the run's setup and steps; its MLC side is
``mlcwb.mlc_side``);
the data is ``mlcwb.train_data``'s, the forward and the losses ``mlcwb.train_module``'s, so each
piece can be read, and imported, without the rest.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mlcwb.checkpoints import load_checkpoint, rng_state, save_checkpoint, set_rng_state, step_dirs
from mlcwb.errors import ConfigError, TrainingError
from mlcwb.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from mlcwb.mlc import Extractor
from mlcwb.models import load_model
from mlcwb.preference import REFERENCE_FREE
from mlcwb.prompt_states import computed_positions, shared_prefix
from mlcwb.seq2seq import is_encoder_decoder
from mlcwb.train_config import TrainConfig
from mlcwb.train_data import AlignExample, TrainData, load_prompts, prepare_data
from mlcwb.train_module import TrainModule, align_objective, collator
from mlcwb.train_plan import Phase, batch_indices, locate, plan
from mlcwb.mlc_side import MLCSide, NoMLC
from mlcwb.tracking import end_tracking, log_row, start_tracking, tracker_kwargs

if TYPE_CHECKING:
    from mlcwb.data import PromptSet


# ------------------------------------------------------------------------------------ run

@dataclass
class TrainResult:
    """What a run leaves: the trained model and extractor, its log, where it saved them."""

    model: Any
    tokenizer: Any
    extractor: Extractor
    output_dir: Path
    final_dir: Path
    steps: int
    log: list[dict]
    resumed_from: int = 0


def _make_accelerator(config: TrainConfig, find_unused: bool) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = config.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
            and config.device != "cpu" else "no"
    return Accelerator(cpu=config.device == "cpu", mixed_precision=precision, **tracker_kwargs(config),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])


def _apply_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    task = "SEQ_2_SEQ_LM" if is_encoder_decoder(model) else "CAUSAL_LM"
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type=task))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _reference_logps(accelerator: Any, module: nn.Module, data: TrainData, config: TrainConfig,
                     collate: Callable[[Sequence[AlignExample], bool], dict[str, Any]]) -> Tensor:
    """(n, 2) log-probs of chosen/rejected answers under the initial model, computed once."""
    rows = []
    module.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(data.align), config.batch_size), desc="reference log-probs",
                          disable=not accelerator.is_local_main_process, leave=False):
            batch = _to_device(collate(data.align[start:start + config.batch_size], True), accelerator.device)
            with accelerator.autocast():
                logps = module(align=batch)["logps"].float()
            n = logps.shape[0] // 2
            rows.append(torch.stack([logps[:n], logps[n:]], dim=1).cpu())
    module.train()
    return torch.cat(rows)


# ------------------------------------------------------------------------------------ the run's steps

@dataclass
class _Run:
    """What the steps of one run share: built by ``_setup``, advanced step by step by ``train``."""

    config: TrainConfig
    accelerator: Any
    tokenizer: Any
    data: TrainData
    mlc: MLCSide | NoMLC
    phases: list[Phase]
    total: int
    core: TrainModule  # the module as built; ``module`` is it as accelerate wrapped it
    module: Any
    optimizer: Any
    scheduler: Any
    params: list[Tensor]
    collate: Callable[[Sequence[AlignExample], bool], dict[str, Any]]
    saved: dict[str, Any] | None
    ref_logps: Tensor | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    def state(self, step: int) -> dict[str, Any]:
        """``training_state.pt`` after ``step`` steps: all a resumed run needs to continue alike."""
        return {"step": step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                "ref_logps": self.ref_logps, "config": self.config.to_dict()}


@dataclass
class _Step:
    """The batches of one step, where in the plan it lies, and what it costs."""

    phase: Phase
    j: int  # the step's index within its phase
    align: dict[str, Any] | None
    mlc: dict[str, Tensor] | None
    tokens: int
    positions: int


def train(config: TrainConfig, model: Any = None, tokenizer: Any = None,
          prompts: PromptSet | None = None) -> TrainResult:
    """Run (or resume) one training run as ``config`` says; returns the trained model.

    ``model``/``tokenizer``/``prompts`` override ``config.model``/``config.data`` (a notebook passes
    what it has loaded; the model is trained in place). Each step is a named function below:
    its batches, its loss, the optimizer step, its log row, the periodic checkpoint.
    """
    run = _setup(config, model, tokenizer, prompts)
    start = _restore(run)
    bar = tqdm(range(start, run.total), desc=f"train {config.align}{'+mlc' if run.mlc.active else ''}",
               initial=start, total=run.total, disable=not run.accelerator.is_local_main_process)
    for step in bar:
        tick = time.perf_counter()
        batch = _batches(run, step)
        loss, row = _loss(run, batch, step)
        grad_norm = _optimize(run, loss, row, step)
        _log(run, row, batch, grad_norm, tick)
        bar.set_postfix({k: round(row[k], 4) for k in ("loss", "align_loss", "mlc_loss") if k in row})
        _checkpoint(run, step)
        _phase_end(run, step)
    bar.close()
    return _finish(run)


def _setup(config: TrainConfig, model: Any, tokenizer: Any, prompts: Any) -> _Run:
    """Model, data, accelerator, plan, module and optimizer. The seed is set just before LoRA and
    the extractor draw their initial weights; a checkpoint's weights go in before accelerate
    wraps the module (sharded wrappers could not take them later)."""
    config.validate()
    if (model is None) != (tokenizer is None):
        raise ConfigError("Pass both model and tokenizer, or neither (config.model is loaded).")
    if model is None:
        model, tokenizer = load_model(config.model, device="cpu", dtype=torch.float32)
    data = prepare_data(config, prompts if prompts is not None else load_prompts(config), tokenizer)
    mlc = MLCSide(config, data, tokenizer) if config.uses_mlc else NoMLC()
    accelerator = _make_accelerator(config, find_unused=mlc.active)
    phases, total = _plan_steps(config, data, accelerator.num_processes)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    if config.lora is not None:
        model = _apply_lora(model, config)
    extractor = mlc.make_extractor(model.config.get_text_config().hidden_size, config.seed,
                                   accelerator.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    core = mlc.module(model, extractor, pad_id, accelerator.device)
    saved = load_checkpoint(config, model, extractor, accelerator)
    optimizer, scheduler, params = _optimizer(config, model, extractor, mlc)
    core.train()
    module, optimizer = accelerator.prepare(core, optimizer)
    return _Run(config, accelerator, tokenizer, data, mlc, phases, total, core, module, optimizer,
                scheduler, params, collator(model, pad_id), saved)


def _plan_steps(config: TrainConfig, data: TrainData, world: int) -> tuple[list[Phase], int]:
    """The phases and the number of steps to run (``max_steps`` caps the plan)."""
    phases = plan(config, len(data.align), len(data.mlc_texts), world)
    total = sum(p.steps for p in phases)
    total = min(total, config.max_steps) if config.max_steps else total
    if total == 0:
        raise ConfigError("The plan has no steps (epochs x steps per epoch is 0).")
    return phases, total


def _optimizer(config: TrainConfig, model: nn.Module, extractor: Extractor,
               mlc: MLCSide | NoMLC) -> tuple[Any, Any, list[Tensor]]:
    """AdamW over the trainable weights (the extractor's with its own lr and no weight decay), a
    linear warm-up, and the parameters whose gradient norm is clipped."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
    ext_params = [p for p in extractor.parameters() if p.requires_grad]
    if ext_params:
        ext_lr = config.lr if mlc.extractor_lr is None else mlc.extractor_lr
        groups.append({"params": ext_params, "lr": ext_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0)
    return optimizer, scheduler, [p for group in groups for p in group["params"]]


def _restore(run: _Run) -> int:
    """The first step to run. DPO's reference log-probs come from the checkpoint or are computed
    once now; a resumed run gets back its optimizer, scheduler, log rows up to its step and RNG."""
    config, saved, output_dir = run.config, run.saved, run.output_dir
    if config.align == "dpo" and config.pref_loss not in REFERENCE_FREE:
        run.ref_logps = saved["ref_logps"] if saved else _reference_logps(
            run.accelerator, run.module, run.data, config, run.collate)
    start = 0
    if saved is not None:
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        start = saved["step"]
        if run.accelerator.is_main_process and (output_dir / "log.jsonl").exists():
            rows = read_jsonl(output_dir / "log.jsonl", skip_partial_last=True)
            write_jsonl(output_dir / "log.jsonl", [r for r in rows if r["step"] <= start])
        set_rng_state(saved["rng"])
    if run.accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.yaml", config.to_yaml())
        start_tracking(run.accelerator, config, start)
    return start


def _batches(run: _Run, step: int) -> _Step:
    """The alignment and MLC rows of global step ``step``, a pure function of (seed, phase,
    epoch), so a resumed run replays exactly the batches it would have seen."""
    index, j = locate(run.phases, step)
    phase, config = run.phases[index], run.config
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    align = None
    tokens = 0
    if phase.align:
        rows = batch_indices(len(run.data.align), config.batch_size, phase.steps_per_epoch, j,
                      config.seed, index, rank, world)
        align = run.collate([run.data.align[i] for i in rows], config.align == "dpo")
        align["rows"] = torch.tensor(rows)
        tokens += int(align["attention_mask"].sum()) + (
            int(align["response_mask"].sum()) if "labels" in align else 0)
    mlc = run.mlc.batch(phase, index, j, rank, world)
    if mlc is not None:
        tokens += int(mlc["attention_mask"].sum())
    return _Step(phase, j, align, mlc, tokens, _positions(align, mlc, run.core))


def _loss(run: _Run, batch: _Step, step: int) -> tuple[Tensor, dict[str, Any]]:
    """One forward: the alignment loss + ``lam`` x the MLC term, and the step's log row so far."""
    device = run.accelerator.device
    with run.accelerator.autocast():
        out = run.module(align=_to_device(batch.align, device) if batch.align else None,
                         mlc=_to_device(batch.mlc, device) if batch.mlc else None)
    row: dict[str, Any] = {"step": step + 1, "phase": batch.phase.name,
                           "epoch": batch.j // max(batch.phase.steps_per_epoch, 1)}
    loss = torch.zeros((), device=device)
    if batch.align is not None:
        align_loss, stats = align_objective(run.config, out, run.ref_logps, batch.align["rows"])
        row.update(stats)
        loss = loss + align_loss
        row["align_loss"] = float(align_loss.detach())
    if batch.mlc is not None:
        loss = loss + run.mlc.term(out, row)
    row["loss"] = float(loss.detach())
    return loss, row


def _optimize(run: _Run, loss: Tensor, row: dict[str, Any], step: int) -> float:
    """Backward, clip, step; returns the gradient norm. A non-finite loss or gradient never
    reaches the optimizer: the last good state is saved and the run stops."""
    if not torch.isfinite(loss):
        _stop(run, step, row, "loss")
    run.accelerator.backward(loss)
    grad_norm = run.accelerator.clip_grad_norm_(run.params, run.config.max_grad_norm or float("inf"))
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        run.optimizer.zero_grad(set_to_none=True)
        _stop(run, step, row, "gradient")
    row["lr"] = run.scheduler.get_last_lr()[0]  # the lr this step uses, before the schedule moves on
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def _log(run: _Run, row: dict[str, Any], batch: _Step, grad_norm: float, tick: float) -> None:
    """Complete the step's row (gradient norm, cost, seconds; ``_optimize`` put the lr in) and
    append it to ``log.jsonl``."""
    row.update(grad_norm=grad_norm, tokens=batch.tokens,
               positions=batch.positions, seconds=round(time.perf_counter() - tick, 4))
    _across_processes(run.accelerator, row)
    if run.accelerator.is_main_process:
        append_jsonl(run.output_dir / "log.jsonl", row)
        log_row(run.accelerator, row)


def _across_processes(accelerator: Any, row: dict[str, Any]) -> None:
    """With several processes each computed the row on its own share of the global batch: make it
    the step's, each number the mean over processes (for a loss that averages equal shares, the
    global batch's loss), ``tokens`` and ``positions`` their sum. Every process calls it."""
    if accelerator.num_processes == 1:
        return
    summed = ("tokens", "positions")
    keys = sorted(k for k, v in row.items() if k in summed or isinstance(v, float))
    values = accelerator.reduce(torch.tensor([float(row[k]) for k in keys], dtype=torch.float64,
                                             device=accelerator.device), reduction="sum")
    for key, value in zip(keys, values.tolist()):
        row[key] = int(value) if key in summed else value / accelerator.num_processes


def _checkpoint(run: _Run, step: int) -> None:
    """Every ``save_every`` steps (but not after the last: ``final/`` follows), keeping the newest
    ``keep_checkpoints``."""
    config = run.config
    if not config.save_every or (step + 1) % config.save_every or step + 1 >= run.total:
        return
    save_checkpoint(run.output_dir / "steps" / f"step-{step + 1:08d}", run.accelerator, run.module,
                    run.tokenizer, run.state(step + 1))
    if run.accelerator.is_main_process:
        for old in step_dirs(run.output_dir)[:-config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


PHASE_END = "phase-align"  # OUTPUT/<this>: the model as a sequential run's alignment phase left it


def _phase_end(run: _Run, step: int) -> None:
    """With ``keep_phase_end``, the model after the last step of the alignment phase of a
    sequential run (what alignment alone would have ended with), saved without optimizer state."""
    if not run.config.keep_phase_end or len(run.phases) < 2 or step + 1 != run.phases[0].steps:
        return
    save_checkpoint(run.output_dir / PHASE_END, run.accelerator, run.module, run.tokenizer, None)


def _positions(align: dict[str, Any] | None, mlc: dict[str, Tensor] | None, module: TrainModule) -> int:
    """Positions the forward computes (real tokens + padding): the cost the batching decides."""
    if align is not None and mlc is not None and module.batching == "official":
        rows = align["input_ids"].shape[0] + mlc["input_ids"].shape[0]
        return rows * max(align["input_ids"].shape[1], mlc["input_ids"].shape[1])
    return (align["input_ids"].numel() + (align["labels"].numel() if "labels" in align else 0)
            if align is not None else 0) + \
        (computed_positions(mlc["attention_mask"], module.bucketed,
                            shared_prefix(mlc["input_ids"], mlc["attention_mask"], mlc.get("content_mask"))
                            if module.bucketed else 0) if mlc is not None else 0)


def _stop(run: _Run, step: int, row: dict[str, Any], what: str) -> None:
    """Save the state after the last good step (``step``) and stop the run with a TrainingError."""
    path = save_checkpoint(run.output_dir / "steps" / f"step-{step:08d}", run.accelerator,
                           run.module, run.tokenizer, run.state(step))
    end_tracking(run.accelerator)
    raise TrainingError(
        f"Non-finite {what} at step {step + 1} ({ {k: v for k, v in row.items() if 'loss' in k} }); "
        f"nothing from this step reached the optimizer. The last good state (after step {step}) is "
        f"saved at {path}. Lower lr, set max_grad_norm, or use precision: no, then run again to "
        f"resume from it.")


def _layer_record(run: _Run) -> dict[str, Any]:
    """The layer MLC acted on, and with ``mlc.layer: auto`` the table it was chosen from."""
    if not run.mlc.active:
        return {}
    choice = run.mlc.layer_choice
    return {"mlc_layer": choice.layer, "mlc_layer_choice": choice.as_dict()["table"]} if choice else \
        {"mlc_layer": run.core.layer}


def _finish(run: _Run) -> TrainResult:
    """Save ``OUTPUT/final`` (LoRA merged into the weights, so ``load_model`` reads it)."""
    accelerator, output_dir, tokenizer = run.accelerator, run.output_dir, run.tokenizer
    unwrapped = accelerator.unwrap_model(run.module)
    if hasattr(unwrapped.model, "peft_config"):
        unwrapped.model = unwrapped.model.merge_and_unload()
    final = save_checkpoint(output_dir / "final", accelerator, unwrapped, tokenizer, None)
    rows = read_jsonl(output_dir / "log.jsonl", skip_partial_last=True) \
        if (output_dir / "log.jsonl").exists() else []
    resumed_from = run.saved["step"] if run.saved else 0
    if accelerator.is_main_process:
        atomic_write_json(output_dir / "summary.json", {
            "steps": run.total, "resumed_from": resumed_from, "processes": accelerator.num_processes,
            "final_dir": str(final), "last": rows[-1] if rows else None, **_layer_record(run)})
    end_tracking(accelerator)
    unwrapped.model.eval()
    return TrainResult(unwrapped.model, tokenizer, unwrapped.extractor.eval(), output_dir, final,
                       run.total, rows, resumed_from)



__all__ = ["PHASE_END", "TrainResult", "train"]

"""The plan of a training run and its data order: phases, step counts, the rows of each step.

Which rows a step reads is a pure function of (seed, phase, epoch) and needs no model, so it sits
apart from the loop (``mlcwb.train``): this is what lets a resumed run replay exactly the batches
it would have seen, and a process of a multi-GPU run pick its own share of each batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlcwb.errors import ConfigError, TrainingError
from mlcwb.train_config import TrainConfig


@dataclass(frozen=True)
class Phase:
    """A pass over the data: ``joint`` (align + MLC every aux_every), ``align`` or ``mlc`` only."""

    name: str
    epochs: int
    steps_per_epoch: int
    align: bool
    mlc: bool

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def plan(config: TrainConfig, n_align: int, n_mlc: int, world: int = 1) -> list[Phase]:
    """The phases of a run; sizes are checked against the data here, with the numbers."""
    mlc_bs = config.mlc.batch_size if config.uses_mlc else 0
    if config.align != "none" and n_align < config.batch_size * world:
        raise ConfigError(f"batch_size {config.batch_size} x {world} process(es) is more than the "
                          f"{n_align} alignment examples; lower batch_size or add data.")
    if config.uses_mlc and n_mlc < mlc_bs * world:
        raise ConfigError(f"mlc.batch_size {mlc_bs} x {world} process(es) is more than the {n_mlc} "
                          f"MLC prompts; lower mlc.batch_size or add data.")
    align_steps = n_align // (config.batch_size * world) if config.align != "none" else 0
    mlc_steps = n_mlc // (mlc_bs * world) if config.uses_mlc else 0
    if config.align == "none":
        return [Phase("mlc", config.epochs, mlc_steps, False, True)]
    if config.schedule == "sequential":
        return [Phase("align", config.epochs, align_steps, True, False),
                Phase("mlc", config.sequential_mlc_epochs, mlc_steps, False, True)]
    return [Phase("joint", config.epochs, align_steps, True, config.uses_mlc)]


def locate(phases: list[Phase], step: int) -> tuple[int, int]:
    """(phase index, step within the phase) of a global step."""
    for index, phase in enumerate(phases):
        if step < phase.steps:
            return index, step
        step -= phase.steps
    raise TrainingError(f"step {step} is past the end of the plan")


def _order(n: int, seed: int, tag: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + tag * 10_007 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def batch_indices(n: int, bs: int, steps_per_epoch: int, j: int, seed: int, tag: int,
           rank: int, world: int) -> list[int]:
    """Indices of the ``j``-th batch of this process in a stream of shuffled epochs."""
    epoch, k = divmod(j, steps_per_epoch)
    start = (k * world + rank) * bs
    return _order(n, seed, tag, epoch)[start:start + bs]


__all__ = ["Phase", "batch_indices", "locate", "plan"]

"""``mlcwb train CONFIG``, also ``python -m mlcwb train CONFIG`` and
``accelerate launch -m mlcwb train CONFIG`` (through ``mlcwb/__main__.py``): one training run
from a YAML file of TrainConfig keys (``mlcwb config train`` prints a commented default)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from mlcwb.run_lock import RunLock

log = logging.getLogger(__name__)


def arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("config", help="YAML file with TrainConfig keys (see `mlcwb config train`)")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.set_defaults(func=run)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    arguments(subparsers.add_parser("train", help="align (SFT/DPO) + MLC training from a YAML config"))


def run(args: argparse.Namespace) -> int:
    from mlcwb.train import train
    from mlcwb.train_config import TrainConfig

    config = TrainConfig.from_yaml(args.config)
    overrides = {k: v for k, v in (("output_dir", args.output_dir), ("max_steps", args.max_steps))
                 if v is not None}
    if overrides:
        config = config.replace(**overrides)
    # One owner per output_dir; under `accelerate launch` the main process holds it for all.
    main = os.environ.get("RANK", "0") == "0"
    with RunLock(config.output_dir) if main else contextlib.nullcontext():
        try:
            result = train(config)
        except KeyboardInterrupt:
            log.warning("training interrupted (Ctrl-C); run the same command again to resume from "
                        "the newest checkpoint in %s (resume: true, the default)", config.output_dir)
            raise
    log.info("trained %d steps; final checkpoint %s", result.steps, result.final_dir)
    return 0


"""The MLC half of a training run: its extractor, which steps carry MLC rows, the term and its
diagnostics (``MLCSide``), and the same interface for a run without MLC (``NoMLC``), so the
trainer's steps need no ``if mlc`` branches. The trainer (``mlcwb.train``) owns the loop; this
module owns what the MLC term needs from the run: labels for the label-aware form, running
language means for the centred one, and the layer (``auto``: chosen before any weight moves).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mlcwb.answer_kl import Openings, coarse_kl, encode_openings, reference_openings
from mlcwb.collapse import CollapseWatch, batch_distinctness
from mlcwb.errors import ConfigError, TrainingError
from mlcwb.layer_choice import AUTO_PROMPTS, LayerChoice, choose_layer
from mlcwb.mlc import Extractor, MLCConfig, language_weights, mlc_term, use_buckets
from mlcwb.seq2seq import is_encoder_decoder
from mlcwb.train_config import TrainConfig
from mlcwb.train_data import TrainData, encode_mlc
from mlcwb.train_module import TrainModule
from mlcwb.train_plan import Phase, batch_indices


class MLCSide:
    """The MLC half of a run: its extractor, which steps carry MLC rows and which prompts, the
    term and the diagnostics logged with it. ``NoMLC`` has the same interface for runs without
    MLC, so the trainer's steps need no ``if mlc`` branches."""

    active = True

    def __init__(self, config: TrainConfig, data: TrainData, tokenizer: Any):
        self.config, self.cfg, self.data, self.tokenizer = config, config.mlc, data, tokenizer
        self.extractor_lr = config.mlc.extractor_lr
        self.weights = language_weights(data.langs, config.mlc.lang_weights)
        self.reference: Extractor | None = None
        self.extractor: Extractor | None = None
        self.watch = CollapseWatch()
        self.harmful = data.mlc_harmful  # per MLC prompt, read once: batches index into it
        self.labels: Tensor | None = None  # the current MLC batch's harmful flags
        self.layer_choice: LayerChoice | None = None
        self.openings: Openings | None = None  # the untrained model's answer openings (answer_kl)
        self.kl_target: dict[str, Tensor] | None = None  # the current MLC batch's part of them

    def make_extractor(self, hidden: int, seed: int, device: torch.device) -> Extractor:
        """The seeded extractor, and a frozen copy of its initial state: under that fixed map a
        collapsing extractor shows up (``mlc_loss_ref``), and a resumed run rebuilds it alike.
        With ``centre: running`` the extractor also keeps each language's running mean."""
        n_langs = len(self.data.langs) if self.cfg.centre == "running" else 0
        extractor = Extractor(hidden, self.cfg.extractor_dim, self.cfg.extractor, seed=seed, n_langs=n_langs)
        self.reference = extractor.reference().to(device)
        self.extractor = extractor
        return extractor

    def layer(self, model: nn.Module, device: torch.device) -> int:
        """``mlc.layer``, or with ``auto`` the layer where the untrained model's translations of
        the MLC prompts are already closest (``mlcwb.layer_choice``); chosen before any weights
        change, so a resumed run chooses the same."""
        if self.cfg.layer != "auto":
            return int(self.cfg.layer)
        if self.data.mlc_prompts is None:
            raise ConfigError("mlc.layer 'auto' needs the MLC prompts' texts.")
        from mlcwb.extract import extract

        sample = self.data.mlc_prompts.select(ids=self.data.mlc_prompts.ids[:AUTO_PROMPTS])
        reps = extract(model, self.tokenizer, sample, langs=self.data.langs, pooling=self.cfg.pooling,
                       chat_template=self.config.chat_template, device=device, progress=False)
        self.layer_choice = choose_layer(reps, ref=self.data.langs[0])
        return self.layer_choice.layer

    def module(self, model: nn.Module, extractor: Extractor, pad_id: int,
               device: torch.device) -> TrainModule:
        """An encoder-decoder pools its encoder with ``mlc.encoder_pooling`` and runs one padded MLC
        batch (the shared-prefix cache behind length buckets needs causal attention)."""
        seq2seq = is_encoder_decoder(model)
        layer = self.layer(model, device)
        if self.cfg.answer_kl > 0:
            if seq2seq:
                raise ConfigError("mlc.answer_kl holds a decoder-only model's answer openings; "
                                  "an encoder-decoder is not supported: set it to 0.")
            self.openings = reference_openings(model.to(device), self.tokenizer, self.data.mlc_texts,
                                               self.cfg.answer_kl_tokens, self.cfg.answer_kl_top,
                                               self.config.chat_template)
        return TrainModule(model, extractor, layer,
                           self.cfg.encoder_pooling if seq2seq else self.cfg.pooling,
                           self.cfg.batching, pad_id,
                           bucketed=use_buckets(self.cfg, device) and not seq2seq)

    def batch(self, phase: Phase, index: int, j: int, rank: int, world: int) -> dict[str, Tensor] | None:
        """The MLC rows of step ``j`` of phase ``index``: every ``aux_every``-th step of a joint
        phase, every step of an MLC-only one; a shuffled stream of their own (tag 100 + phase)."""
        cfg, n = self.cfg, len(self.data.mlc_texts)
        if not phase.mlc or (phase.align and j % cfg.aux_every):
            return None
        jm = j // cfg.aux_every if phase.align else j
        per_epoch = n // (cfg.batch_size * world)
        picked = batch_indices(n, cfg.batch_size, per_epoch, jm, self.config.seed, 100 + index, rank, world)
        self.labels = torch.tensor([self.harmful[i] for i in picked]) if self.harmful else None
        batch = encode_mlc(self.tokenizer, [self.data.mlc_texts[i] for i in picked], self.config.chat_template)
        if self.openings is not None:
            batch.update(self._opening_rows(picked))
        return batch

    def _opening_rows(self, picked: list[int]) -> dict[str, Tensor]:
        """The answer-KL rows of the picked prompts: each non-anchor prompt followed by the
        reference's first answer tokens, and the reference's top tokens to score there."""
        target = self.openings.take(picked)
        self.kl_target = {"top_logps": target["top_logps"], "valid": target["valid"]}
        texts = [text for i in picked for text in self.data.mlc_texts[i][1:]]
        rows = encode_openings(self.tokenizer, texts, target["tokens"], self.config.chat_template,
                               self.tokenizer.pad_token_id)
        return {"kl_input_ids": rows["input_ids"], "kl_attention_mask": rows["attention_mask"],
                "kl_top_ids": target["top_ids"]}

    def term(self, out: dict[str, Tensor], row: dict[str, Any]) -> Tensor:
        """``lam`` x the MLC term (+ ``answer_kl`` x the answer-opening KL); logs them, its value under the reference extractor and the
        batch's distinctness into ``row``, and warns once on collapse."""
        n_langs = len(self.data.langs)
        means = None
        if self.cfg.centre == "running":
            z = out["z"]
            means = self.extractor.language_means(z.view(-1, n_langs, z.shape[-1]), self.cfg.centre_momentum)
        value = mlc_term(out["z"], n_langs, self.cfg, self.weights, self.labels, means)
        with torch.no_grad():  # the reference map has no running means: it centres on the batch
            row["mlc_loss_ref"] = float(mlc_term(self.reference(out["states"].detach()), n_langs,
                                                 self.cfg, self.weights, self.labels))
        row.update(batch_distinctness(out["states"], n_langs))
        self.watch.check(row)
        row["mlc_loss"] = float(value.detach())
        total = self.cfg.lam * value
        if self.kl_target is not None and "kl_top" in out:
            target = {k: v.to(out["kl_top"].device) for k, v in self.kl_target.items()}
            kl = coarse_kl(target["top_logps"], out["kl_top"], out["kl_rest"], target["valid"])
            row["answer_kl"] = float(kl.detach())
            total = total + self.cfg.answer_kl * kl
        return total


class NoMLC:
    """The MLC side of a run without MLC: an identity extractor (no weights), no MLC rows."""

    active = False
    extractor_lr: float | None = None

    def make_extractor(self, hidden: int, seed: int, device: torch.device) -> Extractor:
        return Extractor(hidden, MLCConfig.extractor_dim, "identity", seed=seed)

    def module(self, model: nn.Module, extractor: Extractor, pad_id: int,
               device: torch.device) -> TrainModule:
        return TrainModule(model, extractor, pad_id=pad_id)

    def batch(self, phase: Phase, index: int, j: int, rank: int, world: int) -> None:
        return None

    def term(self, out: dict[str, Tensor], row: dict[str, Any]) -> Tensor:
        """Never reached: ``batch`` gives no MLC rows, and only MLC rows ask for the term."""
        raise TrainingError("a run without MLC has no MLC term")


__all__ = ["MLCSide", "NoMLC"]

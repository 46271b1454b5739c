"""The Multi-Lingual Consistency (MLC) loss, its extractor head and its variants.

The idea (docs/design.md, "The MLC loss"): the representations of one prompt in L languages
should point the same way. Stack the L (extracted, L2-normalised) vectors into Z (L x d). If they
are collinear, Z has rank 1 and its first singular value carries all the energy. The official
loss turns the singular values into logits ``(s / stopgrad(s1)) / tau`` and asks cross-entropy
for index 0.

Two numerical choices matter and are proved by tests:

* The loss is a function of the singular values *only* (``torch.linalg.svdvals``). SVD's backward
  divides by differences of singular values only when singular vectors enter the loss, so identical
  vectors, L = 2 with equal singular values, or rank-deficient Z all have finite gradients.
* Everything runs in float32 with autocast off: bf16 singular values of near-collinear vectors are
  noise, and the loss lives within a few hundredths of its floor.

A zero vector has no direction; it contributes a zero row and no gradient instead of the 1/eps
gradient a clamped normalisation would send into the model.

The states themselves come from the hidden-state engine's prompt forward
(``mlcwb.prompt_states.prompt_states``); this module only turns them into the term.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlcwb.defaults import POOLINGS
from mlcwb.errors import ConfigError

VARIANTS = ("official", "cosine", "contrastive", "label_contrastive")
CENTRINGS = ("none", "batch", "running")
EXTRACTORS = ("linear", "frozen", "identity")
BATCHINGS = ("separate", "official")
BUCKETINGS = ("auto", "length", "none")
_EPS = 1e-6


@dataclass
class MLCConfig:
    """How the MLC term is computed and weighted (paper defaults).

    ``layer`` counts like ``hidden_states`` (0 = embeddings, -1 = after the final norm), or
    ``auto``: the layer where the untrained model's translations are already closest
    (``mlcwb.layer_choice``, recorded in the run's ``summary.json``);
    ``pooling`` picks the position: ``last`` is the official last prompt token (a chat-template
    token identical in every language), ``content_last``/``content_mean`` look at the user's words.
    ``batching="official"`` appends the prompts to the policy batch like the paper's code
    (padded to it, LM-head logits computed) so the two can be measured side by side.
    ``buckets`` splits the separate MLC forward into length buckets (``length``) or keeps one padded
    batch (``none``); ``auto`` buckets on a CPU, where a forward costs in proportion to the
    positions it computes, and keeps one batch on an accelerator, where fewer launches win.
    ``variant="contrastive"`` cannot be met by collapse (every prompt mapped to one direction):
    a prompt's translations must be closer to each other than to the batch's other prompts.
    ``variant="label_contrastive"`` contrasts a prompt only with prompts of the other label
    (harmful vs benign), so the direction harmful prompts share is not pushed apart.
    ``centre`` subtracts each language's mean row before the term (``batch``: over the batch's
    prompts; ``running``: a running mean kept across steps with ``centre_momentum``), so what is
    made collinear is a prompt's content, not its language; collapse then costs the most.
    ``encoder_pooling``: for encoder-decoder models (T5, mT5, mT0), how the prompt vector is pooled
    from the encoder, in place of ``pooling``: ``content_mean`` (the mean over the prompt's own
    tokens, since no encoder position is the one the answer is predicted from), ``content_last``
    or ``last`` (``mlcwb.seq2seq``).
    ``answer_kl`` (> 0: on) adds, on every MLC step, that weight x KL(reference || policy) over
    the first ``answer_kl_tokens`` answer tokens of each non-anchor prompt, the reference being
    the untrained model's distribution (its ``answer_kl_top`` most likely tokens and the rest):
    it holds the answer's language without target-language answers (``mlcwb.answer_kl``).
    """

    lam: float = 0.8
    tau: float = 0.2
    aux_every: int = 2
    variant: str = "official"
    extractor: str = "linear"
    extractor_dim: int = 512
    extractor_lr: float | None = None  # None: the model's lr
    layer: int | str = -1  # or "auto": chosen from the untrained model's geometry
    pooling: str = "last"
    encoder_pooling: str = "content_mean"
    lang_weights: dict[str, float] | None = None
    batching: str = "separate"
    batch_size: int = 2  # prompts per MLC step; each brings all its languages
    buckets: str = "auto"
    centre: str = "none"
    centre_momentum: float = 0.9
    answer_kl: float = 0.0
    answer_kl_tokens: int = 4
    answer_kl_top: int = 64

    def validate(self) -> MLCConfig:
        checks = [
            (self.variant in VARIANTS, f"mlc.variant {self.variant!r}: use one of {VARIANTS}"),
            (self.extractor in EXTRACTORS, f"mlc.extractor {self.extractor!r}: use one of {EXTRACTORS}"),
            (self.pooling in POOLINGS, f"mlc.pooling {self.pooling!r}: use one of {POOLINGS}"),
            (self.encoder_pooling in POOLINGS,
             f"mlc.encoder_pooling {self.encoder_pooling!r}: use one of {POOLINGS}"),
            (self.batching in BATCHINGS, f"mlc.batching {self.batching!r}: use one of {BATCHINGS}"),
            (self.buckets in BUCKETINGS, f"mlc.buckets {self.buckets!r}: use one of {BUCKETINGS}"),
            (self.centre in CENTRINGS, f"mlc.centre {self.centre!r}: use one of {CENTRINGS}"),
            (self.layer == "auto" or (isinstance(self.layer, int) and not isinstance(self.layer, bool)),
             f"mlc.layer {self.layer!r}: use a hidden_states index (-1: the last) or 'auto'"),
            (0 <= self.centre_momentum < 1,
             f"mlc.centre_momentum must be in [0, 1), got {self.centre_momentum}"),
            (self.centre != "batch" or self.batch_size >= 2,
             f"mlc.centre 'batch' subtracts the mean over the batch's prompts: mlc.batch_size must "
             f"be >= 2, got {self.batch_size} (or use mlc.centre: running)"),
            (self.lam >= 0, f"mlc.lam must be >= 0, got {self.lam}"),
            (self.answer_kl >= 0, f"mlc.answer_kl must be >= 0 (0: off), got {self.answer_kl}"),
            (self.answer_kl_tokens >= 1 and self.answer_kl_top >= 1,
             f"mlc.answer_kl_tokens and mlc.answer_kl_top must be >= 1, got "
             f"{self.answer_kl_tokens} and {self.answer_kl_top}"),
            (self.tau > 0, f"mlc.tau must be > 0, got {self.tau}"),
            (self.aux_every >= 1, f"mlc.aux_every must be >= 1, got {self.aux_every}"),
            (self.extractor_dim >= 1, f"mlc.extractor_dim must be >= 1, got {self.extractor_dim}"),
            (self.batch_size >= 1, f"mlc.batch_size must be >= 1, got {self.batch_size}"),
            (self.variant not in ("contrastive", "label_contrastive") or self.batch_size >= 2,
             f"mlc.variant {self.variant!r} contrasts prompts: mlc.batch_size must be >= 2, "
             f"got {self.batch_size}"),
            (self.extractor_lr is None or self.extractor_lr >= 0,
             f"mlc.extractor_lr must be >= 0, got {self.extractor_lr}"),
            (not self.lang_weights or all(w >= 0 for w in self.lang_weights.values()),
             "mlc.lang_weights must be non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off (CPU and CUDA) for the block: the MLC math runs in float32."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type="cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast(device_type="cuda", enabled=False))
        yield


def _normalize(z: Tensor) -> Tensor:
    """Unit rows; rows of (near-)zero norm become zero rows with zero gradient."""
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    ok = norm > _EPS
    return torch.where(ok, z / torch.where(ok, norm, torch.ones_like(norm)), torch.zeros_like(z))


def _as_float32(z: Tensor | list[Tensor]) -> list[Tensor] | Tensor:
    if isinstance(z, (list, tuple)):
        return [t.float() for t in z]
    if z.dim() == 2:
        z = z.unsqueeze(0)
    if z.dim() != 3:
        raise ConfigError(f"MLC expects Z of shape (prompts, languages, dim), got {tuple(z.shape)}")
    return z.float()


def _weigh(zn: Tensor, weights: Tensor | Sequence[float] | None) -> Tensor:
    if weights is None:
        return zn
    w = torch.as_tensor(weights).to(zn)
    return zn * (w.unsqueeze(-1) if w.dim() == zn.dim() - 1 else w.view(-1, 1))


def _official(zn: Tensor, tau: float) -> Tensor:
    s = torch.linalg.svdvals(zn)  # (..., min(L, d)), descending
    s_hat = s / s[..., :1].detach().clamp_min(_EPS)
    return -torch.log_softmax(s_hat / tau, dim=-1)[..., 0]


def _cosine(zn: Tensor, weights: Tensor | Sequence[float] | None) -> Tensor:
    n = zn.shape[-2]
    sim = zn @ zn.transpose(-1, -2)
    w = torch.ones(zn.shape[:-1], dtype=zn.dtype, device=zn.device) if weights is None else (
        torch.as_tensor(weights).to(zn).expand(zn.shape[:-1]))
    pair = w.unsqueeze(-1) * w.unsqueeze(-2)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=zn.device), diagonal=1)
    total = (pair * upper).sum((-1, -2)).clamp_min(_EPS)
    return 1 - (sim * pair * upper).sum((-1, -2)) / total


def mlc_loss(z: Tensor | list[Tensor], tau: float = 0.2, weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """The official MLC loss, averaged over prompts.

    ``z``: (P, L, D) or (L, D), or a list of (L_i, D) tensors (prompts with different language
    counts). ``weights``: per-language row weights, (L,) or (P, L) (the paper's "language-aware
    weighting" future work; only their ratios matter since the loss is scale-free).
    """
    with full_precision():
        z = _as_float32(z)
        if isinstance(z, list):
            return torch.stack([mlc_loss(t, tau, weights) for t in z]).mean()
        return _official(_weigh(_normalize(z), weights), tau).mean()


def pairwise_cosine_loss(z: Tensor | list[Tensor], weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """1 - (weighted) mean pairwise cosine of the L vectors, averaged over prompts.

    The form popular summaries describe; unlike the official loss it is 0 at collinearity.
    """
    with full_precision():
        z = _as_float32(z)
        if isinstance(z, list):
            return torch.stack([pairwise_cosine_loss(t, weights) for t in z]).mean()
        return _cosine(_normalize(z), weights).mean()


def _info_nce(zn: Tensor, owner: Tensor, contrast: Tensor, tau: float,
              weights: Tensor | Sequence[float] | None, n_prompts: int) -> Tensor:
    """Rows' mean -log p(positive) over positives (same ``owner``) and the rows ``contrast``
    allows as negatives; a row with no negative has nothing to be told apart from and is left out."""
    eye = torch.eye(len(zn), dtype=torch.bool, device=zn.device)
    positive = (owner[:, None] == owner[None, :]) & ~eye
    kept = positive | contrast
    logits = (zn @ zn.T / tau).masked_fill(~kept, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    rows = -log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)
    w = torch.ones(len(rows), dtype=rows.dtype, device=rows.device) if weights is None else (
        torch.as_tensor(weights).to(rows).repeat(n_prompts))
    w = w * contrast.any(1)
    return (rows * w).sum() / w.sum().clamp_min(_EPS)


def _groups(z: Tensor, what: str) -> tuple[Tensor, int, int]:
    z = _as_float32(z)
    n_prompts, n_langs, _ = z.shape
    if n_prompts < 2 or n_langs < 2:
        raise ConfigError(f"the {what} MLC term needs >= 2 prompts and >= 2 languages per "
                          f"batch, got {n_prompts} x {n_langs}; raise mlc.batch_size.")
    return z, n_prompts, n_langs


def contrastive_loss(z: Tensor, tau: float = 0.2, weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """InfoNCE over a batch of prompt groups: a row's positives are its own prompt's other
    languages, its negatives every other prompt's rows (supervised-contrastive form).

    The official loss is minimal whenever each group is collinear, which a model also reaches by
    mapping *every* prompt to one direction (measured: it then answers everything alike). Here
    that collapse costs log(P·L - 1) (every row as close as any other), so it can only be lowered by
    keeping different prompts apart. ``z``: (P, L, D) with P >= 2; ``weights``: per language (L,).
    """
    with full_precision():
        z, n_prompts, n_langs = _groups(z, "contrastive")
        owner = torch.arange(n_prompts, device=z.device).repeat_interleave(n_langs)
        other = owner[:, None] != owner[None, :]
        return _info_nce(_normalize(z).reshape(n_prompts * n_langs, -1), owner, other, tau,
                         weights, n_prompts)


def label_contrastive_loss(z: Tensor, labels: Tensor | Sequence[bool], tau: float = 0.2,
                           weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """InfoNCE whose negatives are only prompts of the other label (harmful vs benign).

    The plain contrastive form pushes every other prompt away, the other harmful prompts
    included, and with them the direction they share: measured, it erased refusal. Here two harmful
    prompts are neither positives nor negatives of each other, so a shared "harmful" direction
    costs nothing, while mapping both labels to one direction (collapse) still costs the most.
    A batch of one label has no negatives and gives 0. ``labels``: (P,), True = harmful.
    """
    with full_precision():
        z, n_prompts, n_langs = _groups(z, "label-contrastive")
        labels = torch.as_tensor(labels, device=z.device).bool().reshape(-1)
        if len(labels) != n_prompts:
            raise ConfigError(f"label_contrastive needs one label per prompt: {len(labels)} labels "
                              f"for {n_prompts} prompts.")
        owner = torch.arange(n_prompts, device=z.device).repeat_interleave(n_langs)
        row_label = labels.repeat_interleave(n_langs)
        other_label = row_label[:, None] != row_label[None, :]
        return _info_nce(_normalize(z).reshape(n_prompts * n_langs, -1), owner, other_label, tau,
                         weights, n_prompts)


def centre_languages(z: Tensor, means: Tensor | None = None) -> Tensor:
    """Rows minus each language's mean row: ``means`` (L, D), or the batch's own.

    If a state is its content plus a per-language offset, the offset goes and the translations
    of one prompt coincide; if every prompt is mapped to one direction, nothing is left (zero
    rows), which the official loss scores log(L), its worst. ``z``: (P, L, D).
    """
    with full_precision():
        z = _as_float32(z)
        if not isinstance(z, Tensor):
            raise ConfigError("mlc.centre needs every prompt in the same languages (one (P, L, D) batch).")
        return z - (z.mean(0) if means is None else means.to(z))


def mlc_floor(n_langs: int, tau: float = 0.2) -> float:
    """The official loss at perfect collinearity: log(1 + (L - 1) e^{-1/tau})."""
    return math.log1p((n_langs - 1) * math.exp(-1.0 / tau))


def mlc_objective(z: Tensor | list[Tensor], config: MLCConfig,
                  weights: Tensor | Sequence[float] | None = None,
                  labels: Tensor | Sequence[bool] | None = None, means: Tensor | None = None) -> Tensor:
    """The variant ``config.variant`` of the MLC term (without lambda), on language-centred rows
    when ``config.centre`` asks (``means``: the running means; None: the batch's)."""
    if config.centre != "none":
        z = centre_languages(z, means if config.centre == "running" else None)
    if config.variant == "label_contrastive":
        if labels is None:
            raise ConfigError("mlc.variant 'label_contrastive' needs each MLC prompt's harmful/benign "
                              "label; the prompt set has none.")
        return label_contrastive_loss(z, labels, config.tau, weights)
    if config.variant == "cosine":
        return pairwise_cosine_loss(z, weights)
    if config.variant == "contrastive":
        return contrastive_loss(z, config.tau, weights)
    return mlc_loss(z, config.tau, weights)


def mlc_term(z: Tensor, n_langs: int, config: MLCConfig,
             weights: Tensor | Sequence[float] | None = None,
             labels: Tensor | Sequence[bool] | None = None, means: Tensor | None = None) -> Tensor:
    """The MLC term of one batch of prompt groups: ``z`` holds the extracted rows prompt-major
    (all languages of prompt 0, then prompt 1, ...), as ``encode_mlc`` lays them out.

    Every entry point (``mlcwb.train`` and the trl bridge) computes the term here, so one config
    gives one loss whichever trainer runs it.
    """
    if z.shape[0] % n_langs:
        raise ConfigError(f"{z.shape[0]} MLC rows do not split into groups of {n_langs} languages.")
    return mlc_objective(z.reshape(-1, n_langs, z.shape[-1]), config, weights, labels, means)


def use_buckets(config: MLCConfig | None, device: torch.device) -> bool:
    """Length buckets for the MLC forward: on a CPU (cost follows positions), not on a GPU, where
    one padded batch of a few thousand positions beats several kernel launches."""
    if config is None or config.buckets == "none":
        return False
    return config.buckets == "length" or device.type == "cpu"


class Extractor(nn.Module):
    """The head that maps hidden states to the space where MLC is measured (hidden -> 512).

    ``linear`` is trained jointly (official); ``frozen`` is the same random map never trained
    (so it cannot collapse Z by itself); ``identity`` measures the raw hidden states.
    Weights are seeded, so the reference projection of a run can be rebuilt from its seed.
    With ``n_langs`` it also keeps each language's running mean row (``mlc.centre: running``):
    saved, moved and resumed with the head it belongs to.
    """

    def __init__(self, hidden_size: int, dim: int = 512, kind: str = "linear", seed: int = 0,
                 n_langs: int = 0):
        super().__init__()
        if kind not in EXTRACTORS:
            raise ConfigError(f"extractor kind {kind!r}: use one of {EXTRACTORS}")
        self.kind, self.hidden_size, self.dim = kind, hidden_size, dim
        self.proj: nn.Linear | None = None
        if kind != "identity":
            generator = torch.Generator().manual_seed(seed)
            self.proj = nn.Linear(hidden_size, dim)
            bound = 1 / math.sqrt(hidden_size)  # nn.Linear's default range, from our own generator
            with torch.no_grad():
                self.proj.weight.uniform_(-bound, bound, generator=generator)
                self.proj.bias.uniform_(-bound, bound, generator=generator)
            self.proj.requires_grad_(kind == "linear")
        means = torch.zeros(n_langs, hidden_size if self.proj is None else dim) if n_langs else None
        self.register_buffer("lang_means", means)
        self.register_buffer("lang_steps", torch.zeros((), dtype=torch.long) if n_langs else None)

    def language_means(self, z: Tensor, momentum: float) -> Tensor:
        """The running mean of each language's row, updated with this (P, L, D) batch while
        training (the first batch sets it); detached, a fixed point to centre on."""
        if self.lang_means is None:
            raise ConfigError("this extractor keeps no language means: build it with n_langs.")
        with torch.no_grad(), full_precision():
            batch = _as_float32(z.detach()).mean(0)
            if self.training:
                if int(self.lang_steps) == 0:
                    self.lang_means.copy_(batch)
                else:
                    self.lang_means.mul_(momentum).add_(batch, alpha=1 - momentum)
                self.lang_steps += 1
        return self.lang_means.clone()

    def forward(self, hidden: Tensor) -> Tensor:
        """float32 output with autocast off: the loss that follows wants full precision."""
        with full_precision():
            hidden = hidden.float()
            return hidden if self.proj is None else self.proj(hidden)

    def reference(self) -> Extractor:
        """A frozen copy: the fixed projection under which a collapsing extractor shows up."""
        return copy.deepcopy(self).requires_grad_(False)


def language_weights(langs: list[str], weights: dict[str, float] | None) -> Tensor | None:
    """Per-language row weights in ``langs`` order (missing languages weigh 1)."""
    if not weights:
        return None
    unknown = sorted(set(weights) - set(langs))
    if unknown:
        raise ConfigError(f"mlc.lang_weights names languages not trained on: {unknown}; "
                          f"training languages: {langs}")
    return torch.tensor([float(weights.get(lang, 1.0)) for lang in langs])


__all__ = [
    "BATCHINGS", "BUCKETINGS", "CENTRINGS", "EXTRACTORS", "Extractor", "MLCConfig", "POOLINGS",
    "VARIANTS", "centre_languages", "contrastive_loss", "full_precision", "label_contrastive_loss",
    "language_weights", "mlc_floor", "mlc_loss", "mlc_objective", "mlc_term",
    "pairwise_cosine_loss", "use_buckets",
]

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

Checkpoints (``OUTPUT/steps/step-N/``) are save_pretrained model dirs (``load_model(path)`` loads
them) plus ``extractor.safetensors`` and ``training_state.pt`` (optimizer, scheduler, RNG, step,
reference log-probs), each written to a temp dir and renamed into place. Data order is a pure
function of (seed, phase, epoch), so a resumed run replays exactly the batches it would have seen.
A non-finite loss or gradient never reaches the optimizer: the run saves its last good state and
stops with a TrainingError.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mlcwb.backbone import pool_hidden, position_ids
from mlcwb.collapse import CollapseWatch, batch_distinctness
from mlcwb.errors import ConfigError, DataError, LanguageError, TrainingError
from mlcwb.extract import encode_with_content
from mlcwb.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from mlcwb.logprobs import masked_token_logps
from mlcwb.mlc import Extractor, MLCConfig, language_weights, mlc_term, use_buckets
from mlcwb.models import encode_prompts, load_model
from mlcwb.preference import REFERENCE_FREE, dpo_loss, preference_loss
from mlcwb.prompt_states import computed_positions, prompt_states, shared_prefix
from mlcwb.seq2seq import answer_logps, collate_seq2seq, is_encoder_decoder
from mlcwb.train_config import REFUSAL, TrainConfig

if TYPE_CHECKING:
    from mlcwb.data import PromptSet

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption (the rest must match).
_RESUMABLE_CHANGES = {"lr", "weight_decay", "warmup_steps", "max_grad_norm", "epochs",
                      "sequential_mlc_epochs", "max_steps", "save_every", "keep_checkpoints",
                      "output_dir", "resume", "device", "precision"}


# ------------------------------------------------------------------------------------ data

@dataclass
class AlignExample:
    """Token ids of one alignment example; ``rejected_ids`` only for DPO."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None


@dataclass
class TrainData:
    align: list[AlignExample]
    mlc_texts: list[list[str]]  # [prompt][language], languages in config.langs order
    langs: list[str]
    skipped: dict[str, int] = field(default_factory=dict)


def load_prompts(config: TrainConfig) -> Any:
    """The PromptSet named by ``config.data``: ``"corpus"`` or a PromptSet JSONL path."""
    from mlcwb.data import PromptSet, load_corpus

    if config.data == "corpus":
        return load_corpus()
    path = Path(config.data)
    if not path.is_file():
        raise ConfigError(f"data: {config.data!r} is neither 'corpus' nor an existing PromptSet "
                          f"JSONL file.")
    return PromptSet.load(path)


def prepare_data(config: TrainConfig, prompts: PromptSet, tokenizer: Any) -> TrainData:
    """Alignment examples (English targets) and MLC prompt groups from a PromptSet.

    DPO pairs: chosen = ``response``, rejected = ``rejected`` for harmful prompts; benign prompts
    have no unsafe answer, so with ``benign_rejected="refusal"`` their rejected answer is a
    refusal: the pair rewards answering a harmless question over refusing it, which pushes
    against the over-refusal an English-only safety pass causes (docs/design.md, "Training and
    checkpoints").
    """
    prompts = prompts.select(split=config.split)
    if len(prompts) == 0:
        raise DataError(f"No prompts in split {config.split!r} of {prompts.name}.")
    needed = list(dict.fromkeys([*(config.langs if config.uses_mlc else []),
                                 *(config.align_langs if config.align != "none" else [])]))
    missing = [lang for lang in needed if lang not in prompts.languages]
    if missing:
        raise LanguageError(
            f"Languages {missing} are missing from {prompts.name} (every prompt has "
            f"{prompts.languages}). Translate them first (mlcwb.translate) or remove them from "
            f"langs/align_langs.")
    if config.max_prompts and config.max_prompts < len(prompts):
        keep = set(random.Random(config.seed).sample(prompts.ids, config.max_prompts))
        prompts = prompts.select(ids=[i for i in prompts.ids if i in keep])
    examples, skipped = _align_examples(config, prompts, tokenizer)
    mlc_langs = list(config.langs) if config.uses_mlc else []
    mlc_texts = [[p.text[lang] for lang in mlc_langs] for p in prompts] if mlc_langs else []
    return TrainData(examples, mlc_texts, mlc_langs, skipped)


def _align_examples(config: TrainConfig, prompts: PromptSet,
                    tokenizer: Any) -> tuple[list[AlignExample], dict[str, int]]:
    if config.align == "none":
        return [], {}
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    skipped = {"no_response": 0, "no_rejected": 0, "too_long": 0}
    examples: list[AlignExample] = []

    def answer(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + eos

    for lang in config.align_langs:
        for p in prompts:
            if not p.response:
                skipped["no_response"] += 1
                continue
            rejected = None
            if config.align == "dpo":
                rejected = p.rejected or (REFUSAL if not p.harmful and
                                          config.benign_rejected == "refusal" else None)
                if not rejected:
                    skipped["no_rejected"] += 1
                    continue
            ids = encode_prompts(tokenizer, [p.text[lang]], config.chat_template)["input_ids"][0]
            room = config.max_length - len(ids)
            if room < 2:
                skipped["too_long"] += 1
                continue
            examples.append(AlignExample(ids.tolist(), answer(p.response)[:room],
                                         answer(rejected)[:room] if rejected else None))
    if not examples:
        raise DataError(f"No alignment examples: every prompt was skipped ({skipped}). "
                        f"{config.align.upper()} needs prompts with a response"
                        f"{' and a rejected answer' if config.align == 'dpo' else ''}.")
    if any(skipped.values()):
        log.info("alignment examples: %d; skipped %s", len(examples), skipped)
    return examples, skipped


def collate_align(examples: Sequence[AlignExample], pad_id: int, dpo: bool) -> dict[str, Any]:
    """Left-padded prompt+answer rows (DPO: all chosen rows, then all rejected rows).

    ``keep`` is the number of final positions whose logits are needed: every answer token is
    predicted from the position before it, and answers end every row.
    """
    answers = [e.chosen_ids for e in examples] + ([e.rejected_ids for e in examples] if dpo else [])
    heads = [e.prompt_ids for e in examples] * (2 if dpo else 1)
    width = max(len(h) + len(a) for h, a in zip(heads, answers))
    ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response = torch.zeros_like(ids)
    for row, (head, ans) in enumerate(zip(heads, answers)):
        seq = head + ans
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
        response[row, width - len(ans):] = 1
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response,
            "keep": max(len(a) for a in answers) + 1}


def collator(model: Any, pad_id: int) -> Callable[[Sequence[AlignExample], bool], dict[str, Any]]:
    """``collate(examples, dpo)`` in the layout ``model``'s forward reads: prompt+answer rows for
    a decoder-only model, encoder prompt rows and decoder label rows for an encoder-decoder."""
    collate = collate_seq2seq if is_encoder_decoder(model) else collate_align
    return lambda examples, dpo: collate(examples, pad_id, dpo)


def encode_mlc(tokenizer: Any, groups: Sequence[Sequence[str]], chat_template: bool) -> dict[str, Tensor]:
    """Prompt-only rows (prompt-major: all languages of prompt 0, then prompt 1, ...).

    Right padding: with left padding a pad query has no key it may attend to, fused CUDA attention
    returns NaN for that row, and NaN x 0 poisons the backward pass even though pooling never
    reads the row. Pooling is mask-aware, so the pooled states are the same either way.
    """
    enc = encode_with_content(tokenizer, [t for group in groups for t in group], chat_template,
                              padding_side="right")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "content_mask")}


# ------------------------------------------------------------------------------------ losses

def response_logps(logits: Tensor, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Sum of answer-token log-probs per row and answer lengths, from the last ``keep`` logits."""
    keep = batch["keep"]
    return masked_token_logps(logits[:, -keep:-1], batch["input_ids"][:, -keep + 1:],
                              batch["response_mask"][:, -keep + 1:])


def sft_loss(logps: Tensor, lengths: Tensor) -> Tensor:
    """Cross-entropy per answer token, averaged over all answer tokens in the batch."""
    return -logps.sum() / lengths.sum().clamp_min(1)


def align_objective(config: TrainConfig, out: dict[str, Tensor], ref_logps: Tensor | None,
                    rows: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The alignment loss of one batch (SFT, or ``config.pref_loss`` for DPO pairs) and the
    numbers to log with it; ``rows`` index the batch's pairs in ``ref_logps``."""
    if config.align != "dpo":
        return sft_loss(out["logps"], out["lengths"]), {}
    return preference_loss(config.pref_loss, out["logps"], out["lengths"],
                           None if ref_logps is None else ref_logps[rows], config.beta,
                           config.simpo_gamma, config.orpo_lambda)


# ------------------------------------------------------------------------------------ module

class TrainModule(nn.Module):
    """Policy model + MLC extractor behind one forward (what accelerate wraps).

    ``forward(align=..., mlc=...)`` returns answer log-probs for the alignment rows and the
    extracted vectors ``z`` (float32) of the MLC rows, from separate passes or, with
    ``batching="official"``, from one padded pass that also computes every position's logits.
    An encoder-decoder scores answers with its decoder and takes MLC states from its encoder
    (``mlcwb.seq2seq``); the official batching is a decoder-only layout and refuses it.
    """

    def __init__(self, model: nn.Module, extractor: Extractor, layer: int = -1,
                 pooling: str = "last", batching: str = "separate", pad_id: int = 0,
                 bucketed: bool = False):
        super().__init__()
        self.model, self.extractor = model, extractor
        self.layer, self.pooling, self.batching, self.pad_id = layer, pooling, batching, pad_id
        self.bucketed = bucketed
        self.encoder_decoder = is_encoder_decoder(model)
        if self.encoder_decoder and batching == "official":
            raise ConfigError("mlc.batching 'official' appends prompts to decoder-only policy rows; "
                              "an encoder-decoder takes its MLC states from the encoder: use "
                              "'separate'.")

    def forward(self, align: dict[str, Any] | None = None,
                mlc: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        states = None
        if align is not None and mlc is not None and self.batching == "official":
            out["logps"], out["lengths"], states = self._official(align, mlc)
        else:
            if align is not None:
                out["logps"], out["lengths"] = self._answer_logps(align)
            if mlc is not None:
                states = self._prompt_states(mlc)
        if states is not None:
            out["states"] = states
            out["z"] = self.extractor(states)
        return out

    def _answer_logps(self, align: dict[str, Any]) -> tuple[Tensor, Tensor]:
        if self.encoder_decoder:
            return answer_logps(self.model, align)
        logits = self.model(input_ids=align["input_ids"], attention_mask=align["attention_mask"],
                            position_ids=position_ids(align["attention_mask"]),
                            logits_to_keep=align["keep"], use_cache=False).logits
        return response_logps(logits, align)

    def _prompt_states(self, mlc: dict[str, Tensor]) -> Tensor:
        """The engine's prompt forward: the decoder stack, or an encoder-decoder's encoder."""
        return prompt_states(self.model, mlc["input_ids"], mlc["attention_mask"], self.layer,
                             self.pooling, mlc.get("content_mask"), bucketed=self.bucketed)

    def _official(self, align: dict[str, Any], mlc: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The paper's batching: prompts padded to the policy rows, one pass, all logits."""
        n, width = align["input_ids"].shape[0], max(align["input_ids"].shape[1], mlc["input_ids"].shape[1])

        def pad(t: Tensor, value: int) -> Tensor:
            return F.pad(t, (width - t.shape[1], 0), value=value)

        ids = torch.cat([pad(align["input_ids"], self.pad_id), pad(mlc["input_ids"], self.pad_id)])
        mask = torch.cat([pad(align["attention_mask"], 0), pad(mlc["attention_mask"], 0)])
        result = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                            output_hidden_states=True, use_cache=False)
        batch = {**align, "input_ids": ids[:n], "response_mask": pad(align["response_mask"], 0)}
        logps, lengths = response_logps(result.logits[:n], batch)
        content = mlc.get("content_mask")
        states = pool_hidden(result.hidden_states[self.layer][n:], mask[n:], self.pooling,
                             content_mask=None if content is None else pad(content, 0))
        return logps, lengths, states


# ------------------------------------------------------------------------------------ plan

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


def _locate(phases: list[Phase], step: int) -> tuple[int, int]:
    """(phase index, step within the phase) of a global step."""
    for index, phase in enumerate(phases):
        if step < phase.steps:
            return index, step
        step -= phase.steps
    raise TrainingError(f"step {step} is past the end of the plan")


def _order(n: int, seed: int, tag: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + tag * 10_007 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _slice(n: int, bs: int, steps_per_epoch: int, j: int, seed: int, tag: int,
           rank: int, world: int) -> list[int]:
    """Indices of the ``j``-th batch of this process in a stream of shuffled epochs."""
    epoch, k = divmod(j, steps_per_epoch)
    start = (k * world + rank) * bs
    return _order(n, seed, tag, epoch)[start:start + bs]


# ------------------------------------------------------------------------------------ checkpoints

def _step_dirs(output_dir: Path) -> list[Path]:
    steps = output_dir / "steps"
    found = [p for p in steps.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if steps.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete step checkpoint (incomplete ones never get their final name)."""
    found = _step_dirs(Path(output_dir))
    return found[-1] if found else None


def _replace_dir(tmp: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
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
    extractor = Extractor(int(meta["hidden_size"]), int(meta["dim"]), meta["kind"])
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
    return Accelerator(cpu=config.device == "cpu", mixed_precision=precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])


def _apply_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    task = "SEQ_2_SEQ_LM" if is_encoder_decoder(model) else "CAUSAL_LM"
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type=task))


def _check_resumable(saved: dict[str, Any], config: TrainConfig, ckpt: Path) -> None:
    """Refuse a checkpoint of a different run. A key the checkpoint lacks was added to
    TrainConfig after the run began and counts as its default, so such a run still resumes."""
    current = config.to_dict()
    saved = {**TrainConfig().to_dict(), **saved}
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        raise TrainingError(
            f"{ckpt} belongs to a run with different {changed} "
            f"({ {k: saved.get(k) for k in changed} }). Use another output_dir, or resume: false "
            f"to start this one afresh.")


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


# ------------------------------------------------------------------------------------ the MLC side

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
        self.watch = CollapseWatch()

    def make_extractor(self, hidden: int, seed: int, device: torch.device) -> Extractor:
        """The seeded extractor, and a frozen copy of its initial state: under that fixed map a
        collapsing extractor shows up (``mlc_loss_ref``), and a resumed run rebuilds it alike."""
        extractor = Extractor(hidden, self.cfg.extractor_dim, self.cfg.extractor, seed=seed)
        self.reference = extractor.reference().to(device)
        return extractor

    def module(self, model: nn.Module, extractor: Extractor, pad_id: int,
               device: torch.device) -> TrainModule:
        """An encoder-decoder pools its encoder with ``encoder_pooling`` and runs one padded MLC
        batch (the shared-prefix cache behind length buckets needs causal attention)."""
        seq2seq = is_encoder_decoder(model)
        return TrainModule(model, extractor, self.cfg.layer,
                           self.config.encoder_pooling if seq2seq else self.cfg.pooling,
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
        picked = _slice(n, cfg.batch_size, per_epoch, jm, self.config.seed, 100 + index, rank, world)
        return encode_mlc(self.tokenizer, [self.data.mlc_texts[i] for i in picked],
                          self.config.chat_template)

    def term(self, out: dict[str, Tensor], row: dict[str, Any]) -> Tensor:
        """``lam`` x the MLC term; logs it, its value under the reference extractor and the
        batch's distinctness into ``row``, and warns once on collapse."""
        n_langs = len(self.data.langs)
        value = mlc_term(out["z"], n_langs, self.cfg, self.weights)
        with torch.no_grad():
            row["mlc_loss_ref"] = float(mlc_term(self.reference(out["states"].detach()), n_langs,
                                                 self.cfg, self.weights))
        row.update(batch_distinctness(out["states"], n_langs))
        self.watch.check(row)
        row["mlc_loss"] = float(value.detach())
        return self.cfg.lam * value


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
                "scheduler": self.scheduler.state_dict(), "rng": _rng_state(),
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
    saved = _load_checkpoint(config, model, extractor, accelerator)
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


def _load_checkpoint(config: TrainConfig, model: nn.Module, extractor: Extractor,
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
        _set_rng_state(saved["rng"])
    if run.accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.yaml", config.to_yaml())
    return start


def _batches(run: _Run, step: int) -> _Step:
    """The alignment and MLC rows of global step ``step``, a pure function of (seed, phase,
    epoch), so a resumed run replays exactly the batches it would have seen."""
    index, j = _locate(run.phases, step)
    phase, config = run.phases[index], run.config
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    align = None
    tokens = 0
    if phase.align:
        rows = _slice(len(run.data.align), config.batch_size, phase.steps_per_epoch, j,
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
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def _log(run: _Run, row: dict[str, Any], batch: _Step, grad_norm: float, tick: float) -> None:
    """Complete the step's row (gradient norm, lr, cost, seconds) and append it to ``log.jsonl``."""
    row.update(grad_norm=grad_norm, lr=run.scheduler.get_last_lr()[0], tokens=batch.tokens,
               positions=batch.positions, seconds=round(time.perf_counter() - tick, 4))
    if run.accelerator.is_main_process:
        append_jsonl(run.output_dir / "log.jsonl", row)


def _checkpoint(run: _Run, step: int) -> None:
    """Every ``save_every`` steps (but not after the last: ``final/`` follows), keeping the newest
    ``keep_checkpoints``."""
    config = run.config
    if not config.save_every or (step + 1) % config.save_every or step + 1 >= run.total:
        return
    save_checkpoint(run.output_dir / "steps" / f"step-{step + 1:08d}", run.accelerator, run.module,
                    run.tokenizer, run.state(step + 1))
    if run.accelerator.is_main_process:
        for old in _step_dirs(run.output_dir)[:-config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


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
    raise TrainingError(
        f"Non-finite {what} at step {step + 1} ({ {k: v for k, v in row.items() if 'loss' in k} }); "
        f"nothing from this step reached the optimizer. The last good state (after step {step}) is "
        f"saved at {path}. Lower lr, set max_grad_norm, or use precision: no, then run again to "
        f"resume from it.")


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
            "steps": run.total, "resumed_from": resumed_from,
            "final_dir": str(final), "last": rows[-1] if rows else None})
    unwrapped.model.eval()
    return TrainResult(unwrapped.model, tokenizer, unwrapped.extractor.eval(), output_dir, final,
                       run.total, rows, resumed_from)


__all__ = ["AlignExample", "Phase", "TrainData", "TrainModule", "TrainResult", "align_objective",
           "collate_align", "collator",
           "dpo_loss", "encode_mlc", "latest_checkpoint", "load_extractor", "load_prompts",
           "plan", "prepare_data", "response_logps", "save_checkpoint", "sft_loss", "train"]

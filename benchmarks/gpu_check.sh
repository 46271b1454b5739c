#!/usr/bin/env bash
# GPU check for mlcwb training (< 8 minutes on one CUDA GPU).
#
# Trains DPO + MLC in bf16 for a few dozen steps on a randomly initialised Qwen2-shaped ~0.5B model
# (Qwen2.5-0.5B's shape from a Qwen2Config: no weights, no network), and on the default model
# (SmolLM2-135M-Instruct) when its file is already in the mlcwb cache. Four runs per model, same
# data and seed: alignment only; + MLC ours (aux_every=2); + MLC ours every step; + MLC official
# batching every step. Writes benchmarks/results/gpu-<model>.json with tokens/s, peak memory and
# the three ratios (alignment-only / ours average step; official / ours MLC step; official / ours
# peak memory).
#
# Usage (from anywhere): bash benchmarks/gpu_check.sh [--no-install] [--steps N]
#   --no-install  never run pip (otherwise `pip install -e .` runs only if a dependency is missing)
#   --steps N     optimizer steps per run (default 30; the first 3 are warm-up)
# Environment: PYTHON (default: python3).
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
INSTALL=1
STEPS=30
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) INSTALL=0 ;;
    --steps) STEPS="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU here (nvidia-smi missing or sees no device); run this on a CUDA machine." >&2
  exit 3
fi

if ! "$PY" -c "import torch, transformers, accelerate, safetensors, yaml, tqdm, pandas, peft" 2>/dev/null; then
  if [ "$INSTALL" = 1 ]; then
    echo "gpu_check: installing mlcwb and its dependencies (pip install -e .)" >&2
    "$PY" -m pip install -q -e .
  else
    echo "gpu_check: mlcwb's dependencies are missing and --no-install was given; run" \
         "'$PY -m pip install -e .' first." >&2
    exit 4
  fi
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') cannot use the GPU" \
       "(a CPU-only build?). Install a CUDA build of torch into this environment." >&2
  exit 3
fi

export MLCWB_GPU_STEPS="$STEPS" TOKENIZERS_PARALLELISM=false
exec timeout 450 "$PY" - <<'PYEOF'
import gc, json, logging, os, shutil, sys, time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from mlc_step_overhead import MLC_PROMPTS, N_LANGS, PAIRS, synthetic_prompts  # noqa: E402

from mlcwb.bench import write_result  # noqa: E402
from mlcwb.mlc import MLCConfig  # noqa: E402
from mlcwb.model_fetch import PACKAGED, cache_dir  # noqa: E402
from mlcwb.models import DEFAULT_MODEL, byte_tokenizer, load_model  # noqa: E402
from mlcwb.train import train  # noqa: E402
from mlcwb.train_config import TrainConfig  # noqa: E402

logging.basicConfig(level=logging.WARNING)
STEPS = int(os.environ["MLCWB_GPU_STEPS"])
WARMUP = 3
# (batching, aux_every, buckets): "auto" keeps one padded MLC batch on a GPU; the "length" run
# measures whether the CPU's length buckets + shared prefix would pay off here too.
VARIANTS = {"align": None, "ours": ("separate", 2, "auto"), "ours_every_step": ("separate", 1, "auto"),
            "ours_buckets_every_step": ("separate", 1, "length"), "official": ("official", 1, "auto")}


def qwen2_random(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return Qwen2ForCausalLM(config).float()


def default_model_cached():
    converted = cache_dir() / DEFAULT_MODEL / "hf-float32"
    gguf = cache_dir() / DEFAULT_MODEL / PACKAGED[DEFAULT_MODEL].filename
    return converted.is_dir() or gguf.is_file()


def run(label, make_model, tokenizer):
    prompts, synthetic = synthetic_prompts(tokenizer, PAIRS * STEPS)
    results = {}
    for variant, spec in VARIANTS.items():
        model = make_model()
        mlc = None if spec is None else MLCConfig(batch_size=MLC_PROMPTS, batching=spec[0],
                                                 aux_every=spec[1], buckets=spec[2])
        config = TrainConfig(model=label, mlc_languages=N_LANGS, batch_size=PAIRS, epochs=1, max_steps=STEPS,
                             lr=1e-6, precision="bf16", device="cuda", mlc=mlc, resume=False,
                             output_dir=f"/tmp/mlcwb-gpu-check/{label}/{variant}")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result = train(config, model, tokenizer, prompts)
        rows = result.log[WARMUP:]
        secs = sum(r["seconds"] for r in rows)
        mlc_rows = [r["seconds"] for r in rows if "mlc_loss" in r]
        results[variant] = {
            "step_s": secs / len(rows),
            "mlc_step_s": sum(mlc_rows) / len(mlc_rows) if mlc_rows else None,
            "tokens_per_s": sum(r["tokens"] for r in rows) / secs,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
            "steps_measured": len(rows)}
        print(label, variant, json.dumps(results[variant]), flush=True)
        shutil.rmtree(config.output_dir, ignore_errors=True)  # a 0.5B checkpoint per variant adds up
        del model, result
        gc.collect()
        torch.cuda.empty_cache()
    r = results
    ratios = {
        "align_over_ours_average_step": r["align"]["step_s"] / r["ours"]["step_s"],
        "official_over_ours_mlc_step": r["official"]["mlc_step_s"] / r["ours_every_step"]["mlc_step_s"],
        "official_over_ours_peak_memory": r["official"]["peak_memory_gb"] / r["ours_every_step"]["peak_memory_gb"],
        "one_batch_over_buckets_mlc_step": r["ours_every_step"]["mlc_step_s"]
        / r["ours_buckets_every_step"]["mlc_step_s"],
    }
    path = write_result(
        f"gpu-{label}", f"DPO+MLC bf16 on {torch.cuda.get_device_name(0)}: MLC step, ours vs official "
        f"batching ({PAIRS} pairs x ~256-token answers, {MLC_PROMPTS} prompts x {len(N_LANGS)} languages)",
        "s/step", ("official batching", r["official"]["mlc_step_s"]),
        ("ours", r["ours_every_step"]["mlc_step_s"]), target=3.0, higher_is_better=False,
        extra={"variants": results, "ratios": ratios, "steps": STEPS, "warmup": WARMUP,
               "synthetic_languages": synthetic})
    print(path, json.dumps(ratios), flush=True)


start = time.time()
if default_model_cached():
    model, tok = load_model(DEFAULT_MODEL, device="cpu")
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh_default():
        model.load_state_dict(state)
        return model.to("cuda")

    run("smollm2-135m", fresh_default, tok)
    qwen_tok = tok
else:
    print("default model not in the mlcwb cache: skipping it (run `mlcwb fetch-model` to include it)")
    qwen_tok = byte_tokenizer()
run("qwen2-0.5b-random", lambda: qwen2_random(qwen_tok), qwen_tok)
print(f"gpu_check done in {time.time() - start:.0f} s")
PYEOF

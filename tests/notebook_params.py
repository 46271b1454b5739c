"""Smoke-size papermill parameters per notebook, kept in one place.

The notebooks' own defaults run in minutes; these run in the test suite's time budget.
"""

from __future__ import annotations

SMOKE: dict[str, dict] = {
    "00_quickstart": {"max_new_tokens": 24},
    "01_translation": {"n_prompts": 8, "languages": ["zh", "sw", "ru"]},
    "02_hidden_states": {"languages": ["en", "zh"], "n_prompts": 4, "layers": [0, -1],
                         "compare_pooling": "content_mean"},
    "03_geometry_umap": {"n_prompts": 12, "languages": ["en", "zh", "fr"], "layers": [0, 10, 20, 30],
                         "method": "pca"},
    "04_mlc_training": {"model_name": "tiny-random-llama", "languages": ["en", "zh", "ru"],
                        "mlc_languages": ["en", "zh"], "arms": ["align", "mlc", "mlc_only"], "train_prompts": 8,
                        "heldout_prompts": 6, "lr": 1e-3, "aux_every": 1, "save_every": 2,
                        "pref_loss": "simpo"},
    "05_safety_comparison": {"languages": ["en", "sw"], "n_harmful": 3, "n_benign": 3,
                             "max_new_tokens": 16, "utility_prompts": 4, "n_boot": 200},
}

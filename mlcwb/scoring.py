"""Log-probabilities of given continuations after a prompt.

One forward pass scores a fixed answer, which is how the quickstart compares a refusal-style
opening with a compliance-style one and how utility is measured as perplexity on reference
answers, both without sampling noise.
"""

from __future__ import annotations

from typing import Any

import torch

from mlcwb.models import format_prompt


@torch.inference_mode()
def continuation_logprobs(model: Any, tokenizer: Any, prompts: list[str], continuations: list[str],
                          chat_template: bool = True, batch_size: int = 8) -> list[tuple[float, int]]:
    """``(sum of log-probs, number of tokens)`` of each continuation given its prompt.

    The prompt is formatted exactly as for generation, the continuation is tokenized on its own
    and appended, so the scored tokens are the ones the model would have to produce.
    """
    if len(prompts) != len(continuations):
        raise ValueError("prompts and continuations must have the same length")
    templated = chat_template and bool(getattr(tokenizer, "chat_template", None))
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, cont in zip(prompts[start:start + batch_size],
                                continuations[start:start + batch_size]):
            head = tokenizer(format_prompt(tokenizer, prompt, chat_template),
                             add_special_tokens=not templated)["input_ids"]
            tail = tokenizer(cont, add_special_tokens=False)["input_ids"]
            rows.append((head, tail))
        width = max(len(h) + len(t) for h, t in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (head, tail) in enumerate(rows):  # right padding: positions start at 0 for all
            seq = head + tail
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        for i, (head, tail) in enumerate(rows):
            positions = torch.arange(len(head) - 1, len(head) + len(tail) - 1, device=device)
            targets = torch.tensor(tail, device=device)
            results.append((float(logp[i, positions, targets].sum()), len(tail)))
    return results

"""Validation during training: when to evaluate, the validation loss over the fixed token budget
(all ranks together; windows spread evenly over the whole val split, gpt_ds.sampler.val_batches), and a short generated text sample to watch the model learn in TensorBoard."""

from __future__ import annotations

from typing import Any

import torch

from gpt_ds import distributed, sampler
from gpt_ds.errors import UserError
from gpt_ds.plan import Plan


class Validator:
    """Evaluates every `--eval-interval` steps and at the last step, where the data has a val split."""

    def __init__(self, plan: Plan, rank: int) -> None:
        self.plan = plan
        self.rank = rank
        self.interval = plan.settings.eval_interval

    def should_validate(self, step: int, *, last_step: bool = False) -> bool:
        return self.plan.val is not None and (step % self.interval == 0 or last_step)

    @torch.no_grad()
    def loss(self, engine: Any) -> float:
        """Mean validation loss over the fixed token budget, across all ranks (a collective)."""
        plan = self.plan
        engine.eval()
        batches = sampler.val_batches(plan.val, plan.settings.eval_tokens, plan.micro_batch,
                                      rank=self.rank, world_size=plan.world_size)
        loss_sum, count = 0.0, 0
        for x, y in batches:
            _, loss = engine(x.to(engine.device), y.to(engine.device))
            loss_sum += loss.item() * len(x)
            count += len(x)
        engine.train()
        loss_sum, count = distributed.all_reduce_sum([loss_sum, count])
        return loss_sum / count

    def text_sample(self, model: torch.nn.Module, step: int) -> str | None:
        """A short generated text (call on rank 0), or None without a tokenizer or with --sample-tokens 0."""
        settings = self.plan.settings
        if settings.sample_tokens == 0:
            return None
        from gpt_ds.generate import Sampling, generate
        from gpt_ds.tokenizer import EOT_TOKEN, get_encoding

        try:
            encoding = get_encoding()
        except UserError:  # no tiktoken cache offline: train on, without samples
            return None
        model.eval()
        new = generate(model, [[EOT_TOKEN]], Sampling(settings.sample_tokens, temperature=0.8, top_k=50,
                                                      seed=settings.seed + step))[0]
        model.train()
        return encoding.decode(new)

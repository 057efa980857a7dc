"""The baseline every gpt-ds benchmark measures against: GPT-2 trained the way a ~300-line PyTorch
script does it on a CPU (nanoGPT's train.py without its extras): float32 weights and activations,
the full float32 logits into F.cross_entropy, loss.backward(), clip_grad_norm_, torch.optim.AdamW,
no compile, no DeepSpeed. Same model (gpt_ds.model.GPT, GPT-2 init), schedule and batches as gpt-ds,
so only the training machinery differs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from gpt_ds import sampler
from gpt_ds.model import GPT, GPTConfig
from gpt_ds.schedule import Schedule


class PlainTrainer:
    """One process, no wrapper: `step(i)` trains on gpt-ds's batch of step i (rank 0), `val_loss()`
    reads the same validation windows as gpt-ds's Validator."""

    def __init__(self, config: GPTConfig, train: sampler.TokenWindows, val: sampler.TokenWindows | None,
                 batch_size: int, schedule: Schedule, *, seed: int = 1337, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, clip: float = 1.0,
                 eval_tokens: int = 65536, device: str = "cpu") -> None:
        torch.manual_seed(seed)
        self.model = GPT(config).to(device)
        self.optimizer = torch.optim.AdamW(self.model.param_groups(weight_decay), lr=schedule.peak, betas=betas, eps=eps)
        self.train, self.val, self.batch_size, self.schedule = train, val, batch_size, schedule
        self.seed, self.clip, self.eval_tokens, self.device = seed, clip, eval_tokens, device

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(self.model.hidden_states(x))  # (B, T, vocab): all of it, in float32
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def step(self, step: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(step)
        x, y = sampler.train_batch(self.train, self.batch_size, seed=self.seed, step=step, rank=0, micro_step=0)
        loss = self.loss(x.to(self.device), y.to(self.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    @torch.no_grad()
    def val_loss(self) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for x, y in sampler.val_batches(self.val, self.eval_tokens, self.batch_size, rank=0, world_size=1):
            total += self.loss(x.to(self.device), y.to(self.device)).item() * len(x)
            count += len(x)
        self.model.train()
        return total / count


StepFn = Callable[[int], float]

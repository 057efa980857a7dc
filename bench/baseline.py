"""The baseline every gpt-ds benchmark measures against: GPT-2 trained the way a ~300-line PyTorch
script does it on a CPU (nanoGPT's model.py and train.py without their extras).

`PlainGPT` is that script's model, written out here rather than imported from gpt_ds: learned
positions, GELU, the head tied to `wte`, GPT-2's vocabulary padded to 50304, GPT-2's init.
`PlainTrainer` is its loop: float32 weights and activations, the whole (B*T, 50304) logits into
F.cross_entropy, loss.backward(), clip_grad_norm_, torch.optim.AdamW (decay on the matrices only),
no compile, no DeepSpeed, loss.item() every step. It takes gpt-ds's batches (gpt_ds.sampler.TrainStream, the whole global batch)
and validation windows, so that only the training machinery differs between the two sides.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt_ds import sampler
from gpt_ds.model import GPTConfig
from gpt_ds.schedule import Schedule

PADDED_VOCAB = 50304  # GPT-2's 50257 rounded up to a multiple of 64, as nanoGPT does


class PlainBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int = PADDED_VOCAB) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([PlainBlock(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() >= 2:  # GPT-2's init: N(0, 0.02), the residual projections scaled by 1/sqrt(2 * n_layer)
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class PlainTrainer:
    """One process, no wrapper: `step(i)` trains on gpt-ds's batch of step i (rank 0) at the schedule's
    lr and returns the loss; `val_loss()` reads the same validation windows as gpt-ds's Validator."""

    def __init__(self, config: GPTConfig, train: sampler.TokenWindows, val: sampler.TokenWindows | None,
                 batch_size: int, schedule: Schedule, *, seed: int = 1337, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, clip: float = 1.0,
                 eval_tokens: int = 65536, device: str | torch.device = "cpu") -> None:
        torch.manual_seed(seed)
        self.model = PlainGPT(config.n_layer, config.n_head, config.n_embd, config.block_size).to(device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=schedule.peak, betas=betas, eps=eps)
        self.train, self.val, self.batch_size, self.schedule = train, val, batch_size, schedule
        self.seed, self.clip, self.eval_tokens, self.device = seed, clip, eval_tokens, device
        self.stream = sampler.TrainStream(train, batch_size, seed)  # gpt-ds's batches: the global batch of each step

    def step(self, step: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(step)
        x, y = self.stream.micro_batch(step, self.batch_size)
        loss = self.model(x.to(self.device), y.to(self.device))
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
            total += self.model(x.to(self.device), y.to(self.device)).item() * len(x)
            count += len(x)
        self.model.train()
        return total / count

"""Validation during training: when to evaluate, the validation loss over the fixed token budget
(all ranks together; windows spread evenly over the whole val split, gpt_ds.sampler.val_batches) with
its bits per byte (gpt_ds.bpb), the --eval-tasks multiple-choice figures (gpt_ds.mc_eval), and a short
generated text sample to watch the model learn in TensorBoard.

Under ZeRO-3 every forward gathers the parameters from all ranks (a collective), so every rank runs
the same number of validation forwards (one with fewer windows repeats its last batch and ignores it),
and for the sample every rank gathers the weights once, which rank 0 copies into a plain model."""

from __future__ import annotations

from typing import Any

import torch

from gpt_ds import distributed, mc_eval, sampler
from gpt_ds.bpb import bits_per_byte, bpb_sums, token_byte_lengths
from gpt_ds.errors import UserError
from gpt_ds.loss import IGNORE_INDEX
from gpt_ds.plan import Plan


class Validator:
    """Evaluates every `--eval-interval` steps and at the last step, where the data has a val split."""

    def __init__(self, plan: Plan, rank: int) -> None:
        self.plan = plan
        self.rank = rank
        self.interval = plan.settings.eval_interval
        self._byte_lengths: torch.Tensor | bool | None = None  # False: the tokenizer's files are missing

    def should_validate(self, step: int, *, last_step: bool = False) -> bool:
        evaluated = self.plan.val is not None or bool(self.plan.eval_tasks)
        return evaluated and (step % self.interval == 0 or last_step)

    @torch.no_grad()
    def loss(self, engine: Any) -> tuple[float | None, float | None]:
        """The mean validation loss over the fixed token budget and its bits per byte (gpt_ds.bpb; None
        without the tokenizer's files), across all ranks: one all-reduce of the four sums. (None, None)
        without a val split."""
        plan = self.plan
        if plan.val is None:
            return None, None
        byte_lengths = self.byte_lengths(engine.device)
        engine.eval()
        share = lambda rank: sampler.val_batches(plan.val, plan.settings.eval_tokens, plan.micro_batch,  # noqa: E731
                                                  rank=rank, world_size=plan.world_size)
        # loss (nats) and tokens; loss over the tokens that decode to bytes, and those bytes
        sums = torch.zeros(4, dtype=torch.float64, device=engine.device)
        # under ZeRO-3 the same number of (collective) forwards on every rank, the extra ones counting nothing
        for (x, y), counts in distributed.equal_forwards(share, self.rank, plan.world_size, plan.zero_stage == 3,
                                                         spare=lambda: share(0)[0]):
            x, y = x.to(engine.device), y.to(engine.device)
            _, losses = engine(x, y, per_token=True)
            if counts:
                sums[0] += losses.double().sum()
                sums[1] += (y != IGNORE_INDEX).sum()  # a chat folder's val: the trained targets alone
                if byte_lengths is not None:
                    sums[2:] += bpb_sums(losses, y, byte_lengths)
        engine.train()
        loss_sum, count, bpb_loss, n_bytes = distributed.all_reduce_sum(sums)
        return loss_sum / count, bits_per_byte(bpb_loss, n_bytes)

    @torch.no_grad()
    def tasks(self, engine: Any) -> dict[str, dict[str, float]]:
        """--eval-tasks' figures, {task: {acc, acc_norm, n}}, across all ranks (gpt_ds.mc_eval: one
        all-reduce; under ZeRO-3 the same number of forwards on every rank); {} without tasks."""
        plan = self.plan
        if not plan.eval_tasks:
            return {}
        engine.eval()
        # Under ZeRO-3 only the engine's forward gathers the weights; elsewhere the module scores the endings alone
        score = mc_eval.forward_scorer(engine) if plan.zero_stage == 3 else mc_eval.model_scorer(engine.module)
        figures = mc_eval.evaluate_tasks(score, plan.eval_tasks, plan.model_config.block_size, engine.device,
                                         self.rank, plan.world_size, same_forwards=plan.zero_stage == 3)
        engine.train()
        return figures

    def byte_lengths(self, device: torch.device) -> torch.Tensor | None:
        """Each token's UTF-8 byte count (gpt_ds.bpb) on `device`, looked up once; None without the
        tokenizer's files (no tiktoken cache offline: the val loss alone)."""
        if self._byte_lengths is None:
            try:
                self._byte_lengths = token_byte_lengths(self.plan.model_config.vocab_size).to(device)
            except UserError:
                self._byte_lengths = False
        return self._byte_lengths if self._byte_lengths is not False else None

    def text_sample(self, model: torch.nn.Module, step: int) -> str | None:
        """A short generated text on rank 0 (None elsewhere), or None without a tokenizer or with
        --sample-tokens 0. Call it on every rank: under ZeRO-3 the weights are gathered for it."""
        settings = self.plan.settings
        if settings.sample_tokens == 0:
            return None
        from gpt_ds.generate import Sampling, generate
        from gpt_ds.tokenizer import EOT_TOKEN, get_encoding

        try:
            encoding = get_encoding()
        except UserError:  # no tiktoken cache offline: train on, without samples
            return None
        sampler_model = self.whole_model(model)
        if sampler_model is None:
            return None
        sampler_model.eval()
        new = generate(sampler_model, [[EOT_TOKEN]], Sampling(settings.sample_tokens, temperature=0.8, top_k=50,
                                                              seed=settings.seed + step))[0]
        sampler_model.train()
        return encoding.decode(new)

    def whole_model(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The model to generate from on rank 0 (None on the others). Under ZeRO-3 each rank holds a
        slice of every weight, and a forward outside the engine would gather them in collectives that
        only rank 0 makes: so all ranks gather the weights once (GatheredParameters) and rank 0 copies
        them into a plain GPT of its own."""
        if self.plan.zero_stage != 3:
            return model if self.rank == 0 else None
        import deepspeed

        from gpt_ds.model import GPT

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            weights = {n: p.detach().clone() for n, p in model.named_parameters()} if self.rank == 0 else None
        if weights is None:
            return None
        copy = GPT(self.plan.model_config).to(next(iter(weights.values())).device)
        copy.load_state_dict(weights, strict=False)  # the buffers (if any) are the fresh model's own
        return copy

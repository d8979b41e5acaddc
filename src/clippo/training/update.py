"""The PPO update: epochs of shuffled minibatch steps on the combined loss, with KL early stopping.

``Learner`` owns what an update changes (the optimizer over the model's parameters, the
minibatch generator) and the loss it minimises; the training loop hands it one rollout's batch
at a time. Across ``torch.distributed`` ranks each minibatch step exchanges its gradient and
statistics in one all-reduce.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Protocol

import numpy as np
import torch

from clippo.core.errors import NonFiniteError
from clippo.core.losses import LossTerms, normalize_advantages
from clippo.rollout.buffer import Batch, SequenceBatch
from clippo.training.distributed import World, all_gather, all_reduce_mean_, moment_sums, pooled_moments
from clippo.training.optim import FlatAdam

#: What each minibatch step reports (averaged over the update's steps in the logged metrics).
MINIBATCH_STATS = ("approx_kl", "policy_loss", "value_loss", "entropy", "clip_fraction")


class LossFunction(Protocol):
    """The combined PPO loss on one minibatch (``clippo.fastpath.make_loss`` picks one), leaving its
    gradient in the optimizer's flat gradient buffer."""

    clip_epsilon: float

    def __call__(self, *args: Any, **kwargs: Any) -> LossTerms: ...


@dataclasses.dataclass
class UpdatePlan:
    """The minibatches of one update, drawn before it starts.

    ``epochs``: per epoch, the shuffled sample indices split into minibatches, or ``None`` for the
    whole batch (one minibatch per epoch). ``moments``: across ranks, the pooled advantage
    (mean, std) of each of those minibatches, per epoch; ``None`` when each minibatch is
    normalized with its own statistics (a single process).
    """

    epochs: list[list[torch.Tensor] | None]
    moments: list[list[tuple[float, float]]] | None = None


class Learner:
    """Improves the policy on one rollout's batch at a time (``update_policy``).

    Built by the agent from parts it made (config, optimizer, loss, generator, world), then handed
    to the training loop, which calls ``plan_update`` and ``update_policy`` and nothing else.
    """

    def __init__(
        self,
        config: Any,
        optimizer: FlatAdam,
        loss: LossFunction,
        generator: torch.Generator,
        device: torch.device,
        world: World,
    ) -> None:
        self.config = config
        self.optimizer = optimizer
        #: replaced when the envs turn out to give action masks (the agent picks the loss again)
        self.loss = loss
        self.generator = generator
        self.device = device
        self.world = world

    @property
    def clip_epsilon(self) -> float:
        """The clip range of the next minibatch steps (the loop anneals it with ``anneal_clip``)."""
        return self.loss.clip_epsilon

    @clip_epsilon.setter
    def clip_epsilon(self, value: float) -> None:
        self.loss.clip_epsilon = value

    def plan_update(self, batch_size: int) -> UpdatePlan:
        """Draw every epoch's minibatches for an update of ``batch_size`` samples."""
        cfg = self.config
        if cfg.num_minibatches == 1:
            return UpdatePlan([None] * cfg.update_epochs)
        epochs: list[list[torch.Tensor] | None] = []
        for _ in range(cfg.update_epochs):
            order = torch.randperm(batch_size, generator=self.generator, device=self.device)
            epochs.append([indices for indices in order.tensor_split(cfg.num_minibatches) if len(indices)])
        return UpdatePlan(epochs)

    def loss_and_gradient(self, minibatch: Batch, advantages: torch.Tensor) -> LossTerms:
        """The combined PPO loss on one minibatch, its gradient left in ``self.optimizer.grad``."""
        old_values = minibatch.samples("values") if self.config.clip_value_loss else None
        args = (
            minibatch.obs,
            minibatch.actions,
            minibatch.samples("logprobs"),
            advantages,
            minibatch.samples("returns"),
            old_values,
        )
        if isinstance(minibatch, SequenceBatch):  # (recurrent agents always take the autograd loss)
            return self.loss(*args, masks=minibatch.masks, sequences=minibatch.sequences)
        if minibatch.masks is not None:
            return self.loss(*args, masks=minibatch.masks)
        return self.loss(*args)

    def update_policy(self, batch: Batch, plan: UpdatePlan | None = None) -> dict[str, float]:
        """The PPO update: ``update_epochs`` passes of shuffled minibatches, one Adam step each,
        stopped as soon as a minibatch's approximate KL to the rollout policy exceeds target_kl.

        ``plan`` (from ``plan_update``) fixes the minibatches; drawn here when not given."""
        cfg = self.config
        if plan is None:
            plan = self.plan_update(len(batch))
            if self.world.distributed and cfg.normalize_advantages:
                set_moments(plan, pooled_moments(all_gather(advantage_sums(batch, plan), self.world)))
        single_minibatch = cfg.num_minibatches == 1
        whole_batch_advantages = None
        if single_minibatch and cfg.normalize_advantages:
            # The one minibatch is the whole batch in every epoch: normalize its advantages once.
            whole_batch_advantages = normalized_advantages(batch.samples("advantages"), plan, 0, 0)
        normalize_each = cfg.normalize_advantages and not single_minibatch
        # Each step's statistics travel in the exchange buffer after the gradient, so across
        # ranks they are averaged by the same all-reduce.
        exchange = self.optimizer.extra
        history: list[list[float]] = []
        kl = 0.0
        early_stopped = False
        skipped = 0
        for epoch, indices in enumerate(plan.epochs):
            # the order of samples in a mean does not matter: the one minibatch is left unshuffled
            minibatches = [batch] if indices is None else shuffled_minibatches(batch, indices)
            for index, minibatch in enumerate(minibatches):
                advantages = (
                    minibatch.samples("advantages") if whole_batch_advantages is None else whole_batch_advantages
                )
                if normalize_each:
                    advantages = normalized_advantages(advantages, plan, epoch, index)
                terms = self.loss_and_gradient(minibatch, advantages)
                step_stats = [terms.approx_kl, terms.policy_loss, terms.value_loss, terms.entropy, terms.clip_fraction]
                if self.world.distributed:
                    # The one exchange per step: gradient, KL and statistics averaged over the ranks.
                    exchange.copy_(torch.tensor(step_stats, dtype=exchange.dtype))
                    all_reduce_mean_(self.optimizer.exchange, self.world)
                    step_stats = exchange.tolist()
                kl = step_stats[0]
                if cfg.target_kl is not None and kl > cfg.target_kl:
                    early_stopped = True  # this minibatch's step would move the policy too far
                    break
                grad_norm = self.optimizer.clip_grad_norm(cfg.max_grad_norm)
                if not (math.isfinite(grad_norm) and math.isfinite(terms.loss)):
                    what = "gradient" if math.isfinite(terms.loss) else "loss"
                    message = (
                        f"non-finite {what} at minibatch step {len(history) + 1} "
                        f"(policy loss {terms.policy_loss:.4g}, value loss {terms.value_loss:.4g}, gradient norm "
                        f"{grad_norm:.4g})"
                    )
                    if cfg.nonfinite == "stop":
                        raise NonFiniteError(message)
                    skipped += 1
                    continue
                self.optimizer.step()
                history.append(step_stats[1:])
            if early_stopped:
                break
        steps_taken = len(history)
        means = np.mean(history, axis=0).tolist() if history else [float("nan")] * (len(MINIBATCH_STATS) - 1)
        stats = dict(zip(MINIBATCH_STATS[1:], means, strict=False))
        stats["approx_kl"] = kl
        stats["epochs_run"] = steps_taken / cfg.num_minibatches
        stats["early_stopped"] = int(early_stopped)
        stats["skipped_steps"] = skipped
        return stats


def advantage_sums(batch: Batch, plan: UpdatePlan) -> np.ndarray:
    """This rank's count, sum and sum of squares of the advantages of each planned minibatch
    (of the whole batch, normalized once, when there is one minibatch per epoch)."""
    if plan.epochs[0] is None:
        return moment_sums([batch.samples("advantages").cpu().numpy()])
    return moment_sums(
        [batch.samples("advantages", indices).cpu().numpy() for epoch in plan.epochs for indices in epoch or ()]
    )


def set_moments(plan: UpdatePlan, moments: list[tuple[float, float]]) -> None:
    """Store the pooled (mean, std) of each planned minibatch, per epoch, in ``plan``."""
    if plan.epochs[0] is None:
        plan.moments = [moments]
        return
    sizes = [len(epoch or ()) for epoch in plan.epochs]
    starts = np.cumsum([0, *sizes])
    plan.moments = [moments[start : start + size] for start, size in zip(starts, sizes, strict=False)]


def normalized_advantages(advantages: torch.Tensor, plan: UpdatePlan, epoch: int, index: int) -> torch.Tensor:
    """Zero mean, unit std: with this minibatch's own statistics in a single process, with
    the pooled statistics of every rank's minibatch of the same index across ranks."""
    return normalize_advantages(advantages, moments=None if plan.moments is None else plan.moments[epoch][index])


def shuffled_minibatches(batch: Batch, indices: list[torch.Tensor]) -> list[Batch]:
    """``[batch[i] for i in indices]``, gathered as one shuffled copy of the batch cut into
    consecutive slices: one indexing per field and epoch instead of one per minibatch."""
    shuffled = batch[torch.cat(indices)]
    bounds = list(itertools.accumulate((i.shape[0] for i in indices), initial=0))
    return [shuffled[start:stop] for start, stop in itertools.pairwise(bounds)]

"""The math of classic PPO for RLHF (Ziegler et al. 2019; TRL <= 0.11 ``PPOTrainer.step``), on tensors.

Kept apart from model loading so each piece can be checked against hand-computed values:
the KL controllers, the per-token reward (KL penalty plus the reward model's score on the last
response token), generalized advantage estimation, and the clipped policy and value losses.
Shapes: ``[batch, response_tokens]``; ``mask`` is 1 on real response tokens (through EOS), 0 after.

Only the task's child process imports this file (ppo.py imports it inside ``execute``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class AdaptiveKLController:
    """Moves the KL coefficient so the rollouts' KL to the reference tracks ``target``.

    Ziegler et al. (2019) eq. 2, as TRL <= 0.11 did: the error is clipped to +-20 % and applied
    in proportion to the samples seen over ``horizon``, so the coefficient drifts, never jumps.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current: float, n_steps: int) -> None:
        proportional_error = min(max(current / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """``adap_kl_ctrl: false``: the coefficient stays at ``init_kl_coef``."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current: float, n_steps: int) -> None:
        return None


def batch_indices(n_rows: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The prompts of PPO step ``step`` (0-based): a fresh seeded shuffle per pass over the data.

    A pure function of the step, so a resumed attempt draws exactly the prompts the lost one would have.
    """
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, n_rows)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n_rows, generator=generator).tolist()
        take = min(batch_size - len(out), n_rows - offset)
        out.extend(order[offset:offset + take])
        position += take
    return out


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean, unit variance over the real tokens (advantages are whitened once per batch)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position, in float32 whatever the model's dtype."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, labels.unsqueeze(-1)).squeeze(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Per-token KL estimate between policy and reference on the sampled tokens (TRL's ``kl_penalty``)."""
    diff = logprobs - ref_logprobs
    if kind == "kl":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "mse":
        return 0.5 * diff.square()
    raise ValueError(f"unknown kl_penalty {kind!r}: use kl, abs or mse")


def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                    kl_coef: float, kind: str = "kl") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * KL`` on every response token, plus the score on the last one.

    Returns (rewards, non_score_rewards, kl), all masked.
    """
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * (mask > 0)).max(dim=1).values  # the last real token of each response
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.to(rewards.dtype)
    return rewards, non_score, kl


def compute_advantages(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float,
                       whiten: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) backwards over the response; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  returns = A + V.
    Values past the end are 0 (masked), so the last real token bootstraps from nothing.
    Advantages are whitened over the batch when ``whiten`` (as TRL always did).
    """
    values, rewards = values * mask, rewards * mask
    length = rewards.shape[1]
    last_gae = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        reversed_adv.append(last_gae)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = advantages + values
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages.detach(), returns.detach()


@dataclass
class LossOutput:
    loss: torch.Tensor
    policy_loss: float
    value_loss: float
    approx_kl: float
    policy_kl: float
    clipfrac: float
    value_clipfrac: float
    ratio_mean: float
    skipped: bool


def ppo_loss(old_logprobs: torch.Tensor, old_values: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
             logprobs: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, cliprange: float,
             cliprange_value: float, vf_coef: float, ratio_threshold: float = 10.0) -> LossOutput:
    """The clipped surrogate objective plus the clipped value loss (``loss = pg + vf_coef * vf``).

    A minibatch whose mean ratio exceeds ``ratio_threshold`` contributes no gradient (TRL's guard
    against loss spikes).
    """
    values_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf_losses1 = (values - returns).square()
    vf_losses2 = (values_clipped - returns).square()
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), mask)

    loss = pg_loss + vf_coef * vf_loss
    ratio_mean = float(masked_mean(ratio, mask).detach())
    skipped = ratio_mean > ratio_threshold
    if skipped:
        loss = loss * 0.0
    with torch.no_grad():
        approx_kl = 0.5 * masked_mean(log_ratio.square(), mask)
        policy_kl = masked_mean(-log_ratio, mask)
    return LossOutput(loss=loss, policy_loss=float(pg_loss.detach()), value_loss=float(vf_loss.detach()),
                      approx_kl=float(approx_kl), policy_kl=float(policy_kl), clipfrac=float(pg_clipfrac),
                      value_clipfrac=float(vf_clipfrac), ratio_mean=ratio_mean, skipped=skipped)


def should_stop_early(policy_kl: float, target_kl: float | None) -> bool:
    """TRL <= 0.11's rule: leave the PPO epochs once the update's KL exceeds 1.5 x ``target_kl``."""
    return target_kl is not None and policy_kl > 1.5 * target_kl


def response_mask(responses: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """1 on every generated token up to and including the first EOS, 0 on the padding after it."""
    is_eos = torch.zeros_like(responses, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= responses == eos
    seen_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return (seen_before == 0).to(torch.float32)

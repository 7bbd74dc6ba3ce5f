"""The ``distributed:`` block of a task: how its ranks share the work (torch.distributed via torchrun).

Checked by the coordinator at submit (no ML import): an impossible combination is a 422 naming the
field. The agent turns the block into trainer arguments (agent/mloc_agent/modules/training/) and the
ranks are started by torchrun (agent/mloc_agent/launch.py). docs/distributed.md has the user's view.

The rules, in one place:

- ``strategy`` unset: ``fsdp`` when only an ``fsdp:`` block is given, ``deepspeed`` when only a
  ``deepspeed:`` block is, else ``ddp``. Settings of another strategy than the one chosen are refused
  (``distributed.fsdp`` with ``strategy: ddp``), never silently ignored.
- ``deepspeed.config`` (the user's own DeepSpeed JSON, as Axolotl and LLaMA-Factory take it) is used
  as is: ``zero_stage`` and the offloads beside it are refused, they would be overridden unseen.
- ``offload_param`` needs ZeRO stage 3 (DeepSpeed offloads parameters only when it partitions them).
- One rank is allowed with every strategy: FSDP or ZeRO with CPU offload on a single card is how a
  model too big for that card trains at all. ``ddp`` on one rank is a plain single process.
- Only the task types that train through transformers' Trainer take the block (``DISTRIBUTED_TYPES``):
  ppo's own loop has no data-parallel wrap (docs/ppo.md), and a ``command`` task runs its own
  launcher from the standard variables (WORLD_SIZE, NPROC_PER_NODE, ...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["ddp", "fsdp", "deepspeed"]
# the task types whose module runs under torchrun when the lease has more than one rank
DISTRIBUTED_TYPES = frozenset({"sft", "dpo", "grpo", "reward_model"})
SHARDING_STRATEGIES = frozenset({"fsdp", "deepspeed"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FsdpSettings(_Strict):
    """FSDP2 (torch.distributed.fsdp.fully_shard) as transformers' Trainer exposes it."""

    auto_wrap: Literal["transformer_layer", "size", "none"] = "transformer_layer"
    min_num_params: int = Field(100_000_000, ge=1, description="auto_wrap size: parameters per wrapped unit")
    cpu_offload: bool = False
    activation_checkpointing: bool = False
    reshard_after_forward: bool = Field(True, description="ZeRO-3-like (True) or ZeRO-2-like (False)")


class DeepSpeedSettings(_Strict):
    """DeepSpeed ZeRO: a stage and offloads, or a user's own DeepSpeed JSON passed through as is."""

    zero_stage: Literal[1, 2, 3] | None = None
    offload_optimizer: bool = False
    offload_param: bool = False
    config: dict[str, Any] | str | None = Field(None, description="a DeepSpeed JSON (object or path) used as is")

    def stage(self) -> int:
        """The ZeRO stage that runs (2 unless told; a passed-through JSON says its own)."""
        if isinstance(self.config, dict):
            stage = (self.config.get("zero_optimization") or {}).get("stage")
            return stage if isinstance(stage, int) else 0
        return self.zero_stage or 2


class Distributed(_Strict):
    strategy: Strategy | None = Field(None, description="None: from the settings block given, else ddp")
    fsdp: FsdpSettings | None = None
    deepspeed: DeepSpeedSettings | None = None

    def resolved(self) -> Strategy:
        """The strategy that runs."""
        if self.strategy is not None:
            return self.strategy
        if self.fsdp is not None:
            return "fsdp"
        return "deepspeed" if self.deepspeed is not None else "ddp"


def problem(block: Distributed, task_type: str) -> tuple[str, str] | None:
    """What is impossible in ``block`` for ``task_type``: (field under ``distributed``, one-line fix).
    TaskSpec raises it as a FieldError, so the 422 names ``distributed.<field>`` and its line."""
    if task_type == "command":
        return "", ("a command task runs its own launcher from WORLD_SIZE, NPROC_PER_NODE, NNODES, NODE_RANK, "
                    "MASTER_ADDR and MASTER_PORT: drop the distributed block")
    if task_type not in DISTRIBUTED_TYPES:
        return "", (f"taskType {task_type!r} does not run under torchrun; distributed applies to "
                    f"{', '.join(sorted(DISTRIBUTED_TYPES))}")
    if block.fsdp is not None and block.deepspeed is not None:
        return "deepspeed", "give either fsdp or deepspeed settings, not both (one strategy a task)"
    for other in ("fsdp", "deepspeed"):
        if getattr(block, other) is not None and block.strategy not in (None, other):
            return other, (f"{other} settings do not apply to strategy {block.strategy!r}: set strategy: {other}, "
                           f"or drop the {other} block")
    ds = block.deepspeed
    if ds is None:
        return None
    if ds.config is not None:
        given = [k for k in ("zero_stage", "offload_optimizer", "offload_param") if getattr(ds, k)]
        if given:
            return f"deepspeed.{given[0]}", (f"{given[0]} cannot be combined with deepspeed.config, which is used "
                                             "as is: put it inside that JSON, or drop config")
    elif ds.offload_param and ds.zero_stage != 3:
        return "deepspeed.offload_param", ("offload_param needs zero_stage: 3 (DeepSpeed offloads parameters only "
                                           "when it partitions them)")
    return None


def strategy_of(spec: dict[str, Any]) -> Strategy:
    """The strategy of a stored (wire) spec: what the agent reads from its lease."""
    block = spec.get("distributed")
    return Distributed.model_validate(block).resolved() if block else "ddp"

"""The ``distributed:`` block of a task: how its ranks share the work (torch.distributed via torchrun).

Checked by the coordinator at submit (no ML import): an impossible combination is a 422 naming the
field. The agent turns the block into trainer arguments (agent/mloc_agent/modules/training/) and the
ranks are started by torchrun (agent/mloc_agent/launch.py). docs/distributed.md has the user's view.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["ddp", "fsdp", "deepspeed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FsdpSettings(_Strict):
    """FSDP2 (torch.distributed.fsdp.fully_shard) as transformers' Trainer exposes it."""

    auto_wrap: Literal["transformer_layer", "size", "none"] = "transformer_layer"
    cpu_offload: bool = False
    activation_checkpointing: bool = False


class DeepSpeedSettings(_Strict):
    """DeepSpeed ZeRO: a stage and offloads, or a user's own DeepSpeed JSON passed through as is."""

    zero_stage: Literal[1, 2, 3] | None = None
    offload_optimizer: bool = False
    offload_param: bool = False
    config: dict[str, Any] | str | None = Field(None, description="a DeepSpeed JSON (object or path) used as is")


class Distributed(_Strict):
    strategy: Strategy | None = Field(None, description="None: ddp when the task has more than one rank")
    fsdp: FsdpSettings | None = None
    deepspeed: DeepSpeedSettings | None = None

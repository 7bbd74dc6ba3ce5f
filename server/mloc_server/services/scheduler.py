"""GPU-aware matching: pure functions of a task's requirement and an agent's view.

No I/O here, so the rules are tested with tables of cases (tests/test_scheduler.py).
Memory is compared with a 3 % tolerance: cards are sold in GB but report MiB (a "24 GB" RTX 4090
reports 24,564 MiB = 23.99 GiB), and nobody asking for 24 GB means to exclude it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mloc_shared.protocol import Gpu
from mloc_shared.resources import estimate_gpu_memory
from mloc_shared.taskspec import TaskSpec

MEMORY_TOLERANCE = 0.97

# what an agent must report (Inventory.capabilities) for a strategy to run there, and why it does not
CAPABILITY_MISSING = {
    "deepspeed": "lacks DeepSpeed (pip install deepspeed on the agent)",
    "cuda-gpus": "has no CUDA GPUs (distributed.strategy fsdp needs them)",
}
_STRATEGY_NEEDS = {"deepspeed": "deepspeed", "fsdp": "cuda-gpus"}
_CAPABILITY_NAMES = {"deepspeed": "DeepSpeed", "cuda-gpus": "CUDA GPUs"}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def hub_model(spec: TaskSpec) -> str | None:
    """The Hugging Face Hub id the task loads its model from (``model.source`` of type huggingface that is
    not a path), or None: placement prefers an agent that holds it, and the attempt records whether it did."""
    source = spec.model.source if spec.model is not None else None
    if source is None or source.type != "huggingface":
        return None
    name = source.identifier
    return name if _HUB_ID.match(name) and not name.startswith((".", "-")) else None


def needed_capabilities(spec: TaskSpec) -> tuple[str, ...]:
    """The capabilities the task's ``distributed.strategy`` needs. An ``image:`` task brings its own
    Python, so whether DeepSpeed is installed there is the image's business (the task says so if not)."""
    if spec.distributed is None:
        return ()
    need = _STRATEGY_NEEDS.get(spec.distributed.resolved())
    if need is None or (need == "deepspeed" and spec.image):
        return ()
    return (need,)


@dataclass(frozen=True)
class Requirement:
    """What one task needs from one agent, normalised from its spec."""

    task_type: str
    gpus: int = 0
    gpu_memory_gb: float | None = None
    gpu_models: tuple[str, ...] = ()
    min_compute_capability: float | None = None
    labels: tuple[tuple[str, str], ...] = ()
    nodes: int = 1  # agents leased together (a gang, services/gangs.py); the fields above are per agent
    image: str | None = None  # image: tasks need an agent with a container runtime (and prefer one holding it)
    capabilities: tuple[str, ...] = ()  # what the agent must report (CAPABILITY_MISSING), sorted
    # how gpu_memory_gb was derived when the spec did not give it (shown on the task, not matched on)
    gpu_memory_rule: str | None = field(default=None, compare=False)
    # the hub model it loads: a preference, not a requirement, so not part of the queue's shapes either
    model: str | None = field(default=None, compare=False)

    @classmethod
    def from_spec(cls, spec: TaskSpec) -> Requirement:
        r = spec.resources
        estimate = estimate_gpu_memory(spec) if r.gpu_memory_gb is None else None
        return cls(
            task_type=spec.task_type,
            gpus=spec.required_gpus(),
            gpu_memory_gb=estimate.gb if estimate is not None else r.gpu_memory_gb,
            gpu_models=tuple(m.lower() for m in r.gpu_models),
            min_compute_capability=r.min_compute_capability,
            labels=tuple(sorted(r.labels.items())),
            nodes=r.nodes,
            image=spec.image,
            capabilities=needed_capabilities(spec),
            gpu_memory_rule=estimate.rule if estimate is not None else None,
            model=hub_model(spec),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "task_type": self.task_type,
                "gpus": self.gpus,
                "gpu_memory_gb": self.gpu_memory_gb,
                "gpu_models": list(self.gpu_models),
                "min_compute_capability": self.min_compute_capability,
                "labels": dict(self.labels),
                **({"nodes": self.nodes} if self.nodes > 1 else {}),
                **({"image": self.image} if self.image else {}),
                **({"capabilities": list(self.capabilities)} if self.capabilities else {}),
                **({"gpu_memory_rule": self.gpu_memory_rule} if self.gpu_memory_rule else {}),
                **({"model": self.model} if self.model else {}),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Requirement:
        d = json.loads(text)
        return cls(
            task_type=d["task_type"],
            gpus=d.get("gpus", 0),
            gpu_memory_gb=d.get("gpu_memory_gb"),
            gpu_models=tuple(d.get("gpu_models") or ()),
            min_compute_capability=d.get("min_compute_capability"),
            labels=tuple(sorted((d.get("labels") or {}).items())),
            nodes=int(d.get("nodes", 1)),
            image=d.get("image"),
            capabilities=tuple(d.get("capabilities") or ()),
            gpu_memory_rule=d.get("gpu_memory_rule"),
            model=d.get("model"),
        )

    def describe(self) -> str:
        parts = [f"{self.gpus} GPU(s)" if self.gpus else "no GPU"]
        if self.gpus and self.gpu_memory_gb:
            parts.append(f"≥{self.gpu_memory_gb:g} GB each")
        if self.gpu_models:
            parts.append("model " + "/".join(self.gpu_models))
        if self.min_compute_capability:
            parts.append(f"compute capability ≥{self.min_compute_capability:g}")
        if self.labels:
            parts.append("labels " + ",".join(f"{k}={v}" for k, v in self.labels))
        if self.nodes > 1:
            parts.append(f"on each of {self.nodes} agents in one network")
        if self.image:
            parts.append(f"image {self.image}")
        if self.capabilities:
            parts.append("with " + " and ".join(_CAPABILITY_NAMES.get(c, c) for c in self.capabilities))
        return ", ".join(parts)


@dataclass
class AgentView:
    """The parts of an agent that matching looks at."""

    name: str
    gpus: Sequence[Gpu]
    labels: dict[str, str]
    task_types: frozenset[str]
    used_gpus: set[int] = field(default_factory=set)
    free_slots: int = 1
    accepting: bool = True
    container_runtime: str | None = None
    images: frozenset[str] = frozenset()
    capabilities: frozenset[str] = frozenset()


def gpu_fits(req: Requirement, gpu: Gpu) -> bool:
    if req.gpu_memory_gb is not None and gpu.memory_total_mb < req.gpu_memory_gb * 1024 * MEMORY_TOLERANCE:
        return False
    if req.gpu_models and not any(m in gpu.name.lower() for m in req.gpu_models):
        return False
    return not (req.min_compute_capability is not None and gpu.cc + 1e-9 < req.min_compute_capability)


def static_mismatch(req: Requirement, agent: AgentView) -> str | None:
    """Why ``agent`` could never run the task, even idle; None when it could."""
    if req.task_type not in agent.task_types:
        return f"does not run task type {req.task_type!r}"
    for key, value in req.labels:
        if agent.labels.get(key) != value:
            return f"lacks label {key}={value}"
    if req.image and not agent.container_runtime:
        return "has no container runtime for image: tasks (MLOC_CONTAINER_RUNTIME)"
    for capability in req.capabilities:
        if capability not in agent.capabilities:
            return CAPABILITY_MISSING.get(capability, f"lacks {capability}")
    fitting = [g for g in agent.gpus if gpu_fits(req, g)]
    if len(fitting) < req.gpus:
        if not agent.gpus:
            return "has no GPU"
        best = max(agent.gpus, key=lambda g: g.memory_total_mb)
        return f"has {len(fitting)} of {req.gpus} fitting GPU(s) (largest: {best.name}, {best.memory_gb:.0f} GB)"
    return None


def pick_gpus(req: Requirement, agent: AgentView) -> tuple[int, ...] | None:
    """GPU indices for the task on ``agent`` now, or None if it does not fit at the moment.

    Best fit: the smallest fitting free GPUs, so big cards stay free for tasks that need them.
    """
    if not agent.accepting or agent.free_slots <= 0 or static_mismatch(req, agent) is not None:
        return None
    if req.gpus == 0:
        return ()
    free = [g for g in agent.gpus if g.index not in agent.used_gpus and gpu_fits(req, g)]
    if len(free) < req.gpus:
        return None
    free.sort(key=lambda g: (g.memory_total_mb, g.index))
    return tuple(sorted(g.index for g in free[: req.gpus]))


def match_key(agent: AgentView) -> tuple[object, ...]:
    """Everything ``pick_gpus`` looks at, but the agent's name and GPU indices: two agents with
    equal keys fit exactly the same requirements (so one check can stand for many agents)."""
    gpus = sorted((g.name.lower(), g.memory_total_mb, g.cc, g.index in agent.used_gpus) for g in agent.gpus)
    return (agent.accepting, agent.free_slots > 0, agent.task_types, tuple(sorted(agent.labels.items())),
            tuple(gpus), agent.container_runtime is not None, agent.capabilities)


def unplaceable_reason(req: Requirement, agents: Iterable[AgentView]) -> str | None:
    """Why no registered agent could ever run the task; None if at least one could."""
    reasons: dict[str, list[str]] = {}
    count = 0
    for agent in agents:
        count += 1
        why = static_mismatch(req, agent)
        if why is None:
            return None
        reasons.setdefault(why, []).append(agent.name)
    if count == 0:
        return "no agent is registered yet"
    if all(w.startswith("does not run task type") for w in reasons):
        return (
            f"no registered agent runs task type {req.task_type!r} (its module is not installed "
            "or is disabled on every agent); the task waits until one does"
        )
    summary = "; ".join(f"{', '.join(sorted(names)[:3])}: {why}" for why, names in reasons.items())
    return f"no registered agent can run it (needs {req.describe()}) — {summary}"

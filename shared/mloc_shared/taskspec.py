"""The task spec: the original README's YAML format, as pydantic models.

The coordinator validates every submitted spec with these models (no ML library needed); agents
receive the validated spec back in their lease. Unknown top-level keys are refused so a typo
(``hyperparameter:``) is reported instead of silently ignored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mloc_shared.distributed import Distributed, problem
from mloc_shared.env_policy import refused_variable
from mloc_shared.eval_settings import EvalSettings
from mloc_shared.hyperparams import check_dataset, check_hyperparameters
from mloc_shared.task_types import BUILTIN_TASK_TYPES as BUILTIN_TASK_TYPES  # re-exported for the coordinator
from mloc_shared.task_types import default_gpus

_TASK_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
# an OCI image reference: [registry[:port]/]name[:tag][@digest]
_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._\-/:@]*$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,63}$")
SECRET_MIN, SECRET_MAX = 4, 65536


class FieldError(ValueError):
    """A model-level check that still names the field it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _refuse_code_running_names(info: ValidationInfo, variables: dict[str, str]) -> None:
    """env_policy.py: names that change how an interpreter or loader behaves, unless a command task."""
    task_type = info.data.get("task_type")
    refused = refused_variable(task_type, variables) if task_type else None
    if refused is not None:
        field, message = refused
        raise FieldError(field.partition(".")[2], message)


class SpecModel(BaseModel):
    """Strict: a key we do not know is an error naming that key."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelSource(SpecModel):
    type: Literal["huggingface", "local", "s3", "uri", "task"] = "huggingface"
    identifier: str = Field(min_length=1, max_length=1024)
    revision: str | None = None


class Adapter(SpecModel):
    type: Literal["none", "lora", "qlora"] = "none"
    r: int = Field(16, ge=1, le=4096)
    lora_alpha: int = Field(32, ge=1, le=65536)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = None


class ModelSpec(SpecModel):
    source: ModelSource
    adapter: Adapter | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    parameters_b: float | None = Field(None, gt=0, description="parameter count in billions, if known")


class Resources(SpecModel):
    """What a task needs from one agent. ``gpus`` None means: derive it from the task type."""

    gpus: int | None = Field(None, ge=0, le=64)
    # agents leased together as one job (a gang): each gives ``gpus`` GPUs (docs/distributed.md)
    nodes: int = Field(1, ge=1, le=64)
    gpu_memory_gb: float | None = Field(None, gt=0, le=4096)
    gpu_models: list[str] = Field(default_factory=list, max_length=32)
    min_compute_capability: float | None = Field(None, ge=1.0, le=20.0)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels_are_simple(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not _LABEL_RE.match(key) or not _LABEL_RE.match(str(value)):
                raise ValueError(f"label {key}={value} must use letters, digits, '_', '.', '-', '/'")
        return labels


class RetryPolicy(SpecModel):
    max_attempts: int = Field(3, ge=1, le=100)
    backoff_s: float = Field(5.0, ge=0, le=3600)
    backoff_max_s: float = Field(300.0, ge=0, le=86400)
    on_failure: bool = Field(False, description="also retry when the task itself fails, not only when its box is lost")


class Dependency(SpecModel):
    """``depends_on`` entry: wait for ``task`` (an id, a task name, or in a pipeline a step name)."""

    task: str = Field(min_length=1, max_length=200)
    # succeeded: run only if it succeeded; failed: only if it failed; finished: whatever its end
    condition: Literal["succeeded", "finished", "failed"] = "succeeded"


MAX_DEPENDENCIES = 64


class TaskSpec(SpecModel):
    """One task as a user writes it (YAML or JSON)."""

    # the pattern is for the OpenAPI document; _task_type_shape checks it with a friendlier message
    task_type: str = Field(alias="taskType", json_schema_extra={"pattern": _TASK_TYPE_RE.pattern})
    name: str | None = Field(None, max_length=200)
    model: ModelSpec | None = None
    dataset: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    # taskType eval only: what to measure (eval_settings.py, docs/eval.md)
    evaluation: EvalSettings | None = Field(None, alias="eval")
    command: str | list[str] | None = None
    # a command opts in to checkpoint on preemption: it handles SIGUSR1 / $MLOC_PREEMPT_FILE (docs/modules.md)
    checkpoint_on_preempt: bool | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # values reach only the task's environment: stored encrypted apart from the spec, masked in logs
    secrets: dict[str, str] = Field(default_factory=dict, max_length=64)
    resources: Resources = Field(default_factory=Resources)
    distributed: Distributed | None = None
    # run the task's process inside this container image (docs/containers.md); agents need a runtime
    image: str | None = Field(None, min_length=1, max_length=512, json_schema_extra={"pattern": _IMAGE_RE.pattern})
    image_pull_policy: Literal["always", "missing", "never"] | None = None
    # a class the coordinator's config names (priority, preemptible); None: the configured default
    priority_class: str | None = Field(None, min_length=1, max_length=64)
    priority: int = Field(0, ge=-1000, le=1000)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_s: float | None = Field(None, gt=0, le=30 * 86400)
    user: str | None = Field(None, max_length=100)
    # wait in state "blocked" until these tasks end as their condition asks (docs/pipelines.md)
    depends_on: list[Dependency] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _dependency_shapes(cls, value: Any) -> Any:
        """A bare string is the id or name of a task whose success this one needs."""
        if isinstance(value, list):
            return [{"task": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("task_type")
    @classmethod
    def _task_type_shape(cls, value: str) -> str:
        if not _TASK_TYPE_RE.match(value):
            raise ValueError("taskType must be lower-case letters, digits, '_', '.', '-' (e.g. 'sft')")
        return value

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str | None) -> str | None:
        if value is not None and (not _IMAGE_RE.match(value) or ".." in value or value.endswith((":", "/", "@"))):
            raise ValueError("image must be an image reference like 'registry.example.com/team/trainer:1.2'")
        return value

    @field_validator("hyperparameters")
    @classmethod
    def _hyperparameters_fit_task_type(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Per-type models (hyperparams.py); errors keep their path, e.g. hyperparameters.learnin_rate."""
        if "task_type" in info.data:
            check_hyperparameters(info.data["task_type"], value)
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_fits_task_type(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if "task_type" in info.data:
            check_dataset(info.data["task_type"], value)
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key in env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
        _refuse_code_running_names(info, env)
        return env

    @field_validator("secrets")
    @classmethod
    def _secret_names_and_sizes(cls, secrets: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key, value in secrets.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key) or key.startswith("MLOC_"):
                raise ValueError(f"secret name {key!r} must be a variable name not starting with MLOC_")
            if not SECRET_MIN <= len(value) <= SECRET_MAX:
                # shorter values could not be masked in logs without masking ordinary text
                raise ValueError(f"secret {key} must be {SECRET_MIN}..{SECRET_MAX} characters long")
        _refuse_code_running_names(info, secrets)
        return secrets

    @field_validator("distributed")
    @classmethod
    def _distributed_fits(cls, block: Distributed | None, info: ValidationInfo) -> Distributed | None:
        """distributed.py's rules: an impossible combination names its field (distributed.fsdp)."""
        found = problem(block, info.data["task_type"]) if block is not None and "task_type" in info.data else None
        if found is not None:
            field, message = found
            raise FieldError(field, message) if field else ValueError(message)
        return block

    @model_validator(mode="after")
    def _command_only_for_command_tasks(self) -> TaskSpec:
        if self.task_type == "command":
            if self.command is None or self.command == "" or self.command == []:
                raise FieldError("command", "a 'command' task needs 'command': a shell string or an argument list")
        elif self.command is not None:
            raise FieldError("command", f"'command' is only allowed with taskType 'command', not {self.task_type!r}")
        if self.checkpoint_on_preempt is not None and self.task_type != "command":
            raise FieldError("checkpoint_on_preempt", "'checkpoint_on_preempt' is for taskType 'command' only "
                                                      "(training tasks always checkpoint when preempted)")
        return self

    @model_validator(mode="after")
    def _eval_block_fits(self) -> TaskSpec:
        """An eval task needs a model and something to measure; the eval block is for eval tasks only."""
        if self.task_type != "eval":
            if self.evaluation is not None:
                raise FieldError("eval", f"'eval' is only allowed with taskType 'eval', not {self.task_type!r}")
            return self
        if self.model is None:
            raise FieldError("model", "taskType 'eval' needs model.source: the model to measure (a hub id, a "
                                      "local path, or {type: task, identifier: <id>} for a fine-tune's output)")
        settings = self.evaluation or EvalSettings()
        if self.dataset is None:
            if settings.generation is not None or settings.perplexity:
                field = "eval.generation" if settings.generation is not None else "eval.perplexity"
                raise FieldError("dataset", f"{field} reads rows: give a 'dataset' (path, uri, hub or rows)")
            if settings.lm_eval is None:
                raise FieldError("dataset", "taskType 'eval' needs a 'dataset' to measure perplexity or "
                                            "generations on, or eval.lm_eval tasks")
        return self

    @model_validator(mode="after")
    def _pull_policy_needs_an_image(self) -> TaskSpec:
        if self.image_pull_policy is not None and self.image is None:
            raise FieldError("image_pull_policy", "image_pull_policy is only allowed with 'image'")
        return self

    def required_gpus(self) -> int:
        """GPUs the task needs: as asked, else one for task types that run a model on the box.

        Agents (their model is an endpoint) and commands need none by default.
        """
        if self.resources.gpus is not None:
            return self.resources.gpus
        return default_gpus(self.task_type)

    def display_name(self) -> str:
        return self.name or self.task_type

    def wire(self) -> dict[str, Any]:
        """The spec as stored and handed to agents (original key names, no unset noise)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

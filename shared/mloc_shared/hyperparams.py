"""Per-task-type hyperparameters and training datasets, checked by the coordinator at submit time.

Pure pydantic (no ML library): the coordinator refuses a typo or a wrong type with 422 naming the
key (``hyperparameters.learnin_rate``), and agents' modules parse the same models to get defaults.
Names follow TRL/PEFT (``learning_rate``, ``per_device_train_batch_size``, ``max_length``…) so
they map 1:1 onto the trainer configs; each module documents which TRL field a key becomes.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from mloc_shared.task_types import DATASET_TYPES

# the stall watchdog (agent/mloc_agent/watchdog.py): a task whose reported step has not changed for this long is
# stopped and retried from its checkpoint, like a task whose box was lost (error_code STALLED). 1,800 s is the
# process group's own collective timeout: the watchdog acts no later than a hung NCCL/gloo call would.
DEFAULT_STALL_TIMEOUT_S = 1800.0
STALLED = "stalled"
_STALL_FIELD = Field(DEFAULT_STALL_TIMEOUT_S, gt=0, le=30 * 86400,
                     description="stop and retry the task when its step has not changed for this long")


class Hyperparameters(BaseModel):
    """Strict: an unknown key is an error, so a misspelt setting never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- training (TRL trainers) -----------------------------------------------------------------------


class TrainingHyperparameters(Hyperparameters):
    """Fields every TRL trainer shares (they become TrainingArguments fields of the same name)."""

    num_train_epochs: float = Field(1.0, gt=0, le=1000)
    max_steps: int = Field(-1, ge=-1, description="-1: run num_train_epochs")
    learning_rate: float | None = Field(None, gt=0, le=1, description="None: the task type's LoRA-aware default")
    per_device_train_batch_size: int = Field(8, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = "adamw_torch"
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(500, ge=1, description="a checkpoint (uploaded, resumable) every N steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept on the agent's disk")
    seed: int = 42
    max_length: int | None = Field(1024, ge=8, le=1_048_576, description="tokens per example, longer ones truncated")
    gradient_checkpointing: bool = Field(True, description="trade ~20% speed for much less activation memory")
    merge_adapter: bool = Field(False, description="also write the base model with the adapter merged in")
    callbacks: list[str] = Field(default_factory=list, description="'package.module:Class' TrainerCallbacks to add")
    stall_timeout_s: float | None = _STALL_FIELD


class SFTHyperparameters(TrainingHyperparameters):
    packing: bool = False
    assistant_only_loss: bool | None = Field(None, description="None: on for chat data when the template allows")
    completion_only_loss: bool | None = Field(None, description="None: on for prompt/completion data")
    neftune_noise_alpha: float | None = Field(None, gt=0)


class DPOHyperparameters(TrainingHyperparameters):
    beta: float = Field(0.1, gt=0)
    loss_type: str | list[str] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, le=0.5)


class RewardModelHyperparameters(TrainingHyperparameters):
    center_rewards_coefficient: float | None = Field(None, ge=0)


class RewardFunction(Hyperparameters):
    """One GRPO reward. ``type``: length | format | regex | answer_match | python | model."""

    type: Literal["length", "format", "regex", "answer_match", "python", "model"]
    weight: float = 1.0
    target: int | None = Field(None, ge=1, description="length: the ideal completion length in characters")
    pattern: str | None = Field(None, max_length=2000, description="format/regex: the regular expression")
    column: str = Field("answer", description="answer_match: the dataset column holding the expected answer")
    function: str | None = Field(None, description="python: 'package.module:function'")
    identifier: str | None = Field(None, description="model: path or hub id of a sequence-classification model")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """'length', 'format' or 'pkg.mod:fn' may stand alone."""
        if isinstance(value, str):
            return {"type": "python", "function": value} if ":" in value else {"type": value}
        return value

    @model_validator(mode="after")
    def _needs(self) -> RewardFunction:
        if self.type == "regex" and not self.pattern:
            raise ValueError("a regex reward needs 'pattern'")
        if self.type == "python" and (not self.function or ":" not in self.function):
            raise ValueError("a python reward needs 'function: package.module:function'")
        if self.type == "model" and not self.identifier:
            raise ValueError("a model reward needs 'identifier' (a path or hub id)")
        return self


class GRPOHyperparameters(TrainingHyperparameters):
    reward_funcs: list[RewardFunction] = Field(min_length=1, max_length=16)
    num_generations: int = Field(8, ge=2, le=1024)
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference model")
    num_iterations: int = Field(1, ge=1)
    epsilon: float = Field(0.2, gt=0)
    loss_type: str = "dapo"
    use_vllm: bool = False
    vllm_mode: Literal["server", "colocate"] = "colocate"
    vllm_server_base_url: str | None = None


# -- PPO (classic RLHF; the ppo module owns the algorithm) -----------------------------------------


class PPOHyperparameters(Hyperparameters):
    """The original README's fields (reward_model, ppo_epochs, target_kl) plus classic TRL PPO ones.

    Names and meanings follow TRL <= 0.11's PPOConfig (see docs/ppo.md): ``target_kl`` stops a
    step's PPO epochs once the update's KL passes 1.5 x target_kl; ``kl_target`` (TRL's ``target``)
    is what the adaptive controller steers the rollouts' KL to the reference towards.
    """

    reward_model: str = Field(min_length=1, description="path or hub id of a sequence-classification reward model")
    ppo_epochs: int = Field(4, ge=1, le=100)
    target_kl: float | None = Field(0.1, gt=0, description="early stop when the update's KL > 1.5 x this")
    early_stopping: bool = Field(True, description="apply target_kl (TRL's default was off)")
    learning_rate: float = Field(1.41e-5, gt=0, le=1)
    batch_size: int = Field(16, ge=1, description="prompts per PPO step (rollout batch)")
    mini_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    init_kl_coef: float = Field(0.2, ge=0)
    adap_kl_ctrl: bool = True
    kl_target: float = Field(6.0, gt=0, description="adaptive KL controller's target (TRL's 'target'), in nats")
    kl_horizon: int = Field(10000, ge=1, description="adaptive KL controller's horizon (TRL's 'horizon')")
    kl_penalty: Literal["kl", "abs", "mse"] = "kl"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    ratio_threshold: float = Field(10.0, gt=0, description="skip minibatches whose mean ratio is above this")
    max_grad_norm: float | None = Field(None, gt=0)
    whiten_rewards: bool = False
    score_clip: float | None = Field(None, gt=0)
    reward_input: Literal["auto", "pair", "chat", "text"] = Field(
        "auto", description="how (prompt, response) reach the reward model; auto: chat if it has a template")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_steps: int = Field(100, ge=1)
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(1, ge=1)
    seed: int = 42
    prompts: list[str] | None = Field(None, description="inline prompts (instead of a dataset)")
    query_dataset: str | None = Field(None, description="prompts: a path, URL or hub id (instead of a dataset)")
    max_length: int | None = Field(512, ge=8, description="prompt + response tokens; prompts are cut from the left")
    merge_adapter: bool = False
    stall_timeout_s: float | None = _STALL_FIELD

    @model_validator(mode="after")
    def _batches_divide(self) -> PPOHyperparameters:
        step = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % step:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size x "
                             f"gradient_accumulation_steps ({step})")
        if self.max_length is not None and self.max_length <= self.max_new_tokens:
            raise ValueError("max_length must leave room for the prompt: make it larger than max_new_tokens")
        return self


# -- inference, RAG, agents ----------------------------------------------------------------------


class InferenceHyperparameters(Hyperparameters):
    engine: Literal["transformers", "vllm"] = "transformers"
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    do_sample: bool | None = None
    batch_size: int = Field(8, ge=1)
    prompts: list[str] | None = None
    prompts_file: str | None = Field(None, description="a path on the agent or an http(s) URL: .txt (a prompt a "
                                     "line), .jsonl/.json (prompt, messages, question or text), .csv")
    system_prompt: str | None = None
    chat: bool | None = Field(None, description="apply the chat template; None: when the tokenizer has one")
    stop: list[str] | None = None
    seed: int | None = None
    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(None, ge=1)
    output_file: str = "generations.jsonl"


class ChatModelSettings(Hyperparameters):
    """The chat model of rag_inference/agent_inference: an OpenAI-compatible endpoint or local transformers."""

    provider: Literal["openai", "transformers", "none"] | None = Field(
        None, description="None: openai when base_url is set, else transformers on the task's model")
    base_url: str | None = Field(None, description="e.g. http://gpu-box:8000/v1 (vLLM's OpenAI-compatible server)")
    model: str | None = Field(None, description="served model name (None: the endpoint's first), or a path/hub id")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key ('EMPTY' if unset)")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0, le=20)


class WebSearchSettings(Hyperparameters):
    """Where agent_inference's web_search tool sends queries; without a url/key the tool says it is off."""

    provider: Literal["searxng", "tavily"] = "searxng"
    url: str | None = Field(None, description="searxng: the instance's base URL; tavily: defaults to its API")
    api_key_env: str | None = Field(None, description="environment variable holding the provider's key")
    max_results: int = Field(5, ge=1, le=50)
    timeout_s: float = Field(15.0, gt=0)


class RagInferenceHyperparameters(Hyperparameters):
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    vector_db: Literal["chromadb"] = "chromadb"
    retrieval_k: int = Field(5, ge=1, le=1000)
    chunk_size: int = Field(1000, ge=1)
    chunk_overlap: int = Field(200, ge=0)
    collection: str = "mloc"
    persist_directory: str | None = None
    documents: list[str] | None = None
    questions: list[str] | None = None
    questions_file: str | None = Field(None, description="a .txt (one per line) or .jsonl file/URL of questions")
    chat_model: ChatModelSettings | str | None = None
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    prompt_template: str | None = None
    output_file: str = "answers.jsonl"


class AgentInferenceHyperparameters(Hyperparameters):
    agent_type: Literal["react"] = "react"
    tools: list[str | dict[str, Any]] = Field(default_factory=list)
    max_iterations: int = Field(10, ge=1, le=1000)
    chat_model: ChatModelSettings | str | None = None
    questions: list[str] | None = None
    questions_file: str | None = Field(None, description="a .txt (one per line) or .jsonl file/URL of questions")
    system_prompt: str | None = None
    python_timeout_s: float = Field(30.0, gt=0)
    python_memory_mb: int = Field(512, ge=16)
    web_search: WebSearchSettings | None = None
    temperature: float = Field(0.0, ge=0)
    output_file: str = "answers.jsonl"


class EvalHyperparameters(Hyperparameters):
    """An eval task's measures are its own ``eval:`` block (eval_settings.py); only the watchdog's setting is here,
    off unless asked: an lm_eval run reports no step while it works."""

    stall_timeout_s: float | None = Field(None, gt=0, le=30 * 86400)


HYPERPARAMETERS: dict[str, type[Hyperparameters]] = {
    "sft": SFTHyperparameters,
    "dpo": DPOHyperparameters,
    "grpo": GRPOHyperparameters,
    "reward_model": RewardModelHyperparameters,
    "ppo": PPOHyperparameters,
    "inference": InferenceHyperparameters,
    "rag_inference": RagInferenceHyperparameters,
    "agent_inference": AgentInferenceHyperparameters,
    "eval": EvalHyperparameters,
}


# -- training datasets ---------------------------------------------------------------------------

DatasetFormat = Literal[
    "auto", "text", "instruction", "alpaca", "chat", "messages", "prompt_completion", "preference", "prompt"
]


class TrainingDataset(Hyperparameters):
    """Where training rows come from (exactly one of path, uri, hub, rows) and how to read them.

    ``columns`` maps our names (text, messages, instruction, input, output, prompt, completion,
    chosen, rejected) to the data's own column names.
    """

    path: str | None = Field(None, description="a file or folder on the agent (json, jsonl, txt, csv, parquet)")
    uri: str | None = Field(None, description="an http(s) URL, e.g. a presigned object-store URL")
    hub: str | None = Field(None, description="a Hugging Face dataset id (needs network on the agent)")
    rows: list[dict[str, Any]] | None = Field(None, max_length=100_000, description="inline rows")
    format: DatasetFormat = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    split: str = "train"
    subset: str | None = None
    revision: str | None = None
    file_format: Literal["auto", "json", "jsonl", "txt", "csv", "parquet"] = "auto"
    max_samples: int | None = Field(None, ge=1)
    shuffle: bool = False
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TrainingDataset:
        given = [k for k in ("path", "uri", "hub", "rows") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, uri, hub, rows (got {', '.join(given) or 'none'})")
        return self


# -- the hook TaskSpec calls --------------------------------------------------------------------------


def _unknown_key_error(
    model: type[BaseModel], data: dict[str, Any], what: str, where: str = ""
) -> ValidationError | None:
    """A friendlier error than pydantic's 'Extra inputs are not permitted': names the key and a guess."""
    fields = set(model.model_fields)
    unknown = [k for k in data if k not in fields]
    if not unknown:
        return None
    errors = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(fields))}"
        message = f"unknown {what} {key!r}{where}{hint}"
        errors.append({
            "type": PydanticCustomError("unknown_key", "{message}", {"message": message}),
            "loc": (key,), "input": data[key],
        })
    return ValidationError.from_exception_data(model.__name__, errors)


class OpenHyperparameters(BaseModel):
    """command and third-party task types: their modules check their own settings, except the agent's
    own (the stall watchdog, off unless asked)."""

    model_config = ConfigDict(extra="allow")
    stall_timeout_s: float | None = Field(None, gt=0, le=30 * 86400)


def stall_timeout(task_type: str, data: dict[str, Any] | None) -> float | None:
    """The watchdog's timeout for a task (None: off): as asked, else the task type's default."""
    model = HYPERPARAMETERS.get(task_type, OpenHyperparameters)
    value = (data or {}).get("stall_timeout_s", model.model_fields["stall_timeout_s"].default
                             if "stall_timeout_s" in model.model_fields else None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def check_hyperparameters(task_type: str, data: dict[str, Any]) -> None:
    """Raise a ValidationError (locations relative to ``hyperparameters``) if ``data`` does not fit."""
    model = HYPERPARAMETERS.get(task_type)
    if model is None:
        OpenHyperparameters.model_validate(data)
        return
    error = _unknown_key_error(model, data, "hyperparameter", f" for taskType {task_type!r}")
    if error is not None:
        raise error
    model.model_validate(data)


def check_dataset(task_type: str, data: dict[str, Any] | None) -> None:
    """Training task types read ``dataset`` with TrainingDataset; others keep their own shape."""
    if data is None or task_type not in DATASET_TYPES:
        return
    error = _unknown_key_error(TrainingDataset, data, "dataset field")
    if error is not None:
        raise error
    TrainingDataset.model_validate(data)


def parse_hyperparameters(task_type: str, data: dict[str, Any] | None) -> Hyperparameters:
    """For modules: the validated hyperparameters with defaults filled in."""
    return HYPERPARAMETERS[task_type].model_validate(data or {})

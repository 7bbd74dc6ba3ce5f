"""lm-evaluation-harness tasks by name, on the model the eval task already loaded.

lm_eval is not a dependency of MLOC: an operator who wants it installs it (and its tasks' data, in
the Hugging Face datasets cache or with network access) where eval tasks run. It is imported here
only; a missing package, an unknown task name and data that cannot be loaded are each a one-line
error that names what is missing, and none is retried (another attempt on this agent fails the same).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from mloc_shared.eval_settings import LmEvalSettings

from mloc_agent.modules.errors import TaskInputError, Unavailable, one_line

INSTALL = "pip install lm-eval in the Python that runs this agent's eval tasks"


def require() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise Unavailable(f"eval.lm_eval: the lm_eval package (lm-evaluation-harness) is not installed on this agent; "
                          f"{INSTALL}, or leave eval.lm_eval out")


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm_eval's ``results`` ({task: {"acc,none": 0.5, "acc_stderr,none": …}}) -> {"task/acc": 0.5}; a filter
    other than ``none`` stays in the name (``gsm8k/exact_match_strict-match``), stderr values are dropped."""
    out: dict[str, float] = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if "stderr" in metric or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out[f"{task}/{metric}" + (f"_{filt}" if filt and filt != "none" else "")] = float(value)
    return out


def run(settings: LmEvalSettings, model: Any, tokenizer: Any, batch_size: int, output_dir: Path) -> dict[str, float]:
    """Run the tasks; writes lm_eval.json (lm_eval's results and versions) and returns the flat metrics."""
    require()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager()
    known = set(manager.all_tasks)
    unknown = [name for name in settings.tasks if name not in known]
    if unknown:
        raise TaskInputError(f"eval.lm_eval.tasks: lm_eval {lm_eval.__version__} has no task {unknown[0]!r} "
                             "(`lm_eval ls tasks` lists them)")
    try:  # loads each task's dataset: where the data is not here, say so before running anything
        get_task_dict(list(settings.tasks), manager)
    except Exception as exc:
        raise Unavailable(f"eval.lm_eval: the data of {', '.join(settings.tasks)} cannot be loaded on this agent "
                          f"({type(exc).__name__}: {one_line(str(exc))}); put it in the agent's Hugging Face "
                          "datasets cache or give the agent network access") from exc
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(model=lm, tasks=list(settings.tasks), limit=settings.limit,
                                      num_fewshot=settings.num_fewshot, task_manager=manager)
    (output_dir / "lm_eval.json").write_text(json.dumps(
        {key: results.get(key) for key in ("results", "versions", "n-shot", "higher_is_better")},
        indent=2, default=str))
    return flat_metrics(results.get("results") or {})

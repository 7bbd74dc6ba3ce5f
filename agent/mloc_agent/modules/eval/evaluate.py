"""eval: measure one model — perplexity on a dataset, generations against references, lm-eval tasks.

The model is any ``model.source`` (resolved by sources/models.py like inference's: a hub id, a path,
an adapter, a finished task's output) and is loaded once, by inference's transformers engine, for
every measure. Rows are any ``dataset`` the training modules read (training/data.py). The task writes
``metrics.json`` (its result) and ``examples.jsonl`` (one line a row: its loss and tokens, its
generation and scores) to the output folder, which the agent uploads as artifacts, and returns
``{"metrics": {name: float}, …}`` so pipelines and sweeps can roll the numbers up (docs/eval.md).
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

from mloc_shared.eval_settings import EvalSettings

from mloc_agent.modules.base import BaseModule, ProgressCallback


class EvalModule(BaseModule):
    task_type = "eval"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "datasets")  # datasets: the rows (and lm_eval's)

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
        from mloc_shared.hyperparams import InferenceHyperparameters

        from mloc_agent.modules.errors import TaskInputError
        from mloc_agent.modules.eval import lm_harness, metrics
        from mloc_agent.modules.eval.examples import EvalRows
        from mloc_agent.modules.inference.engines import TransformersEngine
        from mloc_agent.modules.sources.models import resolve_model
        from mloc_agent.modules.training.trainer_common import quiet_environment

        quiet_environment()
        settings = EvalSettings.model_validate(self.spec.get("eval") or {})
        send = progress_callback or self.ctx.progress
        model_spec = self.spec.get("model") or {}
        if not model_spec.get("source"):
            raise TaskInputError("taskType 'eval' needs model.source: the model to measure")
        gen = settings.generation
        if gen is not None:
            metrics.require(list(gen.metrics))  # before loading anything: a missing package fails in a second
        if settings.lm_eval is not None:
            lm_harness.require()
        model = resolve_model(model_spec, self.ctx)
        send({"step": 0, "message": f"loading {model.describe()}"})
        hp = InferenceHyperparameters(max_new_tokens=gen.max_new_tokens if gen else 1, temperature=0,
                                      do_sample=False, batch_size=settings.batch_size,
                                      chat=gen.chat if gen else None, system_prompt=gen.system_prompt if gen else None)
        engine = TransformersEngine(model, hp, self.ctx)
        rows = EvalRows.load(self.spec.get("dataset"), settings, engine.tokenizer, self.ctx) \
            if self.spec.get("dataset") else None
        started = time.monotonic()
        found: dict[str, float] = {}
        if rows is not None:
            found.update(rows.measure(engine, settings, send))
        if settings.lm_eval is not None:
            send({"message": f"lm_eval: {', '.join(settings.lm_eval.tasks)}"})
            found.update(lm_harness.run(settings.lm_eval, engine.model, engine.tokenizer, settings.batch_size,
                                        self.ctx.output_dir))
        outputs = ["metrics.json"]
        if rows is not None:
            rows.write(self.ctx.output_dir / "examples.jsonl")
            outputs.append("examples.jsonl")
        if settings.lm_eval is not None:
            outputs.append("lm_eval.json")
        result = {"metrics": found, "rows": len(rows.ids) if rows else 0,
                  "tokens": rows.tokens if rows else 0, "eval_s": round(time.monotonic() - started, 3),
                  "model": model.describe(), "base": model.base,
                  "adapter": str(model.adapter) if model.adapter else None, "outputs": outputs, **engine.facts()}
        (self.ctx.output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        return result

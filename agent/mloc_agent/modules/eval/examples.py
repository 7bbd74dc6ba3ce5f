"""An eval task's rows: read once from the spec's dataset, measured, then written one a line.

Each row keeps its ``id`` (the dataset's own, else its position) and gathers what each measure found
for it, so examples.jsonl can be read beside the data: ``loss``/``tokens`` from perplexity,
``prompt``/``reference``/``generation`` and the row's scores from the generation metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mloc_shared.eval_settings import EvalSettings

from mloc_agent.modules.base import ProgressCallback, TaskContext
from mloc_agent.modules.errors import DatasetError


def _text(value: Any) -> str:
    """A reference as text: a string, or the contents of a list of chat messages (a conversational completion)."""
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return str(value)


@dataclass
class EvalRows:
    ids: list[str]
    raw: list[dict[str, Any]]
    shaped: Any = None  # the rows as for_sft shapes them (None: perplexity is off)
    kind: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0

    @classmethod
    def load(cls, dataset: dict[str, Any], settings: EvalSettings, tokenizer: Any, ctx: TaskContext) -> EvalRows:
        from mloc_agent.modules.training.data import for_sft, load_rows

        ds, spec = load_rows(dataset, ctx)
        if settings.max_rows is not None and len(ds) > settings.max_rows:
            ds = ds.select(range(settings.max_rows))
        raw = ds.to_list()
        ids = [str(row["id"]) if row.get("id") is not None else str(i) for i, row in enumerate(raw)]
        rows = cls(ids, raw, results=[{"id": i} for i in ids])
        if settings.perplexity is not False:
            try:
                rows.shaped, rows.kind = for_sft(ds, spec, bool(getattr(tokenizer, "chat_template", None)))
            except DatasetError as exc:
                if settings.perplexity:  # asked for: the rows must hold text to score
                    raise DatasetError(f"eval.perplexity: {exc}") from None
        if rows.shaped is None and settings.generation is None:
            raise DatasetError(f"eval: these rows hold no text to score (columns {ds.column_names}): give text, "
                               "prompt/completion, messages or instruction/output rows, or eval.generation")
        return rows

    def measure(self, engine: Any, settings: EvalSettings, send: ProgressCallback) -> dict[str, float]:
        """Perplexity, then generations: the metrics found, each row's share kept in ``results``."""
        found: dict[str, float] = {}
        phases = (self.shaped is not None) + (settings.generation is not None)
        total = len(self.ids) * phases
        if self.shaped is not None:
            found.update(self._perplexity(engine, settings, send, total))
        if settings.generation is not None:
            found.update(self._generation(engine, settings, send, total))
        return found

    def _perplexity(self, engine: Any, settings: EvalSettings, send: ProgressCallback,
                    total: int) -> dict[str, float]:
        from mloc_agent.modules.eval.perplexity import row_losses, summary, tokenize_row

        scored = [tokenize_row(engine.tokenizer, row, self.kind or "text", settings.max_length)
                  for row in self.shaped.to_list()]

        def progress(done: int, loss: float, tokens: int) -> None:
            update: dict[str, Any] = {"step": done, "total": total, "message": f"perplexity: {done}/{len(scored)} rows"}
            if not math.isnan(loss):
                update.update(loss=round(loss, 6), metrics={"tokens": float(tokens)})
            send(update)

        losses = row_losses(engine.model, engine.tokenizer.pad_token_id, scored, settings.batch_size,
                            engine.device, progress)
        for out, loss in zip(self.results, losses, strict=True):
            out.update(loss=loss.loss, tokens=loss.tokens)
        self.tokens = sum(loss.tokens for loss in losses)
        found = summary(losses)
        if not found:
            raise DatasetError("eval.perplexity: no row has a token to score (the prompts fill eval.max_length, "
                               "or the rows are empty)")
        return found

    def _generation(self, engine: Any, settings: EvalSettings, send: ProgressCallback,
                    total: int) -> dict[str, float]:
        from mloc_agent.modules.eval import metrics

        gen = settings.generation
        assert gen is not None
        prompts, references = [], []
        for i, row in enumerate(self.raw):
            for name, where in ((gen.prompt_field, "prompt_field"), (gen.reference_field, "reference_field")):
                if row.get(name) is None:
                    raise DatasetError(f"eval.generation.{where}: row {i} has no {name!r} (it has {sorted(row)}); "
                                       f"set eval.generation.{where} to your column")
            prompts.append(row[gen.prompt_field])
            references.append(_text(row[gen.reference_field]))
        ids = engine.encode(prompts)
        texts: list[str] = []
        done_before = total - len(self.ids)
        for start in range(0, len(ids), engine.chunk_size):
            texts.extend(g.text for g in engine.generate(ids[start:start + engine.chunk_size]))
            send({"step": done_before + len(texts), "total": total,
                  "message": f"generation: {len(texts)}/{len(ids)} rows"})
        found, per_row = metrics.score(texts, references, list(gen.metrics))
        for out, prompt, reference, text, values in zip(self.results, prompts, references, texts, per_row,
                                                       strict=True):
            out.update(prompt=prompt, reference=reference, generation=text, **values)
        return found

    def write(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for row in self.results:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

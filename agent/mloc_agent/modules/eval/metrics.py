"""Generation metrics against references: exact match, ROUGE (rouge-score) and BLEU (sacrebleu).

The libraries are called directly: ``evaluate`` fetches its metric scripts from the Hub, which an
offline agent cannot. Each is imported when used; ``require`` names the missing package before a
task loads its model, so a box without it fails in a second with what to install.

    exact_match   1.0 when prediction and reference are equal after trimming, collapsing whitespace
                  and case-folding; the mean over rows
    rouge1/2/L    rouge-score's F-measure (Porter stemming on), the mean over rows, 0..1
    bleu          sacrebleu's corpus BLEU over all rows, 0..100 (per row: sentence BLEU)
"""

from __future__ import annotations

import importlib.util
from typing import Any

from mloc_agent.modules.errors import Unavailable

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# metric -> (import name, what to install): the ranges agent/pyproject.toml's train extra holds
PACKAGES = {"rouge": ("rouge_score", "rouge-score>=0.1.2,<0.2"), "bleu": ("sacrebleu", "sacrebleu>=2.4,<3")}


def require(metrics: list[str]) -> None:
    """Fail at once, naming the package, when a metric's library is not importable here."""
    for metric in metrics:
        if metric in PACKAGES and importlib.util.find_spec(PACKAGES[metric][0]) is None:
            raise Unavailable(f"eval.generation.metrics: {metric} needs the {PACKAGES[metric][0]} package on this "
                              f"agent (pip install 'mloc-agent[eval]', which brings {PACKAGES[metric][1]}), "
                              f"or leave {metric} out of the list")


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def rouge(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures per row."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = []
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        rows.append({name: float(scores[name].fmeasure) for name in ROUGE_TYPES})
    return rows


def bleu(predictions: list[str], references: list[str]) -> tuple[float, list[float]]:
    """Corpus BLEU (one reference a row) and each row's sentence BLEU, on sacrebleu's 0..100 scale."""
    import sacrebleu

    corpus = float(sacrebleu.corpus_bleu(predictions, [references]).score)
    rows = [float(sacrebleu.sentence_bleu(p, [r]).score) for p, r in zip(predictions, references, strict=True)]
    return corpus, rows


def score(predictions: list[str], references: list[str], metrics: list[str]) -> tuple[dict[str, float],
                                                                                      list[dict[str, Any]]]:
    """The asked metrics over all rows, and each row's own values (for examples.jsonl)."""
    require(metrics)
    per_row: list[dict[str, Any]] = [{} for _ in predictions]
    totals: dict[str, float] = {}
    n = max(len(predictions), 1)
    if "exact_match" in metrics:
        for row, p, r in zip(per_row, predictions, references, strict=True):
            row["exact_match"] = exact_match(p, r)
        totals["exact_match"] = sum(row["exact_match"] for row in per_row) / n
    if "rouge" in metrics:
        for row, values in zip(per_row, rouge(predictions, references), strict=True):
            row.update(values)
        totals.update({name: sum(row[name] for row in per_row) / n for name in ROUGE_TYPES})
    if "bleu" in metrics:
        totals["bleu"], sentence = bleu(predictions, references)
        for row, value in zip(per_row, sentence, strict=True):
            row["bleu"] = value
    return totals, per_row

"""The eval task's scoring on fixed strings, with the real libraries (rouge-score, sacrebleu): what a
metric is by its definition, how rows roll up, and the one-line errors when a package is missing."""

from __future__ import annotations

import importlib.util
import math

import pytest
from mloc_agent.modules.errors import Unavailable, failure_of
from mloc_agent.modules.eval import lm_harness, metrics


def needs(metric: str) -> None:
    """The generation metrics' libraries belong to the agent's eval extra: their absence fails, naming them."""
    module, requirement = metrics.PACKAGES[metric]
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: {metric} needs '{requirement}' (agent/pyproject.toml, eval extra)",
                    pytrace=False)


def unigram_f1(prediction: str, reference: str) -> float:
    """ROUGE-1 by its definition, for sentences whose words each appear once and need no stemming."""
    p, r = set(prediction.lower().split()), set(reference.lower().split())
    overlap = len(p & r)
    return 0.0 if not overlap else 2 * overlap / (len(p) + len(r))


@pytest.mark.parametrize(("prediction", "reference", "same"), [
    ("answer 6", "answer 6", True),
    ("  Answer\t 6\n", "answer 6", True),  # trimmed, whitespace collapsed, case folded
    ("answer 6.", "answer 6", False),  # punctuation counts
    ("answer 8", "answer 6", False),
    ("", "", True),
])
def test_exact_match_compares_normalised_text(prediction: str, reference: str, same: bool) -> None:
    assert metrics.exact_match(prediction, reference) == float(same)


def test_rouge_is_one_for_a_copy_zero_for_disjoint_words_and_the_unigram_f1_between() -> None:
    needs("rouge")
    preds = ["the red cat sat", "blue fish swim", "one two three four"]
    refs = ["the red cat sat", "green tree grows", "one two nine ten five"]
    rows = metrics.rouge(preds, refs)
    assert rows[0] == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rows[1] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert math.isclose(rows[2]["rouge1"], unigram_f1(preds[2], refs[2]))
    assert rows[2]["rouge2"] < rows[2]["rouge1"]  # 'one two' is the only shared bigram


def test_bleu_is_a_hundred_for_copies_and_zero_without_a_shared_word() -> None:
    needs("bleu")
    same = ["the red cat sat on the mat", "one two three four five"]
    corpus, rows = metrics.bleu(same, same)
    assert math.isclose(corpus, 100.0) and all(math.isclose(r, 100.0) for r in rows)
    corpus, rows = metrics.bleu(["blue fish swim in rivers"], ["green trees grow in cities"])
    assert 0.0 <= rows[0] < 100.0 and corpus < 100.0
    corpus, rows = metrics.bleu(["alpha beta gamma delta"], ["one two three four"])
    assert corpus == 0.0 and rows == [0.0]


def test_score_rolls_rows_up_to_their_mean_and_keeps_each_rows_values() -> None:
    preds, refs = ["answer 6", "answer 7", "Answer 10"], ["answer 6", "answer 8", "answer 10"]
    totals, rows = metrics.score(preds, refs, ["exact_match"])
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0]
    assert math.isclose(totals["exact_match"], sum(r["exact_match"] for r in rows) / len(rows))
    assert set(totals) == {"exact_match"}


def test_all_generation_metrics_come_out_under_their_names() -> None:
    needs("rouge")
    needs("bleu")
    preds, refs = ["the red cat sat on the mat", "a dog"], ["the red cat sat on the mat", "a bird"]
    totals, rows = metrics.score(preds, refs, ["exact_match", "rouge", "bleu"])
    assert set(totals) == {"exact_match", "rouge1", "rouge2", "rougeL", "bleu"}
    assert math.isclose(totals["rougeL"], sum(r["rougeL"] for r in rows) / 2)
    assert totals["exact_match"] == 0.5 and 0 < totals["bleu"] <= 100
    assert all(set(r) == {"exact_match", "rouge1", "rouge2", "rougeL", "bleu"} for r in rows)


def test_a_missing_metric_package_is_a_final_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(metrics.PACKAGES, "rouge", ("mloc_no_such_package", "rouge-score>=0.1.2,<0.2"))
    with pytest.raises(Unavailable) as exc:
        metrics.require(["exact_match", "rouge"])
    failure = failure_of(exc.value)
    assert failure.error_code == "unavailable" and failure.retryable is False
    assert "mloc_no_such_package" in failure.error and "rouge-score" in failure.error
    metrics.require(["exact_match"])  # needs no package


def test_without_lm_eval_the_task_says_what_to_install() -> None:
    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm_eval is installed here")
    with pytest.raises(Unavailable) as exc:
        lm_harness.require()
    failure = failure_of(exc.value)
    assert failure.error_code == "unavailable" and not failure.retryable
    assert "lm_eval" in failure.error and "pip install lm-eval" in failure.error and "\n" not in failure.error


def test_lm_eval_results_flatten_to_task_slash_metric() -> None:
    results = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.25, "acc_stderr,none": 0.01, "acc_norm,none": 0.3},
               "gsm8k": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.02, "samples": 5}}
    assert lm_harness.flat_metrics(results) == {"arc_easy/acc": 0.25, "arc_easy/acc_norm": 0.3,
                                                "gsm8k/exact_match_strict-match": 0.1, "gsm8k/samples": 5.0}

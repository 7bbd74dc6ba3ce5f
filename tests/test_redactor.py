"""Masking a task's secrets in what travels in pieces (log chunks) and in structures (progress, results)."""

from __future__ import annotations

from mloc_agent.task_secrets import MASK, Redactor


def test_strings_anywhere_in_a_structure_are_masked_keys_included() -> None:
    secret = 'pä"ss": {wörd'  # a quote, a brace and non-ASCII: what JSON escapes and a text mask would miss
    redactor = Redactor()
    redactor.add([secret])
    progress = {"step": 3, "message": f"logging in with {secret}", "metrics": {f"loss/{secret}": 0.5}}
    result = {"rows": [{"answer": secret, "score": 1.0}], "exit_code": 0, "note": (secret, 2)}
    assert redactor.mask_value(progress) == {"step": 3, "message": f"logging in with {MASK}",
                                             "metrics": {f"loss/{MASK}": 0.5}}
    assert redactor.mask_value(result) == {"rows": [{"answer": MASK, "score": 1.0}], "exit_code": 0,
                                           "note": [MASK, 2]}


def test_without_secrets_a_structure_is_passed_through() -> None:
    result = {"answer": "plain", "n": 1}
    assert Redactor().mask_value(result) is result


def test_a_secret_split_across_chunks_is_masked() -> None:
    redactor = Redactor()
    redactor.add(["hf_secret_value"])
    out = redactor.feed("stdout", "token=hf_sec") + redactor.feed("stdout", "ret_value\n", final=True)
    assert out == f"token={MASK}\n"

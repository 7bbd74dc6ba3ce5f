"""PPO: the classic algorithm's math against hand-computed values, a bandit it must learn, and a real
PPO task (policy LoRA + a reward model with a different tokenizer) through a coordinator and an agent."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Coordinator
from tests.ml.conftest import artifacts, download_folder, run_to_end, train_spec
from tests.ml.test_training_modules import load_adapter, lora_weights_moved

pytestmark = pytest.mark.ml
torch = pytest.importorskip("torch", reason="the ML training stack is not installed (make venv-ml)")

from mloc_agent.modules.ppo import core  # noqa: E402

PROMPT_ROWS = [{"messages": [{"role": "user", "content": f"question {i}"},
                             {"role": "assistant", "content": f"answer {i * 2}"}]} for i in range(12)]


def t(rows: list[list[float]]) -> Any:
    return torch.tensor(rows, dtype=torch.float32)


# -- the math, by hand -------------------------------------------------------------------------------


def test_gae_matches_hand_computed_values() -> None:
    # gamma 1, lam 0.5: A2 = 1 - 0.5 = 0.5; A1 = (0 + 0.5 - 2) + 0.5 * 0.5 = -1.25; A0 = (2 - 1) + 0.5 * -1.25
    adv, ret = core.compute_advantages(t([[1.0, 2.0, 0.5]]), t([[0.0, 0.0, 1.0]]), t([[1, 1, 1]]), 1.0, 0.5,
                                       whiten=False)
    assert adv.tolist()[0] == pytest.approx([0.375, -1.25, 0.5])
    assert ret.tolist()[0] == pytest.approx([1.375, 0.75, 1.0])
    # gamma 0.9, lam 0.95, last token masked (its value and reward must not leak in):
    # A1 = 1.0 + 0 + 0.5 = 1.5; A0 = 0.2 + 0.9 * -0.5 - 0.5 + 0.855 * 1.5 = 0.5325
    adv, ret = core.compute_advantages(t([[0.5, -0.5, 9.0]]), t([[0.2, 1.0, 5.0]]), t([[1, 1, 0]]), 0.9, 0.95,
                                       whiten=False)
    assert adv.tolist()[0] == pytest.approx([0.5325, 1.5, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0325, 1.0, 0.0])
    whitened, _ = core.compute_advantages(t([[1.0, 2.0, 0.5]]), t([[0.0, 0.0, 1.0]]), t([[1, 1, 1]]), 1.0, 0.5)
    assert float(whitened.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(whitened.std()) == pytest.approx(1.0, abs=1e-4)


def test_adaptive_kl_controller_moves_the_coefficient_toward_the_target() -> None:
    ctl = core.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(9.0, 16)  # 50 % over target, clipped to +20 %: x (1 + 0.2 * 16 / 10000)
    assert ctl.value == pytest.approx(0.2 * 1.00032)
    ctl = core.AdaptiveKLController(0.2, target=6.0, horizon=100)
    ctl.update(6.6, 10)  # +10 %: x 1.01
    assert ctl.value == pytest.approx(0.202)
    ctl.update(0.0, 50)  # far under target: -20 % x 50/100 -> x 0.9
    assert ctl.value == pytest.approx(0.202 * 0.9)
    fixed = core.FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05


def test_rewards_are_a_kl_penalty_per_token_plus_the_score_on_the_last_real_token() -> None:
    logp, ref_logp = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]]), t([[-1.5, -2.0, -2.0], [-1.0, -2.0, -1.0]])
    rewards, non_score, kl = core.compute_rewards(torch.tensor([2.0, -1.0]), logp, ref_logp,
                                                  t([[1, 1, 0], [1, 1, 1]]), kl_coef=0.1)
    assert torch.allclose(kl, t([[0.5, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(non_score, t([[-0.05, 0.0, 0.0], [0.0, -0.1, 0.0]]))
    assert torch.allclose(rewards, t([[-0.05, 2.0, 0.0], [0.0, -0.1, -1.0]]))


def test_clipped_policy_and_value_losses_match_hand_computed_values() -> None:
    old_logp, logp = torch.log(t([[0.5]])), torch.log(t([[0.6]]))  # ratio 1.2
    out = core.ppo_loss(old_logp, t([[0.0]]), t([[1.0]]), t([[1.0]]), logp, t([[0.5]]), t([[1.0]]),
                        cliprange=0.1, cliprange_value=0.2, vf_coef=0.1)
    # policy: max(-1.2, -1.1) = -1.1 (clipped); value: clipped 0.2 -> max(0.25, 0.64) / 2 = 0.32
    assert out.policy_loss == pytest.approx(-1.1)
    assert out.value_loss == pytest.approx(0.32)
    assert float(out.loss) == pytest.approx(-1.1 + 0.1 * 0.32)
    assert out.clipfrac == 1.0 and out.value_clipfrac == 1.0 and out.ratio_mean == pytest.approx(1.2)
    assert out.policy_kl == pytest.approx(float(torch.log(t([[0.5 / 0.6]]))))
    spike = core.ppo_loss(old_logp, t([[0.0]]), t([[1.0]]), t([[1.0]]), old_logp + 3.0, t([[0.0]]), t([[1.0]]),
                          cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, ratio_threshold=10.0)
    assert spike.skipped and float(spike.loss) == 0.0  # e^3 > 10: no gradient from this minibatch


def test_early_stop_is_1_5_times_target_kl_and_masks_end_at_the_first_eos() -> None:
    assert core.should_stop_early(0.16, 0.1) and not core.should_stop_early(0.15, 0.1)
    assert not core.should_stop_early(5.0, None)
    mask = core.response_mask(torch.tensor([[5, 7, 2, 0, 0], [2, 2, 0, 0, 0], [4, 4, 4, 4, 4]]), {2})
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_prompt_batches_cover_every_prompt_each_pass_and_depend_only_on_the_step() -> None:
    steps = [core.batch_indices(5, 3, s, seed=7) for s in range(5)]  # 15 draws = 3 passes over 5 prompts
    flat = [i for b in steps for i in b]
    assert all(sorted(flat[p * 5:(p + 1) * 5]) == list(range(5)) for p in range(3))
    assert core.batch_indices(5, 3, 3, seed=7) == steps[3]


def test_ppo_updates_learn_a_bandit() -> None:
    """The whole update (rewards, GAE, clipped losses, epochs) on a 5-armed bandit: a sign error anywhere
    would push the policy away from the best arm instead of onto it."""
    torch.manual_seed(0)
    payoff = torch.tensor([0.1, 0.9, 0.2, -0.5, 0.3])
    logits = torch.zeros(5, requires_grad=True)
    baseline = torch.zeros(1, requires_grad=True)
    ref_logits = torch.zeros(5)
    opt = torch.optim.Adam([logits, baseline], lr=0.05)
    ctl = core.AdaptiveKLController(0.05, target=1.0, horizon=1000)
    mask = torch.ones(64, 1)
    for _ in range(40):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(logits, -1), 64, replacement=True).unsqueeze(1)
            old_logp = torch.log_softmax(logits, -1)[arms]
            ref_logp = torch.log_softmax(ref_logits, -1)[arms]
            old_values = baseline.expand(64, 1).clone()
        rewards, _, kl = core.compute_rewards(payoff[arms.squeeze(1)], old_logp, ref_logp, mask, ctl.value)
        adv, ret = core.compute_advantages(old_values, rewards, mask, 1.0, 0.95)
        for _ in range(4):
            out = core.ppo_loss(old_logp, old_values, adv, ret, torch.log_softmax(logits, -1)[arms],
                                baseline.expand(64, 1), mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        ctl.update(float(kl.sum(1).mean()), 64)
    assert float(torch.softmax(logits.detach(), -1)[1]) > 0.8


# -- the module ----------------------------------------------------------------------------------------


def ppo_hyperparameters(reward_model: Path | str, **extra: Any) -> dict[str, Any]:
    # the original README's three fields as written, plus small sizes for a CPU test
    return {"reward_model": str(reward_model), "ppo_epochs": 4, "target_kl": 0.1, "batch_size": 8,
            "mini_batch_size": 4, "max_steps": 6, "save_steps": 3, "learning_rate": 1e-3, "max_new_tokens": 12,
            "kl_target": 0.5, "kl_horizon": 20, "seed": 3, **extra}


def test_ppo_task_trains_a_lora_policy_against_a_reward_model_with_another_tokenizer(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tiny_rm: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    policy_tok, reward_tok = AutoTokenizer.from_pretrained(str(tiny_lm)), AutoTokenizer.from_pretrained(str(tiny_rm))
    assert len(policy_tok) != len(reward_tok)  # the README's situation: the policy's ids mean nothing to the RM
    start_agent("ppo-box")
    spec = train_spec("ppo", tiny_lm, {"rows": PROMPT_ROWS}, {})
    spec["hyperparameters"] = ppo_hyperparameters(tiny_rm)
    done = run_to_end(coordinator, spec, timeout=240)
    result = done["result"]
    assert result["algorithm"] == "ppo" and result["global_step"] == 6 and result["prompts"] == len(PROMPT_ROWS)
    assert result["reward_input"] == "chat"  # re-tokenized with the reward model's own chat template
    progress = result["progress"]  # the last progress line the agent relayed in a heartbeat
    assert progress["step"] == progress["total"] == 6 and progress["percent"] == 100.0
    for key in ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "approx_kl", "clipfrac"):
        assert isinstance(progress["metrics"][key], float), key

    names = artifacts(coordinator, done["id"])
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "value_head.safetensors",
            "ppo_log.json"} <= set(names)
    checkpoints = [a for a in names.values() if a["kind"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [3]  # save_steps 3 of 6; the end is the output itself

    log = json.loads(coordinator.http.get(f"/api/v1/tasks/{done['id']}/artifacts/ppo_log.json",
                                          follow_redirects=True).content)
    assert [row["step"] for row in log] == list(range(1, 7))
    assert all(row["ppo_epochs_run"] >= 1 and row["response_length"] >= 1 for row in log)
    assert result["reward_means"] == pytest.approx([round(row["reward_mean"], 5) for row in log], abs=1e-5)
    # the adaptive controller, replayed from the logged KLs, lands on the coefficient the task ended with
    ctl = core.AdaptiveKLController(0.2, target=0.5, horizon=20)
    for row in log:
        assert row["kl_coef"] == pytest.approx(ctl.value, rel=1e-6)
        ctl.update(row["kl"], 8)
    assert result["kl_coef_final"] == pytest.approx(ctl.value, rel=1e-6) and result["kl_coef_final"] != 0.2

    adapter = load_adapter(tiny_lm, download_folder(coordinator, done["id"], "adapter", tmp_path))
    assert lora_weights_moved(adapter)


def test_ppo_resumes_from_its_checkpoint_exactly_where_the_lost_attempt_was(
    tiny_lm: Path, tiny_rm: Path, tmp_path: Path
) -> None:
    """A resumed attempt restores adapter, value head, optimizer and KL coefficient and draws the same
    prompts and samples: its steps 4-6 repeat the uninterrupted run's."""
    from mloc_agent.modules.base import TaskContext
    from mloc_agent.modules.ppo.ppo import PPOModule
    from mloc_agent.modules.sources.path_policy import PathPolicy

    spec = train_spec("ppo", tiny_lm, {"rows": PROMPT_ROWS}, {})
    spec["hyperparameters"] = ppo_hyperparameters(tiny_rm)

    def run(name: str, resume: Path | None) -> dict[str, Any]:
        work = tmp_path / name
        for sub in ("out", "ck"):
            (work / sub).mkdir(parents=True)
        ctx = TaskContext(task_id=name, attempt=1, spec=spec, gpus=[], workdir=work, output_dir=work / "out",
                          checkpoint_dir=work / "ck", resume_dir=resume,
                          paths=PathPolicy(roots=(tiny_lm, tiny_rm)))  # what an agent's roots would allow
        return asyncio.run(PPOModule(ctx).execute(progress_callback=lambda _: None))

    whole = run("whole", None)
    shutil.copytree(tmp_path / "whole" / "ck" / "checkpoint-3", tmp_path / "downloaded")
    resumed = run("resumed", tmp_path / "downloaded")
    assert resumed["resumed_from_step"] == 3 and resumed["global_step"] == 6
    assert resumed["reward_means"] == whole["reward_means"]
    assert resumed["kl_coef_final"] == pytest.approx(whole["kl_coef_final"], rel=1e-9)


def test_ppo_without_a_reward_model_or_with_uneven_batches_is_refused_at_submit(coordinator: Coordinator) -> None:
    for hyperparameters, field in (({"ppo_epochs": 4, "target_kl": 0.1}, "hyperparameters.reward_model"),
                                   ({"reward_model": "rm", "batch_size": 10, "mini_batch_size": 4}, "hyperparameters")):
        resp = coordinator.http.post("/api/v1/tasks", json={"taskType": "ppo", "hyperparameters": hyperparameters,
                                                            "model": {"source": {"identifier": "m"}}})
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["field"].startswith(field), error
        assert "reward_model" in error["message"] or "multiple of" in error["message"], error


def test_rlhf_chain_sft_and_reward_model_then_ppo_then_batch_inference(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tiny_rm: Path
) -> None:
    """The classic pipeline through task chaining: PPO starts from the SFT adapter (merged in, so the SFT
    model is the reference), scores with the model a reward_model task trained (``task:<id>``), and writes
    a merged model that an inference task then runs."""
    from tests.ml.test_inference import fine_tune, generations, inference_spec

    start_agent("rlhf-box")
    sft = fine_tune(coordinator, tiny_lm)
    preferences = [{"chosen": f"answer {i * 2}", "rejected": f"bad dog {i}"} for i in range(8)]
    rm = run_to_end(coordinator, train_spec("reward_model", tiny_rm, {"rows": preferences},
                                            {"max_steps": 4, "save_steps": 100}, adapter="none"))
    spec = train_spec("ppo", tiny_lm, {"rows": PROMPT_ROWS}, {})
    spec["model"]["source"] = {"type": "task", "identifier": sft["id"]}
    spec["hyperparameters"] = ppo_hyperparameters(f"task:{rm['id']}", max_steps=2, learning_rate=1e-4)
    ppo = run_to_end(coordinator, spec, timeout=240)
    assert sft["id"] in ppo["result"]["policy_start"] and ppo["result"]["outputs"]["merged"] == "merged/"
    assert f"fetched the outputs of task(s) {', '.join(sorted([sft['id'], rm['id']]))}" in coordinator.logs(ppo["id"])
    done = run_to_end(coordinator, inference_spec({"type": "task", "identifier": ppo["id"]}))
    assert done["result"]["base"].endswith(f"{ppo['id']}/merged") and done["result"]["adapter"] is None
    rows = generations(coordinator, done["id"])
    assert len(rows) == 2 and all(r["generation"].strip().startswith("answer") for r in rows), rows

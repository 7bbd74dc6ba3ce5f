"""ppo: RLHF with a reward model — classic PPO (TRL <= 0.11 semantics), implemented here.

TRL 1.13+ has no PPO and its last PPO (0.12-1.12) had no ``target_kl`` and scored with the
policy's tokenizer, so the original README's example (a DeBERTa reward model beside a Mistral
policy, ``ppo_epochs``, ``target_kl``) never ran there; docs/ppo.md explains the choice. One
step: sample ``batch_size`` prompts, generate, score the decoded text with the reward model,
add a per-token KL penalty against the frozen reference, GAE, then ``ppo_epochs`` passes of
clipped policy and value updates over minibatches, stopping early when the update's KL passes
1.5 x ``target_kl``; the adaptive controller then moves the KL coefficient toward ``kl_target``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from typing import Any, ClassVar

from mloc_shared.hyperparams import PPOHyperparameters, parse_hyperparameters

from mloc_agent.modules.base import BaseModule, ProgressCallback
from mloc_agent.task_contract import Preempted, PreemptedExit, preempt_requested

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 2
STATE_FILE = "ppo_state.json"


class PPOModule(BaseModule):
    task_type = "ppo"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "datasets", "safetensors")
    warm_imports: ClassVar[tuple[str, ...]] = ("torch", "transformers", "transformers.models.auto.modeling_auto",
                                               "peft", "datasets", "safetensors", "mloc_agent.modules.ppo.models")
    checkpoints_on_preempt = classmethod(lambda cls, spec: True)  # its loop polls the preempt file

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
        from mloc_agent.modules.training.trainer_common import quiet_environment

        quiet_environment()
        hp = parse_hyperparameters("ppo", self.spec.get("hyperparameters"))
        assert isinstance(hp, PPOHyperparameters)
        return PPORun(self, hp, progress_callback or self.ctx.progress).run()


class PPORun:
    """One attempt of a PPO task: load, (resume), loop over steps, save."""

    def __init__(self, module: PPOModule, hp: PPOHyperparameters, send: ProgressCallback) -> None:
        self.ctx, self.spec, self.hp, self.send = module.ctx, module.spec, hp, send
        self.history: list[dict[str, float]] = []
        self.checkpoints: list[int] = []

    # -- setup ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from mloc_agent.modules.errors import TaskInputError
        from mloc_agent.modules.ppo.core import AdaptiveKLController, FixedKLController
        from mloc_agent.modules.ppo.models import PolicyWithValue, RewardScorer
        from mloc_agent.modules.sources.models import resolve_model
        from mloc_agent.modules.training.trainer_common import (
            device_plan,
            load_tokenizer,
            lora_config,
            quantization_config,
        )

        model_spec = self.spec.get("model")
        if not model_spec:
            raise TaskInputError("taskType 'ppo' needs 'model' (the policy: source, optional adapter)")
        source = model_spec["source"]
        self.adapter = model_spec.get("adapter") or {"type": "lora"}  # LoRA unless told: the reference is free
        adapter_type = self.adapter.get("type", "none")
        # the starting policy: a model, or a fine-tune's adapter (e.g. {type: task} of an sft), merged into its base
        self.start = resolve_model(model_spec, self.ctx)
        self.plan = device_plan(model_spec.get("dtype", "auto"), adapter_type)
        device = torch.device("cuda" if self.plan.cuda else "cpu")
        torch.manual_seed(self.hp.seed)
        self.send({"message": f"loading policy {self.start.describe()} and reward model {self.hp.reward_model}"})
        tokenizer = load_tokenizer(self.start.tokenizer, source.get("revision"))
        dtype = self.plan.torch_dtype()
        quant = quantization_config(adapter_type, self.plan)
        load = {"dtype": dtype, "revision": source.get("revision")}
        if quant is not None:
            load["quantization_config"] = quant

        def starting_policy() -> Any:
            """The SFT model is the reference: an adapter it came with is merged in, the PPO adapter goes on top."""
            net = AutoModelForCausalLM.from_pretrained(self.start.base, **load)
            if self.start.adapter is not None:
                from peft import PeftModel

                net = PeftModel.from_pretrained(net, str(self.start.adapter)).merge_and_unload()
            return net if quant is not None else net.to(device)

        model = starting_policy()
        ref_model = None
        if adapter_type == "none":
            ref_model = starting_policy().eval()
            ref_model.requires_grad_(False)
        else:
            from peft import get_peft_model

            model.requires_grad_(False)
            model = get_peft_model(model, lora_config(self.adapter))
        model.eval()  # no dropout: the first minibatch's ratio is exactly 1, as the math assumes
        self.policy = PolicyWithValue(model, tokenizer, ref_model, device)
        self.reward = RewardScorer(self._reward_source(), device=device, dtype=dtype,
                                   reward_input=self.hp.reward_input, max_length=self.hp.max_length or 512)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=self.hp.learning_rate)
        hp = self.hp
        self.kl_ctl = (AdaptiveKLController(hp.init_kl_coef, hp.kl_target, hp.kl_horizon) if hp.adap_kl_ctrl
                       else FixedKLController(hp.init_kl_coef))
        self.prompts = self._prompts()

    def _reward_source(self) -> str:
        """A local folder, a hub id, or ``task:<id>``: the model a finished reward_model task wrote."""
        from mloc_agent.modules.errors import TaskInputError
        from mloc_agent.modules.sources.hub import model_name
        from mloc_agent.modules.sources.task_outputs import TaskOutputError, task_output

        name = self.hp.reward_model
        if name.startswith("task:"):
            try:
                full = task_output(name[5:], self.ctx).full_model()
            except TaskOutputError as exc:
                raise TaskInputError(f"hyperparameters.reward_model: {exc}") from None
            if full is None:
                raise TaskInputError(f"hyperparameters.reward_model: task {name[5:]} left no full model (model/ or "
                                     "merged/); train it with adapter type none or merge_adapter: true")
            return str(full)
        return model_name(name, paths=self.ctx.paths, field="hyperparameters.reward_model")  # a path or hub id

    def _prompts(self) -> list[Any]:
        from mloc_agent.modules.errors import TaskInputError
        from mloc_agent.modules.sources.path_policy import is_path_like
        from mloc_agent.modules.training.data import for_prompts, load_rows

        hp, dataset = self.hp, self.spec.get("dataset")
        if dataset is None and hp.query_dataset:
            ref = hp.query_dataset
            key = "uri" if ref.startswith(("http://", "https://")) else "path" if is_path_like(ref) else "hub"
            dataset = {key: ref}
        rows: list[Any] = list(hp.prompts or [])
        if dataset is not None:
            ds, data_spec = load_rows(dataset, self.ctx, seed=hp.seed)
            rows += list(for_prompts(ds, data_spec)["prompt"])
        if not rows:
            raise TaskInputError("ppo needs prompts: a 'dataset' with a prompt (or messages) column, "
                                 "hyperparameters.prompts, or hyperparameters.query_dataset")
        return rows

    # -- checkpoints -----------------------------------------------------------------------------------

    def _save_checkpoint(self, step: int) -> None:
        import torch

        folder = self.ctx.checkpoint_dir / f"checkpoint-{step}"
        self.policy.save(folder / "policy", folder / "value_head.safetensors")
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        state = {"step": step, "kl_coef": self.kl_ctl.value, "history": self.history,
                 "checkpoints": [*self.checkpoints, step]}
        (folder / STATE_FILE).write_text(json.dumps(state))
        self.checkpoints.append(step)
        self.ctx.save_checkpoint(folder, step)
        old = sorted(self.ctx.checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
        for stale in old[:-KEEP_CHECKPOINTS]:  # uploaded already; keep the agent's disk bounded
            shutil.rmtree(stale, ignore_errors=True)

    def _resume(self) -> int:
        """Continue from the checkpoint the agent downloaded for this attempt; the step to start at."""
        import torch

        if self.ctx.resume_dir is None:
            return 0
        states = sorted(self.ctx.resume_dir.rglob(STATE_FILE), key=lambda p: len(p.parts))
        if not states:
            log.warning("resume folder %s holds no %s; starting at step 0", self.ctx.resume_dir, STATE_FILE)
            return 0
        folder = states[0].parent
        state = json.loads(states[0].read_text())
        model = self.policy.model
        if self.policy.is_peft:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            weights = load_file(str(folder / "policy" / "adapter_model.safetensors"), device=str(self.policy.device))
            set_peft_model_state_dict(model, weights)
        else:
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(str(folder / "policy"), dtype=self.plan.torch_dtype())
            model.load_state_dict(loaded.state_dict())
        self.policy.load_value_head(folder / "value_head.safetensors")
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.policy.device))
        self.kl_ctl.value = float(state["kl_coef"])
        self.history = list(state.get("history", []))
        self.checkpoints = list(state.get("checkpoints", []))
        return int(state["step"])

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import torch

        from mloc_agent.modules.ppo.core import batch_indices

        self._load()
        hp = self.hp
        start = self._resume()
        resumed_from = start or None
        self.send({"step": start, "total": hp.max_steps,
                   "message": f"resumed at step {start}" if start else "ppo: rollouts and updates"})
        started, last_sent = time.monotonic(), 0.0
        for step in range(start, hp.max_steps):
            torch.manual_seed(hp.seed * 1_000_003 + step)  # a resumed attempt samples as the lost one would have
            batch = [self.prompts[i] for i in batch_indices(len(self.prompts), hp.batch_size, step, hp.seed)]
            stats = self.step(batch)
            stats["step"] = step + 1
            self.history.append(stats)
            done = step + 1
            now = time.monotonic()
            if now - last_sent >= 0.5 or done == hp.max_steps or done % hp.logging_steps == 0:
                last_sent = now
                eta = (now - started) / (done - start) * (hp.max_steps - done)
                self.send(_progress(stats, done, hp.max_steps, hp.learning_rate, eta))
            preempted = done < hp.max_steps and preempt_requested()  # docs/modules.md: save, acknowledge, stop
            if (done % hp.save_steps == 0 or preempted) and done < hp.max_steps:
                self._save_checkpoint(done)
            if preempted:
                self.ctx.send(Preempted(done))
                raise PreemptedExit(f"preempted at step {done}")
        return self._finish(resumed_from)

    def step(self, prompts: list[Any]) -> dict[str, float]:
        """One PPO step (TRL <= 0.11 ``PPOTrainer.step``) on one rollout batch."""
        import torch

        from mloc_agent.modules.ppo.core import compute_advantages, compute_rewards, ppo_loss, should_stop_early

        hp, policy = self.hp, self.policy
        max_prompt = (hp.max_length or 10**6) - hp.max_new_tokens
        gen = {"max_new_tokens": hp.max_new_tokens, "temperature": hp.temperature, "top_k": hp.top_k,
               "top_p": hp.top_p}
        rollout = policy.generate(prompts, max_prompt_tokens=max_prompt, gen_kwargs=gen)
        scores = self.reward.score(prompts, rollout.responses)
        if hp.score_clip is not None:
            scores = scores.clamp(-hp.score_clip, hp.score_clip)
        ids, attn = rollout.inputs()
        mask, length = rollout.response_mask, rollout.response_ids.shape[1]
        with torch.no_grad():
            old_logp, old_values = policy.forward(ids, attn, length)
            ref_logp, _ = policy.forward(ids, attn, length, with_values=False, reference=True)
        kl_coef = self.kl_ctl.value
        rewards, non_score, kl = compute_rewards(scores, old_logp, ref_logp, mask, kl_coef, hp.kl_penalty)
        if hp.whiten_rewards:
            from mloc_agent.modules.ppo.core import masked_whiten

            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_advantages(old_values, rewards, mask, hp.gamma, hp.lam)

        backward_batch = hp.mini_batch_size * hp.gradient_accumulation_steps
        seen: list[Any] = []
        early_stopped, epochs_run = False, 0
        for _ in range(hp.ppo_epochs):
            epochs_run += 1
            order = torch.randperm(len(prompts))
            for b in range(0, len(prompts), backward_batch):
                self.optimizer.zero_grad()
                for m in range(b, b + backward_batch, hp.mini_batch_size):
                    idx = order[m:m + hp.mini_batch_size]
                    logp, values = policy.forward(ids[idx], attn[idx], length)
                    out = ppo_loss(old_logp[idx], old_values[idx], advantages[idx], returns[idx], logp, values,
                                   mask[idx], cliprange=hp.cliprange, cliprange_value=hp.cliprange_value,
                                   vf_coef=hp.vf_coef, ratio_threshold=hp.ratio_threshold)
                    (out.loss / hp.gradient_accumulation_steps).backward()
                    seen.append(out)
                if hp.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), hp.max_grad_norm)
                self.optimizer.step()
                if hp.early_stopping and should_stop_early(seen[-1].policy_kl, hp.target_kl):
                    early_stopped = True
                    break
            if early_stopped:
                break
        seq_kl = float(kl.sum(dim=1).mean())
        self.kl_ctl.update(seq_kl, len(prompts))
        n = len(seen)
        lengths = mask.sum(dim=1)
        return {
            "reward_mean": float(scores.mean()), "reward_std": float(scores.std()) if len(prompts) > 1 else 0.0,
            "kl": seq_kl, "kl_coef": kl_coef, "kl_coef_next": self.kl_ctl.value,
            "non_score_reward": float(non_score.sum(dim=1).mean()),
            "policy_loss": sum(o.policy_loss for o in seen) / n, "value_loss": sum(o.value_loss for o in seen) / n,
            "approx_kl": sum(o.approx_kl for o in seen) / n, "policy_kl": seen[-1].policy_kl,
            "clipfrac": sum(o.clipfrac for o in seen) / n, "value_clipfrac": sum(o.value_clipfrac for o in seen) / n,
            "ratio_mean": sum(o.ratio_mean for o in seen) / n,
            "skipped_minibatches": float(sum(o.skipped for o in seen)),
            "ppo_epochs_run": float(epochs_run), "early_stopped": float(early_stopped),
            "response_length": float(lengths.float().mean()),
            "loss": sum(o.policy_loss + hp.vf_coef * o.value_loss for o in seen) / n,
        }

    # -- outputs ---------------------------------------------------------------------------------------

    def _finish(self, resumed_from: int | None) -> dict[str, Any]:
        out = self.ctx.output_dir
        is_adapter = self.policy.is_peft
        target = out / ("adapter" if is_adapter else "model")
        self.policy.save(target, out / "value_head.safetensors")
        (out / "ppo_log.json").write_text(json.dumps(self.history, indent=1))
        outputs = {target.name: target.name + "/", "value_head": "value_head.safetensors"}
        # a policy that started from another task's adapter has no base file to apply this adapter on: merge
        if is_adapter and (self.hp.merge_adapter or self.start.adapter is not None):
            merged = self.policy.model.merge_and_unload()
            merged.save_pretrained(out / "merged")
            self.policy.tokenizer.save_pretrained(out / "merged")
            outputs["merged"] = "merged/"
        first, last = (self.history[0], self.history[-1]) if self.history else ({}, {})
        rewards = [h["reward_mean"] for h in self.history]
        return {
            "algorithm": "ppo", "global_step": len(self.history), "max_steps": self.hp.max_steps,
            "resumed_from_step": resumed_from, "checkpoint_steps": self.checkpoints, "outputs": outputs,
            "adapter": self.adapter.get("type", "none"), "device": "cuda" if self.plan.cuda else "cpu",
            "dtype": self.plan.load_dtype, "prompts": len(self.prompts), "reward_input": self.reward.reward_input,
            "policy_start": self.start.describe(),
            "first_reward_mean": first.get("reward_mean"), "final_reward_mean": last.get("reward_mean"),
            "reward_means": [round(r, 5) for r in rewards[-50:]],
            "kl_coef_initial": self.hp.init_kl_coef, "kl_coef_final": self.kl_ctl.value,
            "final_kl": last.get("kl"), "early_stopped_steps": int(sum(h["early_stopped"] for h in self.history)),
            "notes": self.plan.notes,
        }


def _progress(stats: dict[str, float], step: int, total: int, lr: float, eta: float) -> dict[str, Any]:
    keys = ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "approx_kl", "policy_kl", "clipfrac",
            "response_length", "ppo_epochs_run")
    metrics = {k: round(stats[k], 6) for k in keys if math.isfinite(stats[k])}
    return {"step": step, "total": total, "loss": stats["loss"] if math.isfinite(stats["loss"]) else None,
            "learning_rate": lr, "eta_s": round(eta, 1), "metrics": metrics,
            "message": f"reward {stats['reward_mean']:.3f}, kl {stats['kl']:.3f}, kl_coef {stats['kl_coef']:.4f}"}

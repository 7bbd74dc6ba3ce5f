"""A TrainerCallback that slows each step down, loaded by a task through
``hyperparameters.callbacks: ["tests.ml.throttle:SlowSteps"]`` so a test can kill the agent mid-run."""

from __future__ import annotations

import time

from transformers import TrainerCallback

STEP_S = 0.3


class SlowSteps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(STEP_S)

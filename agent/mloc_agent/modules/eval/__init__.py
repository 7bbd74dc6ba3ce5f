"""The eval task type: perplexity, generation metrics and lm-evaluation-harness tasks on one model."""

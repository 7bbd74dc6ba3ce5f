"""Training task types on TRL: sft, dpo, grpo, reward_model, and the flow and data they share."""

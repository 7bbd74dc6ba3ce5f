"""ppo: classic PPO for RLHF, implemented here (module, models, math)."""

"""Features, policy-value network, GAE, PPO and the learner (plain Python; Ray wraps it)."""

"""Features, policy-value network, GAE, PPO and the learner (plain Python; Ray wraps it)."""

from learner.learner import Learner, resolve_device

__all__ = ["Learner", "resolve_device"]

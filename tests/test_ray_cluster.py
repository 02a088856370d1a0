"""The job environment the driver gives its Ray actors."""

from __future__ import annotations

import pytest

from keisei_ray.training.ray_cluster import worker_runtime_env


def test_actors_get_two_malloc_arenas_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert worker_runtime_env() == {"env_vars": {"MALLOC_ARENA_MAX": "2"}}


def test_a_malloc_arena_cap_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert worker_runtime_env()["env_vars"]["MALLOC_ARENA_MAX"] == "4"

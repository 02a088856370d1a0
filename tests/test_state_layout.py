"""The compact-state layout is declared once (shogi.compact.STATE_LAYOUT): the state class, the
wire codec, the learner's buffer and the feature tensors all follow it."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from keisei_ray import codec
from learner.buffer import ExperienceBuffer
from learner.features import StateTensors, to_tensors
from shogi import CompactState, VecEnv
from shogi.compact import BOARD_SIDE, BOARD_SIZE, STATE_FIELDS, STATE_LAYOUT


def test_every_copy_follows_the_layout() -> None:
    assert BOARD_SIZE == BOARD_SIDE**2 == 81
    assert tuple(f.name for f in dataclasses.fields(CompactState)) == STATE_FIELDS
    assert tuple(f.name for f in dataclasses.fields(StateTensors)) == STATE_FIELDS
    assert tuple(codec._SCHEMA)[:len(STATE_FIELDS)] == STATE_FIELDS  # wire order
    empty = CompactState.empty(3)
    buffer = ExperienceBuffer(3, torch.device("cpu"))
    for f in STATE_LAYOUT:
        array = getattr(empty, f.name)
        assert array.dtype == f.dtype and array.shape == (3, *f.shape)
        dtype, shape_of = codec._SCHEMA[f.name]
        assert dtype == f.dtype and shape_of(3, 0, 0, 0) == (3, *f.shape)
        tensor = getattr(buffer.state, f.name)
        assert tensor.shape == (3, *f.shape)
        assert tensor.dtype == torch.from_numpy(np.zeros(0, f.dtype)).dtype


def test_env_states_are_within_the_declared_ranges() -> None:
    env = VecEnv(8, 40, seed=3)
    obs = env.reset()
    for _ in range(60):
        state = obs.state
        for f in STATE_LAYOUT:
            values = getattr(state, f.name)
            assert values.dtype == f.dtype
            assert values.min() >= f.low and values.max() <= f.high, f.name
        tensors = to_tensors(state)
        assert all(torch.equal(getattr(tensors, name), torch.from_numpy(getattr(state, name)))
                   for name in STATE_FIELDS)
        env.step(env.random_actions())
        obs = env.observe()

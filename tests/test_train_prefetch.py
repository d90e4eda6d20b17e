"""The background prefetcher: same batches as inline iteration, checkpoint state of the consumed batch."""

from __future__ import annotations

import time

import pytest
import torch

from crisscross.train.prefetch import Prefetcher
from crisscross.train.synthetic import build_synthetic_loader

CFG = {"num_samples": 12, "frames": 2, "crop": 8, "mel_bins": 4, "audio_frames": 6}


def _loader():
    return build_synthetic_loader(CFG, batch_size=4, seed=3)  # 3 batches per epoch


def test_prefetched_batches_and_states_equal_inline_iteration():
    inline, ahead = Prefetcher(_loader(), depth=0), Prefetcher(_loader(), depth=2)
    try:
        for _ in range(7):  # crosses two epoch boundaries
            a, b = inline.next(), ahead.next()
            time.sleep(0.02)  # let the producer run ahead of the consumer
            assert a["key"] == b["key"] and torch.equal(a["v1"], b["v1"])
            assert ahead.state_dict() == inline.state_dict()
    finally:
        ahead.close()
    # the state of the consumed batch resumes exactly: the next batch matches
    resumed = _loader()
    resumed.load_state_dict(inline.state_dict())
    again = Prefetcher(resumed, depth=1)
    try:
        assert again.next()["key"] == inline.next()["key"]
    finally:
        again.close()


def test_producer_runs_ahead_but_checkpoint_state_does_not():
    ahead = Prefetcher(_loader(), depth=2)
    try:
        ahead.next()
        deadline = time.monotonic() + 10
        ran_ahead = {"epoch": 1, "next_batch": 1}  # 2 batches queued + 1 in the producer's hand
        while ahead.loader.state_dict() != ran_ahead and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ahead.loader.state_dict() == ran_ahead
        assert ahead.state_dict() == {"epoch": 0, "next_batch": 1}  # what a checkpoint stores
    finally:
        ahead.close()


def test_loader_errors_reach_the_training_thread():
    class Broken:
        def state_dict(self):
            return {}

        def __iter__(self):
            raise OSError("shard vanished")

    stream = Prefetcher(Broken(), depth=1)
    with pytest.raises(OSError, match="shard vanished"):
        stream.next()
    stream.close()

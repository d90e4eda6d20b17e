"""The loader's cheaper operators give what the operators they replace gave, and the faithful
anchor of ``crisscross bench loader`` does the official loader's per-clip work (shapes, stages,
thread settings). Speed itself is measured by the benchmark, not here."""

from __future__ import annotations

import os

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import pytest
from nvidia.dali.pipeline import pipeline_def

from crisscross.shards import augment
from crisscross.shards.augment import Draws, DrawSpec, VideoAugment

BATCH = 4


class FixedDraws(Draws):
    """Every draw is a constant chosen by the test, by name (``video.hue`` ...)."""

    def __init__(self, values: dict[str, float]):
        self.values = values

    def draw(self, spec: DrawSpec):
        return fn.constant(fdata=float(self.values[spec.name]), shape=[], dtype=types.FLOAT)


def _run(graph, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
    @pipeline_def(batch_size=len(frames), num_threads=1, device_id=None, enable_conditionals=True)
    def pipe():
        source = fn.external_source(name="frames", layout="FHWC")
        return graph(source)

    p = pipe()
    p.build()
    p.feed_input("frames", frames)
    return [[np.array(out[i]) for i in range(len(frames))] for out in p.run()]


def _frames(dtype=np.uint8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(3, 24, 20, 3)).astype(dtype) for _ in range(BATCH)]


def test_float_colour_twist_equals_uint8_colour_twist():
    """Colour jitter (+ grayscale off) in float, clamped: DALI's uint8 colour twist up to its rounding,
    including pixels pushed past 255 (brightness 1.4)."""
    values = {"video.color_jitter": 1.0, "video.brightness": 1.4, "video.contrast": 0.7, "video.saturation": 1.3,
              "video.hue": 40.0, "video.grayscale": 0.0}
    aug = VideoAugment()

    def graph(frames):
        ours = augment._color_twist(frames, aug, FixedDraws(values))
        raw = fn.color_twist(frames, brightness=1.4, contrast=0.7, saturation=1.3, hue=40.0, dtype=types.FLOAT)
        reference = fn.color_twist(frames, brightness=1.4, contrast=0.7, saturation=1.3, hue=40.0)
        return ours, raw, reference

    ours, raw, reference = _run(graph, _frames())
    for o, r, ref in zip(ours, raw, reference):
        assert o.dtype == np.float32 and o.min() >= 0.0 and o.max() <= 255.0
        assert (r > 255.0).any()  # the clamp had work to do
        assert np.abs(o - ref.astype(np.float32)).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_two_pass_blur_equals_gaussian_blur(sigma: float):
    """The two 1-D passes are fn.gaussian_blur (11 taps, reflect-101 borders) within float rounding;
    a view that does not draw the blur is left as it was."""
    aug = VideoAugment()

    def graph(frames):
        blurred = augment._blur(frames, aug, FixedDraws({"video.blur": 1.0, "video.blur_sigma": sigma}), is_float=True)
        kept = augment._blur(frames, aug, FixedDraws({"video.blur": 0.0, "video.blur_sigma": sigma}), is_float=True)
        return blurred, kept, fn.gaussian_blur(frames, window_size=11, sigma=sigma)

    frames = _frames(np.float32)
    blurred, kept, reference = _run(graph, frames)
    for b, k, ref, original in zip(blurred, kept, reference, frames):
        assert np.abs(b - ref).max() < 1e-2
        assert np.array_equal(k, original)
    if sigma > 0.5:
        assert np.abs(blurred[0] - frames[0]).max() > 1.0  # it did blur


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> list[str]:
    from crisscross.tools.bench_loader import _source_paths
    from crisscross.tools.demo_data import generate_demo_clips

    folder = tmp_path_factory.mktemp("anchor_src")
    generate_demo_clips(folder, num_classes=1, clips_per_class=1, seconds=4.0, fps=25, size=(160, 120),
                        sample_rate=44100, seed=0)
    return _source_paths(folder / "manifest.csv")


def test_faithful_anchor_item(source):
    """Two views of 8 frames at 112 px and two 80 x 201 log-mels (the official code's shapes), the
    four stages timed, the same item twice gives the same tensors."""
    from crisscross.tools.loader_anchor import FaithfulAnchor, source_limits

    limits = source_limits(source)
    assert limits[0][1] == pytest.approx(4.0, abs=0.1) and limits[0][3] == pytest.approx(4.0, abs=0.1)
    dataset = FaithfulAnchor(source, limits)
    item, stages = dataset.item_with_stages(3)
    assert tuple(item["frames"].shape) == (2, 3, 8, 112, 112)
    assert tuple(item["audio"].shape) == (2, 1, 80, 201)
    assert set(stages) == {"video_decode", "audio_decode", "video_aug", "audio_aug"}
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) > 0
    again = dataset[3]
    assert all(bool((again[k] == item[k]).all()) for k in item)
    assert not bool((dataset[4]["frames"] == item["frames"]).all())


def test_one_thread_environment_is_set_then_restored(monkeypatch):
    from crisscross.tools.loader_anchor import THREAD_VARIABLES, one_thread_environment, process_cpu_seconds

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with one_thread_environment():
        assert all(os.environ[name] == "1" for name in THREAD_VARIABLES)
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    before = process_cpu_seconds(os.getpid())
    sum(i * i for i in range(3_000_000))
    assert process_cpu_seconds(os.getpid()) > before

"""The loader's cheaper operators give what the operators they replace gave, and the faithful
anchor of ``crisscross bench loader`` does the official loader's per-clip work (shapes, stages,
thread settings). Speed itself is measured by the benchmark, not here."""

from __future__ import annotations

import os

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
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
        value = self.values[spec.name]
        if spec.size:  # a vector draw: the given list, or one value repeated
            values = [float(v) for v in np.broadcast_to(np.asarray(value, dtype=np.float64), (spec.size,))]
            return fn.constant(fdata=values, shape=[spec.size], dtype=types.FLOAT)
        return fn.constant(fdata=float(value), shape=[], dtype=types.FLOAT)


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
        ours = augment._apply_twist(frames, augment._twist_params(aug, FixedDraws(values)))
        raw = fn.color_twist(frames, brightness=1.4, contrast=0.7, saturation=1.3, hue=40.0, dtype=types.FLOAT)
        reference = fn.color_twist(frames, brightness=1.4, contrast=0.7, saturation=1.3, hue=40.0)
        return ours, raw, reference

    ours, raw, reference = _run(graph, _frames())
    for o, r, ref in zip(ours, raw, reference):
        assert o.dtype == np.float32 and o.min() >= 0.0 and o.max() <= 255.0
        assert (r > 255.0).any()  # the clamp had work to do
        assert np.abs(o - ref.astype(np.float32)).max() <= 0.5 + 1e-3


def _blur(frames, aug: VideoAugment, draws: Draws):
    return augment._apply_blur(frames, aug, *augment._blur_params(aug, draws), is_float=True, draws=draws)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_two_pass_blur_equals_gaussian_blur(sigma: float):
    """The two 1-D passes are fn.gaussian_blur (11 taps, reflect-101 borders) within float rounding;
    a view that does not draw the blur is left as it was."""
    aug = VideoAugment()

    def graph(frames):
        blurred = _blur(frames, aug, FixedDraws({"video.blur": 1.0, "video.blur_sigma": sigma}))
        kept = _blur(frames, aug, FixedDraws({"video.blur": 0.0, "video.blur_sigma": sigma}))
        return blurred, kept, fn.gaussian_blur(frames, window_size=11, sigma=sigma)

    frames = _frames(np.float32)
    blurred, kept, reference = _run(graph, frames)
    for b, k, ref, original in zip(blurred, kept, reference, frames):
        assert np.abs(b - ref).max() < 1e-2
        assert np.array_equal(k, original)
    if sigma > 0.5:
        assert np.abs(blurred[0] - frames[0]).max() > 1.0  # it did blur


VIEW_DRAWS = {"video.crop_area": 0.3, "video.crop_log_ratio": 0.1, "video.crop_y": 0.3, "video.crop_x": 0.7,
              "video.color_jitter": 1.0, "video.brightness": 1.3, "video.contrast": 0.8, "video.saturation": 1.2,
              "video.hue": 30.0, "video.grayscale": 0.0, "video.blur": 1.0, "video.blur_sigma": 1.3,
              "video.cutout_side": 15.0, "video.cutout_centre": [100.0, 9.0], "video.flip": 1.0}


def _reference_view(frames: list, values: dict[str, float], aug: VideoAugment, crop: int):
    """The view in the recipe's order with the library operators: resize the box, colour twist
    (clamped), Gaussian blur, cutout, flip last (crop_mirror_normalize's mirror)."""
    height, width = 112.0, 149.0
    area, ratio = values["video.crop_area"] * height * width, float(np.exp(values["video.crop_log_ratio"]))
    w, h = np.floor(np.sqrt(area * ratio) + 0.5), np.floor(np.sqrt(area / ratio) + 0.5)
    y0 = np.floor(values["video.crop_y"] * (height - h + 1.0 - 1e-3))
    x0 = np.floor(values["video.crop_x"] * (width - w + 1.0 - 1e-3))
    view = fn.stack(*[fn.resize(f, roi_start=[y0, x0], roi_end=[y0 + h, x0 + w], size=[crop, crop], antialias=False)
                      for f in frames], axis_name="F")
    view = fn.color_twist(view, brightness=values["video.brightness"], contrast=values["video.contrast"],
                          saturation=values["video.saturation"], hue=values["video.hue"], dtype=types.FLOAT)
    view = dmath.clamp(view, 0.0, 255.0)
    if values["video.blur"]:
        view = fn.gaussian_blur(view, window_size=aug.blur_kernel, sigma=values["video.blur_sigma"])
    side = values["video.cutout_side"]
    anchor = np.floor(np.asarray(values["video.cutout_centre"]) - side / 2.0)
    fill = fn.reductions.mean(view[0], axes=[0, 1])
    view = fn.erase(view, anchor=[float(a) for a in anchor], shape=[side, side], axis_names="HW", fill_value=fill)
    return fn.crop_mirror_normalize(view, mirror=int(values["video.flip"]), mean=[255.0 * m for m in aug.mean],
                                    std=[255.0 * s for s in aug.std], dtype=types.FLOAT, output_layout="CFHW")


@pytest.mark.parametrize("change", [{}, {"video.flip": 0.0}, {"video.blur": 0.0}, {"video.cutout_centre": [5.0, 110.0]},
                                    {"video.crop_area": 0.7}, {"video.crop_area": 0.05, "video.cutout_centre": [0.0, 111.0]}])
def test_view_with_the_flip_in_the_resize_equals_the_recipe_order(change: dict):
    """The training view flips inside the resize (a mirrored crop region) and moves the cutout to
    its mirror image; the output is the recipe's (flip after cutout) up to the resize's uint8
    rounding (one level in a few pixels when the box is larger than the crop)."""
    values = dict(VIEW_DRAWS, **change)
    aug, crop = VideoAugment(), 112
    rng = np.random.default_rng(1)
    frames = [[rng.integers(0, 256, size=(112, 149, 3), dtype=np.uint8) for _ in range(BATCH)] for _ in range(4)]

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, enable_conditionals=True)
    def pipe():
        sources = [fn.external_source(name=f"f{i}", layout="HWC") for i in range(4)]
        return augment.augment_video(sources, aug, crop, FixedDraws(values)), _reference_view(sources, values, aug, crop)

    p = pipe()
    p.build()
    for i, batch in enumerate(frames):
        p.feed_input(f"f{i}", batch)
    ours, reference = (np.array(out.as_tensor()) for out in p.run())
    assert ours.shape == reference.shape == (BATCH, 3, 4, crop, crop)
    one_level = 1.0 / (255.0 * min(aug.std)) * 1.5  # a uint8 level through the twist (gain <= 1.5)
    difference = np.abs(ours - reference)
    assert difference.max() <= one_level and (difference > 1e-3).mean() < 0.02
    if values["video.flip"]:  # a check that can fail: the unflipped view is far from ours
        assert np.abs(ours - np.flip(reference, axis=-1)).max() > 0.5


class ColumnDraws(Draws):
    """Every draw is an external source fed with given per-sample values; the arithmetic on them is
    the base class's, DALI operators in the graph (as the evaluation pipelines do it)."""

    def __init__(self) -> None:
        self.specs: list[DrawSpec] = []

    def draw(self, spec: DrawSpec):
        self.specs.append(spec)
        return fn.external_source(name=f"col{len(self.specs) - 1}", dtype=types.FLOAT, ndim=1 if spec.size else 0)


def _random_draws(specs: list[DrawSpec], batch: int, rng: np.random.Generator) -> np.ndarray:
    columns = []
    for spec in specs:
        u = rng.random((batch, max(spec.size, 1)), dtype=np.float32)
        columns.append((u < spec.lo).astype(np.float32) if spec.kind == "coin" else spec.lo + (spec.hi - spec.lo) * u)
    return np.concatenate(columns, axis=1)


def test_numpy_parameters_equal_the_dali_arithmetic():
    """Training evaluates the augmentation arithmetic with numpy over the batch (RecordedDraws);
    evaluation graphs do it with DALI operators. For the same draws and frames both give the same
    views (every video and audio augmentation on, both flips, blur on and off)."""
    from crisscross.shards.augment import AudioAugment, LogMel, RecordedDraws, augment_audio_power, augment_video

    aug, audio_aug, mel, crop, frames_per_view = VideoAugment(), AudioAugment(), augment.LogMel(), 112, 3
    assert isinstance(mel, LogMel)
    rng = np.random.default_rng(5)
    frames = [[rng.integers(0, 256, size=(112, 149, 3), dtype=np.uint8) for _ in range(BATCH)] for _ in range(frames_per_view)]
    power = [rng.random((201, 80), dtype=np.float32) for _ in range(BATCH)]
    recorded, columns = RecordedDraws(), ColumnDraws()

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, enable_conditionals=True, exec_pipelined=False,
                  exec_async=False, prefetch_queue_depth=1)
    def pipe():
        decoded = [fn.reshape(fn.external_source(name=f"f{i}", layout="HWC"), layout="HWC") for i in range(frames_per_view)]
        spectrum = fn.external_source(name="power", layout="tf")
        recorded.register_frames(decoded)
        ours = (augment_video(decoded, aug, crop, recorded), augment_audio_power(spectrum, audio_aug, mel, 32000, recorded))
        dali = (augment_video(decoded, aug, crop, columns), augment_audio_power(spectrum, audio_aug, mel, 32000, columns))
        return (*ours, *dali)

    p = pipe()
    p.build()
    assert recorded.specs == columns.specs and len(recorded.params) > 10
    for _ in range(3):
        packed = _random_draws(recorded.specs, BATCH, rng)
        packed[:, [i for i, d in enumerate(recorded.specs) if d.name == "video.flip"][0]] = [0, 1, 0, 1][:BATCH]
        for i, batch in enumerate(frames):
            p.feed_input(f"f{i}", batch)
        p.feed_input("power", power)
        for i, column in enumerate(augment.unpack_draws(packed, columns.specs)):
            p.feed_input(f"col{i}", np.ascontiguousarray(column))
        sizes = {slot: np.tile(np.float32([112, 149]), (BATCH, 1)) for slot in recorded.size_slots}
        for name, values in recorded.evaluate(packed, sizes):
            p.feed_input(name, values)
        video, audio, video_dali, audio_dali = (np.array(out.as_tensor()) for out in p.run())
        np.testing.assert_allclose(video, video_dali, atol=1e-5)
        np.testing.assert_allclose(audio, audio_dali, atol=1e-4)
        assert np.abs(video).max() > 0.5 and np.abs(audio).max() > 0.5  # real views, not zeros


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_size_reads_the_frame_header(mode: str):
    """The crop boxes' frame sizes come from the JPEG header: equal to the decoded size (PIL), a
    non-JPEG or a JPEG cut before its frame header is refused with Mp4Error (a bad sample)."""
    import io

    from PIL import Image

    from crisscross.shards.mjpeg_frames import Mp4Error, jpeg_size

    buffer = io.BytesIO()
    Image.new(mode, (149, 112), color=90 if mode == "L" else (10, 200, 30)).save(buffer, format="JPEG", quality=90)
    data = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    assert jpeg_size(data) == (112, 149) == Image.open(io.BytesIO(buffer.getvalue())).size[::-1]
    with pytest.raises(Mp4Error, match="not a JPEG"):
        jpeg_size(data[2:])
    with pytest.raises(Mp4Error):
        jpeg_size(data[:20])


def test_time_major_spectrogram_gives_the_same_log_mel():
    """``log_mel`` computes the STFT time-major (cheaper) and transposes after the mel bank: the same
    map as the frequency-major STFT."""
    rng = np.random.default_rng(2)
    waves = [rng.standard_normal(32000).astype(np.float32) * 0.1 for _ in range(BATCH)]
    mel = augment.LogMel()

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None)
    def pipe():
        wave = fn.external_source(name="wave")
        spec = fn.spectrogram(wave, nfft=1024, window_length=1024, window_step=160, center_windows=True,
                              reflect_padding=False, power=2, window_fn=augment._periodic_hann(1024))
        bank = fn.mel_filter_bank(spec, sample_rate=16000.0, nfilter=80, freq_low=0.0, freq_high=8000.0,
                                  mel_formula="slaney", normalize=True)
        return augment.log_mel(wave, mel, 32000), dmath.log(bank + augment.LOG_EPS)[:, :200]

    p = pipe()
    p.build()
    p.feed_input("wave", waves)
    ours, reference = (np.array(out.as_tensor()) for out in p.run())
    assert ours.shape == reference.shape == (BATCH, 80, 200)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_cpu_batches_are_copies_in_numpy_memory():
    """``_to_torch`` on the CPU: a contiguous float32 copy that outlives the DALI buffer."""
    import torch

    from crisscross.shards.loader import _to_torch

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, exec_pipelined=False, exec_async=False,
                  prefetch_queue_depth=1)
    def pipe():
        return fn.external_source(name="x")

    p = pipe()
    p.build()
    data = [np.full((3, 5), i, dtype=np.float32) for i in range(BATCH)]
    p.feed_input("x", data)
    (out,) = p.run()
    batch = _to_torch(out, torch.device("cpu"))
    p.feed_input("x", [d + 100 for d in data])
    p.run()  # DALI reuses its buffers
    assert batch.dtype == torch.float32 and batch.is_contiguous() and tuple(batch.shape) == (BATCH, 3, 5)
    assert torch.equal(batch, torch.from_numpy(np.stack(data)))


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

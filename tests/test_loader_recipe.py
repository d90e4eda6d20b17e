"""The pretraining augmentation recipe (supplement Tables S1/S2), checked by drawing from the real
DALI graphs with bounds that can fail.

Two levels:

* **Draws.** The plan pipeline makes every random augmentation parameter (``RecordedDraws``:
  one named ``DrawSpec`` per draw). Thousands of draws per parameter are taken from it with the
  default config (grayscale and blur on) and compared with the paper's numbers, written here
  independently of the defaults: every draw inside the range, both ends reached, the distribution
  uniform (Kolmogorov-Smirnov), probabilities within a binomial tolerance.
* **Outputs.** The training loader's augmented views, on clips built for measuring one
  augmentation at a time (a coordinate gradient for the crop box, coloured blocks for hue,
  grayscale, blur and cutout, noise for the audio): the crop's area and aspect, the hue rotation,
  the grayscale and blur rates, the blur's sigma, the cutout's side, the mask widths and the
  volume gain are measured on the output tensors.

Tolerances are 4.5 standard errors (a correct graph fails about once in 10^5 runs per check).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from crisscross.preprocess.build import build_shards
from crisscross.shards.augment import (
    KINETICS_MEAN,
    KINETICS_STD,
    LOGMEL_STD,
    AudioAugment,
    RecordedDraws,
    VideoAugment,
    unpack_draws,
)
from crisscross.shards.loader import LoaderConfig, build_train_loader, find_shards
from crisscross.shards.pipelines import ReaderSpec, build_pipeline, plan_graph, split_plan, work_graph
from crisscross.tools.demo_data import write_av_file

Z = 4.5  # standard errors allowed by the statistical checks

# Table S1 (visual) and S2 (audio); aspect ratio and blur sigma are the torchvision/SimCLR values
# the supplement refers to. Written out here, not read from the defaults, so a changed default fails.
UNIFORM = {
    "video.crop_area": (0.08, 1.0),
    "video.crop_log_ratio": (math.log(3 / 4), math.log(4 / 3)),
    "video.brightness": (0.6, 1.4),
    "video.contrast": (0.6, 1.4),
    "video.saturation": (0.6, 1.4),
    "video.hue": (-72.0, 72.0),  # hue = 0.2 of the circle, in degrees
    "video.blur_sigma": (0.1, 2.0),
    "audio.volume": (0.8, 1.2),
    "audio.crop_freq_scale": (0.6, 1.5),
    "audio.crop_time_scale": (0.6, 1.5),
}
COIN = {"video.flip": 0.5, "video.color_jitter": 1.0, "video.grayscale": 0.2, "video.blur": 0.5}
# integer parameters drawn as floor(U(lo, hi + 1)): cutout side 1..20, mask widths 0..10 / 0..20
INTEGER = {"video.cutout_side": (1, 20), "audio.freq_mask_width": (0, 10), "audio.time_mask_width": (0, 20)}
# draws per view: one cutout, two frequency masks, two time masks (Table S2: num = 2)
PER_VIEW = {"video.cutout_side": 1, "audio.freq_mask_width": 2, "audio.time_mask_width": 2}

NO_VIDEO = {"crop": False, "flip": False, "color_jitter": False, "grayscale": False, "blur": False, "cutout": False}
NO_AUDIO = {"volume": False, "freq_mask": False, "time_mask": False, "random_crop": False}
CLIPS = 8
SIZE = 112  # shard frames are 112 x 112: with the crop off, a 112 crop is the whole frame


# ----------------------------------------------------------------------------- data


def _write_clips(root: Path, name: str, images: list[np.ndarray]) -> Path:
    """One 2 s static clip per image (16 fps MJPEG) with white-noise audio; shards of them."""
    src = root / "src"
    src.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, image in enumerate(images):
        audio = (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)
        write_av_file(src / f"{name}{i}.mp4", (image for _ in range(32)), audio, fps=16, sample_rate=16000, video_codec="mjpeg")
    build_shards(src, root / "shards", name=name, progress=False)
    return root / "shards"


def _blocks(rng: np.random.Generator) -> np.ndarray:
    """7 x 7 blocks of 16 px in strong, random colours (survive JPEG; never grey)."""
    hue = rng.uniform(0, 1, size=(7, 7))
    rgb = np.stack([0.5 + 0.35 * np.cos(2 * np.pi * (hue - k / 3)) for k in range(3)], axis=-1)
    return np.kron((255 * rgb).astype(np.uint8), np.ones((16, 16, 1), dtype=np.uint8))


@pytest.fixture(scope="module")
def block_shards(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    return _write_clips(tmp_path_factory.mktemp("recipe_blocks"), "blocks", [_blocks(rng) for _ in range(CLIPS)])


@pytest.fixture(scope="module")
def gradient_shards(tmp_path_factory) -> Path:
    """Red grows with x, green with y: a crop box's position and size can be read off its pixels."""
    ramp = np.linspace(0, 255, SIZE)
    image = np.stack([np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)), np.full((SIZE, SIZE), 128.0)], axis=-1)
    return _write_clips(tmp_path_factory.mktemp("recipe_gradient"), "gradient", [image.round().astype(np.uint8)] * CLIPS)


def _config(shards: Path, video: dict | None = None, audio: dict | None = None, **overrides) -> dict:
    cfg = {"shards": str(shards), "frames": 2, "crop": SIZE, "audio_seconds": 1.0, "relaxation": "none",
           "shuffle_buffer": CLIPS, "augment": {"video": video if video is not None else {},
                                                "audio": audio if audio is not None else {}}}
    cfg.update(overrides)
    return cfg


# ----------------------------------------------------------------------------- draws from the plan graph


def _plan_draws(shards: Path, cfg: dict, *, batch: int, runs: int) -> dict[str, np.ndarray]:
    """Every recorded draw of ``runs`` plan-pipeline batches, by parameter name (both views)."""
    spec = LoaderConfig.from_dict(cfg).graph_spec()
    draws = RecordedDraws()
    build_pipeline(lambda: work_graph(spec, draws, "cpu"), device="cpu", batch_size=batch, num_threads=1,
                   device_id=None, seed=0)  # records the draw specs, as the loader does
    found = find_shards(shards)
    reader = ReaderSpec(paths=found.tars, index_paths=found.indexes, shuffle=True, shuffle_buffer=CLIPS)
    plan = build_pipeline(lambda: plan_graph(spec, reader, draws.specs), device="cpu", batch_size=batch,
                          num_threads=1, device_id=None, seed=3)
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    for _ in range(runs):
        _, packed = split_plan(plan.run())
        packed = packed.as_array()
        assert packed.shape == (batch, sum(max(d.size, 1) for d in draws.specs))
        for draw_spec, batch_values in zip(draws.specs, unpack_draws(packed, draws.specs)):
            values[draw_spec.name].append(batch_values.reshape(batch, -1))
    return {name: np.concatenate(v, axis=1).ravel() for name, v in values.items()}


def _assert_uniform(name: str, x: np.ndarray, lo: float, hi: float) -> None:
    n = len(x)
    tol = 1e-5 * max(abs(lo), abs(hi), 1.0)  # float32 draws
    assert x.min() >= lo - tol and x.max() <= hi + tol, (name, x.min(), x.max())
    # both ends reached: P(no draw within 10/n of an end) = e^-10 for a uniform
    assert x.min() < lo + 10 * (hi - lo) / n and x.max() > hi - 10 * (hi - lo) / n, (name, x.min(), x.max())
    assert stats.kstest(x, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-5, name


def _assert_rate(name: str, hits: int, n: int, p: float) -> None:
    tolerance = Z * math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= tolerance, f"{name}: {hits}/{n} = {hits / n:.3f}, expected {p} +- {tolerance:.3f}"


def test_every_recipe_parameter_is_drawn_as_the_paper_says(block_shards):
    batch, runs = 64, 16
    cfg = _config(block_shards, video={"grayscale": True, "blur": True}, relaxation="mild")
    values = _plan_draws(block_shards, cfg, batch=batch, runs=runs)
    samples = batch * runs
    views = 2 * samples
    # every augmentation of the recipe is drawn (and time warp is off in pretraining, Table S4)
    assert set(UNIFORM) | set(COIN) | set(INTEGER) <= set(values)
    assert not any(name.startswith("audio.time_warp") for name in values)
    for name, (lo, hi) in UNIFORM.items():
        x = values[name]
        assert len(x) == views * (10 if name.startswith("video.crop_") else 1), name  # 10 crop attempts
        _assert_uniform(name, x, lo, hi)
    for name, p in COIN.items():
        x = values[name]
        assert len(x) == views and set(np.unique(x)) <= {0.0, 1.0}, name
        _assert_rate(name, int(x.sum()), views, p)
    for name, (lo, hi) in INTEGER.items():
        x = np.floor(values[name]).astype(int)  # as the graph floors it
        assert len(x) == views * PER_VIEW[name], name
        assert set(np.unique(x)) == set(range(lo, hi + 1)), name  # every value, nothing outside
        counts = np.bincount(x - lo)
        assert stats.chisquare(counts).pvalue > 1e-5, name


# ----------------------------------------------------------------------------- outputs of the loader


def _views(cfg: dict, *, batches: int, seed: int = 0) -> list[dict]:
    """``batches`` batches of the real training loader (epochs of one batch of all clips)."""
    loader = build_train_loader(cfg, batch_size=CLIPS, seed=seed)
    out: list[dict] = []
    while len(out) < batches:
        out.extend(loader)
    return out[:batches]


def _pixels(video: torch.Tensor) -> np.ndarray:
    """[3,T,H,W] normalized -> [T,H,W,3] in 0..255."""
    mean = torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(3, 1, 1, 1)
    return ((video * std + mean) * 255.0).permute(1, 2, 3, 0).numpy()


def _each_view(batches: list[dict], modality: str = "v"):
    for batch in batches:
        for b, key in enumerate(batch["key"]):
            for view in (1, 2):
                yield key, batch["times"][b], batch[f"{modality}{view}"][b]


def _paired(plain_cfg: dict, cfg: dict, *, batches: int):
    """(plain, augmented) views of the same clip, window and frames: two loaders with the same seed
    read the same clips at the same times (the view times are drawn before any augmentation
    parameter), so the plain one is an exact reference. Shard frames of a static clip are not
    bit-identical over time (JPEG), hence a reference per view rather than per clip."""
    plain, augmented = _views(plain_cfg, batches=batches), _views(cfg, batches=batches)
    for ref, batch in zip(plain, augmented):
        assert ref["key"] == batch["key"] and torch.equal(ref["times"], batch["times"])
        for b in range(len(batch["key"])):
            for view in ("v1", "v2"):
                yield _pixels(ref[view][b]), _pixels(batch[view][b])


def test_crop_area_and_aspect_on_the_output(gradient_shards):
    """The box is read off the gradient: red/green change by 255/111 per source pixel, so the
    slope of the output's red (green) profile gives the box's width (height) in source pixels."""
    crop = 64
    batches = _views(_config(gradient_shards, video=dict(NO_VIDEO, crop=True), audio=NO_AUDIO, crop=crop), batches=24)
    areas, ratios = [], []
    per_pixel = 255.0 / (SIZE - 1)
    for _, _, video in _each_view(batches):
        frame = _pixels(video)[0]
        columns, rows = frame[:, :, 0].mean(axis=0), frame[:, :, 1].mean(axis=1)
        width = np.polyfit(np.arange(crop), columns, 1)[0] * crop / per_pixel
        height = np.polyfit(np.arange(crop), rows, 1)[0] * crop / per_pixel
        areas.append(width * height / SIZE**2)
        ratios.append(width / height)
    areas, ratios = np.array(areas), np.array(ratios)
    # rounding the box to whole pixels (and JPEG) moves the measured area by a few percent
    assert areas.min() >= 0.08 * 0.9 and areas.max() <= 1.03, (areas.min(), areas.max())
    assert ratios.min() >= 0.75 / 1.06 and ratios.max() <= 4 / 3 * 1.06, (ratios.min(), ratios.max())
    assert areas.min() < 0.2 and areas.max() > 0.9  # the whole range is used, small boxes included
    assert (ratios < 0.85).any() and (ratios > 1.15).any()  # both orientations


def _yiq_chroma(pixels: np.ndarray) -> np.ndarray:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return (0.596 * r - 0.274 * g - 0.322 * b) + 1j * (0.211 * r - 0.523 * g + 0.312 * b)


def test_hue_rotation_on_the_output(block_shards):
    """Colour jitter with only the hue on: the output's chroma is the input's rotated by the drawn
    angle, which is uniform within +-72 degrees (hue = 0.2)."""
    video = dict(NO_VIDEO, color_jitter=True, brightness=0.0, contrast=0.0, saturation=0.0)
    angles = []
    for plain, view in _paired(_config(block_shards, video=NO_VIDEO, audio=NO_AUDIO),
                               _config(block_shards, video=video, audio=NO_AUDIO), batches=16):
        rotation = np.sum(np.conj(_yiq_chroma(plain)) * _yiq_chroma(view))
        angles.append(abs(math.degrees(np.angle(rotation))))
    angles = np.array(angles)
    assert angles.max() <= 72.0 + 3.0, angles.max()  # gamut clipping moves the estimate a little
    assert angles.max() > 60.0 and angles.min() < 10.0
    # |U(-72, 72)| is U(0, 72): mean 36
    assert abs(angles.mean() - 36.0) <= Z * 72 / math.sqrt(12 * len(angles)) + 2.0, angles.mean()


def test_grayscale_rate_with_every_augmentation_on(block_shards):
    """Full Table S1 recipe (grayscale and blur on): a view is grey (R = G = B) with p = 0.2."""
    batches = _views(_config(block_shards, video={"grayscale": True, "blur": True}, audio=NO_AUDIO), batches=24)
    grey = n = 0
    for _, _, view in _each_view(batches):
        pixels = _pixels(view)
        spread = np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).max()
        grey += spread < 2.0
        n += 1
    _assert_rate("grayscale", grey, n, 0.2)


def _blur_sigma(reference: np.ndarray, blurred: np.ndarray) -> float:
    """The sigma (11-tap Gaussian, as the graph) that best turns ``reference`` into ``blurred``."""
    inner = (slice(8, -8), slice(8, -8))
    best, best_error = 0.0, np.mean((reference - blurred)[inner] ** 2)
    for sigma in np.arange(0.3, 3.0, 0.05):
        taps = np.exp(-0.5 * (np.arange(-5, 6) / sigma) ** 2)
        taps /= taps.sum()
        smooth = ndimage.convolve1d(ndimage.convolve1d(reference, taps, axis=0), taps, axis=1)
        error = np.mean((smooth - blurred)[inner] ** 2)
        if error < best_error:
            best, best_error = float(sigma), error
    return best


def test_blur_rate_and_sigma_on_the_output(block_shards):
    """Blur alone with sigma restricted to [1, 2] so that every blurred view is visibly blurred:
    the rate is p = 0.5 and the sigma measured on the output lies in the configured range."""
    video = dict(NO_VIDEO, blur=True, blur_sigma=[1.0, 2.0])
    sigmas = []
    for plain, view in _paired(_config(block_shards, video=NO_VIDEO, audio=NO_AUDIO),
                               _config(block_shards, video=video, audio=NO_AUDIO), batches=16):
        sigmas.append(np.mean([_blur_sigma(plain[0][..., c], view[0][..., c]) for c in range(3)]))
    sigmas = np.array(sigmas)
    blurred = sigmas > 0.5
    _assert_rate("blur", int(blurred.sum()), len(sigmas), 0.5)
    assert np.all((sigmas[blurred] >= 0.9) & (sigmas[blurred] <= 2.1)), sigmas[blurred]
    assert sigmas[blurred].min() < 1.2 and sigmas[blurred].max() > 1.8
    assert np.all(sigmas[~blurred] == 0.0)  # the others are untouched


def test_cutout_side_on_the_output(block_shards):
    """One square hole per view, side 1..20 (uniform), the same in every frame."""
    sides = []
    for plain, view in _paired(_config(block_shards, video=NO_VIDEO, audio=NO_AUDIO),
                               _config(block_shards, video=dict(NO_VIDEO, cutout=True), audio=NO_AUDIO), batches=24):
        holes = np.abs(view - plain).max(axis=-1) > 1.0  # [T, H, W]
        assert np.array_equal(holes[0], holes[1])  # the same hole in every frame of the view
        changed = holes[0]
        ys, xs = np.nonzero(changed)
        assert len(ys), "every view has a hole"
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert height <= 20 and width <= 20, (height, width)
        inside = ys.min() > 0 and xs.min() > 0 and ys.max() < SIZE - 1 and xs.max() < SIZE - 1
        if inside:  # not clipped by the border: a square
            assert height == width
            sides.append(height)
    sides = np.array(sides)
    assert len(sides) > 200 and sides.max() == 20 and sides.min() <= 2
    assert abs(sides.mean() - 10.5) <= Z * math.sqrt((20**2 - 1) / 12 / len(sides)) + 0.5, sides.mean()


def test_mask_widths_on_the_output(block_shards):
    """Frequency and time masks alone, one of each per view so that a masked band is one mask:
    widths 0..10 mel bands and 0..20 frames, uniform (the number of masks, 2, is checked on the draws)."""
    audio = dict(NO_AUDIO, freq_mask=True, time_mask=True, freq_mask_num=1, time_mask_num=1)
    batches = _views(_config(block_shards, video=NO_VIDEO, audio=audio), batches=24)
    freq, time = [], []
    for _, _, spec in _each_view(batches, "a"):
        zero = spec[0].numpy() == 0.0  # masks fill with 0 (the normalized mean)
        freq.append(int(zero.all(axis=1).sum()))
        time.append(int(zero.all(axis=0).sum()))
    for name, widths, top in (("freq", np.array(freq), 10), ("time", np.array(time), 20)):
        assert widths.min() == 0 and widths.max() == top, (name, widths.min(), widths.max())
        assert abs(widths.mean() - top / 2) <= Z * math.sqrt(((top + 1) ** 2 - 1) / 12 / len(widths)), (name, widths.mean())


def test_volume_gain_on_the_output(block_shards):
    """Volume jitter alone: the log-mel moves by 2 ln(gain) / std everywhere, gain in [0.8, 1.2].
    The reference is the same loader without the jitter (same seed: same clips, same windows)."""
    plain = _views(_config(block_shards, video=NO_VIDEO, audio=NO_AUDIO), batches=12)
    jittered = _views(_config(block_shards, video=NO_VIDEO, audio=dict(NO_AUDIO, volume=True)), batches=12)
    gains = []
    for ref, batch in zip(plain, jittered):
        assert ref["key"] == batch["key"] and torch.equal(ref["times"], batch["times"])
        for view in ("a1", "a2"):
            for b in range(len(batch["key"])):
                shift = float((batch[view][b] - ref[view][b]).median())
                gains.append(math.exp(shift * LOGMEL_STD / 2))
    gains = np.array(gains)
    assert gains.min() >= 0.8 - 2e-3 and gains.max() <= 1.2 + 2e-3, (gains.min(), gains.max())
    assert gains.min() < 0.83 and gains.max() > 1.17
    assert stats.kstest(gains, stats.uniform(0.8, 0.4).cdf).pvalue > 1e-5


def test_defaults_are_the_paper_recipe():
    """Settings that are not draws: which augmentations run, how many masks, the crop canvas."""
    video, audio = VideoAugment(), AudioAugment()
    assert all(getattr(video, k) for k in ("crop", "flip", "color_jitter", "grayscale", "blur", "cutout"))
    assert video.blur_kernel == 11 and video.cutout_max_size == 20
    assert audio.volume and audio.freq_mask and audio.time_mask and audio.random_crop and not audio.time_warp
    assert (audio.freq_mask_num, audio.time_mask_num) == (2, 2)
    assert audio.crop_virtual_scale == (1.0, 1.5)

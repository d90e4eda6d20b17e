"""The official CrissCross pretraining loader, run from the user's own checkout of
github.com/pritamqu/CrissCross: the check that the faithful anchor (``tools/loader_anchor.py``)
costs what the official code costs (``crisscross bench loader --official DIR``).

Nothing of the official code is in this project: ``DIR`` is the directory that holds
``crisscross/train/datasets``, and its ``datasets`` package is imported from there at run time.
What runs is its pretext ``VideoDataset`` in mode ``two_clips`` / ``overlapped`` with the ``strong``
video and audio transforms and the arguments of ``train/configs/pretext/kinetics400/crisscross.yaml``
(0.5 s of video at 16 fps, 2 s of audio at 16 kHz, crop 112, 80 mel bands, hop 160, n_fft 1024),
on the same source files the anchor reads.

The official code (2023) was written for torchvision < 0.15 and PyAV < 9. Compatibility shims,
applied in the process that imports it and scoped to the official modules where they can be:

* ``torchvision.transforms.functional_pil`` / ``functional_tensor``: torchvision 0.17 renamed them
  ``_functional_pil`` / ``_functional_tensor``; the official ``torchvision_functional`` imports the
  old names. Registered in ``sys.modules`` as thin modules that forward to the new ones (torchvision
  itself is not changed: the old names do not exist there any more).
* ``functional_pil.resize`` taking a tuple: the official resize passes ``(h, w)`` tuples, today's
  PIL resize accepts only a list; the forwarding module's ``resize`` turns a tuple into a list.
* PyAV >= 9's ``AudioResampler.resample`` returns a list of frames, where the official audio reader
  calls ``.to_ndarray()`` on the one frame PyAV < 9 returned: the official ``av_wrappers`` module
  sees a resampler whose ``resample`` joins the list into one ``[1, n]`` int16 array (the same
  samples; ``av`` itself is not changed).
* ``cv2``: the official video transforms import OpenCV for a numpy resize path the PIL pipeline
  never takes. When OpenCV is not installed, an empty stand-in module is present only while the
  official modules import.
* ``av.logging.set_level(0)``, run by the official module on import, is undone after the import.

Measurements, like the anchor's: per-stage CPU ms per clip in one spawned process with one
OMP/BLAS/MKL thread (``stage_profile``), and a torch DataLoader with spawned workers started under
one OMP/BLAS/MKL thread, CPU counted per worker over the timed batches only (``run_official``).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crisscross.errors import UserError

# what must exist under DIR (the dataset class and the transform factories)
OFFICIAL_FILES = ("crisscross/train/datasets/loader/backend_pretext/video_db.py",
                  "crisscross/train/datasets/augmentations/__init__.py")
# train/configs/pretext/kinetics400/crisscross.yaml, dataset section
VIDEO_CLIP_SECONDS, VIDEO_FPS, CROP = 0.5, 16.0, 112
AUDIO_CLIP_SECONDS, AUDIO_FPS, AUDIO_FPS_OUT = 2, 16000.0, 100
N_MELS, HOP_LENGTH, N_FFT = 80, 160, 1024
VIDEO_AUG_KWARGS = dict(color=[0.4, 0.4, 0.4, 0.2], min_area=0.08, cutout_size=20, num_of_cutout=1, p_flip=0.5,
                        p_gray=0.2, p_blur=0.5, p_cutout=1.0, pad_missing=False, normalize=True, totensor=True)
AUDIO_AUG_KWARGS = dict(vol=0.2, fmask_len=[0, 10], tmask_len=[0, 20], num_fmask=2, num_tmask=2, wrap_window=20,
                        voljitter=True, timewarp=False, fmask=True, tmask=True, randcrop=True, normalize=True,
                        trim_pad=True)
# only the dataset's length (index % sources picks the file): long enough for any benchmark run
CLIPS_PER_VIDEO = 10**6


class OfficialCodeNotFound(UserError):
    """``--official DIR`` does not hold the official CrissCross code."""


def official_train_dir(root: str | os.PathLike) -> Path:
    """``DIR/crisscross/train`` (the official ``datasets`` package's parent), or a one-line error."""
    root = Path(root).expanduser().resolve()
    for name in OFFICIAL_FILES:
        if not (root / name).is_file():
            raise OfficialCodeNotFound(
                f"{root} is not a checkout of github.com/pritamqu/CrissCross: {name} not found there "
                "(give the directory that contains crisscross/train/datasets)")
    return root / "crisscross" / "train"


# ----------------------------------------------------------------------------- shims


def _forwarding_module(name: str, target: types.ModuleType, **overrides: Any) -> types.ModuleType:
    """A module called ``name`` whose attributes are ``target``'s, except ``overrides``."""
    module = types.ModuleType(name, f"forwards to {target.__name__} (official CrissCross compatibility)")
    module.__getattr__ = lambda attr: getattr(target, attr)  # PEP 562: everything not set here
    module.__dict__.update(overrides)
    return module


def _torchvision_old_names() -> None:
    """The pre-0.17 torchvision module names the official transforms import, forwarding to the new ones."""
    from torchvision.transforms import _functional_pil as pil
    from torchvision.transforms import _functional_tensor as tensor

    def resize(img, size, *args, **kwargs):  # official code passes (h, w) tuples; PIL path wants a list
        return pil.resize(img, list(size) if isinstance(size, tuple) else size, *args, **kwargs)

    sys.modules.setdefault("torchvision.transforms.functional_pil",
                           _forwarding_module("torchvision.transforms.functional_pil", pil, resize=resize))
    sys.modules.setdefault("torchvision.transforms.functional_tensor",
                           _forwarding_module("torchvision.transforms.functional_tensor", tensor))


class _JoinedFrames:
    """What PyAV < 9's ``resample`` returned, as far as the official reader uses it."""

    def __init__(self, frames: list):
        self.frames = frames

    def to_ndarray(self):
        import numpy as np

        arrays = [frame.to_ndarray() for frame in self.frames]  # s16p mono: [1, n] each
        return np.concatenate(arrays, axis=1) if arrays else np.zeros((1, 0), np.int16)


class _OneFrameResampler:
    """PyAV's resampler with the pre-9 ``resample`` (one result per input frame)."""

    def __init__(self, *args: Any, **kwargs: Any):
        import av

        self.resampler = av.AudioResampler(*args, **kwargs)

    def resample(self, frame) -> _JoinedFrames:
        return _JoinedFrames(self.resampler.resample(frame))


def _av_for_official() -> types.ModuleType:
    """``av`` as the official audio reader sees it: ``av.audio.resampler.AudioResampler`` is the
    pre-9 style resampler, everything else is ``av``."""
    import av

    resampler = types.SimpleNamespace(AudioResampler=_OneFrameResampler)
    audio = _forwarding_module("av.audio", av.audio, resampler=resampler)
    return _forwarding_module("av", av, audio=audio)


@contextlib.contextmanager
def _official_imports(train_dir: Path) -> Iterator[None]:
    """The official ``datasets`` package importable (its code imports itself as ``datasets``), and
    OpenCV stood in for while it imports when absent."""
    loaded = sys.modules.get("datasets")
    if loaded is not None and Path(str(getattr(loaded, "__file__", ""))).resolve().parent.parent != train_dir:
        raise RuntimeError(f"a module 'datasets' is already imported from {getattr(loaded, '__file__', '?')}; "
                           f"the official code under {train_dir} cannot be imported in this process")
    stand_in = None
    try:
        import cv2  # noqa: F401
    except ImportError:
        stand_in = sys.modules["cv2"] = types.ModuleType("cv2", "stand-in: the official PIL path never calls OpenCV")
    sys.path.insert(0, str(train_dir))
    try:
        yield
    finally:
        sys.path.remove(str(train_dir))
        if stand_in is not None and sys.modules.get("cv2") is stand_in:
            del sys.modules["cv2"]


def load_official(root: str | os.PathLike) -> types.SimpleNamespace:
    """Import the official dataset class, transform factories and PyAV reader from ``root`` with
    the shims above: ``.VideoDataset``, ``.get_vid_aug``, ``.get_aud_aug``, ``.av_wrappers``."""
    import av

    train_dir = official_train_dir(root)
    _torchvision_old_names()
    level = av.logging.get_level()
    with _official_imports(train_dir):
        from datasets.augmentations import audio_augmentations, get_aud_aug, get_vid_aug, video_augmentations  # noqa: F401 (imported lazily by the factories)
        from datasets.loader.backend_pretext import av_wrappers, video_db
    av.logging.set_level(level)
    av_wrappers.av = _av_for_official()
    return types.SimpleNamespace(VideoDataset=video_db.VideoDataset, get_vid_aug=get_vid_aug, get_aud_aug=get_aud_aug,
                                 av_wrappers=av_wrappers)


# ----------------------------------------------------------------------------- dataset


def _roots(paths: list[str]) -> tuple[str, list[str]]:
    """(root, names relative to it): the official dataset joins the two."""
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return root, [os.path.relpath(p, root) for p in absolute]


def official_dataset(official, paths: list[str]):
    """The official pretext dataset over ``paths`` with the Kinetics-400 CrissCross arguments."""
    video_transform = official.get_vid_aug("strong", crop_size=CROP, num_frames=VIDEO_CLIP_SECONDS * VIDEO_FPS,
                                           mode="train", aug_kwargs=dict(VIDEO_AUG_KWARGS))
    audio_transform = official.get_aud_aug("strong", audio_fps=AUDIO_FPS, n_fft=N_FFT, n_mels=N_MELS,
                                           duration=AUDIO_CLIP_SECONDS, hop_length=HOP_LENGTH, mode="train",
                                           aug_kwargs=dict(AUDIO_AUG_KWARGS))
    root, names = _roots(paths)
    return official.VideoDataset(
        return_video=True, video_root=root, video_fns=names, video_clip_duration=VIDEO_CLIP_SECONDS,
        video_fps=VIDEO_FPS, video_transform=video_transform, return_audio=True, audio_root=root, audio_fns=names,
        audio_clip_duration=AUDIO_CLIP_SECONDS, audio_fps=AUDIO_FPS, audio_fps_out=AUDIO_FPS_OUT,
        audio_transform=audio_transform, return_labels=False, return_index=False, mode="two_clips",
        submode="overlapped", clips_per_video=CLIPS_PER_VIDEO, max_offsync_augm=0)


class OfficialDataset:
    """The official dataset as a picklable torch map dataset: a spawned worker gets the path of the
    official code and the sources, and imports and builds it there (with the shims)."""

    def __init__(self, root: str | os.PathLike, paths: list[str]):
        official_train_dir(root)
        self.root, self.paths = str(root), list(paths)
        self._dataset = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _dataset=None)

    def __len__(self) -> int:  # the official __len__, without importing the official code here
        return len(self.paths) * CLIPS_PER_VIDEO

    def dataset(self):
        if self._dataset is None:
            self._dataset = official_dataset(load_official(self.root), self.paths)
        return self._dataset

    def __getitem__(self, item: int) -> dict[str, Any]:
        return dict(self.dataset()[item])  # the official item is a defaultdict


# ----------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _timed_stages(official, dataset, totals: dict[str, float]) -> Iterator[None]:
    """Add each stage's CPU seconds (this process, PyAV's threads included) to ``totals`` while
    inside: opening + video decode, audio decode + resample, video and audio transforms."""
    def timed(name: str, function: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.process_time() - start
        return run

    wrappers = official.av_wrappers
    saved = (wrappers.av_open, wrappers.av_load_video, wrappers.av_laod_audio,
             dataset.video_transform, dataset.audio_transform)
    wrappers.av_open = timed("video_decode", wrappers.av_open)  # the anchor counts opening there too
    wrappers.av_load_video = timed("video_decode", wrappers.av_load_video)
    wrappers.av_laod_audio = timed("audio_decode", wrappers.av_laod_audio)  # sic: the official name
    dataset.video_transform = timed("video_aug", dataset.video_transform)
    dataset.audio_transform = timed("audio_aug", dataset.audio_transform)
    try:
        yield
    finally:
        (wrappers.av_open, wrappers.av_load_video, wrappers.av_laod_audio,
         dataset.video_transform, dataset.audio_transform) = saved


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_official() -> None:
    """The official ClipToTensor reads pixels through ``torch.ByteStorage``, which today's torch
    warns about once per process: not worth a line per worker."""
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")


def _stage_profile(root: str, paths: list[str], clips: int, seed: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    _quiet_official()
    official = load_official(root)
    dataset = official_dataset(official, paths)
    _seed(seed)
    dataset[10**6]  # imports and first calls outside the figures
    totals: dict[str, float] = {}
    with _timed_stages(official, dataset, totals):
        start = time.process_time()
        for item in range(clips):
            dataset[item]
        totals["total"] = time.process_time() - start
    order = ("video_decode", "audio_decode", "video_aug", "audio_aug", "total")  # the anchor's order
    return {name: round(1e3 * totals[name] / clips, 1) for name in order}


def stage_profile(root: str | os.PathLike, paths: list[str], *, clips: int = 16, seed: int = 0) -> dict[str, float]:
    """CPU ms per clip of the official loader by stage (video_decode with opening the file,
    audio_decode with resampling, video_aug, audio_aug) and in all (``total``: the whole item), in
    one spawned process with one OMP/BLAS/MKL thread, as ``loader_anchor.stage_profile``."""
    import concurrent.futures
    import multiprocessing

    from crisscross.tools.loader_anchor import one_thread_environment

    official_train_dir(root)  # the error here, not in the child
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with one_thread_environment():  # the pool starts its process on the first submit
            future = pool.submit(_stage_profile, str(root), list(paths), clips, seed)
        return future.result()


def _worker_init(_: int) -> None:
    import atexit

    import torch

    torch.set_num_threads(1)
    _quiet_official()
    # A worker of the official dataset sometimes aborts in C++ teardown at interpreter exit
    # ("terminate called without an active exception", after its batches were delivered), which
    # the DataLoader then reports as a killed worker. Nothing is left to save in a measuring
    # worker at exit, so it leaves without the interpreter's teardown.
    atexit.register(os._exit, 0)


def run_official(root: str | os.PathLike, paths: list[str], *, batch_size: int, batches: int, workers: int,
                 seed: int = 0) -> dict[str, float]:
    """Time ``batches`` batches of the official dataset in a torch DataLoader exactly as the anchor
    is timed (``loader_anchor.time_dataloader``: spawned workers started with one OMP/BLAS/MKL
    thread, a warm-up of two batches per worker, CPU = each worker's /proc delta over the timed
    batches plus the collecting thread)."""
    import torch

    from crisscross.tools.loader_anchor import time_dataloader

    torch.manual_seed(seed)  # the workers' base seed
    return time_dataloader(OfficialDataset(root, paths), batch_size=batch_size, batches=batches, workers=workers,
                           worker_init=_worker_init)


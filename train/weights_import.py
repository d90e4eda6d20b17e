"""Import released checkpoints (CrissCross, AVID-CMA, GDT) into the export format (docs/weights.md).

The parameter names and shapes below were derived by reading the official model definitions; no
official code is used or copied:

* CrissCross (github.com/pritamqu/CrissCross, ``evaluate/models/backbones/{video,audio}.py``):
  the release is two files, ``vid_crisscross_*.pth.tar`` and ``aud_crisscross_*.pth.tar`` (each
  possibly inside a ``.zip``), each the plain ``state_dict()`` of one backbone: ``R2Plus1D``
  (``conv1.{0,1}``, ``conv{2..5}x.{j}.{spt,tmp}_{conv,bn}{1,2}``, ``out_bn``, ``res_conv``) and
  ``ResNet`` (``conv1.{0,1}``, ``block{1..4}.{j}`` = torchvision ``BasicBlock``). Its training
  checkpoint (``checkpoint.pth.tar``: ``{"model": DDP state dict}``) is accepted too.
* AVID-CMA (github.com/facebookresearch/AVID-CMA, ``models/{video,audio,av_wrapper}.py``): one file
  ``{"epoch", "model", "optimizer", "train_criterion"}``; ``model`` is a DataParallel state dict of
  ``AV_Wrapper``: ``module.video_model.*`` (the same ``R2Plus1D`` as CrissCross, max-pooled),
  ``module.audio_model.*`` (``Conv2D``: ``conv1.{0,1}``, ``block{1..4}.{conv,bn}{1,2}``) and the
  projection heads ``module.{video,audio}_proj.*``.
* GDT (github.com/facebookresearch/GDT, ``model.py``, ``src/vmz.py``, ``src/resnet.py``): one file
  ``{"model", "optimizer", "lr_scheduler", "epoch", "args"}``; ``model`` holds
  ``video_network.base.*`` (torchvision-style ``r2plus1d_18``: ``stem``, ``layer{1..4}``,
  ``downsample``), ``audio_network.base.*`` (a torchvision ResNet with [1,1,1,1] blocks, 1-channel
  ``conv1``, whose unused ``fc`` classifier stays in the state dict) and heads ``mlp_{v,a}.*``.

Every key of the chosen state dict is either mapped onto a parameter/buffer of our encoder (with
its shape checked) or belongs to a documented group that is not imported (projection heads, a
classifier the forward pass never uses, aliases of the same tensors); anything else, and any
parameter of ours left without a value, is an error that lists the keys.
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crisscross.train.models import ModelConfig, build_audio_encoder, build_video_encoder

RELEASES = ("crisscross", "avid-cma", "gdt")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
GDT_MEAN = [0.45, 0.45, 0.45]
GDT_STD = [0.225, 0.225, 0.225]


class WeightsImportError(ValueError):
    """A release file that cannot be imported; the message says why and what to do."""


# ------------------------------------------------------------------------------- reading files
def _torch_load(source: Any, name: str, trust_pickle: bool) -> Any:
    """torch.load, restricted to tensors and plain containers unless the user trusts the file."""
    if trust_pickle:
        return torch.load(source, map_location="cpu", weights_only=False)
    try:
        # argparse.Namespace (GDT stores its args) is a plain attribute bag: safe to rebuild
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise WeightsImportError(f"{name}: corrupt or truncated PyTorch file ({exc})") from exc
        detail = str(exc).split("\n")[0:4]
        raise WeightsImportError(
            f"{name}: the file holds Python objects beyond tensors and plain containers, so it cannot be "
            f"loaded with torch.load(weights_only=True) ({' '.join(d.strip() for d in detail)}). Unpickling "
            "it can run arbitrary code: if you obtained it from the official release and trust it, "
            "rerun with --trust-pickle") from exc


def read_release_file(path: str | Path, trust_pickle: bool = False) -> Any:
    """The object saved in a release file: a torch ``.pth``/``.pth.tar`` (zip or legacy format), or
    a ``.zip`` archive holding exactly one such file (how the CrissCross release ships them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no release file at {path}")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise WeightsImportError(f"{path}: empty file")
    if head.startswith(b"PK"):
        return _read_zip(path, trust_pickle)
    if head[:1] != b"\x80":  # torch's legacy format starts with a pickle protocol-2+ opcode
        raise WeightsImportError(f"{path}: not a PyTorch checkpoint (starts with {head!r}); expected the "
                                 "release's .pth/.pth.tar or the .zip that holds it")
    try:
        return _torch_load(str(path), str(path), trust_pickle)
    except WeightsImportError:
        raise
    except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsImportError(f"{path}: corrupt or truncated PyTorch file ({type(exc).__name__}: {exc})") from exc


def _read_zip(path: Path, trust_pickle: bool) -> Any:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            bad = archive.testzip()
            if bad is not None:
                raise WeightsImportError(f"{path}: member {bad} is corrupt (CRC mismatch)")
            if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                torch_file = True
            else:
                inner = [n for n in names if n.endswith((".pth", ".pth.tar", ".pt", ".tar"))]
                if len(inner) != 1:
                    raise WeightsImportError(f"{path}: a zip archive that is neither a PyTorch file nor holds "
                                             f"exactly one .pth/.pth.tar (members: {names[:10]})")
                torch_file, payload = False, archive.read(inner[0])
    except zipfile.BadZipFile as exc:
        raise WeightsImportError(f"{path}: corrupt or truncated zip archive ({exc})") from exc
    if torch_file:
        try:
            return _torch_load(str(path), str(path), trust_pickle)
        except WeightsImportError:
            raise
        except (EOFError, RuntimeError, OSError, ValueError) as exc:
            raise WeightsImportError(f"{path}: corrupt PyTorch file ({type(exc).__name__}: {exc})") from exc
    name = f"{path}!{inner[0]}"
    if not payload.startswith((b"PK", b"\x80")):
        raise WeightsImportError(f"{name}: not a PyTorch checkpoint")
    try:
        return _torch_load(io.BytesIO(payload), name, trust_pickle)
    except WeightsImportError:
        raise
    except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsImportError(f"{name}: corrupt or truncated PyTorch file ({type(exc).__name__}: {exc})") from exc


def state_dict_of(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint, without DataParallel's ``module.``."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:8] if isinstance(obj, dict) else []
        raise WeightsImportError(f"{name}: no state dict found (a {kind} with keys {keys}); expected a "
                                 "state dict or a checkpoint with a 'model'/'state_dict' entry")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


# ------------------------------------------------------------------------------- name mappings
_AVID_BLOCK = {"spt_conv1": "spatial1", "spt_bn1": "norm_s1", "tmp_conv1": "temporal1", "tmp_bn1": "norm_t1",
               "spt_conv2": "spatial2", "spt_bn2": "norm_s2", "tmp_conv2": "temporal2", "out_bn": "norm_out",
               "res_conv": "residual"}


def rename_avid_r2plus1d(key: str) -> str | None:
    """CrissCross/AVID ``R2Plus1D`` -> ``VideoR2Plus1D`` (depth 10 has no block index)."""
    if m := re.fullmatch(r"conv1\.([01])\.(.+)", key):
        return f"stem.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"conv([2-5])x\.(?:(\d+)\.)?(\w+)\.(\w+)", key):
        if m[3] in _AVID_BLOCK:
            return f"stages.{int(m[1]) - 2}.{m[2] or 0}.{_AVID_BLOCK[m[3]]}.{m[4]}"
    return None


def rename_crisscross_resnet(key: str) -> str | None:
    """CrissCross ``ResNet`` (Sequential stem, ``blockN``) -> torchvision names of ``AudioResNet``."""
    if m := re.fullmatch(r"conv1\.([01])\.(.+)", key):
        return f"{'conv1' if m[1] == '0' else 'bn1'}.{m[2]}"
    if m := re.fullmatch(r"block([1-4])\.(\d+\..+)", key):
        return f"layer{m[1]}.{m[2]}"
    return None


def rename_avid_conv2d(key: str) -> str | None:
    """AVID-CMA ``Conv2D`` -> ``AudioAVIDConv2D``."""
    if m := re.fullmatch(r"conv1\.([01])\.(.+)", key):
        return f"stem.{m[1]}.{m[2]}"
    position = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4}
    if (m := re.fullmatch(r"block([1-4])\.(\w+)\.(\w+)", key)) and m[2] in position:
        return f"stages.{int(m[1]) - 1}.{position[m[2]]}.{m[3]}"
    return None


def rename_tv_r2plus1d(key: str) -> str | None:
    """torchvision/VMZ ``r2plus1d_18`` (GDT) -> ``VideoTVR2Plus1D``."""
    if key.startswith("stem."):
        return key
    if m := re.fullmatch(r"layer([1-4])\.(.+)", key):
        return f"stages.{int(m[1]) - 1}.{m[2].replace('downsample', 'residual')}"
    return None


def rename_torchvision_resnet(key: str) -> str | None:
    """GDT's torchvision ResNet-9: the names are already ours."""
    return key if re.match(r"(conv1|bn1|layer[1-4])\.", key) else None


# ------------------------------------------------------------------------------- releases
@dataclass
class Part:
    """One encoder inside a state dict: its key prefix and how its names map onto ours."""

    prefix: str
    rename: Callable[[str], str | None]
    unused: tuple[str, ...] = ()  # keys (after the prefix) that the official forward never uses


@dataclass
class Release:
    name: str
    model: dict[str, Any]                      # ModelConfig fields (width/blocks are inferred)
    input: dict[str, dict[str, Any]]           # backbones.json "input": what the evaluators reproduce
    frontend: dict[str, Any]                   # the rest of the official front end, differences
    parts: dict[str, Part]                     # "video"/"audio" -> where it is in the state dict
    heads: tuple[str, ...] = ()                # key prefixes of heads that are not imported
    aliases: dict[str, str] = field(default_factory=dict)  # prefix -> prefix holding the same tensors
    source: str = ""


# What each release was trained on. ``input`` uses backbones.json's keys (train/export.py, the data
# config's names) and is what the evaluators reproduce; ``frontend`` records the rest of the
# official front end and where this project's loaders differ from it (docs/weights.md).
CRISSCROSS_INPUT = {
    "video": {"frames": 8, "frame_stride": 1, "crop": 112, "fps": 16.0,
              "video_mean": IMAGENET_MEAN, "video_std": IMAGENET_STD},
    "audio": {"audio_seconds": 2.0, "sample_rate": 16000, "n_mels": 80, "n_fft": 1024, "hop": 160,
              "logmel_mean": -5.3688107, "logmel_std": 4.410007},
}
CRISSCROSS_FRONTEND = {
    "video": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "differences": []},  # input.video_mean/std apply it
    "audio": {"kind": "logmel", "log_eps": 1.1920928955078125e-07,
              "differences": ["log(mel + float32 eps 1.19e-7) instead of log(mel + 1e-6): differs on near-silent bins"]},
}
AVID_INPUT = {
    "video": {"frames": 8, "frame_stride": 1, "crop": 224, "fps": 16.0,
              "video_mean": IMAGENET_MEAN, "video_std": IMAGENET_STD},
    "audio": {"audio_seconds": 2.0, "sample_rate": 24000, "n_mels": 257, "n_fft": 1024, "hop": 240,
              "logmel_mean": 0.0, "logmel_std": 1.0},
}
AVID_FRONTEND = {
    "video": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "differences": []},  # input.video_mean/std apply it
    "audio": {"kind": "log_spectrogram", "layout": "time_freq", "supported_by_loaders": False,
              "differences": ["linear-frequency power spectrogram (STFT 1024, bins 1..512 averaged in pairs: 257 "
                              "bins), power_to_db(top_db=100), per-bin (x - mean) / (std + 1e-5) with AVID-CMA's "
                              "audio-spectDB-24k-513-norm-stats.npz, input laid out [1, time, freq]: not a log-mel; "
                              "n_mels above is its bin count. Audio evaluations of these weights are not faithful yet"]},
}
GDT_INPUT = {
    "video": {"frames": 30, "frame_stride": 1, "crop": 112, "fps": 30.0,
              "video_mean": GDT_MEAN, "video_std": GDT_STD},
    "audio": {"audio_seconds": 1.0, "sample_rate": 24000, "n_mels": 40, "n_fft": 1024, "hop": 240,
              "logmel_mean": 1.93, "logmel_std": 17.89},
}
GDT_FRONTEND = {
    "video": {"mean": GDT_MEAN, "std": GDT_STD, "differences": []},  # input.video_mean/std apply it
    "audio": {"kind": "logfbank", "supported_by_loaders": False,
              "differences": ["python_speech_features.logfbank: 20 ms rectangular window, pre-emphasis 0.97, HTK "
                              "mel filters, natural log without eps; approximated by the log-mel above. Audio "
                              "evaluations of these weights are not faithful yet"]},
}

RELEASE_DEFS: dict[str, Release] = {
    "crisscross": Release(
        "crisscross", {"video_arch": "crisscross", "audio_arch": "resnet", "video_pool": "avg"},
        CRISSCROSS_INPUT, CRISSCROSS_FRONTEND,
        # the two release files are imported separately (prefix ""); the training checkpoint has both
        {"video": Part("video_backbone.", rename_avid_r2plus1d), "audio": Part("audio_backbone.", rename_crisscross_resnet)},
        heads=("video_projector.", "video_predictor.", "audio_projector.", "audio_predictor."),
        aliases={"video_encoder.0.": "video_backbone.", "audio_encoder.0.": "audio_backbone.",
                 "video_encoder.2.": "video_projector.", "audio_encoder.2.": "audio_projector."},
        source="github.com/pritamqu/CrissCross evaluate/models/backbones/{video,audio}.py"),
    "avid-cma": Release(
        "avid-cma", {"video_arch": "crisscross", "audio_arch": "avid_conv2d", "video_pool": "max", "audio_pool": "max"},
        AVID_INPUT, AVID_FRONTEND,
        {"video": Part("video_model.", rename_avid_r2plus1d), "audio": Part("audio_model.", rename_avid_conv2d)},
        heads=("video_proj.", "audio_proj."),
        source="github.com/facebookresearch/AVID-CMA models/{video,audio,network_blocks,av_wrapper}.py"),
    "gdt": Release(
        "gdt", {"video_arch": "tv_r2plus1d", "audio_arch": "resnet", "video_pool": "avg"},
        GDT_INPUT, GDT_FRONTEND,
        {"video": Part("video_network.base.", rename_tv_r2plus1d),
         "audio": Part("audio_network.base.", rename_torchvision_resnet, unused=("fc.weight", "fc.bias"))},
        heads=("mlp_v.", "mlp_a."),
        source="github.com/facebookresearch/GDT model.py, src/vmz.py, src/resnet.py"),
}


@dataclass
class ImportReport:
    release: str
    out: Path
    model: dict[str, Any]
    mapped: dict[str, int]                     # modality -> tensors imported
    skipped: dict[str, list[str]]              # reason -> keys not imported (documented groups)
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = [f"imported {self.release} -> {self.out}"]
        text += [f"  {m}: {n} tensors" for m, n in self.mapped.items()]
        for reason, keys in self.skipped.items():
            text.append(f"  not imported ({reason}): {len(keys)} keys, e.g. {keys[:3]}")
        return "\n".join(text + self.lines)


def _infer_blocks(keys: list[str], pattern: str) -> list[int]:
    """Blocks per stage from the (mapped) key names ``stages.{s}.{b}.``."""
    counts = [0, 0, 0, 0]
    for key in keys:
        if m := re.match(pattern, key):
            counts[int(m[1])] = max(counts[int(m[1])], int(m[2]) + 1)
    return counts


def _mapped(state: dict[str, torch.Tensor], part: Part, prefix: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(our name -> tensor, keys that did not map, keys known to be unused) for one encoder."""
    out, unmapped, unused = {}, [], []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        local = key[len(prefix):]
        if local in part.unused:
            unused.append(key)
        elif (ours := part.rename(local)) is not None:
            out[ours] = value
        else:
            unmapped.append(key)
    return out, unmapped, unused


def _load_into(encoder: nn.Module, tensors: dict[str, torch.Tensor], modality: str, release: str) -> list[str]:
    """Copy every tensor (shapes checked); returns notes. Raises listing every mismatch."""
    own = encoder.state_dict()
    missing = [k for k in own if k not in tensors and not k.endswith("num_batches_tracked")]
    extra = [k for k in tensors if k not in own]
    wrong = [f"{k}: release {tuple(tensors[k].shape)} vs ours {tuple(own[k].shape)}"
             for k in tensors if k in own and tensors[k].shape != own[k].shape]
    if missing or extra or wrong:
        raise WeightsImportError(
            f"{release} {modality} encoder does not match its architecture:"
            + (f"\n  missing in the release ({len(missing)}): {missing}" if missing else "")
            + (f"\n  release keys without a place in ours ({len(extra)}): {extra}" if extra else "")
            + (f"\n  shape mismatches ({len(wrong)}): {wrong}" if wrong else ""))
    notes = []
    counters = [k for k in own if k.endswith("num_batches_tracked") and k not in tensors]
    if counters:  # files from torch < 0.4.1 have none; they only matter for BatchNorm(momentum=None)
        notes.append(f"  {modality}: {len(counters)} BatchNorm num_batches_tracked counters absent, set to 0")
    merged = {k: tensors[k].to(own[k].dtype) if k in tensors else torch.zeros_like(own[k]) for k in own}
    encoder.load_state_dict(merged, strict=True)
    return notes


def _width(tensors: dict[str, torch.Tensor], key: str, release: str, modality: str) -> int:
    if key not in tensors:
        raise WeightsImportError(f"{release} {modality}: the stem weight ({key} in our names) is missing")
    return int(tensors[key].shape[0])


def _encoder_from(state: dict[str, torch.Tensor], part: Part, prefix: str, modality: str,
                  release: Release, skipped: dict[str, list[str]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, unmapped, unused = _mapped(state, part, prefix)
    if unmapped:
        raise WeightsImportError(f"{release.name} {modality}: {len(unmapped)} keys have no mapping: {unmapped}")
    if not tensors:
        raise WeightsImportError(f"{release.name}: no {modality} encoder keys (prefix {prefix!r}) in the file")
    if unused:
        skipped.setdefault("parameters the official forward pass never uses", []).extend(unused)
    keys = list(tensors)
    if modality == "video":
        stem_key = "stem.3.weight" if release.model["video_arch"] == "tv_r2plus1d" else "stem.0.weight"
        geometry = {"width": _width(tensors, stem_key, release.name, modality), "video_blocks": _infer_blocks(keys, r"stages\.(\d)\.(\d+)\.")}
    elif release.model["audio_arch"] == "resnet":
        # torchvision names count stages from 1 (layer1..layer4)
        blocks = _infer_blocks([re.sub(r"^layer(\d)", lambda m: f"layer{int(m[1]) - 1}", k) for k in keys],
                               r"layer(\d)\.(\d+)\.")
        geometry = {"width": _width(tensors, "conv1.weight", release.name, modality), "audio_blocks": blocks}
    else:
        geometry = {"width": _width(tensors, "stem.0.weight", release.name, modality)}
    return tensors, geometry


def _split_state(states: list[tuple[str, dict[str, torch.Tensor]]], release: Release) -> dict[str, tuple[dict, str]]:
    """modality -> (state dict, key prefix of that encoder in it)."""
    found: dict[str, tuple[dict, str]] = {}
    for name, state in states:
        hits = [m for m, part in release.parts.items() if any(k.startswith(part.prefix) for k in state)]
        if hits:
            for modality in hits:
                if modality in found:
                    raise WeightsImportError(f"{name}: a second {modality} encoder (already read one)")
                found[modality] = (state, release.parts[modality].prefix)
            continue
        if release.name != "crisscross":
            raise WeightsImportError(f"{name}: not a checkpoint of the {release.name} release (no key starts with "
                                     f"{[p.prefix for p in release.parts.values()]}; first keys {list(state)[:5]})")
        # a CrissCross release file: one bare backbone; its stem's dimensionality says which
        stem = state.get("conv1.0.weight")
        if stem is None or stem.dim() not in (4, 5):
            raise WeightsImportError(f"{name}: not a CrissCross backbone (no conv1.0.weight stem; first keys "
                                     f"{list(state)[:5]})")
        modality = "video" if stem.dim() == 5 else "audio"
        if modality in found:
            raise WeightsImportError(f"{name}: a second {modality} backbone (already read one)")
        found[modality] = (state, "")
    return found


def _check_leftovers(found: dict[str, tuple[dict, str]], release: Release, skipped: dict[str, list[str]]) -> None:
    """Keys outside both encoders must be documented heads or aliases of imported tensors."""
    unknown = []
    for state, prefix in {id(s): (s, p) for s, p in found.values()}.values():
        if prefix == "":
            continue  # a bare backbone file: every key belongs to the encoder
        prefixes = [part.prefix for part in release.parts.values()]
        for key, value in state.items():
            if any(key.startswith(p) for p in prefixes):
                continue
            if any(key.startswith(h) for h in release.heads):
                skipped.setdefault("projection/prediction heads (not part of the backbones)", []).append(key)
                continue
            alias = next((a for a in release.aliases if key.startswith(a)), None)
            if alias is not None:
                target = release.aliases[alias] + key[len(alias):]
                if target in state and torch.equal(state[target], value):
                    skipped.setdefault("aliases of tensors imported under another name", []).append(key)
                    continue
            unknown.append(key)
    if unknown:
        raise WeightsImportError(f"{release.name}: {len(unknown)} keys are neither encoder weights nor a known "
                                 f"head: {unknown}")


def import_release(files: list[str | Path], release: str, out: str | Path, trust_pickle: bool = False) -> ImportReport:
    """Read the release file(s), map them onto our encoders and write an export directory."""
    from crisscross.train.export import save_backbones

    if release not in RELEASE_DEFS:
        raise WeightsImportError(f"unknown release {release!r}; supported: {list(RELEASES)}")
    rel = RELEASE_DEFS[release]
    states = [(str(f), state_dict_of(read_release_file(f, trust_pickle), str(f))) for f in files]
    found = _split_state(states, rel)
    absent = [m for m in ("video", "audio") if m not in found]
    if absent:
        hint = (" (the CrissCross release ships vid_*.pth.tar and aud_*.pth.tar: pass both)"
                if release == "crisscross" else "")
        raise WeightsImportError(f"{release}: no {' and no '.join(absent)} encoder in {[str(f) for f in files]}{hint}")
    skipped: dict[str, list[str]] = {}
    _check_leftovers(found, rel, skipped)
    tensors, geometry = {}, {}
    for modality in ("video", "audio"):
        state, prefix = found[modality]
        tensors[modality], geometry[modality] = _encoder_from(state, rel.parts[modality], prefix, modality, rel, skipped)
    if geometry["video"]["width"] != geometry["audio"]["width"]:
        raise WeightsImportError(f"{release}: video width {geometry['video']['width']} and audio width "
                                 f"{geometry['audio']['width']} differ; ModelConfig has one width")
    model = dict(rel.model, **geometry["video"], **{k: v for k, v in geometry["audio"].items() if k != "width"})
    try:
        cfg = ModelConfig.from_dict(model)
    except ValueError as exc:
        raise WeightsImportError(f"{release}: the file's layers do not form a supported architecture ({exc})") from exc
    video, audio = build_video_encoder(cfg), build_audio_encoder(cfg)
    notes = _load_into(video, tensors["video"], "video", release) + _load_into(audio, tensors["audio"], "audio", release)
    extra = {"source": {"release": release, "files": [str(Path(f).name) for f in files], "definitions": rel.source},
             "frontend": rel.frontend}
    save_backbones(out, video, audio, cfg, extra=extra, input_spec=rel.input)
    return ImportReport(release, Path(out), cfg.to_dict(),
                        {m: len(t) for m, t in tensors.items()}, skipped, notes)


# ------------------------------------------------------------------------------- run.init_from
# fields that change the encoders' parameters; the pools and heads may differ from the export's
ENCODER_FIELDS = ("width", "video_blocks", "audio_blocks", "norm", "video_arch", "audio_arch")


def init_encoders_from(model: nn.Module, source: str | Path) -> str:
    """Pretraining's ``run.init_from``: copy the backbones of an export dir (or of a trainer
    checkpoint) into a ``CrissCrossModel`` before training. Projectors and predictors keep their
    fresh initialisation; the optimizer and the schedule start from scratch (not a resume).
    Returns a one-line description for the run log."""
    from crisscross.train.export import load_backbones

    video, audio, export_cfg = load_backbones(source)
    run_cfg = model.cfg.to_dict()
    theirs = ModelConfig.from_dict(export_cfg).to_dict()
    differ = {k: (run_cfg[k], theirs[k]) for k in ENCODER_FIELDS if run_cfg[k] != theirs[k]}
    if differ:
        raise ValueError(f"run.init_from {source}: the run's model config differs from the export's in "
                         + ", ".join(f"model.{k} ({ours!r} here, {exp!r} in the export)" for k, (ours, exp) in differ.items())
                         + "; set those model.* keys to the export's values")
    model.video.encoder.load_state_dict(video.state_dict())
    model.audio.encoder.load_state_dict(audio.state_dict())
    return f"encoders initialised from {source}"

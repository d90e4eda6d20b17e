"""Write one WebDataset shard: a tar with fixed member metadata, plus its DALI ``.idx``.

Reruns give byte-identical files: every member has mtime 0, uid/gid 0, empty owner names,
mode 0644, USTAR headers, and members are written in the order the caller gives. The tar and
the index are written under temporary names in the same folder and renamed (``os.replace``)
only when complete, index first, so a file with the final ``.tar`` name is always whole.

The index is DALI's ``wds2idx`` format (version ``v1.2``), computed from the offsets we write
instead of re-reading the tar: a first line ``v1.2 <num_samples>``, then per sample one line of
``<ext> <data_offset> <size> <member_name>`` groups separated by spaces.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from crisscross.shards.atomic import AtomicFile, atomic_write

_BLOCK = tarfile.BLOCKSIZE
IDX_VERSION = "v1.2"


def sample_digest(components: dict[str, bytes]) -> str:
    """sha256 over a sample's members (extension and bytes, in order): the manifest's checksum."""
    h = hashlib.sha256()
    for ext in sorted(components):
        h.update(ext.encode() + b"\0" + len(components[ext]).to_bytes(8, "little"))
        h.update(components[ext])
    return h.hexdigest()


def idx_path_for(tar_path: Path) -> Path:
    """``{name}-000000.tar`` -> ``{name}-000000.idx`` (what DALI's reader is given)."""
    return tar_path.with_suffix(".idx")


@dataclass
class _Member:
    ext: str
    offset: int
    size: int
    name: str


@dataclass
class ShardWriter:
    """Usage: ``w = ShardWriter(path); w.add(key, {...}); info = w.finish()`` (or ``w.abort()``)."""

    path: Path
    _members: list[list[_Member]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._out = AtomicFile(self.path)  # exclusive, uniquely named temporary (shards/atomic.py)
        self._tar = tarfile.open(fileobj=self._out.file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, key: str, components: dict[str, bytes]) -> int:
        """Append one sample; ``components`` maps extension (e.g. ``video.mp4``) to bytes, in order."""
        if "." in key or "/" in key or not key:
            raise ValueError(f"invalid sample key {key!r} (no dots or slashes; WebDataset splits at the first dot)")
        group = []
        for ext, data in components.items():
            name = f"{key}.{ext}"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // _BLOCK) * _BLOCK
            group.append(_Member(ext, self._tar.offset - padded, len(data), name))
        self._members.append(group)
        return sum(m.size for m in group)

    @property
    def num_samples(self) -> int:
        return len(self._members)

    def index_text(self) -> str:
        lines = [f"{IDX_VERSION} {len(self._members)}"]
        for group in self._members:
            lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in group))
        return "\n".join(lines) + "\n"

    def finish(self) -> int:
        """Close, write the index, rename both into place; returns the tar's size in bytes."""
        if not self._members:
            self.abort()
            raise ValueError("refusing to write an empty shard (DALI cannot index an empty tar)")
        self._tar.close()  # with fileobj= this writes the end blocks but leaves the file open
        atomic_write(idx_path_for(self.path), self.index_text())  # index first: a final .tar always has one
        self._out.commit()
        return self.path.stat().st_size

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self._out.abort()

"""shards: the on-disk sample format (see SPEC.md) and its readers.

``format`` names every component and the index layout; ``Dataset`` (``dataset.py``) opens a
shard dataset once and holds its facts (rates, audio format, shard files, labels, splits, folds,
groups); ``reader`` reads shards in plain Python (inspect, verify, tests); the DALI pipelines
build the paired (t1, t2) training views and the evaluation clips, augmented on the device.
"""

from crisscross.shards.dataset import Dataset, ShardError

__all__ = ["Dataset", "ShardError"]

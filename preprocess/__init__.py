"""preprocess: raw video/audio collections -> WebDataset shards (decode, resample, align, write).

The only stage that touches FFmpeg (through PyAV). Dataset adapters turn a folder, a manifest
or a known dataset layout into source items; the builder partitions them into tasks and writes
shards resumably with a local pool, a job array or Ray.
"""

"""crisscross: self-supervised audio-visual pretraining (CrissCross, Sarkar & Etemad, AAAI 2023).

Data flows one way through four stages, each a sub-package with one job:

    preprocess -> shards -> train -> evaluate

``tools`` holds the command line (``crisscross ...``), the demo-data generator and the
benchmarks. The repository root is this package (see pyproject.toml's package-dir).
"""

__version__ = "0.1.0"

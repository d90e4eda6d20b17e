"""Pictures of what the evaluators found: a retrieval grid and a t-SNE map of features.

* ``retrieval_grid``: one row per query: the query image (black border) followed by its top-k
  neighbours, green-bordered when the neighbour's class matches the query's, red when not
  (CrissCross supplement, Figures S1/S2). For video the image is a clip's middle frame; for audio
  a log-mel spectrogram.
* ``tsne_map``: sample features embedded in 2-D with scikit-learn's t-SNE, one colour per class.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

MATCH, MISMATCH, QUERY = "#1a9850", "#d73027", "#000000"


def _show(ax, image: np.ndarray, colour: str, title: str) -> None:
    ax.imshow(image, cmap=None if image.ndim == 3 else "magma", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=7)


def retrieval_grid(
    out_path: Path,
    query_images: list[np.ndarray],
    query_labels: list[str],
    neighbour_images: list[list[np.ndarray]],
    neighbour_labels: list[list[str]],
) -> Path:
    """Save the grid as an image; rows are queries, columns the query then its neighbours."""
    if not query_images:
        raise ValueError("no queries to plot")
    k = max(len(n) for n in neighbour_images)
    fig, axes = plt.subplots(len(query_images), k + 1, figsize=(1.6 * (k + 1), 1.5 * len(query_images)), squeeze=False)
    for row, (q_img, q_lab) in enumerate(zip(query_images, query_labels)):
        _show(axes[row, 0], q_img, QUERY, f"query: {q_lab}")
        for col in range(k):
            ax = axes[row, col + 1]
            if col >= len(neighbour_images[row]):
                ax.axis("off")
                continue
            lab = neighbour_labels[row][col]
            _show(ax, neighbour_images[row][col], MATCH if lab == q_lab else MISMATCH, f"{col + 1}: {lab}")
    return _save(fig, out_path)


def _save(fig, out_path: Path) -> Path:
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def tsne_map(out_path: Path, features: np.ndarray, labels: list[str], *, title: str = "", seed: int = 0) -> Path:
    """Embed [N, D] features with t-SNE (perplexity adapted to small N) and scatter by class."""
    n = len(features)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 samples, got {n}")
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(features, dtype=np.float64)
    )
    fig, ax = plt.subplots(figsize=(6, 5))
    classes = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    labels_arr = np.asarray(labels)
    for i, cls in enumerate(classes):
        sel = labels_arr == cls
        ax.scatter(coords[sel, 0], coords[sel, 1], s=14, color=cmap(i % cmap.N), label=cls)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(title or f"t-SNE of {n} samples")
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, out_path)

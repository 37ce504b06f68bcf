"""Looking inside the models: pooled feature vectors of volumes, their 2D projections, a domain
classifier on them, and distances between feature sets (Fréchet distance, MMD).

- Features: an encoder ``x (1, 1, D, H, W) -> [level 0, ..., level L]`` (a U-Net's contracting
  path: :class:`medgan.networks.segmenters.UNetEncoder`) runs on patches of a volume (a grid
  with half-patch stride); each level's output is averaged over space, one vector per patch and level
  (:func:`patch_features`). Each patch is named after the organ that fills most of it (or
  ``background``).
- Projections: PCA and t-SNE (scikit-learn), UMAP (umap-learn), coloured by domain and by organ,
  written as PNG plus the coordinates as CSV (:func:`save_projection`).
- Domain classifier: 5-fold cross-validated balanced accuracy of a logistic regression telling
  the domains apart from the features (:func:`domain_accuracy`): 0.5 means the features do not
  reveal the domain (aligned), 1.0 that they always do.
- Fréchet distance (Heusel et al., NeurIPS 2017, the formula of FID) between two feature sets with
  MONAI's ``FIDMetric``, and MMD with MONAI's ``MMDMetric`` (unbiased, linear kernel: Gretton et
  al., JMLR 2012, Eq. 3) (:func:`feature_distances`). **The feature extractor is medgan's own
  trained segmenter encoder, not Inception or MedicalNet** (no pretrained weights can be
  downloaded here): the numbers depend on that network and compare only sets scored with the same
  one, never with published FIDs.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

PROJECTIONS = ("pca", "tsne", "umap")


@torch.no_grad()
def patch_features(
    encoder: Callable[[torch.Tensor], list[torch.Tensor]], image: torch.Tensor, patch_size: Sequence[int],
    levels: Sequence[int], labels: torch.Tensor | None = None, classes: Sequence[str] = (), device: str | torch.device = "cpu",
    min_foreground: float = 0.05, stride: Sequence[int] | None = None,
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Pooled features of the ``patch_size`` patches of one volume on a grid of ``stride``
    (default half the patch size: neighbours overlap by half).

    Args:
        encoder: ``(1, 1, d, h, w) -> list`` of per-level features ``(1, C_l, ...)``.
        image: ``(1, D, H, W)`` in [-1, 1] (the model's input frame); patches that do not fit
            whole at the far edges are left out.
        levels: which levels' features to return.
        labels: ``(1, D, H, W)`` class indices on the same grid (1.. = ``classes``), or ``None``.
        min_foreground: a patch is named after its most frequent class when that class fills at
            least this fraction of it, else ``background``.

    Returns:
        ``({level: (N, C_l) float32}, [organ name per patch])``.
    """
    d, h, w = image.shape[1:]
    pd, ph, pw = patch_size
    sd, sh, sw = stride if stride is not None else [max(1, p // 2) for p in patch_size]
    feats: dict[int, list[np.ndarray]] = {lv: [] for lv in levels}
    organs: list[str] = []
    for i in range(0, d - pd + 1, sd):
        for j in range(0, h - ph + 1, sh):
            for k in range(0, w - pw + 1, sw):
                x = image[None, :, i:i + pd, j:j + ph, k:k + pw].float().to(device)
                out = encoder(x)
                for lv in levels:
                    feats[lv].append(out[lv].float().mean(dim=(2, 3, 4))[0].cpu().numpy())
                name = "background"
                if labels is not None and classes:
                    counts = np.bincount(labels[0, i:i + pd, j:j + ph, k:k + pw].long().flatten().numpy(), minlength=len(classes) + 1)
                    c = int(np.argmax(counts[1:])) + 1
                    if counts[c] >= min_foreground * counts.sum():
                        name = classes[c - 1]
                organs.append(name)
    if not organs:
        raise ValueError(f"volume of shape {tuple(image.shape[1:])} is smaller than one patch {tuple(patch_size)}")
    return {lv: np.stack(v).astype(np.float32) for lv, v in feats.items()}, organs


def project(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """``x (N, C)`` -> ``(N, 2)``: ``pca`` (scikit-learn PCA), ``tsne`` (scikit-learn TSNE,
    perplexity min(30, (N - 1) / 3)) or ``umap`` (umap-learn, n_neighbors min(15, N - 1)), on
    standardised features.

    Raises:
        ValueError: unknown method, or fewer than 4 points.
    """
    from sklearn.preprocessing import StandardScaler

    if len(x) < 4:
        raise ValueError(f"{len(x)} feature vectors: a projection needs at least 4")
    z = StandardScaler().fit_transform(np.asarray(x, dtype=np.float64))
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(z)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, perplexity=min(30.0, (len(z) - 1) / 3), init="pca", random_state=seed).fit_transform(z)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, len(z) - 1), random_state=seed, n_jobs=1).fit_transform(z)
    raise ValueError(f"unknown projection {method!r}; use one of {PROJECTIONS}")


def domain_accuracy(x: np.ndarray, domains: Sequence[str], seed: int = 0) -> float:
    """Balanced accuracy (5-fold stratified cross-validation, fewer folds for small sets) of a
    logistic regression on standardised ``x (N, C)`` predicting ``domains``: 0.5 = the features
    carry no domain information (aligned), 1.0 = perfectly separable.

    Raises:
        ValueError: not exactly two domains, or fewer than 2 vectors of one.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(domains)
    names, counts = np.unique(y, return_counts=True)
    if len(names) != 2 or counts.min() < 2:
        raise ValueError(f"a domain classifier needs two domains with at least 2 vectors each, got {dict(zip(names, counts))}")
    folds = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(clf, np.asarray(x, dtype=np.float64), y, cv=folds, scoring="balanced_accuracy").mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between the
    Gaussians fitted to feature sets ``a (N, C)`` and ``b (M, C)`` (Heusel et al. 2017, the FID
    formula), computed by MONAI's ``FIDMetric`` (sample covariances, scipy ``sqrtm``)."""
    from monai.metrics import FIDMetric

    return float(FIDMetric()(torch.as_tensor(np.asarray(a), dtype=torch.float64), torch.as_tensor(np.asarray(b), dtype=torch.float64)))


def mmd(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased squared MMD with a linear kernel between feature sets ``a (N, C)`` and ``b (M, C)``
    (MONAI ``MMDMetric``; Gretton et al. 2012, Eq. 3); needs N, M >= 2 and N == M (MONAI)."""
    from monai.metrics import MMDMetric

    n = min(len(a), len(b))
    return float(MMDMetric()(torch.as_tensor(np.asarray(a)[:n], dtype=torch.float64), torch.as_tensor(np.asarray(b)[:n], dtype=torch.float64)))


def feature_distances(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``frechet_distance`` and ``mmd`` of two feature sets, with their sizes. MONAI's MMD needs
    sets of equal size: the larger set is cut to the smaller one's first vectors for it."""
    return {"frechet_distance": frechet_distance(a, b), "mmd_linear": mmd(a, b), "n_a": len(a), "n_b": len(b)}


def save_projection(prefix: str | Path, coords: dict[str, np.ndarray], domains: Sequence[str], organs: Sequence[str],
                    title: str, note: str = "") -> tuple[Path, Path]:
    """Write ``{prefix}.png`` (one row per projection: coloured by domain, then by organ) and
    ``{prefix}.csv`` (one row per feature vector: domain, organ and each projection's x, y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    methods = list(coords)
    fig, axes = plt.subplots(len(methods), 2, figsize=(10, 4.2 * len(methods)), squeeze=False)
    for r, m in enumerate(methods):
        xy = coords[m]
        for c, (key, values) in enumerate((("domain", domains), ("organ", organs))):
            ax = axes[r][c]
            cats = list(dict.fromkeys(values))
            cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
            for i, cat in enumerate(cats):
                sel = np.asarray(values) == cat
                ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(i % cmap.N), label=cat, alpha=0.75)
            ax.set_title(f"{m.upper()} by {key}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(fontsize=7, markerscale=1.5, frameon=False, loc="best")
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    fig.tight_layout()
    png = prefix.with_suffix(".png")
    fig.savefig(png, dpi=80)
    plt.close(fig)
    path = prefix.with_suffix(".csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["domain", "organ", *[f"{m}_{a}" for m in methods for a in ("x", "y")]])
        for i in range(len(domains)):
            wr.writerow([domains[i], organs[i], *[f"{coords[m][i, a]:.5g}" for m in methods for a in (0, 1)]])
    return png, path

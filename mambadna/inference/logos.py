"""Sequence logos of saturation mutagenesis and attributions (logomaker).

* ISM: the reference base at each position drawn with height = importance =
  minus the mean score of its three substitutions (how much the model prefers
  the reference base: LLR < 0 or Δ probability < 0 when mutated), above a
  heatmap of the substitution scores (A, C, G, T rows; the reference base 0).
* Attributions: integrated gradients and input × gradient as the
  per-position contribution drawn on the sequence's own base; saliency as
  the gradient, mean-centred over the four bases (:func:`attribution_heights`).

Figures are :class:`matplotlib.figure.Figure` objects (no pyplot state), so
the CLI draws without a display; :func:`save_png` writes them atomically.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

BASES = "ACGT"
LOGO_MAX_BP = 2000  # longer logos are unreadable (and slow to draw): callers refuse them up front


def ism_importance(matrix: np.ndarray, ref: str) -> np.ndarray:
    """(L, 4) logo heights from an ISM matrix (L, 4): the reference base's
    column holds minus the mean of the three substitution scores, the others 0
    (positions without scores: 0)."""
    m = np.asarray(matrix, dtype=np.float64)
    out = np.zeros_like(m)
    for i, b in enumerate(ref):
        if b in BASES and np.isfinite(m[i]).all():
            j = BASES.index(b)
            out[i, j] = -np.delete(m[i], j).mean()
    return out


def _frame(matrix: np.ndarray, start: int):
    import pandas as pd

    m = np.nan_to_num(np.asarray(matrix, dtype=np.float64))
    return pd.DataFrame(m, columns=list(BASES), index=np.arange(start, start + len(m)))


def plot_logo(matrix: np.ndarray, ax, start: int = 1, ylabel: str = "", title: Optional[str] = None):
    """Draw an (L, 4) matrix over A, C, G, T as a logo on ``ax`` (positive
    values above the axis, negative below); x ticks are ``start``-based positions."""
    import logomaker

    logo = logomaker.Logo(_frame(matrix, start), ax=ax, color_scheme="classic", flip_below=False,
                          show_spines=False)
    logo.ax.axhline(0, color="0.6", lw=0.5)
    ax.set_xlim(start - 0.5, start + len(matrix) - 0.5)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return logo


def _width(L: int) -> float:
    return float(min(40.0, max(6.0, 0.12 * L)))


def ism_figure(matrix: np.ndarray, ref: str, start: int = 1, title: Optional[str] = None,
               score_name: str = "llr"):
    """Logo of importance (reference bases) above a heatmap of the (L, 4) ISM
    scores; ``start``: 1-based position of the first row."""
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    L = len(m)
    fig = Figure(figsize=(_width(L), 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[1.2, 1])
    plot_logo(ism_importance(m, ref), ax1, start, ylabel=f"−mean {score_name}", title=title)
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    im = ax2.imshow(m.T, aspect="auto", cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, interpolation="nearest",
                    extent=(start - 0.5, start + L - 0.5, 3.5, -0.5))
    ax2.set_yticks(range(4), list(BASES))
    ax2.set_xlim(start - 0.5, start + L - 0.5)
    ax2.set_xlabel("position (1-based)")
    fig.colorbar(im, ax=ax2, label=score_name, fraction=0.02, pad=0.01)
    return fig


def attribution_heights(attr: np.ndarray, onehot: Optional[np.ndarray], method: str) -> np.ndarray:
    """(L, 4) logo heights of attributions: ``saliency`` mean-centred per
    position (the gradient's preference among the four bases); ``ig`` / ``ixg``
    summed per position onto the sequence's own base (for integrated
    gradients the position's whole contribution, so the logo keeps
    completeness). Without ``onehot`` the attributions are drawn as given."""
    a = np.asarray(attr, dtype=np.float64)
    if method == "saliency":
        return a - a.mean(-1, keepdims=True)
    if onehot is None:
        return a
    return np.asarray(onehot, dtype=np.float64) * a.sum(-1, keepdims=True)


def attribution_figure(attrs: Sequence[np.ndarray], names: Sequence[str], method: str = "",
                       onehots: Optional[Sequence[np.ndarray]] = None, max_panels: int = 4):
    """One logo per sequence (the first ``max_panels``) of (L, 4)
    attributions, drawn with :func:`attribution_heights` when ``onehots``
    (the sequences, (L, 4)) are given."""
    from matplotlib.figure import Figure

    k = min(len(attrs), max_panels)
    L = max(len(a) for a in attrs[:k])
    fig = Figure(figsize=(_width(L), 1.9 * k + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(k, 1, squeeze=False)[:, 0])
    for i, (ax, a, name) in enumerate(zip(axes, attrs[:k], names[:k])):
        h = attribution_heights(a, None if onehots is None else onehots[i], method)
        plot_logo(h, ax, 1, ylabel=method, title=str(name))
    axes[-1].set_xlabel("position (1-based)")
    return fig


def save_png(fig, path: os.PathLike) -> None:
    """Write ``fig`` as PNG to ``path`` atomically (no partial file on error)."""
    from mambadna.io.files import atomic_path, publish_mode

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
        publish_mode(tmp)

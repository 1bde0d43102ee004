"""Plots shared by the notebooks (each returns a matplotlib Figure; saving is ``cmrlib.report.save_figure``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch

from .data.records import SliceSet
from .labels import COLOURS, FOREGROUND


def overlay(ax: plt.Axes, image: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.4, title: str | None = None) -> None:
    """A grey image in [-1, 1] with its label map as a translucent colour overlay."""
    ax.imshow(image, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    if mask is not None:
        rgba = np.zeros(mask.shape + (4,))
        for value, colour in COLOURS.items():
            rgba[mask == value] = (*colour, alpha)
        ax.imshow(rgba, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def label_legend(fig: plt.Figure) -> None:
    handles = [Patch(color=COLOURS[v], label=name) for v, name in FOREGROUND.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 0.0))


def examples_by_domain_phase(slices: SliceSet, positions: tuple[float, ...] = (0.0, 0.5, 1.0), seed: int = 0) -> plt.Figure:
    """One patient per domain (rows); its ED and ES slices at relative positions base..apex (columns), with overlays."""
    meta = slices.meta
    domains = sorted(meta["domain"].unique())
    phases = [p for p in ("ED", "ES") if p in set(meta["phase"])]
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(domains), len(phases) * len(positions), figsize=(1.6 * len(phases) * len(positions), 1.7 * len(domains)), squeeze=False)
    for r, domain in enumerate(domains):
        patient = rng.choice(sorted(meta.loc[meta["domain"] == domain, "patient"].unique()))
        for p, phase in enumerate(phases):
            rows = meta.index[(meta["patient"] == patient) & (meta["phase"] == phase)].to_numpy()
            for c, pos in enumerate(positions):
                ax = axes[r, p * len(positions) + c]
                if len(rows) == 0:
                    ax.set_axis_off()
                    continue
                i = rows[int(round(pos * (len(rows) - 1)))]
                overlay(ax, slices.images[i], slices.masks[i], title=f"{domain} {phase} slice {meta.at[i, 'slice_index']}")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    label_legend(fig)
    return fig


def intensity_histograms(slices: SliceSet, max_pixels: int = 200_000, seed: int = 0) -> plt.Figure:
    """Distribution of pixel intensities per domain (a random subsample of pixels)."""
    rng = np.random.default_rng(seed)
    frames = []
    for domain in sorted(slices.meta["domain"].unique()):
        values = slices.images[(slices.meta["domain"] == domain).to_numpy()].ravel()
        values = rng.choice(values, size=min(max_pixels, values.size), replace=False)
        frames.append(pd.DataFrame({"intensity": values, "domain": domain}))
    fig, ax = plt.subplots(figsize=(5, 3))
    sns.histplot(pd.concat(frames), x="intensity", hue="domain", element="step", stat="density", common_norm=False, bins=80, ax=ax)
    ax.set_xlabel("intensity after scaling to [-1, 1]")
    fig.tight_layout()
    return fig


def split_counts(slices: SliceSet) -> pd.DataFrame:
    """Patients and slices per split and domain."""
    meta = slices.meta.assign(split=slices.meta["split"].replace("", "unused"))
    table = meta.groupby(["split", "domain"]).agg(patients=("patient", "nunique"), slices=("patient", "size"))
    return table.reset_index()

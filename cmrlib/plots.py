"""Plots shared by the notebooks (each returns a matplotlib Figure; saving is ``cmrlib.report.save_figure``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch

from .data.records import SliceSet
from .labels import COLOURS, FOREGROUND


def _colours(mask: np.ndarray, alpha: float) -> np.ndarray:
    """RGBA image of a label map in the label colours (background transparent)."""
    rgba = np.zeros(mask.shape + (4,))
    for value, colour in COLOURS.items():
        rgba[mask == value] = (*colour, alpha)
    return rgba


def overlay(ax: plt.Axes, image: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.4, title: str | None = None) -> None:
    """A grey image in [-1, 1] with its label map as a translucent colour overlay."""
    ax.imshow(image, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    if mask is not None:
        ax.imshow(_colours(mask, alpha), interpolation="nearest")
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


def loss_curve(losses: pd.DataFrame, title: str = "") -> plt.Figure:
    """Training loss (log scale) against optimisation step, from a ``loss.csv`` of ``cmrlib.training``."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses["step"], losses["loss"], lw=0.8, alpha=0.5, label="loss")
    window = max(1, len(losses) // 20)
    ax.plot(losses["step"], losses["loss"].rolling(window, min_periods=1).mean(), lw=1.5, label=f"running mean ({window} rows)")
    ax.set(xlabel="optimisation step", ylabel="training loss", yscale="log", title=title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def label_map(ax: plt.Axes, mask: np.ndarray, title: str | None = None) -> None:
    """A label map in the overlay colours on black."""
    rgba = _colours(mask, 1.0)
    rgba[..., 3] = 1.0  # opaque: background black
    ax.imshow(rgba, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def mask_grid(real: np.ndarray, generated: np.ndarray, n: int = 8, seed: int = 0) -> plt.Figure:
    """Random real masks (top row) and generated masks (bottom row)."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 2.9), squeeze=False)
    for row, (name, masks) in enumerate((("real", real), ("generated", generated))):
        for col, i in enumerate(rng.choice(len(masks), size=min(n, len(masks)), replace=False)):
            label_map(axes[row, col], masks[i], title=name if col == 0 else None)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    label_legend(fig)
    return fig


def class_area_histograms(real: np.ndarray, generated: np.ndarray) -> plt.Figure:
    """Pixels per structure, real against generated masks."""
    frames = []
    for name, masks in (("real", real), ("generated", generated)):
        flat = masks.reshape(len(masks), -1)
        for value, structure in FOREGROUND.items():
            frames.append(pd.DataFrame({"pixels": (flat == value).sum(1), "structure": structure, "masks": name}))
    data = pd.concat(frames, ignore_index=True)
    fig, axes = plt.subplots(1, len(FOREGROUND), figsize=(3.2 * len(FOREGROUND), 2.8))
    for ax, structure in zip(axes, FOREGROUND.values()):
        sns.histplot(data[data["structure"] == structure], x="pixels", hue="masks", element="step", stat="density",
                     common_norm=False, bins=30, ax=ax)
        ax.set_title(structure)
    fig.tight_layout()
    return fig


def sample_grid(masks: np.ndarray, images: np.ndarray, real: np.ndarray | None = None, n: int = 8, seed: int = 0, title: str = "") -> plt.Figure:
    """Columns of: the conditioning mask, the generated image (with the mask's outline), and the real image if given."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), size=min(n, len(images)), replace=False)
    rows = 3 if real is not None else 2
    fig, axes = plt.subplots(rows, len(idx), figsize=(1.3 * len(idx), 1.4 * rows + 0.3), squeeze=False)
    for col, i in enumerate(idx):
        label_map(axes[0, col], masks[i], title="mask" if col == 0 else None)
        overlay(axes[1, col], images[i], None, title="generated" if col == 0 else None)
        axes[1, col].contour(masks[i] > 0, levels=[0.5], colors="yellow", linewidths=0.4)
        if real is not None:
            overlay(axes[2, col], real[i], None, title="real" if col == 0 else None)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# -- fidelity (notebook 30_fidelity) ---------------------------------------------------------------------------------
def real_synthetic_grid(real: np.ndarray, synthetic: dict[str, np.ndarray], n: int = 8, seed: int = 0) -> plt.Figure:
    """Random real images (top row) and, per arm, random synthetic images (one row each), on the same grey scale."""
    rng = np.random.default_rng(seed)
    sets = {"real": real, **synthetic}
    fig, axes = plt.subplots(len(sets), n, figsize=(1.2 * n, 1.3 * len(sets)), squeeze=False)
    for r, (name, images) in enumerate(sets.items()):
        idx = rng.choice(len(images), size=min(n, len(images)), replace=False)
        for c in range(n):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(idx):
                ax.imshow(images[idx[c]], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def dice_per_structure(table: pd.DataFrame, title: str = "mask faithfulness") -> plt.Figure:
    """Dice per structure and set with interval bars, from ``cmrlib.fidelity.dice_table``."""
    sets = list(dict.fromkeys(table["set"]))
    structures = list(dict.fromkeys(table["structure"]))
    width = 0.8 / len(sets)
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(structures), 3))
    for i, name in enumerate(sets):
        d = table[table["set"] == name].set_index("structure").reindex(structures)
        x = np.arange(len(structures)) + (i - (len(sets) - 1) / 2) * width
        err = np.vstack([d["estimate"] - d["low"], d["high"] - d["estimate"]]).clip(min=0)
        ax.bar(x, d["estimate"], width, yerr=np.nan_to_num(err), capsize=2, label=name + (" (real images: ceiling)" if name == "real" else ""))
    ax.set(xticks=np.arange(len(structures)), xticklabels=structures, ylim=(0, 1), ylabel="Dice (conditioning mask vs segmenter)", title=title)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def steps_against_quality(steps: pd.DataFrame) -> plt.Figure:
    """FID (seg space), mean mask Dice and seconds per image against the number of sampling steps, one line per arm."""
    cols = [("fid_seg", "FID (seg features)"), ("dice_mean", "mask faithfulness (mean Dice)"), ("seconds_per_image", "seconds per image")]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 2.8))
    for ax, (col, label) in zip(axes, cols):
        for (arm, sampler), d in steps.groupby(["arm", "sampler"], sort=False):
            d = d.sort_values("steps")
            ax.plot(d["steps"], d[col], marker="o", label=f"{arm} ({sampler})")
        ax.set(xscale="log", xlabel="sampling steps", ylabel=label)
        ticks = sorted(steps["steps"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    axes[-1].set_yscale("log")
    axes[0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def quality_against_training_step(checkpoints: pd.DataFrame) -> plt.Figure:
    """FID (seg space) and mask faithfulness (mean and per structure) of each kept checkpoint's paired set."""
    cols = [("fid_seg", "FID (seg features)"), ("dice_mean", "mean Dice"), ("dice_LV", "Dice LV"), ("dice_MYO", "Dice MYO"), ("dice_RV", "Dice RV")]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.8 * len(cols), 2.7))
    for ax, (col, label) in zip(axes, cols):
        for arm, d in checkpoints.groupby("arm", sort=False):
            ax.plot(d["step"], d[col], marker="o", label=arm)
        ax.set(xlabel="training step", ylabel=label)
        if col != "fid_seg":
            ax.set_ylim(0, 1)
    axes[0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig

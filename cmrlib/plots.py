"""Plots shared by the notebooks (each returns a matplotlib Figure; saving is ``cmrlib.report.save_figure``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch

from .data.records import SliceSet
from .labels import COLOURS, FOREGROUND
from .registry import label as arm_label
from .registry import names as arm_names


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
    """Patients and slices per split, data set and domain."""
    meta = slices.meta.assign(split=slices.meta["split"].replace("", "unused"))
    table = meta.groupby(["split", "dataset", "domain"]).agg(patients=("patient", "nunique"), slices=("patient", "size"))
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
            ax.plot(d["steps"], d[col], marker="o", label=f"{arm_label(arm)} ({sampler})")
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
            ax.plot(d["step"], d[col], marker="o", label=arm_label(arm))
        ax.set(xlabel="training step", ylabel=label)
        if col != "fid_seg":
            ax.set_ylim(0, 1)
    axes[0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def sampler_diagnosis(sweep: pd.DataFrame, errors: pd.DataFrame) -> plt.Figure:
    """The sampler diagnosis (:mod:`cmrlib.diagnosis`): mask Dice minus the 1000-step ancestral sampler against the
    DDIM steps, per setting of the most varied training variant (left) and per variant, clipped (dashed) and
    unclipped (solid) (middle), with paired 95% intervals; the noise-prediction error against log SNR per variant
    (right)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    ddim = sweep[sweep["sampler"] == "ddim"]
    ablated = ddim.groupby("variant")["setting"].nunique().idxmax()
    panels = [(axes[0], ddim[ddim["variant"] == ablated], ["setting"], f"{ablated}: DDIM settings"),
              (axes[1], ddim[ddim["setting"].isin(["ddim clipped", "ddim unclipped"])], ["variant", "setting"], "by training variant")]
    for ax, d, by, title in panels:
        colours = {}
        for name, g in d.groupby(by, sort=False):  # name: a tuple of the ``by`` values
            g = g.sort_values("steps")
            style = "--" if name[-1] == "ddim clipped" and len(name) > 1 else "-"
            line, = ax.plot(g["steps"], g["vs_reference"], marker="o", ls=style, color=colours.get(name[0]), label=" ".join(name))
            colours.setdefault(name[0], line.get_color())
            ax.fill_between(g["steps"], g["vs_reference_low"], g["vs_reference_high"], color=line.get_color(), alpha=0.12)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="DDIM steps", ylabel="mean Dice minus ancestral 1000", title=title)
        ticks = sorted(d["steps"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(frameon=False, fontsize=6)
    for variant, g in errors.groupby("variant", sort=False):
        axes[2].plot(g["log_snr"], g["x0_mse"], marker="o", label=variant)
    axes[2].set(xlabel="log SNR (low noise to the right)", ylabel="implied clean-image MSE", yscale="log",
                title="error by noise level (training images)")
    axes[2].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


# -- utility (notebook 40_utility) -----------------------------------------------------------------------------------
def _utility_label(regime: str, arm: str) -> str:
    return regime if arm == "none" else f"{regime} ({arm})"


def utility_dice_against_n(table: pd.DataFrame, column: str = "dice_mean", low: str = "dice_mean_low",
                           high: str = "dice_mean_high", ylabel: str = "mean foreground Dice (per patient)") -> plt.Figure:
    """One panel per evaluation set: ``column`` against the number of real training patients, one line per regime and
    arm with interval bars (``cmrlib.utility.summary``); synthetic-only sits at 0 real patients."""
    sets = list(dict.fromkeys(table["eval_set"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(3.4 * len(sets) + 1.6, 3), sharey=True, squeeze=False)
    groups = list(table.groupby(["regime", "arm"], sort=False).groups)
    colours = dict(zip(groups, sns.color_palette("tab10", len(groups))))
    for ax, name in zip(axes[0], sets):
        for (regime, arm), d in table[table["eval_set"] == name].groupby(["regime", "arm"], sort=False):
            d = d.sort_values("n_real_patients")
            err = np.vstack([d[column] - d[low], d[high] - d[column]]).clip(min=0)
            ax.errorbar(d["n_real_patients"], d[column], yerr=np.nan_to_num(err), marker="o" if regime != "synthetic" else "s",
                        ms=4, capsize=2, lw=1.2, color=colours[(regime, arm)], label=_utility_label(regime, arm),
                        ls="--" if regime == "real" else "-")
        ticks = sorted(table["n_real_patients"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set(xlabel="real training patients", title=name)
    axes[0, 0].set_ylabel(ylabel)
    axes[0, -1].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def utility_in_against_cross(table: pd.DataFrame) -> plt.Figure:
    """Mean foreground Dice in-domain (``test``, x) against each cross-domain set (y), one point per regime, arm and
    number of real patients, with interval bars; the diagonal marks no domain shift. A run without a cross-domain
    set gets a figure that says so (rather than no file, which would leave an older run's figure in place)."""
    test = table[table["eval_set"] == "test"].set_index(["regime", "arm", "n_real_patients"])
    crosses = [s for s in dict.fromkeys(table["eval_set"]) if s != "test"]
    fig, ax = plt.subplots(figsize=(5.2, 4))
    if not crosses:
        ax.text(0.5, 0.5, "not applicable:\nthis run has no cross-domain set", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    groups = list(table.groupby(["regime", "arm"], sort=False).groups)
    colours = dict(zip(groups, sns.color_palette("tab10", len(groups))))
    markers = {name: "os^Dv<>ph*"[i % 10] for i, name in enumerate(crosses)}
    for name in crosses:
        c = table[table["eval_set"] == name].set_index(["regime", "arm", "n_real_patients"])
        for key in c.index.intersection(test.index):
            t, y = test.loc[key], c.loc[key]
            ax.errorbar(t["dice_mean"], y["dice_mean"], xerr=[[max(0, t["dice_mean"] - t["dice_mean_low"])], [max(0, t["dice_mean_high"] - t["dice_mean"])]],
                        yerr=[[max(0, y["dice_mean"] - y["dice_mean_low"])], [max(0, y["dice_mean_high"] - y["dice_mean"])]],
                        marker=markers[name], ms=5, capsize=1.5, lw=0.8, color=colours[key[:2]], ls="none")
            ax.annotate(str(key[2]), (t["dice_mean"], y["dice_mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), 1]
    ax.plot(lims, lims, color="grey", lw=0.8, ls=":")
    handles = [plt.Line2D([], [], color=colours[g], marker="o", ls="none", label=_utility_label(*g)) for g in groups]
    handles += [plt.Line2D([], [], color="black", marker=markers[s], ls="none", label=s) for s in crosses]
    ax.legend(handles=handles, frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set(xlabel="in-domain Dice (test)", ylabel="cross-domain Dice", title="in-domain against cross-domain (labels: n real)")
    fig.tight_layout()
    return fig


def utility_examples(examples: list[dict]) -> plt.Figure:
    """Per regime (rows): a success and a failure on real test slices (``cmrlib.utility.examples``), each as the
    image with its reference mask and with the prediction."""
    labels = list(dict.fromkeys(e["label"] for e in examples))
    fig, axes = plt.subplots(len(labels), 4, figsize=(6.4, 1.6 * len(labels) + 0.4), squeeze=False)
    for r, label in enumerate(labels):
        for k, kind in enumerate(("success", "failure")):
            e = next((e for e in examples if e["label"] == label and e["kind"] == kind), None)
            if e is None:
                axes[r, 2 * k].set_axis_off(), axes[r, 2 * k + 1].set_axis_off()
                continue
            where = f"{e['patient']} {e['phase']} s{e['slice_index']}"
            overlay(axes[r, 2 * k], e["image"], e["mask"], title=f"{kind}: reference\n{where}")
            overlay(axes[r, 2 * k + 1], e["image"], e["pred"], title=f"prediction, Dice {e['dice']:.2f}")
        axes[r, 0].text(-0.1, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    label_legend(fig)
    return fig


def utility_loss_curves(losses: dict[str, pd.DataFrame]) -> plt.Figure:
    """Training loss of every utility run (``loss.csv`` rows), one line each, log scale."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, d in losses.items():
        ax.plot(d["step"], d["loss"], lw=0.9, label=name)
    ax.set(xlabel="optimisation step", ylabel="Dice + cross-entropy loss", yscale="log")
    ax.legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def validation_curves(validation: dict[str, pd.DataFrame], title: str = "") -> plt.Figure:
    """Validation Dice against step of every segmenter run (``validation.csv`` rows), one line each, the chosen
    (best) checkpoint marked."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, (name, d) in enumerate((k, v) for k, v in validation.items() if len(v)):
        ax.plot(d["step"], d["score"], lw=0.9, color=f"C{i % 10}", label=name)
        best = d.loc[d["score"].idxmax()]
        ax.plot(best["step"], best["score"], marker="o", ms=4, color=f"C{i % 10}")
    ax.set(xlabel="optimisation step", ylabel="validation mean foreground Dice", title=title)
    ax.legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def utility_against_segmenter_budget(table: pd.DataFrame) -> plt.Figure:
    """The segmenter's budget axis (:func:`cmrlib.utility.against_segmenter_budget`): in-domain test Dice of real-only
    and real + synthetic against the segmenter's steps (left), and real + synthetic minus real-only (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    order = ["none", *arm_names()]
    for i, arm in enumerate(sorted(table["arm"].unique(), key=lambda a: order.index(a) if a in order else len(order))):
        d = table[table["arm"] == arm].sort_values("steps")
        label = "real only" if arm == "none" else f"real + {arm_label(arm)}"
        for ax, col, low, high in ((axes[0], "dice_mean", "dice_mean_low", "dice_mean_high"),
                                   (axes[1], "delta_vs_real", "delta_low", "delta_high")):
            if d[col].notna().any():
                ax.plot(d["steps"], d[col], marker="o", color=f"C{i}", label=label)
                ax.fill_between(d["steps"], d[low], d[high], color=f"C{i}", alpha=0.2)
    n = int(table["n_real_patients"].iloc[0])
    axes[0].set(xlabel="segmenter steps", ylabel="test mean foreground Dice", title=f"{n} real patients")
    axes[1].axhline(0, color="0.5", lw=0.8)
    axes[1].set(xlabel="segmenter steps", ylabel="Dice change against real only", title="gain of synthetic data")
    axes[0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


# -- privacy (notebook 50_privacy) -----------------------------------------------------------------------------------
def most_similar_pairs(pairs: pd.DataFrame, images: dict[str, np.ndarray], train_images: np.ndarray) -> plt.Figure:
    """For each set (row pair), its images closest to a training image (top) above that training image (bottom),
    from ``cmrlib.privacy.most_similar``; titles give the L2 distance, the nearest/second-nearest ratio and the
    correlation."""
    sets = list(dict.fromkeys(pairs["set"]))
    n = int(pairs.groupby("set").size().max())
    fig, axes = plt.subplots(2 * len(sets), n, figsize=(1.25 * n, 2.6 * len(sets)), squeeze=False)
    for s, name in enumerate(sets):
        d = pairs[pairs["set"] == name].sort_values("rank")
        for c in range(n):
            top, bottom = axes[2 * s, c], axes[2 * s + 1, c]
            top.set_axis_off()
            bottom.set_axis_off()
            if c >= len(d):
                continue
            r = d.iloc[c]
            top.imshow(images[name][int(r["sample"])], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            top.set_title(f"L2 {r['l2']:.1f} ratio {r['ratio']:.2f}\nr {r['correlation']:.2f}", fontsize=6,
                          color="red" if r["flag_copy"] else "black")
            bottom.imshow(train_images[int(r["train_index"])], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        axes[2 * s, 0].text(-0.1, 0.5, name, transform=axes[2 * s, 0].transAxes, ha="right", va="center", fontsize=8)
        axes[2 * s + 1, 0].text(-0.1, 0.5, "nearest\ntraining", transform=axes[2 * s + 1, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    return fig


def dcr_histograms(samples: dict[str, pd.DataFrame], reference: str, scores: dict[str, float] | None = None,
                   column: str = "l2") -> plt.Figure:
    """Distance to the closest training record: each set's histogram against the ``reference`` set's (the real
    unseen patients), one panel per set; ``scores`` (the DCR share closer to training per set) go into the titles."""
    names = [k for k in samples if k != reference]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.7), squeeze=False, sharey=False)
    ref_values = samples[reference][column].to_numpy()
    for ax, name in zip(axes[0], names):
        values = samples[name][column].to_numpy()
        bins = np.linspace(0, max(values.max(), ref_values.max()) * 1.02, 40)
        ax.hist(values, bins=bins, density=True, alpha=0.6, label=f"{name} (synthetic)")
        ax.hist(ref_values, bins=bins, density=True, alpha=0.6, label=reference)
        title = name if scores is None else f"{name}: DCR share {scores[name]:.2f}"
        ax.set(xlabel=f"distance to closest training image ({column})", title=title)
        ax.legend(frameon=False, fontsize=6)
    axes[0, 0].set_ylabel("density")
    fig.tight_layout()
    return fig


def roc_curves(roc: pd.DataFrame, fpr_mark: float = 0.01) -> plt.Figure:
    """ROC curves of the membership attacks, one panel per arm, one line per (protocol, attack), from
    ``cmrlib.privacy.Membership.roc`` (the primary cross-domain set's); log FPR axis, the chance diagonal and the FPR
    at which TPR is reported."""
    roc = roc[roc["primary"].astype(bool)]
    arms = list(dict.fromkeys(roc["arm"]))
    fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3.0), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for r in roc[roc["arm"] == arm].itertuples():
            fpr, tpr = np.asarray(r.fpr), np.asarray(r.tpr)
            ax.step(np.clip(fpr, 1e-3, 1), tpr, where="post", lw=1.2, ls="-" if r.protocol == "ours" else "--",
                    label=f"{r.protocol}, {r.attack}")
        grid = np.logspace(-3, 0, 50)
        ax.plot(grid, grid, color="grey", lw=0.8, ls=":", label="chance")
        ax.axvline(fpr_mark, color="grey", lw=0.6)
        ax.set(xscale="log", xlim=(1e-3, 1), ylim=(0, 1.01), xlabel="false-positive rate", title=arm_label(arm))
    axes[0, 0].set_ylabel("true-positive rate")
    axes[0, -1].legend(frameon=False, fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def auc_against_noise_level(table: pd.DataFrame, protocols: tuple[str, ...] = ("ours", "reference")) -> plt.Figure:
    """Membership AUC of the loss attack at each noise level (SNR, log axis), one line per arm with interval bars,
    one panel per protocol that the table holds (a run without a cross-domain set has no reference protocol); the
    aggregated loss attack as a dashed horizontal line per arm. From ``cmrlib.privacy.Membership.table`` (its primary
    slice-level rows: the reference protocol on the primary cross-domain set)."""
    table = table[table["primary"].astype(bool) & (table["unit"] == "slice")]
    protocols = tuple(p for p in protocols if (table["protocol"] == p).any()) or protocols[:1]
    fig, axes = plt.subplots(1, len(protocols), figsize=(3.6 * len(protocols), 3.0), squeeze=False, sharey=True)
    for ax, protocol in zip(axes[0], protocols):
        d = table[table["protocol"] == protocol]
        for i, (arm, a) in enumerate(d.groupby("arm", sort=False)):
            colour = f"C{i}"
            lv = a[(a["attack"] == "loss") & (a["level"] != "all")].sort_values("snr")
            err = np.vstack([lv["auc"] - lv["auc_low"], lv["auc_high"] - lv["auc"]]).clip(min=0)
            ax.errorbar(lv["snr"], lv["auc"], yerr=err, marker="o", ms=3, capsize=2, color=colour, label=arm_label(arm))
            every = a[(a["attack"] == "loss") & (a["level"] == "all")]
            if len(every):
                ax.axhline(float(every["auc"].iloc[0]), color=colour, ls="--", lw=0.8, label=f"{arm_label(arm)}: all levels")
        ax.axhline(0.5, color="grey", ls=":", lw=0.8)
        ax.set(xscale="log", ylim=(0.3, 1.02), xlabel="SNR of the attacked noise level", title=f"{protocol} protocol")
    axes[0, 0].set_ylabel("membership AUC (loss attack per level)")
    axes[0, -1].legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


# -- the paper (90_paper) ----------------------------------------------------------------------------------------------
def trade_off(table: pd.DataFrame, metrics=("mask_dice", "utility_dice", "released_auc")) -> plt.Figure:
    """One panel per axis metric of the trade-off table (long: arm, metric, label, better, estimate, low, high): each
    arm's estimate with its interval; the real-only baseline (utility) as a dashed line, chance (AUC 0.5) dotted."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        rows = table[(table.metric == metric) & (table.arm != "real only")]
        if rows.empty:
            ax.set_axis_off()
            continue
        x = np.arange(len(rows))
        err = np.vstack([rows.estimate - rows.low, rows.high - rows.estimate])
        err = np.where(np.isfinite(err), err, 0)
        ax.errorbar(x, rows.estimate, yerr=err, fmt="o", capsize=4, color="k")
        ax.set_xticks(x, [arm_label(a) for a in rows.arm])
        base = table[(table.metric == metric) & (table.arm == "real only")]
        if len(base):
            ax.axhline(base.estimate.iloc[0], ls="--", color="grey", label="real only")
            ax.legend(frameon=False, fontsize=7)
        if rows.better.iloc[0] == "nearer 0.5":
            ax.axhline(0.5, ls=":", color="grey")
        better = rows.better.iloc[0]
        ax.set_title(f"{rows.label.iloc[0]}\n({better} is better)", fontsize=8)
        ax.set_xlim(-0.5, len(rows) - 0.5)
    fig.tight_layout()
    return fig


def paired_examples(masks: np.ndarray, generated: dict[str, np.ndarray], real: np.ndarray, n: int = 6, seed: int = 0) -> plt.Figure:
    """Rows: the conditioning masks, each arm's image from them, the real image; ``n`` random paired slices."""
    idx = np.sort(np.random.default_rng(seed).choice(len(masks), size=min(n, len(masks)), replace=False))
    rows = [("mask", None)] + [(arm_label(name), images) for name, images in generated.items()] + [("real", real)]
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx), 1.35 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c, i in enumerate(idx):
            ax = axes[r, c]
            if images is None:
                label_map(ax, masks[i])
            else:
                overlay(ax, images[i])
            if c == 0:
                ax.text(-0.08, 0.5, name, transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.tight_layout()
    return fig


BUDGET_AXES = {"fraction": "fraction of the arm's step budget", "step": "training step", "train_elapsed_s": "training wall time (s)"}


def axis_against_budget(curves: pd.DataFrame, metrics: dict[str, str], x: str = "step") -> plt.Figure:
    """Each axis against training budget per arm (long: arm, <x>, one column per metric, optional <metric>_low/_high)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8), squeeze=False)
    for ax, (metric, title) in zip(axes[0], metrics.items()):
        if metric not in curves:
            ax.set_axis_off()
            continue
        order = arm_names()
        arms = sorted(curves["arm"].unique(), key=lambda a: (a not in order, order.index(a) if a in order else 0, a))
        for i, arm in enumerate(arms):  # the same colour per arm in every panel and figure
            rows = curves[curves["arm"] == arm].sort_values(x)
            ax.plot(rows[x], rows[metric], marker="o", color=f"C{i}", label=arm_label(arm))
            if f"{metric}_low" in rows and rows[f"{metric}_low"].notna().any():
                ax.fill_between(rows[x], rows[f"{metric}_low"], rows[f"{metric}_high"], color=f"C{i}", alpha=0.2)
        ax.set_xlabel(BUDGET_AXES.get(x, x.replace("_", " ")))
        ax.set_title(title, fontsize=8)
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig

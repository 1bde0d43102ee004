"""Saving what the notebooks show: figures as PNG and PDF, tables as CSV, Markdown and LaTeX."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

_credit: str | None = None


def set_figure_credit(credit: str | None) -> None:
    """The line every figure saved from now on carries (the attribution of real data, set by
    :func:`cmrlib.notebook.setup` from :func:`cmrlib.data.terms.figure_credit`); None: no line."""
    global _credit
    _credit = credit


def save_figure(fig: plt.Figure, folder: str | Path, name: str, dpi: int = 150) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.pdf`` into ``folder``, with the credit line under the figure when one is
    set (:func:`set_figure_credit`); returns both paths."""
    folder = Path(folder)
    if _credit and not any(t.get_gid() == "credit" for t in fig.texts):  # once, if a figure is saved twice
        fig.text(0.5, 0.0, _credit, ha="center", va="top", fontsize=7, color="0.3", gid="credit")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    # no creation date in the PDF: the same run gives byte-identical files
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    return paths


def save_table(table: pd.DataFrame, folder: str | Path, name: str, *, index: bool = True, float_format: str = "%.3f") -> list[Path]:
    """Write ``<name>.csv``, ``<name>.md`` and ``<name>.tex`` into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.csv", folder / f"{name}.md", folder / f"{name}.tex"]
    table.to_csv(paths[0], index=index)
    paths[1].write_text(table.to_markdown(index=index, floatfmt=float_format.lstrip("%")) + "\n")
    paths[2].write_text(table.to_latex(index=index, float_format=lambda v: float_format % v))
    return paths

"""Where things live: the project root, the runs folder and the documented layout of one run folder.

Every notebook reads and writes through :class:`RunPaths`, so a later notebook finds an earlier one's artefacts
at the documented place and never relies on another notebook's variables.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

RUNS_ENV = "CMRLIB_RUNS_DIR"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file beside ``path`` to write; on success it replaces ``path`` in one rename, so a killed
    run never leaves half a file. The temporary name keeps the suffix (``np.savez`` needs ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # the mode a plain open() gives, not mkstemp's private 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a hidden folder beside ``path`` to fill; on success it becomes ``path`` (new or empty) in one rename, so
    a failure or a kill leaves no half-written folder and nothing that was there is overwritten."""
    path = Path(path)
    require_empty_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        partial.chmod(0o777 & ~current_umask())
        yield partial
        os.replace(partial, path)  # POSIX renames a folder onto an empty one
    finally:
        if partial.exists():
            shutil.rmtree(partial)


def require_empty_folder(path: str | Path) -> None:
    """Refuse a file or a non-empty folder at ``path`` (a new or empty folder is written into)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file: give a folder to write into (new or empty)")
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty: write into a new folder")


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def project_root() -> Path:
    """The repository that holds ``cmrlib/`` (the package is installed in editable mode by the Makefile)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        raise RuntimeError(
            f"cmrlib is not imported from its repository ({root} has no pyproject.toml); install it with "
            "`pip install -e .` from the repository, or set the environment variable "
            f"{RUNS_ENV} to the folder that should hold run folders."
        )
    return root


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def runs_root() -> Path:
    """``$CMRLIB_RUNS_DIR`` if set, else ``<repository>/runs``."""
    env = os.environ.get(RUNS_ENV)
    return Path(env).expanduser().resolve() if env else project_root() / "runs"


@dataclass(frozen=True)
class RunPaths:
    """The layout of ``runs/<run name>/``. Attributes are paths; folders are created on first use."""

    root: Path

    @classmethod
    def for_run(cls, run_name: str, runs_dir: str | Path | None = None) -> "RunPaths":
        runs = Path(runs_dir).resolve() if runs_dir else runs_root()
        if run_name in ("", ".", "..") or Path(run_name).name != run_name or "\\" in run_name:
            raise ValueError(f"run name {run_name!r} does not name a folder inside {runs}: use letters, digits, "
                             "'_', '.' and '-', starting with a letter or digit")
        return cls(runs / run_name)

    # files at the top of the run folder
    @property
    def params(self) -> Path:
        """The resolved params (YAML file plus command-line overrides) this run was made with."""
        return self.root / "params.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def splits(self) -> Path:
        """Patient-level splits, written by ``00_data`` and read by every later notebook."""
        return self.root / "splits.json"

    # folders
    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def data(self) -> Path:
        """Processed slices (``slices.npz``), their metadata (``metadata.csv``) and skipped-case reports."""
        return self._dir("data")

    @property
    def notebooks(self) -> Path:
        """Executed copies of the notebooks."""
        return self._dir("notebooks")

    @property
    def figures(self) -> Path:
        return self._dir("figures")

    @property
    def tables(self) -> Path:
        return self._dir("tables")

    @property
    def metrics(self) -> Path:
        return self._dir("metrics")

    @property
    def checkpoints(self) -> Path:
        return self._dir("checkpoints")

    @property
    def samples(self) -> Path:
        return self._dir("samples")

    @property
    def models(self) -> Path:
        """Each trained arm as a standalone model folder (:mod:`cmrlib.standalone`), loadable without the run."""
        return self._dir("models")

    @property
    def paper(self) -> Path:
        """The run's manuscript, its figures, tables and numbers (``90_paper``)."""
        return self._dir("paper")

    def require(self, path: Path, made_by: str) -> Path:
        """Return ``path`` if it exists, else fail with the stage that makes it."""
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: it is written by the notebook {made_by}. Run it first, e.g. "
                f"`python -m cmrlib.study run {self.params} --only {made_by}`."
            )
        return path

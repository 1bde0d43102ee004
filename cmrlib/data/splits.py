"""Patient-level splits, seeded, written once to ``splits.json`` and read by every later notebook.

Sets: ``train`` (the generators' training patients = privacy members), ``holdout`` (same domains, never trained
on = privacy non-members), ``val`` (same domains, never trained on by a generator: reserved for the recipe's
choices), ``test`` (in-domain evaluation), and ``cross_<domain>`` for every cross-domain set.
Test, holdout and validation patients are drawn first, balanced over the training domains, so changing the number
of training patients (the limited-data knob) never moves one of them, and smaller training sets are nested in
larger ones. With ``test_split="layout"`` the test set is instead every training-domain patient that the data's own
split lists as test (the metadata's ``layout_split``), and the rest are drawn from the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..jsonio import write_json

IN_DOMAIN = ("train", "holdout", "val", "test")


def _round_robin(groups: list[list[str]]) -> list[str]:
    out: list[str] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def cross_domains_of(domains: list[str], train_domains: list[str], cross_domains: list[str] | None) -> list[str]:
    """The cross-domain test domains: ``cross_domains`` as given, or (None) every domain that is not a training one."""
    return [d for d in domains if d not in train_domains] if cross_domains is None else list(cross_domains)


def in_cross_order(names, cross_domains: list[str] | None) -> list[str]:
    """The ``cross_<domain>`` set names among ``names``, in the order of ``data.cross_domains`` (null: sorted)."""
    present = sorted(n for n in set(names) if str(n).startswith("cross_"))
    if cross_domains is None:
        return present
    rank = {f"cross_{d}": i for i, d in enumerate(cross_domains)}
    return sorted(present, key=lambda n: rank.get(n, len(rank)))


def layout_test_patients(meta: pd.DataFrame, train_domains: list[str]) -> list[str]:
    """The training domains' patients that the data's own split lists as test (any of their rows)."""
    rows = meta["domain"].isin(train_domains) & (meta["layout_split"] == "test")
    patients = sorted(set(meta.loc[rows, "patient"]))
    if not patients:
        found = sorted(set(meta.loc[meta["domain"].isin(train_domains), "layout_split"]) - {""})
        raise ValueError(f"data.test_split is 'layout', but the data's own split lists no test patient in the training "
                         f"domains {train_domains} (their layout splits: {found or 'none'}); use data.test_split: "
                         "random, or give the layout's test lists (ACDC's testing folder, test.list, M&Ms' Testing)")
    return patients


def make_splits(
    meta: pd.DataFrame,
    *,
    seed: int,
    train_domains: list[str],
    n_train: int,
    n_holdout: int,
    n_test: int,
    n_val: int = 0,
    test_split: str = "random",
    cross_domains: list[str] | None = None,
    n_cross: int | None = None,
) -> dict:
    """Assign patients to sets; returns the content of ``splits.json`` (with each domain's data set)."""
    domains = sorted(set(meta["domain"]))
    missing = [d for d in train_domains if d not in domains]
    if missing:
        raise ValueError(f"data.train_domains {missing} not in the data (domains present: {domains})")
    cross = cross_domains_of(domains, train_domains, cross_domains)
    missing = [d for d in cross if d not in domains]
    if missing:
        raise ValueError(f"data.cross_domains {missing} not in the data (domains present: {domains})")

    rng = np.random.default_rng(seed)
    patients_of = {d: sorted(set(meta.loc[meta["domain"] == d, "patient"])) for d in domains}
    test = layout_test_patients(meta, train_domains) if test_split == "layout" else []
    available = sum(len(patients_of[d]) for d in train_domains)
    order = _round_robin([[p for p in rng.permutation(patients_of[d]) if p not in test] for d in train_domains])
    if test_split != "layout":
        test, order = sorted(order[:n_test]), order[n_test:]
    needed = n_holdout + n_val + n_train
    if needed > len(order):
        counts = (f"n_test_patients + n_holdout_patients + n_val_patients + n_train_patients = {n_test} + "
                  if test_split != "layout" else f"the layout's {len(test)} test patients, then n_holdout_patients + "
                  "n_val_patients + n_train_patients = ")
        raise ValueError(f"data: {counts}{n_holdout} + {n_val} + {n_train}, but the training domains {train_domains} "
                         f"have only {available} patients"
                         f"{' besides the test ones' if test_split == 'layout' else ''}; lower them or add data")
    sets = {
        "test": test,
        "holdout": sorted(order[:n_holdout]),
        "val": sorted(order[n_holdout : n_holdout + n_val]),
        "train": order[n_holdout + n_val : needed],  # in draw order: the first k are the k-patient training set
    }
    for d in cross:
        chosen = list(rng.permutation(patients_of[d]))
        sets[f"cross_{d}"] = sorted(chosen[:n_cross] if n_cross else chosen)
    dataset_of = meta.drop_duplicates("domain").set_index("domain")["dataset"]
    return {"seed": seed, "train_domains": list(train_domains), "cross_domains": cross, "test_split": test_split,
            "datasets": {d: str(dataset_of[d]) for d in domains}, "sets": sets}


def assign(meta: pd.DataFrame, splits: dict) -> pd.Series:
    """The split of every metadata row ("" for patients in no set)."""
    of_patient = {p: name for name, patients in splits["sets"].items() for p in patients}
    return meta["patient"].map(of_patient).fillna("")


def check_disjoint(splits: dict) -> None:
    seen: dict[str, str] = {}
    for name, patients in splits["sets"].items():
        for p in patients:
            if p in seen:
                raise ValueError(f"patient {p} is in both {seen[p]!r} and {name!r}")
            seen[p] = name


def save_splits(path: str | Path, splits: dict) -> Path:
    check_disjoint(splits)
    return write_json(path, splits)


def load_splits(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: it is written by the notebook 00_data; run it first")
    splits = json.loads(path.read_text())
    check_disjoint(splits)
    return splits


def first_patients(splits: dict, k: int) -> list[str]:
    """The k-patient training set: the first k of ``splits["sets"]["train"]`` (nested, balanced over vendors). The
    utility axis's limited-data regimes and the same-patients generators (``utility.generators_from: same``)."""
    return list(splits["sets"]["train"][:k])


def real_patient_counts(params, splits: dict) -> list[int]:
    """``utility.n_real_patients`` with null resolved to all training patients; sorted, without repeats."""
    train = splits["sets"]["train"]
    out = []
    for k in params.utility.n_real_patients:
        k = len(train) if k is None else k
        if not 1 <= k <= len(train):
            raise ValueError(f"utility.n_real_patients contains {k}, but splits.json has {len(train)} training patients "
                             f"(data.n_train_patients); use values from 1 to {len(train)}, or null for all")
        out.append(k)
    return sorted(set(out))

"""The data sets' terms of use and citations, and the credit line that figures derived from real patients carry."""

from __future__ import annotations


TERMS = {  # as the data card states them
    "phantom": "cmrlib's embedded phantom: simulated, no patients, no terms",
    "acdc": "ACDC (Bernard et al., IEEE TMI 2018, doi:10.1109/TMI.2018.2837502): CC BY-NC-SA 4.0, non-commercial, "
            "share alike; data derived from it keep these terms; cite Bernard et al. 2018",
    "mnms": "M&Ms (Campello et al., IEEE TMI 2021, doi:10.1109/TMI.2021.3090082): the M&Ms data terms (research use); "
            "cite Campello et al. 2021",
}
CREDITS = {  # one line under every figure derived from a real data set
    "acdc": "Derived from ACDC (Bernard et al., IEEE TMI 2018), CC BY-NC-SA 4.0",
    "mnms": "Derived from M&Ms (Campello et al., IEEE TMI 2021), M&Ms data terms",
}


def terms(data_set: str) -> str:
    return TERMS.get(data_set, f"{data_set}: its owner's terms")


LOADER_DATA_SET = {"phantom": "phantom", "acdc": "acdc", "acdc_h5": "acdc", "mnms": "mnms"}  # nifti: the user's own


def figure_credit(data_params) -> str | None:
    """The line under every figure of a run (``params.data``): the credit of each real public data set it reads, or
    None for the phantom and for a user's own NIfTI folder (whose terms its owner knows)."""
    data_sets = sorted({LOADER_DATA_SET.get(s.source) for s in data_params.source_list().values()} - {None, "phantom"})
    return "; ".join(CREDITS[d] for d in data_sets) or None

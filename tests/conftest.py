from pathlib import Path

import pytest

from cmrlib.params import StudyParams

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_params() -> StudyParams:
    """A small phantom configuration (fast to build)."""
    return StudyParams.model_validate(
        {
            "run_name": "test",
            "seed": 3,
            "data": {
                "image_size": 48,
                "n_train_patients": 4,
                "n_holdout_patients": 2,
                "n_val_patients": 2,
                "n_test_patients": 2,
                "phantom": {"patients_per_domain": 5, "slices_per_volume": 6},
            },
        }
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke study (params/smoke.yaml, every notebook), run once per test session: (run record, run folder, log)."""
    from cmrlib import study

    runs = tmp_path_factory.mktemp("runs")
    log: list[str] = []
    record = study.run(REPO / "params/smoke.yaml", runs_dir=runs, echo=log.append)
    return record, runs / "smoke", log

"""The canonical label convention, the one place that names the classes (M&Ms numbering, as the reference study)."""

CLASSES: dict[int, str] = {0: "background", 1: "LV", 2: "MYO", 3: "RV"}
"""Label value -> name. 1 LV blood pool, 2 LV myocardium, 3 RV blood pool."""

NUM_CLASSES = len(CLASSES)
BACKGROUND, LV, MYO, RV = 0, 1, 2, 3
FOREGROUND: dict[int, str] = {k: v for k, v in CLASSES.items() if k != BACKGROUND}

# Colours for overlays (RGB in [0, 1]): LV red, MYO green, RV blue.
COLOURS: dict[int, tuple[float, float, float]] = {LV: (0.90, 0.20, 0.20), MYO: (0.20, 0.75, 0.30), RV: (0.25, 0.45, 0.95)}

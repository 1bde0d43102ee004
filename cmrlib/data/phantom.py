"""A procedural short-axis cine CMR phantom with exact label maps: the study's embedded default data.

Each patient has its own anatomy (LV size, wall thickness, ejection, RV size and extent, heart position and
rotation, papillary muscles) that varies from base to apex (the LV narrows, the RV shrinks and vanishes before the
apex) and between ED and ES (the cavity contracts; the myocardial area is conserved, so the wall thickens).
Around the heart: chest wall, subcutaneous and epicardial fat, lungs with vessels, liver, descending aorta.

Each *domain* (vendor) has its own appearance (tissue contrast, gamma, bias field, blur, Rician noise level and a
raw intensity scale), so that a model trained on A+B meets a real shift on C and D. Each patient also carries an
appearance signature (a smooth 3D texture field, tissue contrast jitter, a bias field, lung vessels at fixed places),
so that a generator that memorises a training patient is detectable; ``signature`` scales it (0: patients differ by
anatomy and noise alone, the privacy axis's negative control).

Everything is a function of ``(seed, domain, patient index)``; a volume is rendered with numpy, vectorised over
slices. Units are millimetres; the image is ``fov_mm`` wide at ``spacing_mm`` per pixel, y pointing down (rows).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy.ndimage import gaussian_filter

from ..labels import LV, MYO, RV
from .records import Volume

# tissue classes of the rendered image (not labels)
AIR, SOFT, FAT, LUNG, LIVER, BLOOD, MUSCLE = range(7)


@dataclass(frozen=True)
class DomainAppearance:
    """How one vendor renders the tissues. ``tissue`` is indexed by the tissue classes above."""

    tissue: tuple[float, ...]
    gamma: float
    noise: float  # Rician noise sigma, relative to the brightest tissue
    bias: float  # amplitude of the smooth multiplicative bias field
    blur_mm: float  # Gaussian point-spread sigma
    scale: float  # raw intensity units of the scanner (removed by percentile scaling)


# bSSFP-like contrasts: blood bright, myocardium dark, fat bright, lungs dark.
DOMAINS: dict[str, DomainAppearance] = {
    #                     air   soft  fat   lung  liver blood muscle
    "A": DomainAppearance((0.02, 0.36, 0.85, 0.06, 0.30, 0.95, 0.26), gamma=1.00, noise=0.020, bias=0.10, blur_mm=0.6, scale=900.0),
    "B": DomainAppearance((0.02, 0.30, 0.72, 0.08, 0.40, 0.85, 0.34), gamma=0.90, noise=0.035, bias=0.20, blur_mm=1.2, scale=2600.0),
    "C": DomainAppearance((0.03, 0.42, 0.95, 0.12, 0.26, 0.80, 0.42), gamma=0.70, noise=0.060, bias=0.35, blur_mm=0.9, scale=350.0),
    "D": DomainAppearance((0.02, 0.30, 0.60, 0.05, 0.48, 1.00, 0.20), gamma=1.30, noise=0.040, bias=0.25, blur_mm=2.0, scale=1500.0),
}


def _rng(seed: int, domain: str, patient: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), patient])


@dataclass(frozen=True)
class Anatomy:
    """One patient's heart and thorax (mm, radians)."""

    centre: tuple[float, float]
    rv_angle: float  # direction from the LV centre to the RV
    lv_radius: float  # ED cavity radius at the base
    lv_ellipticity: float
    lv_axis_angle: float
    wall: float  # ED myocardial thickness at the base
    es_factor: float  # ES / ED cavity radius
    rv_size: float
    rv_es_factor: float
    rv_extent: float  # relative slice position (0 base, 1 apex) where the RV ends
    papillary_angles: tuple[float, float]
    papillary_radius: float
    chest_wall_y: float
    lung_vessels: np.ndarray  # (k, 3): x, y, radius
    texture_waves: np.ndarray  # (k, 5): kx, ky, kz, phase, amplitude
    tissue_jitter: np.ndarray  # (7,) multiplicative contrast signature
    bias_coeffs: np.ndarray  # (3,)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    n_waves = 14
    wavelength = rng.uniform(6.0, 30.0, n_waves)
    direction = rng.uniform(0, 2 * np.pi, n_waves)
    k = 2 * np.pi / wavelength
    waves = np.stack(
        [k * np.cos(direction), k * np.sin(direction), rng.uniform(-0.6, 0.6, n_waves), rng.uniform(0, 2 * np.pi, n_waves),
         rng.uniform(0.02, 0.06, n_waves)], axis=1)
    n_vessels = int(rng.integers(4, 8))
    side = rng.choice([-1.0, 1.0], n_vessels)
    vessels = np.stack([side * rng.uniform(55, 85, n_vessels), rng.uniform(-30, 45, n_vessels), rng.uniform(1.5, 3.0, n_vessels)], axis=1)
    first = rng.uniform(0, 2 * np.pi)
    return Anatomy(
        centre=(float(rng.normal(8.0, 5.0)), float(rng.normal(0.0, 5.0))),
        rv_angle=float(np.pi + 0.35 + rng.normal(0.0, 0.2)),
        lv_radius=float(rng.uniform(20.0, 27.0)),
        lv_ellipticity=float(rng.uniform(0.88, 1.0)),
        lv_axis_angle=float(rng.uniform(0, np.pi)),
        wall=float(rng.uniform(7.0, 10.0)),
        es_factor=float(rng.uniform(0.62, 0.76)),
        rv_size=float(rng.uniform(0.85, 1.3)),
        rv_es_factor=float(rng.uniform(0.6, 0.78)),
        rv_extent=float(rng.uniform(0.72, 0.86)),
        papillary_angles=(first, first + rng.uniform(1.8, 2.6)),
        papillary_radius=float(rng.uniform(2.2, 3.4)),
        chest_wall_y=float(rng.uniform(-78.0, -62.0)),
        lung_vessels=vessels,
        texture_waves=waves,
        tissue_jitter=rng.normal(1.0, 0.06, 7),
        bias_coeffs=rng.normal(0.0, 1.0, 3),
    )


def _ellipse(x, y, cx, cy, a, b, angle):
    """Inside test of an ellipse with semi-axes a (along ``angle``) and b; broadcasts over leading axes."""
    dx, dy = x - cx, y - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def render(
    anatomy: Anatomy,
    appearance: DomainAppearance,
    rng: np.random.Generator,
    *,
    phase: str,
    n_slices: int,
    fov_mm: float = 200.0,
    spacing_mm: float = 1.5,
    signature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one short-axis stack: (raw image float32, labels uint8), each (n_slices, n, n). ``signature`` scales the
    patient's appearance signature: the texture amplitude, the contrast jitter's and the bias field's deviation from
    1; the lung vessels are drawn when it is above 0. The anatomy and the noise do not depend on it."""
    n = int(round(fov_mm / spacing_mm))
    coords = (np.arange(n) - (n - 1) / 2) * spacing_mm
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x, y = x[None], y[None]  # (1, n, n), broadcast against per-slice parameters (S, 1, 1)
    s = np.linspace(0.0, 1.0, n_slices)[:, None, None]  # 0 base, 1 apex
    a = anatomy
    es = phase == "ES"

    # LV: cavity narrows towards the apex; at ES it contracts and the wall thickens (myocardial area conserved)
    profile = np.sqrt(1.0 - (0.85 * s) ** 2)
    cavity_ed = a.lv_radius * profile
    epi_ed = cavity_ed + a.wall * (1.0 - 0.25 * s)
    cavity = cavity_ed * (a.es_factor if es else 1.0)
    epi = np.sqrt(cavity**2 + epi_ed**2 - cavity_ed**2)
    cx, cy = a.centre
    e = a.lv_ellipticity
    lv = _ellipse(x, y, cx, cy, cavity, cavity * e, a.lv_axis_angle)
    heart_lv = _ellipse(x, y, cx, cy, epi, epi * e, a.lv_axis_angle)
    myo = heart_lv & ~lv

    # RV: a crescent against the septum, thinning towards the apex and gone below rv_extent
    rv_profile = np.clip(1.0 - s / a.rv_extent, 0.0, None) ** 0.6
    thickness = 17.0 * a.rv_size * rv_profile * (a.rv_es_factor if es else 1.0)
    d = 0.45 * epi
    ux, uy = np.cos(a.rv_angle), np.sin(a.rv_angle)
    rcx, rcy = cx + d * ux, cy + d * uy
    ra = epi - d + thickness
    rb = 1.3 * epi * (0.55 + 0.45 * rv_profile) * a.rv_size
    rv_region = _ellipse(x, y, rcx, rcy, ra, rb, a.rv_angle)
    rv = rv_region & ~heart_lv & (thickness > 1.0)
    rv_wall = _ellipse(x, y, rcx, rcy, ra + 2.5, rb + 2.5, a.rv_angle) & ~heart_lv & ~rv & (thickness > 1.0)
    heart = heart_lv | rv | rv_wall
    epicardial_fat = (_ellipse(x, y, cx, cy, epi + 3.5, (epi + 3.5) * e, a.lv_axis_angle)
                      | _ellipse(x, y, rcx, rcy, ra + 5.0, rb + 5.0, a.rv_angle)) & ~heart

    # papillary muscles: dark discs inside the cavity at mid-ventricular levels, labelled as LV blood pool
    papillary = np.zeros_like(lv)
    mid = (s > 0.2) & (s < 0.8)
    for angle in a.papillary_angles:
        px = cx + 0.62 * cavity * np.cos(angle)
        py = cy + 0.62 * cavity * np.sin(angle)
        papillary |= ((x - px) ** 2 + (y - py) ** 2 <= a.papillary_radius**2) & mid & lv

    # thorax
    body = _ellipse(x, y, 0.0, 12.0, 150.0, 95.0 + 0 * s, 0.0) & (y > a.chest_wall_y - 14.0)
    subcutaneous = body & (y < a.chest_wall_y - 6.0)
    chest_wall = body & (y >= a.chest_wall_y - 6.0) & (y < a.chest_wall_y)
    lungs = (_ellipse(x, y, -72.0, 15.0, 32.0, 62.0, 0.15) | _ellipse(x, y, 78.0, 12.0, 28.0, 60.0, -0.1)) & body
    liver = _ellipse(x, y, -45.0, 112.0 - 30.0 * s, 80.0, 45.0, 0.25) & body
    aorta = (x - (cx + 28.0)) ** 2 + (y - (cy + 52.0)) ** 2 <= 11.0**2
    vessels = np.zeros_like(lungs)
    for vx, vy, vr in a.lung_vessels if signature > 0 else ():
        vessels |= (x - vx) ** 2 + (y - vy) ** 2 <= vr**2
    vessels &= lungs

    tissue = np.full(lv.shape, AIR, dtype=np.int8)
    for region, value in ((body, SOFT), (subcutaneous, FAT), (chest_wall, MUSCLE), (lungs, LUNG), (liver, LIVER),
                          (vessels, BLOOD), (aorta, BLOOD), (epicardial_fat, FAT), (rv_wall, MUSCLE), (myo, MUSCLE),
                          (lv, BLOOD), (rv, BLOOD), (papillary, MUSCLE)):
        tissue[np.broadcast_to(region, tissue.shape)] = value

    labels = np.zeros(lv.shape, dtype=np.uint8)
    labels[np.broadcast_to(myo, labels.shape)] = MYO
    labels[np.broadcast_to(lv, labels.shape)] = LV
    labels[np.broadcast_to(rv, labels.shape)] = RV

    # appearance: domain contrast x patient signature, texture, gamma, bias, blur, Rician noise
    jitter = a.tissue_jitter if signature == 1 else 1.0 + signature * (a.tissue_jitter - 1.0)  # 1: bit for bit as before
    contrast = np.asarray(appearance.tissue) * jitter
    image = contrast[tissue]
    z = s * 80.0  # mm from base to apex, for the 3D texture
    kx, ky, kz, ph, amp = (a.texture_waves[:, i][:, None, None, None] for i in range(5))
    texture = signature * (amp * np.sin(kx * x[None] + ky * y[None] + kz * z[None] + ph)).sum(axis=0)
    image = image * (1.0 + texture * (tissue != AIR) * (tissue != LUNG))
    image = np.clip(image, 0.0, None) ** appearance.gamma
    bx, by, bxy = signature * a.bias_coeffs
    half = fov_mm / 2
    bias = 1.0 + appearance.bias * np.tanh(bx * x / half + by * y / half + 0.5 * bxy * x * y / half**2)
    image = image * bias
    image = gaussian_filter(image, sigma=(0, appearance.blur_mm / spacing_mm, appearance.blur_mm / spacing_mm))
    sigma = appearance.noise * float(np.max(appearance.tissue))
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    image = np.sqrt(real**2 + imag**2) * appearance.scale
    return image.astype(np.float32), labels


def generate_volumes(
    *,
    seed: int,
    domains: list[str],
    patients_per_domain: int,
    slices_per_volume: int,
    phases: list[str] = ("ED", "ES"),
    fov_mm: float = 200.0,
    spacing_mm: float = 1.5,
    slice_spacing_mm: float | None = None,
    signature: float = 1.0,
) -> Iterator[Volume]:
    """Yield one :class:`Volume` per (domain, patient, phase), deterministic in ``seed``."""
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"data.phantom.domains: unknown domains {unknown}; the phantom has {sorted(DOMAINS)}")
    for domain in domains:
        for index in range(patients_per_domain):
            rng = _rng(seed, domain, index)
            anatomy = sample_anatomy(rng)
            for phase in phases:
                noise_rng = _rng(seed, domain + phase, index)
                image, mask = render(anatomy, DOMAINS[domain], noise_rng, phase=phase, n_slices=slices_per_volume,
                                     fov_mm=fov_mm, spacing_mm=spacing_mm, signature=signature)
                yield Volume(
                    image=image, mask=mask, dataset="phantom", patient=f"phantom_{domain}{index:03d}", domain=domain,
                    phase=phase, spacing=(spacing_mm, spacing_mm), slice_spacing=slice_spacing_mm, source=f"phantom(seed={seed}, {domain}, {index})",
                )

"""How each label of each phantom source shows on the film, and how common it is.

Every label is a visible change of the anatomy in `phantom.anatomy`: a sign either edits the
patient's body before it is drawn (a big heart, scoliosis, a tortuous aorta) or paints on the
film (nodules, streaks, a pacemaker). The NIH-like and CheXpert-like sources name their own
labels but share signs with the target (Cardiomegaly is cardiac hypertrophy, Infiltration is
increased lung patterns, ...), so pretraining on them can help the target, as in seed 000.

Painters get an rng seeded per patient and finding, so a nodule stays where it was on the
patient's follow-up films.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from phantom.anatomy import Anatomy, ellipse, spine_centre


@dataclass(frozen=True)
class Sign:
    change: Callable[[Anatomy, np.random.Generator], None] | None = None  # edits the body first
    paint: Callable | None = None  # paint(img, y, x, lungs, body, rng) afterwards


def _lung_point(rng, low=0.3, high=0.7):
    side = rng.choice([-1, 1])
    return rng.uniform(low, high), 0.5 + side * rng.uniform(0.1, 0.24)


def _big_heart(body, rng):
    body.heart_scale = rng.uniform(1.4, 1.6)


def _wide_mediastinum(body, rng):
    body.mediastinum_width *= rng.uniform(1.6, 1.9)


def _scoliosis_or_osteophytes(body, rng):
    if rng.random() < 0.5:  # seed 000's spinal lesions: scoliosis or degenerative joint disease
        body.spine_curve = rng.choice([-1, 1]) * rng.uniform(0.05, 0.08)
    else:
        body.extra["osteophytes"] = True


def _tortuous_aorta(body, rng):
    body.aorta_wave = rng.uniform(0.025, 0.04)


def _hyperinflation(body, rng):
    body.hyperinflation = rng.uniform(0.15, 0.25)


def _paint_osteophytes(img, y, x, lungs, body, rng):
    if body.extra.get("osteophytes"):
        centre = spine_centre(y, body)
        spur = (np.abs(np.abs(x - centre) - 0.034) < 0.007) & (np.mod(y, 0.045) < 0.012) & (y > 0.3) & (y < 0.7)
        img[spur] = 0.9


def _calcified_knob(img, y, x, lungs, body, rng):
    cy, cx = body.knob
    rim = np.abs(np.hypot(y - cy, x - cx) - 0.034) < 0.01
    img[rim & (y < cy + 0.015)] = 0.97


def _streaks(img, y, x, lungs, body, rng):
    for _ in range(int(rng.integers(10, 16))):
        cy, cx = _lung_point(rng, 0.3, 0.75)
        angle = rng.uniform(0, np.pi)
        along = (y - cy) * np.cos(angle) + (x - cx) * np.sin(angle)
        across = -(y - cy) * np.sin(angle) + (x - cx) * np.cos(angle)
        streak = (np.abs(along) < 0.08) & (np.abs(across) < 0.01) & lungs
        img[streak] = np.maximum(img[streak], 0.45)


def _spots(count, radius, density):
    def paint(img, y, x, lungs, body, rng):
        for _ in range(int(rng.integers(*count))):
            spot = ellipse(y, x, *_lung_point(rng), radius, radius) & lungs
            img[spot] = density
    return paint


def _pleural_band(img, y, x, lungs, body, rng):
    side = rng.choice([-1, 1])
    edge = 0.5 + side * (body.mediastinum_width + 2 * body.lung_width)
    band = (np.abs(x - edge) < 0.025) & (y > 0.3) & (y < 0.68)
    img[band & (np.sign(x - edge) != side)] = 0.7


def _pacemaker(img, y, x, lungs, body, rng):
    """A dense generator below the left clavicle with a lead into the heart."""
    cy, cx = rng.uniform(0.2, 0.25), 0.5 + rng.uniform(0.18, 0.26)
    img[(np.abs(y - cy) < 0.03) & (np.abs(x - cx) < 0.045)] = 1.0
    t = np.clip((y - cy) / (0.62 - cy), 0, 1)
    lead = np.abs(x - (cx + (body.heart_x - cx) * t)) < 0.005
    img[lead & (y > cy) & (y < 0.62)] = 0.95


def _lines_and_tubes(img, y, x, lungs, body, rng):
    """Support devices: an endotracheal tube and a central line (and sometimes a pacemaker)."""
    img[(np.abs(x - 0.5) < 0.005) & (y > 0.02) & (y < 0.28)] = 0.95
    t = np.clip((y - 0.18) / 0.3, 0, 1)
    img[(np.abs(x - (0.38 + 0.1 * t)) < 0.004) & (y > 0.18) & (y < 0.48)] = 0.9
    if rng.random() < 0.3:
        _pacemaker(img, y, x, lungs, body, rng)


def _effusion(img, y, x, lungs, body, rng):
    """Fluid in a costophrenic angle: the lung base turns dense under a meniscus."""
    cx = 0.5 + rng.choice([-1, 1]) * (body.mediastinum_width + body.lung_width)
    base = 0.22 + 1.75 * body.lung_height - 0.05 - rng.uniform(0.06, 0.1)  # above the diaphragm's dome
    level = base - 0.04 * ((x - cx) / body.lung_width) ** 2  # the meniscus climbs the chest wall
    img[lungs & (np.abs(x - cx) < body.lung_width * 1.1) & (y > level)] = 0.58


def _patch(density, ry=0.07, rx=0.055):
    def paint(img, y, x, lungs, body, rng):
        img[ellipse(y, x, *_lung_point(rng, 0.4, 0.65), ry, rx) & lungs] = density
    return paint


def _edema(img, y, x, lungs, body, rng):
    """Perihilar haze over both lungs, with short horizontal (Kerley B) lines at the bases."""
    haze = np.exp(-(((x - 0.5) / 0.2) ** 2) - (((y - 0.5) / 0.18) ** 2)) * 0.28
    img[lungs] += haze[lungs]
    kerley = (np.mod(y, 0.02) < 0.004) & (y > 0.6) & (np.abs(np.abs(x - 0.5) - 0.3) < 0.03) & lungs
    img[kerley] = 0.45


def _atelectasis(img, y, x, lungs, body, rng):
    """A plate-like band of collapsed lung."""
    cy, cx = _lung_point(rng, 0.55, 0.68)
    img[(np.abs(y - cy - 0.1 * (x - cx)) < 0.013) & (np.abs(x - cx) < 0.1) & lungs] = 0.55


def _pneumothorax(img, y, x, lungs, body, rng):
    """Air at the apex and side with no lung markings, behind a thin pleural line."""
    side = rng.choice([-1, 1])
    cx = 0.5 + side * (body.mediastinum_width + body.lung_width)
    collapsed = ellipse(y, x, 0.22 + body.lung_height * 1.05, cx - side * 0.02, body.lung_height * 0.85,
                        body.lung_width * 0.75)
    own = lungs & (np.sign(x - 0.5) == side)
    img[own & ~collapsed] = 0.04
    line = own & ~collapsed & ellipse(y, x, 0.22 + body.lung_height * 1.05, cx - side * 0.02,
                                      body.lung_height * 0.85 + 0.008, body.lung_width * 0.75 + 0.008)
    img[line] = 0.4


def _fibrosis(img, y, x, lungs, body, rng):
    """Reticular (net-like) lines in the lower lungs."""
    net = ((np.mod(y + 0.3 * x, 0.03) < 0.004) | (np.mod(x - 0.3 * y, 0.03) < 0.004)) & (y > 0.5) & lungs
    img[net] = 0.42


def _hiatal_hernia(img, y, x, lungs, body, rng):
    """A round density behind the heart with an air-fluid level."""
    bubble = ellipse(y, x, 0.66, 0.5 + rng.uniform(-0.02, 0.02), 0.05, 0.06)
    img[bubble] = 0.62
    img[bubble & (y < 0.645)] = 0.2


def _rib_fracture(img, y, x, lungs, body, rng):
    """A break in a rib: a dark gap with the ends stepped apart."""
    cy, cx = _lung_point(rng, 0.3, 0.6)
    img[(np.abs(x - cx) < 0.01) & (np.abs(y - cy) < 0.03)] = 0.05
    img[(np.abs(x - cx - 0.03) < 0.02) & (np.abs(y - cy - 0.015) < 0.011)] = 0.5


def _opacity(img, y, x, lungs, body, rng):
    """Lung opacity: an ill-defined hazy region."""
    cy, cx = _lung_point(rng, 0.35, 0.65)
    haze = np.exp(-(((y - cy) / 0.08) ** 2) - (((x - cx) / 0.06) ** 2)) * 0.3
    img[lungs] += haze[lungs]


BIG_HEART = Sign(change=_big_heart)
STREAKS = Sign(paint=_streaks)
NODULES = Sign(paint=_spots((2, 5), 0.02, 0.75))
MASS = Sign(paint=_spots((1, 2), 0.05, 0.78))
PLEURAL_BAND = Sign(paint=_pleural_band)
EFFUSION = Sign(paint=_effusion)
CONSOLIDATION = Sign(paint=_patch(0.55))
PNEUMONIA = Sign(paint=_patch(0.5, 0.09, 0.07))
EDEMA = Sign(paint=_edema)
ATELECTASIS = Sign(paint=_atelectasis)
PNEUMOTHORAX = Sign(paint=_pneumothorax)

# Each set: label -> (sign, share of images positive by default). Target shares are seed 000's
# table (1,924 images; pacemaker is in it, and its mapping discards it); NIH shares are the
# real Data_Entry_2017 table (112,120 images); CheXpert shares are approximately those of
# Irvin et al. 2019, Table 1 (224,316 images), with `UNCERTAIN` the share written as -1.
PHANTOM_SETS: dict[str, dict[str, tuple[Sign, float]]] = {
    "target": {
        "cardiac hypertrophy": (BIG_HEART, 42 / 1924),
        "aortic sclerosis/calcification": (Sign(paint=_calcified_knob), 91 / 1924),
        "increased lung patterns": (STREAKS, 154 / 1924),
        "spinal lesions": (Sign(change=_scoliosis_or_osteophytes, paint=_paint_osteophytes), 151 / 1924),
        "abnormal lung fields": (NODULES, 33 / 1924),
        "arterial curvature": (Sign(change=_tortuous_aorta), 96 / 1924),
        "intercostal pleural thickening": (PLEURAL_BAND, 36 / 1924),
        "heart pacemaker placement": (Sign(paint=_pacemaker), 7 / 1924),
    },
    "nih": {
        "Atelectasis": (ATELECTASIS, 0.1031), "Cardiomegaly": (BIG_HEART, 0.0248),
        "Consolidation": (CONSOLIDATION, 0.0416), "Edema": (EDEMA, 0.0205), "Effusion": (EFFUSION, 0.1188),
        "Emphysema": (Sign(change=_hyperinflation), 0.0224), "Fibrosis": (Sign(paint=_fibrosis), 0.0150),
        "Hernia": (Sign(paint=_hiatal_hernia), 0.0020), "Infiltration": (STREAKS, 0.1774),
        "Mass": (MASS, 0.0516), "Nodule": (NODULES, 0.0565), "Pleural_Thickening": (PLEURAL_BAND, 0.0302),
        "Pneumonia": (PNEUMONIA, 0.0128), "Pneumothorax": (PNEUMOTHORAX, 0.0473),
    },
    "chexpert": {
        "Enlarged Cardiomediastinum": (Sign(change=_wide_mediastinum), 0.040), "Cardiomegaly": (BIG_HEART, 0.103),
        "Lung Opacity": (Sign(paint=_opacity), 0.413), "Lung Lesion": (MASS, 0.031), "Edema": (EDEMA, 0.218),
        "Consolidation": (CONSOLIDATION, 0.057), "Pneumonia": (PNEUMONIA, 0.020),
        "Atelectasis": (ATELECTASIS, 0.131), "Pneumothorax": (PNEUMOTHORAX, 0.077),
        "Pleural Effusion": (EFFUSION, 0.337), "Pleural Other": (PLEURAL_BAND, 0.011),
        "Fracture": (Sign(paint=_rib_fracture), 0.032), "Support Devices": (Sign(paint=_lines_and_tubes), 0.472),
    },
}
UNCERTAIN = {"Enlarged Cardiomediastinum": 0.045, "Cardiomegaly": 0.029, "Lung Opacity": 0.019,
             "Lung Lesion": 0.005, "Edema": 0.052, "Consolidation": 0.107, "Pneumonia": 0.070,
             "Atelectasis": 0.131, "Pneumothorax": 0.012, "Pleural Effusion": 0.042, "Pleural Other": 0.008,
             "Fracture": 0.002, "Support Devices": 0.004}


def paint_findings(findings: list[str], signs: dict[str, Sign], body: Anatomy, rngs: dict):
    """Apply the findings' anatomy changes to `body`; return the painter for the film."""
    for name in findings:
        if signs[name].change:
            signs[name].change(body, rngs[name])

    def paint(img, y, x, lungs):
        for name in findings:
            if signs[name].paint:
                signs[name].paint(img, y, x, lungs, body, rngs[name])
    return paint


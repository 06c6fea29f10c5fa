"""Procedural chest anatomy for phantom radiographs: body, lungs, heart, mediastinum and
aorta, trachea, spine, ribs, clavicles.

A patient's anatomy (body build, heart size, aortic knob, rib spacing, ...) is drawn once and
kept for all of their films; each film adds its own pose (shift, rotation, scale),
inspiration and exposure. So follow-up films of one patient look alike but are not copies,
as in a real archive, and a near-duplicate detector has something real to tell apart.

Coordinates are in units of the image height, x centred on the image; patient's left is on
the image's right (PA view). Density is in [0, 1], bright = dense.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

RENDER_SIDE = 512  # films are drawn at most this big, then resized to their real size


@dataclass
class Anatomy:
    """One patient's body; findings that change anatomy (a big heart, scoliosis) edit it."""

    body_width: float
    heart_scale: float
    heart_x: float
    lung_height: float
    lung_width: float
    mediastinum_width: float
    knob: tuple[float, float]  # aortic knob centre (y, x)
    rib_gap: float
    clavicle_tilt: float
    spine_curve: float = 0.0  # lateral deviation at mid-spine (scoliosis when large)
    aorta_wave: float = 0.0  # tortuosity of the descending aorta
    hyperinflation: float = 0.0  # emphysema: taller, darker lungs, flat diaphragm
    extra: dict = field(default_factory=dict)  # what findings need from each other


def patient_anatomy(rng: np.random.Generator) -> Anatomy:
    return Anatomy(
        body_width=rng.uniform(0.36, 0.44), heart_scale=rng.uniform(0.9, 1.1), heart_x=rng.uniform(0.53, 0.56),
        lung_height=rng.uniform(0.27, 0.31), lung_width=rng.uniform(0.13, 0.16),
        mediastinum_width=rng.uniform(0.045, 0.06), knob=(rng.uniform(0.3, 0.34), rng.uniform(0.55, 0.57)),
        rib_gap=rng.uniform(0.055, 0.065), clavicle_tilt=rng.uniform(0.04, 0.08),
        spine_curve=rng.uniform(-0.008, 0.008))


@dataclass(frozen=True)
class Pose:
    """How one film of the patient was taken."""

    dy: float
    dx: float
    angle: float  # radians
    scale: float
    inspiration: float  # moves the diaphragm
    exposure: float  # overall brightness factor
    noise: float


def film_pose(rng: np.random.Generator) -> Pose:
    return Pose(dy=rng.uniform(-0.03, 0.03), dx=rng.uniform(-0.03, 0.03), angle=rng.uniform(-0.05, 0.05),
                scale=rng.uniform(0.95, 1.05), inspiration=rng.uniform(-0.03, 0.03),
                exposure=rng.uniform(0.88, 1.08), noise=rng.uniform(0.015, 0.03))


def film_grid(shape: tuple[int, int], pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (y, x) of each pixel of a film of `shape` taken in `pose`."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    y, x = y / rows - 0.5, (x - cols / 2) / rows
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    yy = (cos * y - sin * x) / pose.scale + 0.5 - pose.dy
    xx = (sin * y + cos * x) / pose.scale + 0.5 - pose.dx
    return yy, xx


def ellipse(y, x, cy, cx, ry, rx) -> np.ndarray:
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1.0


def lungs_mask(y, x, body: Anatomy, pose: Pose) -> np.ndarray:
    """Two lung fields above domed diaphragms; emphysema makes them taller and flatter below."""
    height = body.lung_height * (1 + body.hyperinflation) + pose.inspiration
    mask = np.zeros(y.shape, bool)
    for side in (-1, 1):
        cx = 0.5 + side * (body.mediastinum_width + body.lung_width)
        dome = 0.22 + height * 1.75 - (0.05 * (1 - body.hyperinflation)) * np.cos((x - cx) / body.lung_width)
        mask |= ellipse(y, x, 0.22 + height, cx, height, body.lung_width) & (y < dome)
    return mask


def heart_mask(y, x, body: Anatomy) -> np.ndarray:
    s = body.heart_scale
    return ellipse(y, x, 0.63, body.heart_x, 0.11 * s, 0.12 * s)


def spine_centre(y, body: Anatomy) -> np.ndarray:
    return 0.5 + body.spine_curve * np.sin((y - 0.1) * np.pi / 0.8)


def aorta_centre(y, body: Anatomy) -> np.ndarray:
    """The descending aorta, from the knob down behind the heart, wavy when tortuous."""
    return body.knob[1] - 0.01 + body.aorta_wave * np.sin((y - body.knob[0]) * 5 * np.pi)


def draw_anatomy(y, x, body: Anatomy, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(density image, lung mask) of the healthy anatomy."""
    img = np.full(y.shape, 0.03, np.float32)
    half = np.where(y < 0.14, 0.08 + (body.body_width - 0.08) * np.clip(y / 0.14, 0, 1) ** 0.5, body.body_width)
    inside = np.abs(x - 0.5) < half
    img[inside] = (0.3 + 0.15 * np.sqrt(np.clip(1 - ((x - 0.5) / half) ** 2, 0, 1)))[inside]  # thicker mid-body
    lungs = lungs_mask(y, x, body, pose)
    img[lungs] = 0.13 - 0.04 * body.hyperinflation
    img[~lungs & inside & (y > 0.72 + pose.inspiration)] = 0.5  # abdomen below the diaphragm
    centre = spine_centre(y, body)
    img[(np.abs(x - 0.5) < body.mediastinum_width + 0.01) & (y > 0.18) & (y < 0.72)] = 0.5  # mediastinum
    img[(np.abs(x - 0.5) < 0.012) & (y > 0.04) & (y < 0.34)] = 0.3  # trachea: air
    _draw_ribs(img, y, x, body, inside)
    vertebra = (np.abs(x - centre) < 0.03) & (y > 0.04) & (y < 0.95)
    disc = (np.mod(y, 0.045) < 0.008)
    img[vertebra] = np.where(disc[vertebra], 0.55, 0.72)
    img[heart_mask(y, x, body)] = 0.55
    img[ellipse(y, x, *body.knob, 0.03, 0.03)] = 0.6  # aortic knob
    img[(np.abs(x - aorta_centre(y, body)) < 0.014) & (y > body.knob[0]) & (y < 0.72)] = 0.58
    _draw_clavicles(img, y, x, body)
    return img, lungs


def _draw_ribs(img, y, x, body: Anatomy, inside) -> None:
    """Posterior ribs: arcs from the spine sweeping out and down."""
    offset = np.abs(x - 0.5)
    for k in range(10):
        top = 0.16 + body.rib_gap * k + 0.9 * offset**2 - 0.2 * offset
        rib = (np.abs(y - top) < 0.009) & (offset > 0.03) & (offset < body.body_width - 0.02) & inside & (y < 0.8)
        img[rib] += 0.12


def _draw_clavicles(img, y, x, body: Anatomy) -> None:
    offset = np.abs(x - 0.5)
    line = 0.17 - body.clavicle_tilt * (offset - 0.05) / 0.25 + 0.02 * np.sin(offset * 12)
    img[(np.abs(y - line) < 0.011) & (offset > 0.04) & (offset < 0.31)] = 0.7


def film(shape: tuple[int, int], body: Anatomy, pose: Pose, paint, rng: np.random.Generator) -> np.ndarray:
    """A film of `shape`: anatomy drawn at most RENDER_SIDE px, findings painted by
    `paint(img, y, x, lungs)`, resized, then exposure and quantum noise at full size."""
    scale = min(1.0, RENDER_SIDE / max(shape))
    small = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    y, x = film_grid(small, pose)
    img, lungs = draw_anatomy(y, x, body, pose)
    paint(img, y, x, lungs)
    img = cv2.GaussianBlur(img, (0, 0), max(small) / 400)  # soft edges, as film has
    if small != shape:
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    img = img * pose.exposure + rng.normal(0, pose.noise, shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)

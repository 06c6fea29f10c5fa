"""Near-duplicate films within a set: the same exposure filed twice (re-exported through another
grey curve, at another matrix size, under another name or patient ID).

Two stages. Candidates: 16 x 16 thumbnails, standardised, whose correlation is at least
CANDIDATE (scikit-learn's chunked radius search, so memory stays bounded). Verdict: the
correlation of the two films' fine detail (the image minus its blur, at up to 64 px) must
reach the threshold. Fine detail includes the exposure's own quantum noise, which a re-export
keeps and a new film of the same patient does not: on phantom sets, re-exports score at least
0.99 and follow-up films of one patient at most 0.72, while whole-image similarity cannot
tell them apart (0.999 against 0.991).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

THUMB = 16  # side of the candidate thumbnail
CANDIDATE = 0.98  # thumbnail correlation that makes a pair worth a closer look
DETAIL_SIDE = 64  # films are compared at most this big
DETAIL_BLUR = 1.5  # pixels (at DETAIL_SIDE): what is left after removing this blur is "detail"


def _standardised(values: np.ndarray) -> np.ndarray:
    flat = values.astype(np.float32).ravel()
    flat -= flat.mean()
    return flat / max(float(np.linalg.norm(flat)), 1e-6)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The candidate feature of one prepared image (unit vector of THUMB * THUMB values)."""
    return _standardised(cv2.resize(image.astype(np.float32), (THUMB, THUMB), interpolation=cv2.INTER_AREA))


def _detail(image: np.ndarray) -> np.ndarray:
    side = min(DETAIL_SIDE, image.shape[0])
    small = cv2.resize(image.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    return _standardised(small - cv2.GaussianBlur(small, (0, 0), DETAIL_BLUR * side / DETAIL_SIDE))


def near_duplicates(images: np.ndarray, thumbnails: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """[(dropped index, kept index, detail correlation)]: in each group of near-duplicates the
    lowest index (the earliest row) is kept. `images` may be a memmap; only candidates are read."""
    if len(images) < 2:
        return []
    radius = float(np.sqrt(2 - 2 * CANDIDATE))  # unit vectors: |a - b|^2 = 2 - 2 corr
    graph = NearestNeighbors(radius=radius, algorithm="brute").fit(thumbnails).radius_neighbors_graph(mode="connectivity")
    rows, cols = graph.nonzero()
    pairs, scores, current = [], {}, (-1, None)
    for i, j in zip(rows, cols):  # row-major: all of film i's candidates come together
        if i < j:
            if current[0] != i:  # film i is read and filtered once, not once per candidate
                current = (i, _detail(images[i]))
            score = float(current[1] @ _detail(images[j]))
            if score >= threshold:
                pairs.append((i, j))
                for end in (i, j):
                    scores[end] = max(scores.get(end, -1.0), score)
    if not pairs:
        return []
    i, j = np.array(pairs).T
    _, group = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(images),) * 2), directed=False)
    first = {}
    for index in range(len(images)):
        first.setdefault(group[index], index)
    return [(index, first[group[index]], scores[index]) for index in sorted(scores) if first[group[index]] != index]

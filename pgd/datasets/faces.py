"""Procedurally drawn faces: the stand-ins of CelebA and BFFHQ.

A face is an ellipse of skin with eyes, eyebrows, a nose and a mouth, on a background, under a
random light; around it hair. The attributes the real datasets label are drawn the way they show
in photographs, each with random variation:

* ``blond`` (CelebA's target ``Blond_Hair``): the hair is light and yellowish instead of brown
  or black;
* ``male`` (the bias of both datasets): short hair, a beard and moustache, heavier eyebrows;
  women have long hair falling to the shoulders and red lips;
* ``old`` (BFFHQ's target, age): grey hair, wrinkles on the forehead and beside the eyes, paler
  skin.

Gender is drawn with large, high-contrast shapes (hair length, beard), hair colour and age with
smaller or fainter ones, so that, as in the real data, the bias is the easier cue to learn. Skin
tone, face size and position, hair volume, background, light and noise vary at random, so that no
pixel alone tells the attributes apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_BLOND = np.array([[0.80, 0.68, 0.42], [0.86, 0.76, 0.52], [0.74, 0.60, 0.36]])
_DARK = np.array([[0.42, 0.30, 0.18], [0.30, 0.22, 0.15], [0.52, 0.40, 0.26]])
_GREY = np.array([[0.78, 0.78, 0.78], [0.66, 0.66, 0.68], [0.88, 0.87, 0.85]])
_SKIN = np.array([[0.96, 0.80, 0.69], [0.87, 0.68, 0.55], [0.72, 0.53, 0.40], [0.55, 0.38, 0.27]])


def _mix(palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    weights = rng.dirichlet(np.ones(len(palette)))
    return np.clip(weights @ palette + rng.normal(0, 0.03, 3), 0, 1)


def render_face(
    size: int,
    *,
    blond: bool,
    male: bool,
    old: bool = False,
    rng: np.random.Generator,
    height: int | None = None,
) -> Image.Image:
    """One face of ``size`` (width) x ``height`` (default ``size``) pixels, RGB."""
    h, w = height or size, size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w  # coordinates in [0, 1)
    image = np.empty((h, w, 3), np.float32)
    # background: a vertical gradient between two random colours
    top, bottom = rng.uniform(0.15, 0.95, 3), rng.uniform(0.15, 0.95, 3)
    image[:] = top + (bottom - top) * yy[..., None]
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.52 + rng.normal(0, 0.03)
    rx, ry = rng.uniform(0.19, 0.23), rng.uniform(0.25, 0.30)
    face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    hair = _mix(_BLOND if blond else _DARK, rng)
    if old:  # greying: grey mixed into the hair's own colour, more or less
        hair = hair + rng.uniform(0.45, 0.8) * (_mix(_GREY, rng) - hair)
    # hair: a cap over the top of the head; long hair falls to the shoulders on both sides
    volume = rng.uniform(1.12, 1.25)
    cap = ((xx - cx) / (rx * volume)) ** 2 + ((yy - cy + 0.04) / (ry * volume)) ** 2 <= 1
    # short hair: a thin band on top of the head; long hair: down to the temples, and more
    cap &= yy < cy - ry * (rng.uniform(0.88, 0.95) if male else rng.uniform(0.15, 0.35))
    if not male:
        sides = (np.abs(xx - cx) <= rx * rng.uniform(1.25, 1.45)) & (yy >= cy - ry * 0.4)
        sides &= yy <= cy + ry * rng.uniform(0.95, 1.25)
        cap |= sides & ~face
    image[cap] = hair
    skin = _mix(_SKIN, rng)
    if old:
        skin = skin * 0.85 + 0.12
    image[face] = skin
    # eyebrows, eyes, nose, mouth
    eye_y, eye_dx = cy - ry * 0.18, rx * 0.42
    brow = hair * 0.6 if not old else _mix(_GREY, rng) * 0.8
    thick = 0.022 if male else 0.012
    for side in (-1, 1):
        ex = cx + side * eye_dx
        eye = ((xx - ex) / (rx * 0.17)) ** 2 + ((yy - eye_y) / (ry * 0.07)) ** 2 <= 1
        image[eye] = (0.12, 0.10, 0.10)
        brows = (np.abs(yy - (eye_y - ry * 0.16)) <= thick) & (np.abs(xx - ex) <= rx * 0.24)
        image[brows & face] = brow
        if old:  # crow's feet beside the eyes
            for k in (-1, 0, 1):
                line = np.abs((yy - eye_y) - k * 0.5 * (xx - (ex + side * rx * 0.3))) <= 0.006
                line &= np.abs(xx - (ex + side * rx * 0.33)) <= rx * 0.09
                image[line & face] = skin * 0.84
    nose = (np.abs(xx - cx) <= rx * 0.06) & (np.abs(yy - cy) <= ry * 0.12)
    image[nose] = skin * 0.88
    mouth_y = cy + ry * 0.45
    mouth = ((xx - cx) / (rx * 0.38)) ** 2 + ((yy - mouth_y) / (ry * 0.06)) ** 2 <= 1
    image[mouth] = (0.55, 0.25, 0.25) if male else (0.80, 0.12, 0.20)
    if male:  # beard and moustache (dark stubble, whatever the hair colour)
        beard = face & (yy >= mouth_y - ry * 0.02) & ~mouth
        beard |= face & (np.abs(yy - (mouth_y - ry * 0.13)) <= ry * 0.05)
        beard &= np.abs(xx - cx) <= rx * rng.uniform(0.75, 0.95)
        image[beard] = _mix(_DARK, rng) * rng.uniform(0.6, 1.0)
    if old:  # forehead wrinkles
        for k in range(3):
            wy = cy - ry * (0.45 + 0.09 * k)
            line = (np.abs(yy - wy - 0.01 * np.sin(xx * 40)) <= 0.006) & (
                np.abs(xx - cx) <= rx * 0.5
            )
            image[line & face] = skin * 0.84
    # light: brightness and a colour cast, so that no colour is the same in every photograph
    image *= rng.uniform(0.75, 1.15) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    image += rng.normal(0, 0.04, image.shape).astype(np.float32)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))

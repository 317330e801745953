"""Reads back what a picture of one shape shows: its colour (the dominant non-background colour,
named by the nearest entry of shapes.COLOURS) and its shape, by simple geometry.

    check(image_uint8_hwc) -> {"colour": "green", "shape": "triangle", "background": ["white"], ...}

Background: the named colours covering the image border (one or two of them). Foreground: pixels
whose nearest named colour is not a background one; its largest 4-connected component is the shape. Shape, from
that component: a hole (background enclosed by it) -> ring; else solidity (area / convex-hull
area) and fill (area / bounding-box area) separate the convex shapes (circle ~0.79 fill,
square ~1.0, triangle ~0.5) from the concave ones (cross ~0.72 solidity, star ~0.58).
"""
from collections import deque

import numpy as np

try:
    from . import shapes  # noqa: F401  (package import)
except ImportError:
    import shapes

_NAMES = list(shapes.COLOURS)
_RGB = np.array([shapes.COLOURS[n] for n in _NAMES], np.float32)


def nearest_colour(rgb):
    d = ((_RGB - np.asarray(rgb, np.float32)) ** 2).sum(axis=-1)
    return _NAMES[int(np.argmin(d))]


def _label_nearest(img):
    d = ((img[..., None, :].astype(np.float32) - _RGB) ** 2).sum(axis=-1)
    return np.argmin(d, axis=-1)


def _background(img):
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    labels = _label_nearest(border)
    counts = np.bincount(labels, minlength=len(_NAMES)) / len(labels)
    order = np.argsort(-counts)
    bg = [int(order[0])]
    if counts[order[1]] > 0.2:
        bg.append(int(order[1]))
    return bg


def _components(mask):
    """Labels of the 4-connected components of mask (0 = outside), and their sizes."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    sizes = [0]
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n = len(sizes)
        labels[y0, x0] = n
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    queue.append((yy, xx))
        sizes.append(size)
    return labels, sizes


def _hull_area(mask):
    """Area of the convex hull of the pixel squares of mask (monotone chain)."""
    ys, xs = np.nonzero(mask)
    pts = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    pts = np.unique(pts, axis=0)
    pts = sorted(map(tuple, pts))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def shape_features(mask):
    """Geometry of one shape's mask: area, fill, solidity, hole (fraction of area)."""
    area = int(mask.sum())
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    # Holes: non-shape pixels that cannot reach the image border without crossing the shape.
    outside, _ = _components(np.pad(~mask, 1, constant_values=True))
    holes = (outside[1:-1, 1:-1] != outside[0, 0]) & ~mask
    return {"area": area, "fill": area / box, "solidity": area / max(_hull_area(mask), 1.0),
            "hole": float(holes.sum()) / area}


def classify(f):
    if f["hole"] > 0.08:
        return "ring"
    if f["solidity"] < 0.83:
        return "star" if f["solidity"] < 0.66 else "cross"
    if f["fill"] < 0.67:
        return "triangle"
    return "square" if f["fill"] > 0.905 else "circle"


def check(img):
    """What img (uint8 [H, W, 3]) shows; colour/shape None when no foreground is found."""
    img = np.asarray(img)[..., :3]
    bg = _background(img)
    labels_rgb = _label_nearest(img)
    fg = ~np.isin(labels_rgb, bg)
    result = {"background": [_NAMES[b] for b in bg], "colour": None, "shape": None}
    if fg.sum() < 8:
        return result
    labels, sizes = _components(fg)
    mask = labels == int(np.argmax(sizes))
    if mask.sum() < 8:
        return result
    # Colour: the most common named colour among the shape's pixels (edges blend with the
    # background, so each pixel votes for its nearest name).
    votes = np.bincount(labels_rgb[mask], minlength=len(_NAMES))
    result["colour"] = _NAMES[int(np.argmax(votes))]
    f = shape_features(mask)
    result.update(f)
    result["shape"] = classify(f)
    return result

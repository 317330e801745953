"""The procedural data set of dgrid's default model: simple shapes on plain or two-tone backgrounds,
drawn on the fly with numpy (no files), with captions in varied wordings.

    scene = sample_scene(rng)            # what to draw (a dict, the ground truth)
    image = render(scene)                # uint8 [64, 64, 3]
    text = caption(scene, rng)           # one of the training templates' wordings
    HELD_OUT                             # 50 (caption, shape, colour) in wordings the templates never make

Everything is deterministic given the numpy Generator passed in.
"""
import numpy as np

SIZE = 64
SUPERSAMPLE = 2  # coverage-based anti-aliasing

# Named colours, far apart in RGB so that a nearest-colour reading is unambiguous.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "pink": (250, 140, 200),
    "cyan": (40, 215, 225),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "brown": (125, 75, 30),
}
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
# Radius of the shape's bounding circle in pixels (of a 64-pixel image).
SIZES = {"small": 9.0, "medium": 13.0, "large": 18.0}
POSITIONS = {
    "center": (32, 32),
    "top left": (20, 20),
    "top right": (44, 20),
    "bottom left": (20, 44),
    "bottom right": (44, 44),
    "top": (32, 19),
    "bottom": (32, 45),
    "left": (19, 32),
    "right": (45, 32),
}
SPLITS = ["horizontal", "vertical"]  # two-tone background: top/bottom or left/right halves


def _grid():
    n = SIZE * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)  # x, y in pixel units


_GX, _GY = _grid()


def _in_polygon(x, y, pts):
    """Even-odd rule over the polygon's edges (vectorised over the grid)."""
    inside = np.zeros(x.shape, bool)
    n = len(pts)
    for i in range(n):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % n]
        crosses = (y0 > y) != (y1 > y)
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (x < xi)
    return inside


def shape_mask(shape, cx, cy, r, x=None, y=None):
    """Boolean mask of `shape` centred at (cx, cy) with bounding radius r on the grid (x, y)."""
    x = _GX if x is None else x
    y = _GY if y is None else y
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        h = 0.82 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "cross":
        w = 0.34 * r
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if shape == "triangle":  # equilateral, pointing up, centred on its bounding circle
        rr = 1.1 * r
        pts = [(cx + rr * np.cos(a), cy - rr * np.sin(a))
               for a in np.radians([90, 210, 330])]
        return _in_polygon(x, y, pts)
    if shape == "star":  # five points, pointing up
        pts = []
        for k in range(10):
            a = np.radians(90 + 36 * k)
            rad = r * 1.08 if k % 2 == 0 else r * 0.46
            pts.append((cx + rad * np.cos(a), cy - rad * np.sin(a)))
        return _in_polygon(x, y, pts)
    raise ValueError(shape)


def _coverage(mask):
    s = SUPERSAMPLE
    return mask.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))


def sample_scene(rng, two_shapes_p=0.1, two_tone_p=0.25):
    """A random scene: {'shapes': [{shape, colour, size, position, cx, cy, r}], 'background':
    [colour] or [colour, colour], 'split'}."""
    names = list(COLOURS)
    if rng.random() < two_tone_p:
        bg = [str(c) for c in rng.choice(names, 2, replace=False)]
    else:
        bg = [str(rng.choice(names))]
    split = str(rng.choice(SPLITS))
    n = 2 if rng.random() < two_shapes_p else 1
    shapes = []
    used = set(bg)
    positions = list(POSITIONS)
    if n == 2:  # two shapes side by side (left/right or top/bottom) so they don't overlap
        pair = [("left", "right"), ("top", "bottom"), ("top left", "bottom right"),
                ("top right", "bottom left")][rng.integers(4)]
    for i in range(n):
        colour = str(rng.choice([c for c in names if c not in used]))
        used.add(colour)
        if n == 2:
            position, size = pair[i], str(rng.choice(["small", "medium"]))
        else:
            position, size = str(rng.choice(positions)), str(rng.choice(list(SIZES)))
        px, py = POSITIONS[position]
        jitter = rng.uniform(-2.0, 2.0, 2)
        shapes.append({"shape": str(rng.choice(SHAPES)), "colour": colour, "size": size,
                       "position": position, "cx": px + jitter[0], "cy": py + jitter[1],
                       "r": SIZES[size] * rng.uniform(0.93, 1.07)})
    return {"shapes": shapes, "background": bg, "split": split}


def render(scene):
    """The scene as uint8 [SIZE, SIZE, 3]."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    bg = [np.array(COLOURS[c], np.float32) for c in scene["background"]]
    img[:] = bg[0]
    if len(bg) == 2:
        if scene["split"] == "horizontal":
            img[SIZE // 2:] = bg[1]
        else:
            img[:, SIZE // 2:] = bg[1]
    for s in scene["shapes"]:
        a = _coverage(shape_mask(s["shape"], s["cx"], s["cy"], s["r"]))[..., None]
        img = img * (1 - a) + np.array(COLOURS[s["colour"]], np.float32) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---- captions ------------------------------------------------------------------------------------

_SIZE_WORDS = {"small": ["small", "little", "tiny"], "medium": ["medium", "medium-sized"],
               "large": ["large", "big"]}
_POS_WORDS = {
    "center": ["in the center", "in the middle", "centered"],
    "top left": ["in the top left corner", "at the top left", "in the upper left"],
    "top right": ["in the top right corner", "at the top right", "in the upper right"],
    "bottom left": ["in the bottom left corner", "at the bottom left", "in the lower left"],
    "bottom right": ["in the bottom right corner", "at the bottom right", "in the lower right"],
    "top": ["at the top", "near the top"],
    "bottom": ["at the bottom", "near the bottom"],
    "left": ["on the left", "on the left side"],
    "right": ["on the right", "on the right side"],
}


def _bg_phrase(scene, rng, word):
    bg = scene["background"]
    if len(bg) == 1:
        return f"{bg[0]} {word}"
    halves = ("top", "bottom") if scene["split"] == "horizontal" else ("left", "right")
    if rng.random() < 0.5:
        return f"{bg[0]} and {bg[1]} {word}"
    return f"{word} {halves[0]} {bg[0]} and {halves[1]} {bg[1]}"


def _noun_phrase(s, rng, with_size, with_pos):
    words = []
    if with_size:
        words.append(str(rng.choice(_SIZE_WORDS[s["size"]])))
    words += [s["colour"], s["shape"]]
    phrase = " ".join(words)
    if with_pos:
        phrase += " " + str(rng.choice(_POS_WORDS[s["position"]]))
    return phrase


def caption(scene, rng):
    """A caption in one of the training templates, chosen with rng."""
    shapes = scene["shapes"]
    with_size = rng.random() < 0.6 or len(shapes) == 2
    with_pos = rng.random() < 0.6 or len(shapes) == 2
    nps = [_noun_phrase(s, rng, with_size, with_pos) for s in shapes]
    subject = " and ".join(("a " + p) for p in nps)
    bare = " and ".join(nps)
    bgw = str(rng.choice(["background", "backdrop"]))
    bgp = _bg_phrase(scene, rng, bgw)
    t = rng.integers(6)
    if t == 0:
        return f"{subject} on a {bgp}"
    if t == 1:
        return f"{bare}, {bgp}"
    if t == 2:
        return f"a picture of {subject} on a {bgp}"
    if t == 3:
        return f"{subject} against a {bgp}"
    if t == 4:
        return f"an image of {subject}, {bgp}"
    return f"{bgp} with {subject}"


def add_filler_words(text, rng, max_words=2):
    """text with 1..max_words made-up words (2-6 random letters) put between its words: training
    captions with words the model cannot know, so that it learns to look past unknown words
    instead of only ever seeing the templates' exact wordings. Chosen without the held-out forms."""
    words = text.split()
    for _ in range(int(rng.integers(1, max_words + 1))):
        n = int(rng.integers(2, 7))
        word = "".join(chr(ord("a") + int(k)) for k in rng.integers(0, 26, n))
        words.insert(int(rng.integers(0, len(words) + 1)), word)
    return " ".join(words)


# ---- held-out captions ---------------------------------------------------------------------------
# Wordings no template produces: other verbs, connectives and word orders ("draw", "there is",
# "shown on a plain", "sits on", "in front of", "background: x", ...). Single shapes, plain backgrounds; each names
# the shape, its colour and the background so that the checker can grade it.
_HELD_OUT_FORMS = [
    "draw a {c} {s} on {b}",
    "there is a {c} {s} on a {b} background",
    "{c} {s} shown on a plain {b} background",
    "please make a {c} {s} with a {b} background",
    "one {c} {s} over a {b} backdrop",
    "a {c} {s} sits on a {b} background",
    "a {b} background and a {c} {s}",
    "a {c} {s}. background: {b}",
    "a {c} {s} on top of a {b} background",
    "a {c} {s} in front of a {b} backdrop",
]


def held_out(n=50, seed=2026):
    """n (caption, shape, colour, background) with the shape's colour and the background distinct."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    out = []
    for i in range(n):
        form = _HELD_OUT_FORMS[i % len(_HELD_OUT_FORMS)]
        s = SHAPES[i % len(SHAPES)]
        c = str(rng.choice(names))
        b = str(rng.choice([x for x in names if x != c]))
        out.append((form.format(c=c, s=s, b=b), s, c, b))
    return out


def corpus(n, seed=0):
    """n training captions, for the tokenizers."""
    rng = np.random.default_rng(seed)
    return [caption(sample_scene(rng), rng) for _ in range(n)]

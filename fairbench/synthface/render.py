"""Procedural faces with exactly known attributes (the synthface world's ground truth).

A face is drawn on a 96 x 96 canvas with PIL and box-filtered down to 32 x 32. Known
attributes: gender presentation (long hair and lip colour vs short hair, stubble), skin tone
(4 groups, sampled along the Monk Skin Tone scale), age (young vs old: grey hair, wrinkles),
occupation family (background, clothing, headwear, held tool), and, when a spec names one,
expression (EXPRESSIONS: mouth, brows and eyes). Nuisance variation drawn from the same seed:
position, head size, yaw, hair colour and style, lighting, glasses, and the mouth of a spec that
names no expression (the text-only world's renders, unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fairbench.synthface.families import Look, load_families

SIZE = 32
CANVAS = 96
GENDERS = ("male", "female")
SKIN_GROUPS = ("light", "medium-light", "medium-dark", "dark")
AGE_GROUPS = ("young", "old")
EXPRESSIONS = ("neutral", "smiling", "sad", "angry", "surprised")
# Monk Skin Tone scale swatches MST-1 .. MST-10 (Monk 2019, skintone.google)
MONK = ((246, 237, 228), (243, 231, 219), (247, 234, 208), (234, 218, 186), (215, 189, 150),
        (160, 126, 86), (130, 92, 67), (96, 65, 52), (58, 49, 42), (41, 36, 32))
MONK_OF_GROUP = ((0, 1, 2), (3, 4), (5, 6), (7, 8, 9))
YOUNG_HAIR = ((25, 20, 18), (60, 40, 25), (110, 70, 40), (200, 160, 90), (140, 60, 30))
OLD_HAIR = ((170, 170, 170), (205, 205, 200), (235, 235, 235))


@dataclass(frozen=True)
class FaceSpec:
    """The attributes a render is labelled with."""

    gender: str
    skin: str
    age: str
    family: str
    # None: the mouth is nuisance drawn from the seed, as in every render made before expressions were
    # labelled; a name from EXPRESSIONS: exactly that expression, from the same random draws otherwise
    expression: str | None = None

    def __post_init__(self) -> None:
        if self.expression is not None and self.expression not in EXPRESSIONS:
            raise ValueError(f"unknown expression {self.expression!r}; one of {EXPRESSIONS}")


def _jitter(rgb, rng, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)


def _background(d: ImageDraw.ImageDraw, look: Look, rng) -> None:
    bg = _jitter(look.background, rng, 12)
    d.rectangle([0, 0, CANVAS, CANVAS], fill=bg)
    alt = _shade(bg, 0.75 if sum(bg) > 250 else 1.6)
    p = look.pattern
    if p == "cross":
        cx, cy = (14, 14) if rng.random() < 0.5 else (82, 14)
        d.rectangle([cx - 8, cy - 3, cx + 8, cy + 3], fill=(220, 40, 40))
        d.rectangle([cx - 3, cy - 8, cx + 3, cy + 8], fill=(220, 40, 40))
    elif p == "bricks":
        for y in range(0, CANVAS, 10):
            d.line([0, y, CANVAS, y], fill=alt, width=2)
            for x in range(5 * ((y // 10) % 2), CANVAS, 20):
                d.line([x, y, x, y + 10], fill=alt, width=2)
    elif p == "blinds":
        for y in range(4, CANVAS, 8):
            d.line([0, y, CANVAS, y], fill=alt, width=3)
    elif p == "grid":
        for v in range(0, CANVAS, 12):
            d.line([v, 0, v, CANVAS], fill=(40, 160, 200), width=1)
            d.line([0, v, CANVAS, v], fill=(40, 160, 200), width=1)
    elif p == "tiles":
        for y in range(0, CANVAS, 16):
            for x in range(0, CANVAS, 16):
                if (x // 16 + y // 16) % 2:
                    d.rectangle([x, y, x + 15, y + 15], fill=alt)
    elif p == "chalk":
        for _ in range(4):
            x, y = int(rng.integers(4, 80)), int(rng.integers(4, 40))
            d.line([x, y, x + int(rng.integers(8, 16)), y + int(rng.integers(-3, 4))], fill=(230, 230, 230), width=2)
    elif p == "dots":
        for _ in range(10):
            x, y = int(rng.integers(0, CANVAS)), int(rng.integers(0, 60))
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(250, 220, 60))
    elif p == "stripes":
        for x in range(-CANVAS, CANVAS, 14):
            d.line([x, 0, x + CANVAS, CANVAS], fill=alt, width=4)
    elif p == "road":
        d.rectangle([0, 58, CANVAS, CANVAS], fill=(90, 90, 95))
        for x in range(0, CANVAS, 16):
            d.rectangle([x, 70, x + 8, 72], fill=(240, 240, 240))
    elif p == "waves":
        for y in range(6, CANVAS, 14):
            d.arc([-10, y, 40, y + 12], 180, 360, fill=alt, width=3)
            d.arc([40, y, 90, y + 12], 180, 360, fill=alt, width=3)
    elif p == "field":
        d.rectangle([0, 0, CANVAS, 40], fill=(150, 200, 245))
        d.ellipse([62, 6, 78, 22], fill=(255, 220, 60))


def _clothing(d: ImageDraw.ImageDraw, look: Look, rng, cx: int, top: int) -> None:
    cloth = _jitter(look.clothing, rng, 10)
    d.rounded_rectangle([cx - 40, top, cx + 40, CANVAS + 20], radius=18, fill=cloth)
    c = look.collar
    if c == "v":
        d.polygon([(cx - 10, top), (cx + 10, top), (cx, top + 14)], fill=(240, 240, 240))
    elif c == "stripes":
        d.rectangle([cx - 40, top + 10, cx + 40, top + 14], fill=(240, 240, 90))
        d.rectangle([cx - 40, top + 20, cx + 40, top + 24], fill=(240, 240, 90))
    elif c == "shirt_tie":
        d.polygon([(cx - 9, top), (cx + 9, top), (cx, top + 16)], fill=(245, 245, 245))
        d.polygon([(cx - 2, top + 2), (cx + 2, top + 2), (cx + 3, top + 22), (cx - 3, top + 22)], fill=(170, 20, 30))
    elif c == "hood":
        d.arc([cx - 26, top - 8, cx + 26, top + 18], 0, 180, fill=_shade(cloth, 0.7), width=4)
    elif c == "buttons":
        for k in range(3):
            d.ellipse([cx - 8, top + 5 + 7 * k, cx - 4, top + 9 + 7 * k], fill=(40, 40, 40))
            d.ellipse([cx + 4, top + 5 + 7 * k, cx + 8, top + 9 + 7 * k], fill=(40, 40, 40))
    elif c == "round":
        d.arc([cx - 12, top - 8, cx + 12, top + 8], 0, 180, fill=(240, 240, 240), width=3)
    elif c == "scarf":
        d.rectangle([cx - 16, top, cx + 16, top + 7], fill=(220, 40, 120))
    elif c == "badge":
        d.polygon([(cx + 14, top + 8), (cx + 20, top + 8), (cx + 22, top + 14), (cx + 17, top + 18), (cx + 12, top + 14)],
                  fill=(250, 210, 40))
    elif c == "pockets":
        d.rectangle([cx - 24, top + 10, cx - 12, top + 20], outline=_shade(cloth, 0.6), width=2)
        d.rectangle([cx + 12, top + 10, cx + 24, top + 20], outline=_shade(cloth, 0.6), width=2)
    elif c == "apron":
        d.rectangle([cx - 18, top + 4, cx + 18, CANVAS], fill=(250, 250, 250))
    elif c == "plaid":
        for x in range(cx - 40, cx + 40, 10):
            d.line([x, top, x, CANVAS], fill=(170, 40, 40), width=2)


def _tool(d: ImageDraw.ImageDraw, look: Look, side: int) -> None:
    x = 80 if side > 0 else 4
    t = look.tool
    if t == "stethoscope":
        d.arc([30, 62, 66, 92], 20, 160, fill=(60, 60, 60), width=3)
        d.ellipse([44, 86, 52, 94], fill=(150, 150, 160))
    elif t == "wrench":
        d.line([x, 94, x + 10, 70], fill=(150, 150, 160), width=4)
        d.ellipse([x + 6, 64, x + 16, 74], outline=(150, 150, 160), width=3)
    elif t == "laptop":
        d.rectangle([x - 4, 80, x + 14, 92], fill=(190, 190, 200))
        d.rectangle([x - 2, 82, x + 12, 90], fill=(60, 170, 230))
    elif t == "book":
        d.rectangle([x - 2, 72, x + 12, 92], fill=(200, 120, 30))
        d.line([x + 5, 72, x + 5, 92], fill=(250, 250, 250), width=2)
    elif t == "brush":
        d.line([x, 94, x + 8, 68], fill=(140, 90, 40), width=3)
        d.ellipse([x + 5, 62, x + 13, 70], fill=(230, 30, 60))
    elif t == "wheel":
        d.ellipse([x - 6, 72, x + 16, 94], outline=(40, 40, 40), width=4)


def _headwear(d: ImageDraw.ImageDraw, kind: str, rng, cx: int, top: int, rx: int) -> None:
    if kind == "hardhat":
        d.chord([cx - rx - 3, top - 8, cx + rx + 3, top + 22], 180, 360, fill=(250, 210, 20))
        d.rectangle([cx - rx - 8, top + 6, cx + rx + 8, top + 10], fill=(240, 195, 10))
    elif kind == "toque":
        d.rectangle([cx - rx + 2, top - 16, cx + rx - 2, top + 8], fill=(250, 250, 250))
        d.ellipse([cx - rx - 2, top - 26, cx + rx + 2, top - 4], fill=(250, 250, 250))
    elif kind == "police_cap":
        d.rectangle([cx - rx - 2, top - 6, cx + rx + 2, top + 8], fill=(20, 25, 70))
        d.rectangle([cx - rx - 4, top + 6, cx + rx + 6, top + 11], fill=(10, 10, 10))
        d.ellipse([cx - 3, top - 3, cx + 3, top + 3], fill=(250, 210, 40))
    elif kind == "beret":
        tilt = int(rng.integers(-4, 5))
        d.ellipse([cx - rx - 6 + tilt, top - 8, cx + rx + 6 + tilt, top + 10], fill=(60, 20, 90))
    elif kind == "peaked_cap":
        d.chord([cx - rx, top - 8, cx + rx, top + 16], 180, 360, fill=(120, 90, 50))
        d.rectangle([cx - rx, top + 3, cx + rx + 10, top + 8], fill=(80, 60, 30))
    elif kind == "bandana":
        d.chord([cx - rx - 1, top - 2, cx + rx + 1, top + 20], 180, 360, fill=(220, 60, 60))
        for k in range(-rx + 4, rx - 2, 7):
            d.ellipse([cx + k, top + 3, cx + k + 3, top + 6], fill=(250, 250, 250))
    elif kind == "straw_hat":
        d.ellipse([cx - rx - 14, top + 2, cx + rx + 14, top + 12], fill=(215, 185, 100))
        d.chord([cx - rx + 2, top - 10, cx + rx - 2, top + 14], 180, 360, fill=(225, 195, 110))


def _brow_ends(expression: str) -> tuple[int, int]:
    """Heights (pixels above the resting line) of a brow's outer and inner end for a labelled expression."""
    return {"sad": (-2, 4),  # inner ends raised
            "angry": (3, -4),  # inner ends pulled down: a V
            "surprised": (5, 5)}.get(expression, (0, 0))


def _mouth(d: ImageDraw.ImageDraw, expression: str, ex: int, mouth_y: int, lip) -> None:
    """The mouth of a labelled expression.

    Labelled mouths are drawn wide and thick (about 6 x 3 pixels after the 3x box filter), each
    with its own light-dark pattern, so that a 32-pixel denoiser can draw them and an image tower
    can tell them apart; the unlabelled "smiling" and "neutral" mouths keep their old strokes."""
    if expression == "smiling":  # an open smile: a white crescent of teeth, corners up
        d.chord([ex - 10, mouth_y - 9, ex + 10, mouth_y + 8], 0, 180, fill=(250, 250, 245), outline=lip, width=2)
    elif expression == "neutral":
        d.line([ex - 8, mouth_y, ex + 8, mouth_y], fill=lip, width=4)
    elif expression == "sad":  # corners well down
        d.arc([ex - 9, mouth_y, ex + 9, mouth_y + 12], 200, 340, fill=lip, width=4)
    elif expression == "angry":  # bared, clenched teeth
        d.rectangle([ex - 7, mouth_y - 2, ex + 7, mouth_y + 4], fill=(235, 235, 225), outline=lip, width=1)
        d.line([ex - 6, mouth_y + 1, ex + 6, mouth_y + 1], fill=(40, 30, 30), width=2)
    else:  # surprised: a large, round, dark open mouth
        d.ellipse([ex - 5, mouth_y - 5, ex + 5, mouth_y + 8], fill=(45, 15, 20), outline=lip, width=2)


def _mouth_unlabelled(d: ImageDraw.ImageDraw, expression: str, ex: int, mouth_y: int, lip) -> None:
    """The text-only world's mouths, exactly as they were drawn before expressions were labelled."""
    if expression == "smiling":
        d.arc([ex - 7, mouth_y - 6, ex + 7, mouth_y + 3], 20, 160, fill=lip, width=3)
    elif expression == "neutral":
        d.line([ex - 6, mouth_y, ex + 6, mouth_y], fill=lip, width=3)
    else:
        d.ellipse([ex - 4, mouth_y - 2, ex + 4, mouth_y + 3], fill=lip)


def render_face(spec: FaceSpec, seed: int) -> np.ndarray:
    """A 32 x 32 RGB uint8 face with exactly the attributes of `spec`, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    look = load_families()[spec.family].look
    img = Image.new("RGB", (CANVAS, CANVAS))
    d = ImageDraw.Draw(img)
    _background(d, look, rng)

    female, old = spec.gender == "female", spec.age == "old"
    skin_group = SKIN_GROUPS.index(spec.skin)
    skin = _jitter(MONK[int(rng.choice(MONK_OF_GROUP[skin_group]))], rng, 6)
    hair_palette = OLD_HAIR if old else YOUNG_HAIR
    hair = _jitter(hair_palette[int(rng.integers(len(hair_palette)))], rng, 10)
    scale = rng.uniform(0.9, 1.1)
    rx, ry = int(16 * scale), int(20 * scale)
    cx, cy = 48 + int(rng.integers(-5, 6)), 42 + int(rng.integers(-4, 5))
    yaw = int(rng.integers(-3, 4))
    top = cy - ry

    if female:  # long hair behind the head, falling to the shoulders
        length = int(rng.integers(18, 30))
        d.rounded_rectangle([cx - rx - 6, top - 3, cx + rx + 6, cy + length], radius=12, fill=hair)
    _clothing(d, look, rng, cx, cy + ry - 2)
    d.rectangle([cx - 7, cy + ry - 8, cx + 7, cy + ry + 2], fill=_shade(skin, 0.9))  # neck
    d.ellipse([cx - rx - 3, cy - 5, cx - rx + 4, cy + 6], fill=skin)  # ears
    d.ellipse([cx + rx - 4, cy - 5, cx + rx + 3, cy + 6], fill=skin)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin, outline=_shade(skin, 0.8))

    # hair on top: a short cap for male presentation, fuller hair with a side part for female
    if female:
        d.chord([cx - rx - 3, top - 5, cx + rx + 3, cy + 6], 180, 360, fill=hair)
        d.rectangle([cx - rx - 4, cy - 6, cx - rx + 2, cy + 14], fill=hair)
        d.rectangle([cx + rx - 2, cy - 6, cx + rx + 4, cy + 14], fill=hair)
    else:
        if not (old and rng.random() < 0.3):  # some older men are bald on top
            d.chord([cx - rx - 1, top - 3, cx + rx + 1, cy - 2], 180, 360, fill=hair)
        else:
            d.arc([cx - rx - 1, top + 6, cx + rx + 1, cy + 4], 160, 200, fill=hair, width=3)
            d.arc([cx - rx - 1, top + 6, cx + rx + 1, cy + 4], 340, 20, fill=hair, width=3)

    eye_y = cy - 2
    ex = cx + yaw
    expression = spec.expression
    # wide eyes when surprised, narrowed by a smile's cheeks; 2: the unlabelled world's eyes
    open_eye = {"surprised": 4, "smiling": 1}.get(expression, 2)
    for sx in (-7, 7):
        d.ellipse([ex + sx - 3, eye_y - open_eye, ex + sx + 3, eye_y + open_eye], fill=(250, 250, 250))
        d.ellipse([ex + sx - 1, eye_y - 2, ex + sx + 2, eye_y + 2], fill=(30, 25, 20))
        brow = _shade(hair, 0.8) if not old else (150, 150, 150)
        if expression is None:  # the unlabelled world's brows, exactly as they were drawn
            d.line([ex + sx - 4, eye_y - 6, ex + sx + 4, eye_y - 6 - (1 if female else 0)], fill=brow,
                   width=2 if female else 3)
            continue
        outer, inner = _brow_ends(expression)
        x_out, x_in = (ex + sx - 4, ex + sx + 4) if sx < 0 else (ex + sx + 4, ex + sx - 4)
        d.line([x_out, eye_y - 6 - outer, x_in, eye_y - 6 - inner], fill=brow, width=3)
    if rng.random() < 0.15:  # glasses
        for sx in (-7, 7):
            d.ellipse([ex + sx - 5, eye_y - 4, ex + sx + 5, eye_y + 4], outline=(30, 30, 30), width=1)
    d.line([ex, eye_y + 2, ex - 1, eye_y + 8], fill=_shade(skin, 0.75), width=2)  # nose
    mouth_y = cy + int(ry * 0.55)
    lip = (190, 50, 70) if female else _shade(skin, 0.6)
    expr = rng.integers(3)  # drawn for every spec, so a labelled expression leaves the other draws alone
    if expression is None:
        _mouth_unlabelled(d, ("smiling", "neutral", "open")[int(expr)], ex, mouth_y, lip)
    if not female and rng.random() < 0.4:  # stubble / beard
        beard = _shade(hair, 0.9) if not old else (180, 180, 180)
        d.chord([cx - rx + 2, cy - 2, cx + rx - 2, cy + ry + 1], 20, 160, outline=beard, width=4)
    if expression is not None:  # over the beard's edge, which crosses the mouth; a fixed lip reads on every skin
        _mouth(d, expression, ex, mouth_y, lip if female else (150, 55, 60))
    if old:  # wrinkles: forehead lines and nasolabial folds
        wr = _shade(skin, 0.7)
        for k in (0, 4):
            d.line([cx - 8, top + 8 + k, cx + 8, top + 8 + k], fill=wr, width=1)
        d.arc([ex - 12, eye_y + 2, ex - 4, mouth_y + 4], 100, 200, fill=wr, width=1)
        d.arc([ex + 4, eye_y + 2, ex + 12, mouth_y + 4], 340, 80, fill=wr, width=1)

    _headwear(d, look.headwear, rng, cx, top, rx)
    _tool(d, look, int(rng.choice([-1, 1])))

    arr = np.asarray(img.resize((SIZE, SIZE), Image.BOX), dtype=np.float32)
    # lighting: a soft gradient from a random side and a global exposure change
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
    light = 1 + rng.uniform(0.0, 0.2) * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(-0.05, 0.05)
    return np.clip(arr * light[..., None], 0, 255).round().astype(np.uint8)


def render_negative(seed: int) -> np.ndarray:
    """A face-absent image: noise, a flat or gradient field, a scene without a head, or a
    tile-shuffled face (broken render)."""
    rng = np.random.default_rng(seed)
    kind = int(rng.integers(4))
    if kind == 0:
        return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    if kind == 1:
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, SIZE)[:, None, None]
        return (a * (1 - t) + b * t + np.zeros((SIZE, SIZE, 3))).astype(np.uint8)
    fams = list(load_families())
    family = fams[int(rng.integers(len(fams)))]
    spec = FaceSpec(GENDERS[int(rng.integers(2))], SKIN_GROUPS[int(rng.integers(4))], AGE_GROUPS[int(rng.integers(2))],
                    family)
    face = render_face(spec, int(rng.integers(2**31)))
    if kind == 2:  # scene without a head: background and clothing only
        look = load_families()[family].look
        img = Image.new("RGB", (CANVAS, CANVAS))
        d = ImageDraw.Draw(img)
        _background(d, look, rng)
        _clothing(d, look, rng, 48, 60)
        return np.asarray(img.resize((SIZE, SIZE), Image.BOX))
    tiles = face.reshape(4, 8, 4, 8, 3).swapaxes(1, 2).reshape(16, 8, 8, 3)
    tiles = tiles[rng.permutation(16)]
    return tiles.reshape(4, 4, 8, 8, 3).swapaxes(1, 2).reshape(SIZE, SIZE, 3)

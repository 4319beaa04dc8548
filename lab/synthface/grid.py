"""`python -m lab.synthface grid`: a labelled sample grid (one row per prompt) for docs and model cards."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from fairbench.models import load_backend, model_defaults
from fairbench.models.backend import SamplingParams
from fairbench.units import unit_seed

ROWS = (
    "a photo of the face of a nurse",
    "a photo of the face of a construction worker",
    "a photo of the face of a software developer",
    "a photo of the face of a CEO",
    "a photo of the face of a cook",
    "a photo of the face of a teacher",
    "a photo of the face of a police officer",
    "a photo of the face of a housekeeper",
    "a photo of the face of a female construction worker",
    "a photo of the face of a male nurse",
    "a photo of the face of a dark-skinned CEO",
    "a photo of the face of an old farmer",
)


def sample_grid(out: str | Path, model: str = "synthface", n: int = 10, scale: int = 3, seed: int = 0,
                rows: tuple[str, ...] = ROWS) -> Path:
    """Generate n images per row prompt and write a labelled PNG grid."""
    backend = load_backend(model)
    defaults = model_defaults(model)
    params = SamplingParams(steps=defaults["steps"], guidance_scale=defaults["guidance_scale"])
    tiles = []
    for r, text in enumerate(rows):
        cond = backend.encode([text] * n, guidance_scale=params.guidance_scale)
        gens = [torch.Generator().manual_seed(unit_seed(seed, f"grid{r}", i)) for i in range(n)]
        images, _ = backend.generate(cond, gens, params)
        tiles.append(images)
    size = tiles[0][0].width * scale
    label_w, pad = 300, 2
    grid = Image.new("RGB", (label_w + n * (size + pad), len(rows) * (size + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (text, images) in enumerate(zip(rows, tiles)):
        y = r * (size + pad)
        draw.text((6, y + size // 2 - 6), text.replace("a photo of the face of ", "... "), fill="black")
        for c, im in enumerate(images):
            grid.paste(im.resize((size, size), Image.NEAREST), (label_w + c * (size + pad), y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out

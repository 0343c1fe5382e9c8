"""A trigger as a reader can see it: the run's render (the trigger on mid-grey) and, beside it,
its difference from the grey stretched to full contrast.

Invisible triggers (ISSBA's encoded residual, a weak blend or sinusoid) render as plain grey at
their true strength; the stretched difference shows their pattern and where it lies.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

GREY = 128  # torchvision's save_image of 0.5: round(0.5 * 255 + 0.5)


def stretched_difference(path: Path) -> tuple[str, int]:
    """(PNG data URI of |render - grey| scaled so its largest entry is white, that largest
    difference in 8-bit levels: 0 means the render is plain grey)."""
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    difference = np.abs(image - GREY).max(axis=2)
    peak = int(difference.max())
    scaled = (difference * (255 / peak) if peak else difference).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(scaled, mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), peak

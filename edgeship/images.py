"""Reading an image file, for the datasets and the sample photos alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.errors import DataError


def read_image(path: Path, color: str = "rgb") -> np.ndarray:
    """An image file as uint8: (H, W) for ``gray``, (H, W, 3) for ``rgb`` (grayscale repeated, alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L" if color == "gray" else "RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read image: {exc}") from None

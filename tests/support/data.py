"""Small datasets the tests write: a CSV-manifest dataset whose labels are visible in the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOUR_CLASSES = ["red", "green", "blue", "dark", "striped"]


def write_colour_manifest(root: Path, sizes: tuple[int, int, int] = (32, 16, 16), side: int = 32) -> Path:
    """``train/val/test.csv`` + ``classes.txt`` + PNGs under ``root``: colour channels, brightness and stripes are the
    labels, so a small model learns them in a few steps (a model that scores near chance has been broken)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test"), sizes):
        lines = ["image,labels"]
        for i in range(n):
            labels = [c for c in COLOUR_CLASSES if rng.random() < 0.4] or ["red"]
            arr = np.full((side, side, 3), 40, np.uint8)
            for k, c in enumerate(("red", "green", "blue")):
                if c in labels:
                    arr[..., k] = 220
            if "dark" in labels:
                arr //= 3
            if "striped" in labels:
                arr[::4] = 255
            Image.fromarray(arr).save(root / "img" / f"{split}{i}.png")
            lines.append(f"img/{split}{i}.png,{' '.join(labels)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(COLOUR_CLASSES) + "\n")
    return root

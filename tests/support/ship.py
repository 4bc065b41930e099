"""Shared by the ship tests (model directory, API, ONNX, wheel): a tiny trained-looking run on a manifest dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

NAMES = ["cat", "dog", "sky", "sea"]
LABELS = {"e0.png": "cat dog", "e1.png": "sky", "e2.png": "sea cat", "e3.png": "dog", "e4.png": "sky sea"}


def noise_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A random RGB image, so that every image gets different scores."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def make_run(root: Path, *, contrastive: bool = True) -> dict[str, Path]:
    """A checkpoint RUN/sadcl/best.pt (random weights) with its results.json, its manifest dataset and images."""
    from sadcl.checkpoint import save_checkpoint
    from sadcl.config import Config
    from sadcl.models import build_model

    data = root / "data"
    for i, name in enumerate(LABELS):
        noise_image(data / name, seed=100 + i)
    (data / "classes.txt").write_text("\n".join(NAMES) + "\n")
    rows = "image,labels\n" + "".join(f"{k},{v}\n" for k, v in LABELS.items())
    for split in ("train", "test"):
        (data / f"{split}.csv").write_text(rows)
    cfg = Config.from_dict(
        {
            "model": {
                "backbone": "resnet18",
                "pretrained": False,
                "img_size": 64,
                "num_classes": len(NAMES),
                "hidden_dim": 32,
                "nhead": 2,
                "dim_feedforward": 64,
                "dropout": 0.0,
                "contrastive": contrastive,
                "proj_dim": 16,
                "bank_slots": 4,
            },
            "data": {"format": "manifest", "root": str(data), "workers": 0, "eval_batch_size": 4, "val_split": None},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    # Non-zero running statistics and prototypes: a round trip that dropped buffers would change the logits.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    stage = root / "run" / "sadcl"
    stage.mkdir(parents=True)
    ckpt = save_checkpoint(
        {
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "class_names": NAMES,
            "stage": "sadcl",
            "epoch": 0,
            "step": 0,
            "selected": "regular",
        },
        stage / "best.pt",
    )
    results = {
        "best_epoch": 0,
        "epochs_run": 1,
        "selected": "regular",
        "val": {"regular": {"mAP": 61.5, "CF1": 40.25, "OF1": 42.0}, "selected": "regular"},
        "test": {"mAP": 58.75, "CF1": 39.5, "OF1": 41.0},
        "test_per_class_AP": {"cat": 70.0, "dog": 55.5, "sky": 50.0, "sea": 59.5},
    }
    (stage / "results.json").write_text(json.dumps(results))
    images = root / "images"
    for i in range(3):
        noise_image(images / f"p{i}.png", seed=10 + i, size=(48 + 8 * i, 40))
    return {"root": root, "ckpt": ckpt, "data": data, "images": images}

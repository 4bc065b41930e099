"""The README's "Your own dataset" path, as a new user runs it: a made-up folder of JPEG/PNG files of mixed sizes and
modes, CSV manifests and a classes.txt, then `sadcl train`, `sadcl evaluate` and `sadcl predict` as written (with a
tiny model so that it runs in seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sadcl.cli import main
from support.models import TINY_MODEL_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_MODEL_OVERRIDES,
    "model.img_size=64",
    "model.bank_slots=4",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.workers=0",
    "data.normalization=imagenet",
    "train.baseline_epochs=1",
    "train.epochs=1",
    "train.progress=false",
    "train.prototype_threshold=0.3",
]
MODES = ["RGB", "L", "RGBA", "P", "CMYK", "I;16"]


def _photo(path: Path, i: int) -> str:
    rng = np.random.default_rng(i)
    w, h = int(rng.integers(40, 200)), int(rng.integers(40, 200))
    mode = MODES[i % len(MODES)]
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257)
    elif mode != "RGB":
        img = img.convert(mode)
    jpeg = mode in ("RGB", "L", "CMYK") and i % 2 == 0
    name = f"photos/{i:03d}.{'jpg' if jpeg else 'png'}"
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path.parent / Path(name).name)
    return name


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own dataset", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_newcomer_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "my_data"
    (data / "classes.txt").parent.mkdir(parents=True)
    (data / "classes.txt").write_text("cat\ndog\n")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        with open(data / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "labels"])
            for k in range(n):
                i = {"train": 0, "val": 100, "test": 200}[split] + k
                labels = [c for c in ("cat", "dog") if rng.random() < 0.6] or ["cat"]
                w.writerow([_photo(data / "photos" / "x", i), " ".join(labels)])
    new = tmp_path / "my_new_photos"
    for i in range(3):
        _photo(new / "x", 300 + i)
    monkeypatch.chdir(tmp_path)
    commands = _readme_commands()
    assert len(commands) == 3 and commands[0].startswith("sadcl train")
    for cmd in commands:
        argv = cmd.split()[1:]
        argv = [str(ROOT / a) if a.startswith("configs/") else a for a in argv]
        if argv[0] == "train":
            argv += TINY  # overrides after the README's: a tiny model, same path through the code
        assert main(argv) == 0, cmd
    evaluated = next(c for c in commands if c.startswith("sadcl evaluate")).split()[2]  # the model the README names
    results = json.loads((tmp_path / Path(evaluated).parent / "results.json").read_text())
    assert 0.0 <= results["test"]["mAP"] <= 100.0
    rows = list(csv.reader(open(tmp_path / "predictions.csv")))
    assert rows[0] == ["image", "label", "score"] and {r[0] for r in rows[1:]} == {
        f"my_new_photos/{i}.{e}" for i, e in ((300, "jpg"), (301, "png"), (302, "png"))
    }

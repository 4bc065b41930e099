"""Partial labels end to end: the unknown-label mask from every reader through the loader, engine, criterion, memory
bank, prototypes, metrics and the DDP gather; and the README's "Partially labelled data" example."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score
from torch import nn

from sadcl.config import DataConfig, LossConfig
from sadcl.data import DATASETS, MultiLabelDataset, build_dataset, build_loader
from sadcl.data.coco import read_coco
from sadcl.data.folder import read_image_folder
from sadcl.data.images import DataError
from sadcl.data.manifest import read_manifest
from sadcl.data.matrix import read_label_matrix
from sadcl.data.nuswide import read_nuswide
from sadcl.data.partial_labels import apply_known_fraction, hide_labels
from sadcl.data.transforms import EvalPreset
from sadcl.data.voc import VOC_CLASSES, read_voc
from sadcl.inference.thresholds import tune_thresholds
from sadcl.losses import AsymmetricLoss, Criterion, PSCLoss, SSCLoss, build_criterion
from sadcl.metrics import per_class_ap
from sadcl.models.memory_bank import MemoryBank
from sadcl.training.engine import evaluate, train_one_epoch
from sadcl.training.prototypes import compute_prototypes
from support.benchmarks import load_benchmark
from support.models import TINY_MODEL_OVERRIDES

WEIGHTS = {"asl": 1.0, "sscl": 100.0, "pscl": 50.0}  # the official loss weights
ROOT = Path(__file__).resolve().parents[1]
B, C, D = 4, 5, 6


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(path)
    return path


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [8, 8], targets [8, C], ignore [8, C]) with unknown entries among positives and negatives."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 8, generator=g)
    targets = (torch.rand(8, C, generator=g) < 0.5).float()
    targets[:, 0] = 1.0  # every row has a known positive
    ignore = torch.rand(8, C, generator=g) < 0.3
    ignore[:, 0] = False
    ignore[0, 1] = ignore[1, 2] = True
    return x, targets.masked_fill(ignore, 0), ignore


def _flipped(targets: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """The same labels with every unknown entry's value flipped (0 <-> 1)."""
    return torch.where(ignore, 1 - targets, targets)


class _TinyContrastive(nn.Module):
    """A stand-in SADCL: label-level features from a linear map, a real MemoryBank that writes every positive."""

    contrastive = True

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, C * D)
        self.head = nn.Linear(D, 1)
        self.proj = nn.Linear(D, 3)
        self.prototypes = nn.Parameter(torch.randn(C, D))
        self.memory_bank = MemoryBank(B, C, D, threshold=0.0)  # sigmoid > 0: every positive is written

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.lin(x).view(len(x), C, D)
        return {
            "logits": self.head(f).squeeze(-1),
            "features": f,
            "proj_features": self.proj(f),
            "proj_bank": self.proj(self.memory_bank.bank.clone()),  # the bank is written before backward
            "proj_prototypes": self.proj(self.prototypes),
        }

    def update_memory_bank(self, features, targets, logits, ignore=None) -> torch.Tensor:
        return self.memory_bank.update(features, targets, logits, ignore)


def _train_step(targets: torch.Tensor, ignore: torch.Tensor | None, mode: str, variant: str) -> dict:
    x, _, _ = _batch()
    model = _TinyContrastive()
    cfg = LossConfig(unknown_mode=mode, sscl_variant=variant, gamma_neg=4)
    criterion = build_criterion(cfg, contrastive=True)
    fields = (x, targets) if ignore is None else (x, targets, ignore)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*fields), batch_size=B)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, criterion, loader, opt, None, device="cpu", epoch=0)
    return {"stats": stats, "params": copy.deepcopy(model.state_dict())}


# ---------------------------------------------------------------------------------------- the mask reaches the loss
@pytest.mark.parametrize("mode", ["ignore", "negative"])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_flipping_an_unknown_label_changes_no_loss_gradient_or_bank(mode: str, variant: str) -> None:
    _, targets, ignore = _batch()
    a = _train_step(targets, ignore, mode, variant)
    b = _train_step(_flipped(targets, ignore), ignore, mode, variant)
    assert a["stats"] == b["stats"]  # every term, unweighted and weighted, and train_mAP
    for k in a["params"]:  # weights after the step (the gradients) and the bank buffer
        assert torch.equal(a["params"][k], b["params"][k]), k
    # Without the mask the flipped values are read: the loss, the weights and the bank all move.
    c = _train_step(_flipped(targets, ignore), None, mode, variant)
    assert c["stats"]["loss"] != a["stats"]["loss"]
    assert not torch.equal(c["params"]["memory_bank.bank"], a["params"]["memory_bank.bank"])


def test_ignore_and_negative_modes_differ_and_negative_equals_no_mask() -> None:
    _, targets, ignore = _batch()
    ign = _train_step(targets, ignore, "ignore", "paper")["stats"]
    neg = _train_step(targets, ignore, "negative", "paper")["stats"]
    none = _train_step(targets, None, "ignore", "paper")["stats"]  # unknown stored as 0, no mask: "negative"
    assert ign["asl_unweighted"] != neg["asl_unweighted"] and ign["pscl_unweighted"] != neg["pscl_unweighted"]
    assert neg["loss"] == pytest.approx(none["loss"], rel=1e-6)


def test_bank_is_never_written_from_an_unknown_label() -> None:
    bank = MemoryBank(2, 3, 4, threshold=0.5)
    emb = torch.ones(2, 3, 4)
    targets = torch.ones(2, 3)
    ignore = torch.tensor([[True, False, False], [False, False, True]])
    written = bank.update(emb, targets, torch.full((2, 3), 5.0), ignore)
    assert torch.equal(written, ~ignore)
    assert bank.bank[0, 0].abs().sum() == 0 and bank.bank[1, 2].abs().sum() == 0 and bank.bank[0, 1].sum() == 4


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_sscl_unchanged_without_unknown_and_blind_to_unknown_values(variant: str) -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(B, 2, C, D, generator=g, dtype=torch.float64)
    labels = (torch.rand(B, C, generator=g) < 0.5).double()
    loss = SSCLoss(variant=variant)
    assert torch.equal(loss(feats, labels), loss(feats, labels, torch.zeros(B, C, dtype=torch.bool)))  # bit-exact
    ignore = torch.rand(B, C, generator=g) < 0.3
    masked = loss(feats, labels, ignore)
    assert torch.equal(masked, loss(feats, _flipped(labels, ignore), ignore))
    assert torch.equal(masked, loss(feats, labels.masked_fill(ignore, 0)))  # an unknown is simply not activated


def test_sscl_paper_and_pscl_an_unknown_row_is_as_if_absent() -> None:
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(B, 2, C, D, generator=g, dtype=torch.float64)
    protos = torch.randn(C, D, generator=g, dtype=torch.float64)
    labels = (torch.rand(B, C, generator=g) < 0.5).double()
    labels[:, 0] = 1
    ignore = torch.zeros(B, C, dtype=torch.bool)
    ignore[1] = True  # every label of sample 1 unknown
    keep = [0, 2, 3]
    sscl = SSCLoss(variant="paper")
    torch.testing.assert_close(sscl(feats, labels, ignore), sscl(feats[keep], labels[keep]), rtol=1e-12, atol=0)
    pscl = PSCLoss()
    f0 = feats[:, 0]
    torch.testing.assert_close(pscl(f0, protos, labels, ignore), pscl(f0[keep], protos, labels[keep]))
    assert torch.equal(pscl(f0, protos, labels), pscl(f0, protos, labels, torch.zeros(B, C, dtype=torch.bool)))


def test_pscl_all_unknown_class_adds_nothing_and_passes_no_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(B, C, D, generator=g, requires_grad=True)
    protos = torch.randn(C, D, generator=g)
    labels = (torch.rand(B, C, generator=g) < 0.5).float()
    labels[0, 0] = 1
    ignore = torch.zeros(B, C, dtype=torch.bool)
    ignore[:, 3] = True
    out = PSCLoss()(feats, protos, labels, ignore)
    out.backward()
    assert torch.isfinite(out) and not feats.grad[:, 3].any()
    keep = [0, 1, 2, 4]
    ref = PSCLoss()(feats.detach()[:, keep], protos[keep], labels[:, keep]) * labels[:, keep].sum()
    torch.testing.assert_close(out * labels.masked_fill(ignore, 0).sum(), ref)


def test_prototypes_use_known_positives_only() -> None:
    x, targets, ignore = _batch()
    model = _TinyContrastive().eval()

    def protos(t: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, t, ignore), batch_size=B)
        return compute_prototypes(model, loader, threshold=0.0, rule="mean_selected")

    a, counts = protos(targets)
    b, _ = protos(_flipped(targets, ignore))
    assert torch.equal(a, b)
    assert counts["positives"] == (targets * ~ignore).sum(0).long().tolist()


def test_criterion_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown_mode"):
        Criterion(asl=AsymmetricLoss(), weight_dict=WEIGHTS, unknown_mode="drop")


# ------------------------------------------------------------------------------------ datasets yield the mask
def test_dataset_items_and_batches_carry_the_mask(tmp_path: Path) -> None:
    paths = [str(_image(tmp_path / f"{i}.png", i)) for i in range(4)]
    ignore = np.zeros((4, 2), bool)
    ignore[1, 1] = True
    ds = MultiLabelDataset(paths, np.ones((4, 2)), ["a", "b"], ignore=ignore, transform=EvalPreset(img_size=16))
    assert ds.targets[1, 1] == 0  # an unknown label's value is stored as 0
    _, target, ig = ds[1]
    assert ig.tolist() == [False, True] and target.tolist() == [1.0, 0.0]
    batch = next(iter(build_loader(ds, batch_size=4)))
    assert len(batch) == 3 and torch.equal(batch[2], torch.as_tensor(ignore))
    plain = MultiLabelDataset(paths, np.ones((4, 2)), ["a", "b"])
    assert plain[0][2].dtype == torch.bool and not plain[0][2].any()  # all-known default
    sub = ds.subset([1, 3])
    assert sub.ignore.tolist() == [[False, True], [False, False]]


def test_voc_difficult_ignore_reaches_the_training_loss_and_metrics(tmp_path: Path) -> None:
    base = tmp_path / "VOCdevkit" / "VOC2007"
    ann = {"000001": [("dog", 0)], "000002": [("cat", 1), ("dog", 0)], "000003": [("cat", 0), ("car", 1)]}
    for k, (image_id, objs) in enumerate(ann.items()):
        _image(base / "JPEGImages" / f"{image_id}.jpg", k)
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        xml = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objs)
        (base / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{xml}</annotation>")
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ann))

    def run(difficult: str) -> tuple[dict, dict]:
        ds = read_voc(root=tmp_path, split="trainval", difficult=difficult, transform=EvalPreset(img_size=16))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, len(VOC_CLASSES)))
        wrapped = _DictModel(model)
        loader = build_loader(ds, batch_size=3)
        stats = train_one_epoch(
            wrapped,
            Criterion(asl=AsymmetricLoss(), weight_dict=WEIGHTS),
            loader,
            torch.optim.SGD(model.parameters(), lr=0.0),
            None,
            device="cpu",
            epoch=0,
        )
        return stats, evaluate(wrapped, loader, device="cpu")

    (drop, drop_eval), (ign, ign_eval) = run("drop"), run("ignore")
    assert ign["asl"] != drop["asl"]
    cat, car = VOC_CLASSES.index("cat"), VOC_CLASSES.index("car")
    assert ign_eval["ignore"][1, cat] and ign_eval["ignore"][2, car] and int(ign_eval["ignore"].sum()) == 2
    assert not drop_eval["ignore"].any()


class _DictModel(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def test_evaluate_metrics_match_sklearn_on_the_known_entries(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 40
    paths = [str(_image(tmp_path / f"{i}.png", i)) for i in range(n)]
    targets = (rng.random((n, 3)) < 0.4).astype(np.float32)
    targets[:3] = 1
    ignore = rng.random((n, 3)) < 0.3
    ignore[:3] = False
    ds = MultiLabelDataset(paths, targets, ["a", "b", "c"], ignore=ignore, transform=EvalPreset(img_size=16))
    torch.manual_seed(1)
    model = _DictModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)))
    out = evaluate(model, build_loader(ds, batch_size=7), device="cpu")
    s, t, ig = out["scores"].numpy(), out["targets"].numpy(), out["ignore"].numpy()
    assert np.array_equal(ig, ignore)
    aps = per_class_ap(s, t, interpolation="none", ignore=ig)
    for c in range(3):
        keep = ~ignore[:, c]
        assert aps[c] == pytest.approx(100 * average_precision_score(targets[keep, c], s[keep, c]), abs=1e-9)
    # thresholds and summaries skip the unknown entries: flipping their values changes nothing
    flipped = np.where(ignore, 1 - t, t)
    assert np.array_equal(tune_thresholds(s, t, ignore=ig), tune_thresholds(s, flipped, ignore=ig))
    assert out["mAP"] == pytest.approx(float(np.nanmean(per_class_ap(s, flipped, ignore=ig))))


# --------------------------------------------------------------------------------------------------- readers
def test_manifest_csv_prefixes_columns_and_unlisted(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / f"{i}.png", i)
    (tmp_path / "m.csv").write_text(
        "image,labels,unknown,negatives\n0.png,cat ?dog -bird,,\n1.png,dog,cat,\n2.png,,,bird\n"
    )
    ds = read_manifest(tmp_path / "m.csv", allow_empty=False)
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.targets.tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert ds.ignore.tolist() == [[False, False, True], [False, True, False], [False, False, False]]
    assert ds.info is None  # the partial-label columns are labels, not extra info
    only_listed = read_manifest(tmp_path / "m.csv", unlisted="unknown")
    assert only_listed.ignore.tolist() == [[False, False, True], [True, True, False], [False, True, True]]
    (tmp_path / "full.csv").write_text("image,labels\n0.png,cat\n")
    assert read_manifest(tmp_path / "full.csv").ignore is None  # fully labelled: no mask


def test_manifest_jsonl_and_folder_syntax(tmp_path: Path) -> None:
    for i in range(2):
        _image(tmp_path / f"{i}.png", i)
    rows = [{"image": "0.png", "labels": ["cat", "?dog"]}, {"image": "1.png", "labels": "dog", "negatives": ["cat"]}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = read_manifest(tmp_path / "m.jsonl", class_names=["cat", "dog", "?"], unlisted="unknown")
    assert ds.targets.tolist() == [[1, 0, 0], [0, 1, 0]]
    assert ds.ignore.tolist() == [[False, True, True], [False, False, True]]
    (tmp_path / "labels.txt").write_text("0.png cat ?dog\n1.png -cat dog\n")
    folder = read_image_folder(tmp_path, labels_file="labels.txt")
    assert folder.class_names == ["cat", "dog"] and folder.ignore.tolist() == [[False, True], [False, False]]
    # a class-list name that starts with a prefix character is that class
    (tmp_path / "q.csv").write_text("image,labels\n0.png,?\n")
    assert read_manifest(tmp_path / "q.csv", class_names=["cat", "?"]).targets.tolist() == [[0, 1]]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("0.png,cat ?cat", "line 2: class 'cat' is both positive and unknown"),
        ("0.png,cat -", r"line 2: label '-': expected a class name after '-'"),
        ("0.png,cat,?dog", "line 2: field 'unknown': '\\?dog': expected plain class names"),
        ("0.png,?fish", r"line 2: unknown class name\(s\) \['fish'\]"),
    ],
)
def test_manifest_partial_syntax_errors_name_the_line(tmp_path: Path, row: str, match: str) -> None:
    _image(tmp_path / "0.png")
    header = "image,labels,unknown" if row.count(",") == 2 else "image,labels"
    (tmp_path / "m.csv").write_text(f"{header}\n{row}\n")
    with pytest.raises(DataError, match=match):
        read_manifest(tmp_path / "m.csv", class_names=["cat", "dog"])
    with pytest.raises(DataError, match="unlisted"):
        read_manifest(tmp_path / "m.csv", class_names=["cat", "dog"], unlisted="maybe")


def test_label_matrix_reader_and_registry(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / "img" / f"{i}.png", i)
    (tmp_path / "train.csv").write_text("image,cat,dog,bird\nimg/0.png,1,0,-1\nimg/1.png,0,1,0\nimg/2.png,-1,1.0,1\n")
    ds = build_dataset(DataConfig(format="matrix", root=str(tmp_path)), "train")
    assert "matrix" in DATASETS and ds.class_names == ["cat", "dog", "bird"]
    assert ds.targets.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert ds.ignore.tolist() == [[False, False, True], [False, False, False], [True, False, False]]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("img.png,1,2\n", r"m.csv: line 2: column 3 \('dog'\): '2'; expected 1 \(positive\), 0 \(negative\) or -1"),
        ("img.png,1,\n", r"line 2: column 3 \('dog'\): ''"),
        ("img.png,1\n", "line 2: expected 3 fields"),
        ("img.png,yes,0\n", r"column 2 \('cat'\): 'yes'"),
    ],
)
def test_label_matrix_errors_name_file_line_and_column(tmp_path: Path, body: str, match: str) -> None:
    _image(tmp_path / "img.png")
    (tmp_path / "m.csv").write_text("image,cat,dog\n" + body)
    with pytest.raises(DataError, match=match):
        read_label_matrix(tmp_path / "m.csv")
    assert len(read_label_matrix(tmp_path / "m.csv", skip_bad=True)) == 0
    (tmp_path / "h.csv").write_text("path,cat\n")
    with pytest.raises(DataError, match="no column 'image'"):
        read_label_matrix(tmp_path / "h.csv")


def test_coco_missing_unknown_with_neg_category_ids(tmp_path: Path) -> None:
    for n in ("a", "b", "c"):
        _image(tmp_path / "train2014" / f"{n}.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "neg_category_ids": [3]},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "c.jpg"},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 2, "category_id": 7}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    official = read_coco(root=tmp_path, split="train")
    assert official.ignore is None
    ds = read_coco(root=tmp_path, split="train", missing="unknown")
    assert torch.equal(ds.targets, official.targets)
    assert ds.ignore.tolist() == [[False, False, True], [True, True, False], [True, True, True]]
    data["images"][1]["neg_category_ids"] = [99]
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="image 2: neg_category_ids"):
        read_coco(root=tmp_path, split="train", missing="unknown")
    with pytest.raises(DataError, match="missing='maybe'"):
        read_coco(root=tmp_path, split="train", missing="maybe")


def test_nuswide_missing_unknown(tmp_path: Path) -> None:
    rows = [[0] * 81 for _ in range(3)]
    rows[0][0], rows[0][1] = 1, -1
    rows[2][5] = 1
    (tmp_path / "ImageList").mkdir()
    (tmp_path / "Groundtruth").mkdir()
    names = [f"x/{i}.jpg" for i in range(3)]
    for n in names:
        _image(tmp_path / "Flickr" / n)
    (tmp_path / "ImageList" / "TrainImagelist.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "Groundtruth" / "Labels_Train.txt").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    assert read_nuswide(root=tmp_path, split="train").ignore is None  # official: -1 is a negative
    ds = read_nuswide(root=tmp_path, split="train", missing="unknown", keep_empty=True)
    assert len(ds) == 3 and ds.ignore[0].nonzero().flatten().tolist() == [1]
    assert ds.ignore[1].all() and not ds.ignore[2].any()  # an unlabelled image: every label unknown


def test_hide_labels_is_seeded_exact_and_nested() -> None:
    a = hide_labels(50, 30, known_fraction=0.3, seed=1)
    assert torch.equal(a, hide_labels(50, 30, known_fraction=0.3, seed=1))
    assert int((~a).sum()) == 450 and not torch.equal(a, hide_labels(50, 30, known_fraction=0.3, seed=2))
    b = hide_labels(50, 30, known_fraction=0.7, seed=1)
    assert bool((~a & b).sum() == 0)  # what 30 % know, 70 % know too
    assert not hide_labels(5, 3, known_fraction=1.0).any()
    with pytest.raises(DataError, match="known_fraction"):
        hide_labels(5, 3, known_fraction=0.0)


def test_known_fraction_keeps_existing_unknowns_and_mom30_option_is_train_only(tmp_path: Path, monkeypatch) -> None:
    ignore = np.zeros((20, 4), bool)
    ignore[0] = True
    ds = MultiLabelDataset([f"{i}.png" for i in range(20)], np.ones((20, 4)), list("abcd"), ignore=ignore)
    out = apply_known_fraction(ds, known_fraction=0.5, seed=0)
    assert out.ignore[0].all() and out.targets[out.ignore].sum() == 0
    assert apply_known_fraction(ds, known_fraction=1.0, seed=0) is ds

    from sadcl.data import mom30

    calls = []

    def fake_read(root, split, **kwargs):
        calls.append(split)
        return MultiLabelDataset([f"{i}.png" for i in range(10)], np.ones((10, 3)), list("abc"))

    monkeypatch.setattr(mom30, "read_mom30", fake_read)
    monkeypatch.setattr(mom30, "read_meta", lambda root: {"params": None})
    cfg = DataConfig(format="mom30", root=str(tmp_path), options={"known_fraction": 0.4, "known_seed": 3})
    train = build_dataset(cfg, "train")
    assert int((~train.ignore).sum()) == 12
    assert torch.equal(train.ignore, hide_labels(10, 3, known_fraction=0.4, seed=3))
    assert build_dataset(cfg, "val").ignore is None and build_dataset(cfg, "test").ignore is None


# ----------------------------------------------------------------------------------------------------- DDP gather
WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    from sadcl import distributed as D
    from sadcl.losses import SSCLoss, PSCLoss, AsymmetricLoss, Criterion

    info = D.init_distributed(device="cpu", timeout_s=60)
    r = info.rank
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    bank = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(3, 4, generator=g, dtype=torch.float64)
    targets = (torch.rand(5, 3, generator=g) < 0.6).double()
    targets[:, 0] = 1
    ignore = torch.rand(5, 3, generator=g) < 0.3
    ignore[:, 0] = False
    parts = dict(asl=AsymmetricLoss(), sscl=SSCLoss(), pscl=PSCLoss(), weight_dict={"asl": 1, "sscl": 100, "pscl": 50})
    crit = Criterion(**parts)
    rows = [slice(0, 2), slice(2, 5)][r]  # ranks hold 2 and 3 rows
    out = {"logits": torch.zeros(5, 3, dtype=torch.float64)[rows], "proj_features": feats[rows],
           "proj_bank": bank[rows], "proj_prototypes": protos}
    flipped = torch.where(ignore, 1 - targets, targets)
    local = Criterion(**parts, gather_features=True)(out, flipped[rows], ignore[rows])
    full = {"proj_features": feats, "proj_bank": bank, "proj_prototypes": protos}
    ref = crit.contrastive_terms(full, targets, ignore)
    for k in ("sscl", "pscl"):
        torch.testing.assert_close(local[k] / 2, ref[k], rtol=1e-12, atol=0)
    D.cleanup()
    open(os.path.join(sys.argv[1], f"ok.{r}"), "w").write("ok")
    """
)


def test_ddp_gather_keeps_the_mask_aligned(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "ok.0").exists() and (tmp_path / "ok.1").exists()


# ------------------------------------------------------------------------------------------- the README example
TINY = [
    *TINY_MODEL_OVERRIDES,
    "model.img_size=32",
    "model.bank_slots=4",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.workers=0",
    "train.baseline_epochs=1",
    "train.epochs=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.prototype_threshold=0.3",
]


def _readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Partially labelled data", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_partial_labels_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sadcl.cli import main

    data = tmp_path / "my_partial"
    data.mkdir()
    (data / "classes.txt").write_text("cat\ndog\nbird\n")
    rng = np.random.default_rng(0)
    classes = ("cat", "dog", "bird")
    for offset, (split, n) in enumerate((("train", 12), ("val", 6), ("test", 6))):
        lines = ["image,labels"]
        for k in range(n):
            name = f"photos/{split}{k:02d}.png"
            _image(data / name, 100 * offset + k)
            unk = classes[k % 3] if split == "train" else None  # the README's syntax: one unknown per training row
            others = [c for c in classes if c != unk]
            pos = [c for c in others if rng.random() < 0.6] or [others[0]]
            neg = [f"-{c}" for c in others if c not in pos] if split == "train" else []
            lines.append(f"{name},{' '.join([*pos, *([f'?{unk}'] if unk else []), *neg])}")
        (data / f"{split}.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    commands = _readme_commands()
    assert len(commands) == 2 and commands[0].startswith("sadcl train") and "unknown_mode=ignore" in commands[0]
    for cmd in commands:
        argv = cmd.split()[1:]
        argv = [str(ROOT / a) if a.startswith("configs/") else a for a in argv]
        if argv[0] == "train":
            argv += TINY
        assert main(argv) == 0, cmd
    ds = build_dataset(DataConfig(format="manifest", root=str(data)), "train")
    assert int(ds.ignore.sum()) == 12  # one unknown label per training row reached the dataset
    results = json.loads((tmp_path / "runs" / "partial" / "sadcl" / "results.json").read_text())
    assert 0.0 <= results["test"]["mAP"] <= 100.0


def test_benchmark_pairs_by_seed_and_resumes_run_by_run(tmp_path: Path) -> None:
    bench = load_benchmark("partial_labels")
    args = bench.parse_args(["--out", str(tmp_path), "--seeds", "0", "1", "--fractions", "0.1", "0.5", "1.0"])
    todo = bench.runs(args)
    assert todo[:4] == [("ignore", 0.5, 0), ("negative", 0.5, 0), ("ignore", 0.5, 1), ("negative", 0.5, 1)]
    assert todo[4:] == [("ignore", 0.1, 0), ("ignore", 1.0, 0)]  # the curve reuses seed 0's 50 % run
    cfg = bench.run_config(args, "negative", 0.5, 1)
    assert cfg.loss.unknown_mode == "negative" and cfg.data.options["known_fraction"] == 0.5
    assert cfg.data.options["known_seed"] == 1 and cfg.train.seed == 1 and cfg.model.img_size == 64
    maps = {("ignore", 0): 40.0, ("negative", 0): 35.0, ("ignore", 1): 42.0, ("negative", 1): 36.0}
    for (mode, seed), m in maps.items():  # finished runs: skipped by main, read by collect
        d = bench.run_dir(tmp_path, mode, 0.5, seed) / "sadcl"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"test": {"mAP": m}, "selected": "ema", "val": {"ema": {}}}))
    summary = bench.summarize(bench.collect(args), args.curve_seed)
    assert summary["paired_seeds"] == [0, 1] and summary["paired_delta"]["mean"] == pytest.approx(5.5)
    assert [r["known_fraction"] for r in summary["curve"]] == [0.5]
    text = bench.report(args, summary, "partial", 1.0)
    assert "| 0 | 40.00 | 35.00 | +5.00 |" in text and "Paired ignore − negative: +5.50" in text

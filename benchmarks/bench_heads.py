"""The heads side by side on this CPU: parameters, training and evaluation images/s of every ``model.head``.

Usage:
    python benchmarks/bench_heads.py                          # the emoji benchmark's model (~2 minutes)
    python benchmarks/bench_heads.py --publish                # also rewrite BENCHMARKS.md's ``heads_speed`` section
    python benchmarks/bench_heads.py --config configs/mom30_demo.yaml --reps 5

Each row builds its model as a training run does (``build_model``: frozen stem, folded frozen BatchNorms; the
optimizer, scheduler, EMA and criterion of the run config) from the config plus the row's overrides, without
pretrained weights (the numbers do not depend on them) and on random images of the config's size:

* training images/s: one ``train_step`` (forward, loss terms, backward, AdamW, OneCycle, EMA) on a batch of
  ``data.batch_size``; stage-1 rows with ASL only, the ``+SADCL`` rows with SSCL, PSCL and the memory bank;
* evaluation images/s: one forward in eval mode under ``torch.inference_mode`` on a batch of ``data.eval_batch_size``.

Every row is timed rep by rep in turn (``interleaved_times``), so background load hits all of them alike; the
speed figures are meant as ratios between the rows of one run. Without ``--publish`` the table is only printed
(and written to ``--json`` when given), so a rerun never overwrites the committed section by surprise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, interleaved_times, machine_line, median, repo_relative, update_section  # noqa: E402
from sadcl.config import load_config  # noqa: E402
from sadcl.io import atomic_write_text  # noqa: E402
from sadcl.losses import build_criterion  # noqa: E402
from sadcl.models import build_model  # noqa: E402
from sadcl.training.ema import ModelEma  # noqa: E402
from sadcl.training.engine import memory_format, place_model, train_step  # noqa: E402
from sadcl.training.optim import build_optimizer, build_scheduler  # noqa: E402
from sadcl.training.train import stage_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER = ["model.feature_level=-1"]  # the peers' heads read the backbone's last map, as in their papers
ALONE = ["model.contrastive=false"]  # stage 1 / one stage: the head and ASL only
ROWS: dict[str, list[str]] = {
    "plain (linear)": ["model.head=linear", *PEER, *ALONE],
    "csra": ["model.head=csra", *PEER, *ALONE],
    "ml_decoder": ["model.head=ml_decoder", *PEER, *ALONE],
    "query2label": ALONE,
    "csra +SADCL": ["model.head=csra", *PEER, "model.contrastive=true"],
    "ml_decoder +SADCL": ["model.head=ml_decoder", *PEER, "model.contrastive=true"],
    "query2label +SADCL": ["model.contrastive=true"],
}
"""Row name -> overrides on top of the config (``+SADCL``: stage 2 with SSCL, PSCL and the memory bank)."""


def build_row(config: str, overrides: list[str], seed: int = 0) -> dict[str, Any]:
    """The model, optimizer, scheduler, EMA, criterion and random batches of one row, with the settings of the stage
    it times (stage 1 / one stage, or stage 2 with ``model.contrastive``)."""
    cfg = load_config(config, ["model.pretrained=false", "model.pretrained_file=null", *overrides])
    cfg = stage_config(cfg, "sadcl" if cfg.model.contrastive else "baseline")
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    place_model(model, device="cpu", channels_last=cfg.train.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, epochs=1, steps_per_epoch=10_000)
    c, s = cfg.model.num_classes, cfg.model.img_size
    g = torch.Generator().manual_seed(seed)
    layout = memory_format(model)  # as the training loop hands batches over
    targets = (torch.rand(cfg.data.batch_size, c, generator=g) < 2.5 / c).float()
    targets[:, 0] = 1.0  # every image has a positive: SSCL and PSCL have something to work on
    return {
        "cfg": cfg,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "ema": ModelEma(model, decay=cfg.train.ema_decay, warmup=cfg.train.ema_warmup),
        "criterion": build_criterion(cfg.loss, contrastive=cfg.model.contrastive),
        "images": torch.randn(cfg.data.batch_size, 3, s, s, generator=g).contiguous(memory_format=layout),
        "targets": targets,
        "eval_images": torch.randn(cfg.data.eval_batch_size, 3, s, s, generator=g).contiguous(memory_format=layout),
    }


def parameters(model: torch.nn.Module) -> dict[str, int]:
    """All parameters, the trainable ones and the head's (everything outside ``model.backbone``)."""
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable": trainable, "head_params": total - backbone}


def measure(config: str, rows: dict[str, list[str]], *, reps: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Parameters and median images/s of every row, timed in turn."""
    built = {name: build_row(config, ov) for name, ov in rows.items()}

    def train_fn(b: dict[str, Any]):
        def step() -> None:
            b["model"].train()
            train_step(b["model"], b["criterion"], b["images"], b["targets"], None, b["optimizer"], b["scheduler"],
                       ema=b["ema"])  # fmt: skip

        return step

    def eval_fn(b: dict[str, Any]):
        def forward() -> None:
            b["model"].eval()
            with torch.inference_mode():
                b["model"](b["eval_images"])

        return forward

    fns = {**{("train", k): train_fn(b) for k, b in built.items()},
           **{("eval", k): eval_fn(b) for k, b in built.items() if "+SADCL" not in k}}  # fmt: skip
    times = interleaved_times(fns, reps=reps, warmup=warmup, settle=1)
    out: dict[str, dict[str, Any]] = {}
    for name, b in built.items():
        train_s = median(times[("train", name)])
        res = {
            **parameters(b["model"]),
            "overrides": rows[name],
            "train_images_per_s": b["cfg"].data.batch_size / train_s,
        }
        if ("eval", name) in times:
            res["eval_images_per_s"] = b["cfg"].data.eval_batch_size / median(times[("eval", name)])
        out[name] = res
    return out


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown table; speeds also as a ratio to the plain head's."""
    ref = results[next(iter(results))]
    lines = [
        "| head | parameters (M) | trainable (M) | head (M) | train img/s | vs plain | eval img/s | vs plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ev = r.get("eval_images_per_s")
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} | {r['trainable'] / 1e6:.2f} | {r['head_params'] / 1e6:.2f} "
            f"| {r['train_images_per_s']:.0f} | {r['train_images_per_s'] / ref['train_images_per_s']:.2f}x "
            + (f"| {ev:.0f} | {ev / ref['eval_images_per_s']:.2f}x |" if ev else "| (as without) | |")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "emoji.yaml"))
    p.add_argument("--reps", type=int, default=15, help="timed repetitions per row and mode (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--publish", action="store_true", help="rewrite BENCHMARKS.md's heads_speed section")
    args = p.parse_args(argv)
    results = measure(args.config, ROWS, reps=args.reps, warmup=args.warmup)
    cfg = load_config(args.config, [])
    m = cfg.model
    lines = [
        "## The heads on this CPU: parameters and speed (`benchmarks/bench_heads.py`)",
        "",
        f"- Date and machine: {machine_line(torch.get_num_threads())}",
        f"- Command: `{command_line()}`",
        f"- Model: `{repo_relative(args.config)}` ({m.backbone} at {m.img_size} px, {m.num_classes} classes; "
        f"Query2Label at `model.feature_level={m.feature_level}`, the peers' heads on the last map); training "
        f"batch {cfg.data.batch_size}, evaluation batch {cfg.data.eval_batch_size}; median of {args.reps} "
        "repetitions, the rows timed in turn (ratios are the figures to compare: the absolute speed of machines "
        "of one kind varies up to ~2x). `+SADCL`: stage 2's step with SSCL, PSCL and the "
        "memory bank (evaluation is the same forward as without).",
        "",
        *table(results),
    ]
    text = "\n".join(lines)
    print(text)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(results, indent=1) + "\n")
    if args.publish:
        update_section("heads_speed", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

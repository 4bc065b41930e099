"""The model card (``README.md`` of a model directory): data, recipe, results, per-class AP, intended use, rule.

Generated from the run itself (its config and the ``results.json`` that training wrote beside the checkpoint), so
it never claims a number the run did not measure: a missing metric is written as "not measured". Every piece of
user text (class names, file names, config strings) goes through :mod:`sadcl.escape`: no HTML runs, no table breaks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sadcl import __version__
from sadcl.escape import markdown_code, markdown_text
from sadcl.inference.postprocess import RULE

__all__ = ["render_model_card"]

_SUMMARY_KEYS = ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")


def _num(x: Any) -> str:
    return f"{float(x):.2f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "not measured"


def _metrics_rows(results: Mapping[str, Any]) -> list[str]:
    val = results.get("val") or {}
    # results.json keeps val metrics per weight set; the selected set is the one that was shipped.
    val_sel = val.get(val.get("selected", "regular"), {}) if isinstance(val, Mapping) else {}
    test = results.get("test") or {}
    rows = ["| split | " + " | ".join(_SUMMARY_KEYS) + " |", "|---|" + "---:|" * len(_SUMMARY_KEYS)]
    for name, m in (("val", val_sel), ("test", test)):
        rows.append(f"| {name} | " + " | ".join(_num(m.get(k)) for k in _SUMMARY_KEYS) + " |")
    return rows


def _per_class_rows(class_names: Sequence[str], per_class: Mapping[str, Any], thresholds: np.ndarray) -> list[str]:
    rows = ["| class | test AP | threshold |", "|---|---:|---:|"]
    for name, thr in zip(class_names, thresholds):
        rows.append(f"| {markdown_text(name)} | {_num(per_class.get(name))} | {float(thr):.3f} |")
    return rows


def _peer_head(m: Any) -> str:
    """One phrase for a head other than query2label (``model.head``) and its settings."""
    if m.head == "csra":
        return f"CSRA (class-specific residual attention), {m.csra_heads} head(s), lambda {m.csra_lambda:g}"
    if m.head == "ml_decoder":
        return (
            f"ML-Decoder, {m.ml_decoder_groups or m.num_classes} group queries, hidden {m.hidden_dim}, "
            f"{m.dec_layers} decoder layers without self-attention, {m.nhead} heads"
        )
    return "global average pooling + linear"


def render_model_card(
    *,
    config: Any,
    class_names: Sequence[str],
    thresholds: np.ndarray,
    results: Mapping[str, Any] | None,
    source: str,
    thresholds_source: str,
) -> str:
    """The model card as Markdown.

    Args:
        config: The run's :class:`sadcl.config.Config`.
        class_names: The C class names.
        thresholds: The shipped thresholds [C].
        results: The stage's ``results.json`` (``val``, ``test``, ``test_per_class_AP``, ...), or None.
        source: Where the weights came from (the checkpoint's file name).
        thresholds_source: How the thresholds were chosen, as Markdown (a file name in a code span, or "default 0.5").
    """
    m, d, t, loss = config.model, config.data, config.train, config.loss
    code = markdown_code
    results = results or {}
    method = m.method
    lines = [
        f"# sadcl model: {markdown_text(m.backbone)}, {len(class_names)} classes",
        "",
        f"A multi-label image classifier trained with sadcl {__version__}: {method}. Exported from {code(source)}.",
        "",
        "## Intended use",
        "",
        f"Tagging images with any subset of the {len(class_names)} classes below, on images like the training data "
        f"(dataset format {code(d.format)}). It is not meant for classes or image domains it was not trained on, and a "
        "score is a per-class probability, not a calibrated guarantee. Check the per-class AP before relying on a "
        "class.",
        "",
        "## How labels are chosen",
        "",
        f"`{RULE}`. Each class has its own probability (a sigmoid, never a softmax over classes), so an image can "
        f"have several labels or none. Thresholds: {thresholds_source} (`thresholds.json`).",
        "",
        "## Preprocessing",
        "",
        f"RGB, resized (bilinear, no crop, aspect ratio not kept) to {m.img_size}x{m.img_size}, scaled to [0, 1], "
        f"normalised with the {code(d.normalization)} mean/std (see `config.json`, `preprocessing`).",
        "",
        "## Use",
        "",
        "```bash",
        "sadcl predict MODEL_DIR photo.jpg        # labels as JSON",
        "sadcl serve MODEL_DIR                    # demo page + JSON API (/api/v1/predict)",
        "sadcl export MODEL_DIR --out model.onnx  # self-describing ONNX (add --quantize int8)",
        "```",
        "",
        "```python",
        "import sadcl",
        'model, config, class_names = sadcl.load_model("MODEL_DIR")',
        "```",
        "",
        "## Training",
        "",
        f"- data: {code(d.format)} (train {code(d.train_split)}, val {code(d.val_split)}, test {code(d.test_split)}), "
        f"train preset {code(d.train_preset)}",
        (
            f"- model: backbone {code(m.backbone)}, image size {m.img_size}, hidden {m.hidden_dim}, "
            f"{m.enc_layers} encoder / {m.dec_layers} decoder layers, {m.nhead} heads"
            if m.head == "query2label"
            else f"- model: backbone {code(m.backbone)}, image size {m.img_size}, head: {_peer_head(m)}"
        ),
        f"- loss weights: asl {loss.weight_asl:g}"
        + (f", sscl {loss.weight_sscl:g}, pscl {loss.weight_pscl:g}" if m.contrastive else "")
        + (
            f"; prototypes follow the model (momentum {m.prototype_momentum:g})"
            + ("; one stage, no stage 1" if t.single_stage else "")
            if m.contrastive and m.prototype_momentum is not None
            else ""
        ),
        f"- schedule: {t.epochs} epochs (ran {results.get('epochs_run', 'unknown')}, best epoch "
        f"{_epoch(results.get('best_epoch'))}), lr {config.optim.lr:g}, EMA decay {t.ema_decay:g}, seed {t.seed}",
        f"- shipped weights: {results.get('selected', 'as selected on the validation split')}"
        + (f" ({results['guard']['note']})" if (results.get("guard") or {}).get("kept_start") else ""),
        "",
        "## Results",
        "",
        "Percentages; threshold metrics at 0.5 as measured during training.",
        "",
        *_metrics_rows(results),
        "",
        "## Per-class AP and thresholds",
        "",
        *_per_class_rows(class_names, results.get("test_per_class_AP") or {}, thresholds),
        "",
    ]
    return "\n".join(lines)


def _epoch(best_epoch: object) -> str:
    """The best epoch as the training log prints it (1-based); -1 is the start of stage 2 (the stage-2 guard)."""
    if not isinstance(best_epoch, int):
        return "unknown"
    return str(best_epoch + 1) if best_epoch >= 0 else "none (the weights stage 2 started from)"

"""The report as one self-contained HTML page: inline CSS, inline SVG charts, inline JS for the sortable table.

Nothing is fetched when the page opens (no CDN, no font, no image file): it works offline and can be mailed.
:func:`render_page` takes the JSON-ready report of :func:`sadcl.report.build.build_report_data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from sadcl.report import svg

__all__ = ["render_page"]

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;
color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666}table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:right}th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}
#per-class th{cursor:pointer;user-select:none}#per-class th.asc::after{content:" ▲"}
#per-class th.desc::after{content:" ▼"}
.grid{display:flex;flex-wrap:wrap;gap:4px}.chart{background:#fff}.ptitle{font-size:11px;font-weight:600}
.tick{font-size:9px;fill:#444}.scroll{max-height:520px;overflow:auto;border:1px solid #eee;display:inline-block}
figure{margin:0;font-size:11px;text-align:center}figure img{display:block;border:1px solid #ccc}
.bad{color:#b00}.good{color:#070}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{color:#666}
"""

# Sorts the per-class table by the clicked column: numbers numerically (data-v), text alphabetically.
_JS = """
(function(){
  var table=document.getElementById('per-class'); if(!table) return;
  var ths=table.tHead.rows[0].cells;
  for(var i=0;i<ths.length;i++){(function(col){ths[col].addEventListener('click',function(){
    var asc=!this.classList.contains('asc');
    for(var j=0;j<ths.length;j++) ths[j].classList.remove('asc','desc');
    this.classList.add(asc?'asc':'desc');
    var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[col].getAttribute('data-v'), y=b.cells[col].getAttribute('data-v');
      var nx=parseFloat(x), ny=parseFloat(y), r;
      if(!isNaN(nx)&&!isNaN(ny)) r=nx-ny; else if(isNaN(nx)&&!isNaN(ny)) r=1; else if(!isNaN(nx)) r=-1;
      else r=String(x).localeCompare(String(y));
      return asc?r:-r;});
    rows.forEach(function(r){body.appendChild(r);});
  });})(i);}
})();
"""


def _f(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _cell(v: Any, digits: int = 2, cls: str = "") -> str:
    if isinstance(v, str):
        return f'<td class="l {cls}" data-v="{escape(v)}">{escape(v)}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="{cls}" data-v="{v}">{v}</td>'
    return f'<td class="{cls}" data-v="{"" if v is None else f"{v:.6g}"}">{_f(v, digits)}</td>'


def _epoch(epoch: object) -> str:
    """1-based, as the training log (:func:`sadcl.training.stage_log.epoch_label`).

    report.json keeps the checkpoint's index.
    """
    from sadcl.training.stage_log import epoch_label

    return epoch_label(epoch)


def _summary(models: Sequence[dict[str, Any]]) -> str:
    """Facts per model, then one metrics row per (model, operating rule)."""
    facts = [
        ("images", lambda s: s["num_images"]),
        ("classes (with positives)", lambda s: f"{s['num_classes']} ({s['num_classes_with_positives']})"),
        ("mAP", lambda s: _f(s["mAP"])),
        ("stage / epoch", lambda s: f"{s.get('stage')} / {_epoch(s.get('epoch'))}"),
        ("weights", lambda s: f"{s.get('weights')} (selected on val: {s.get('selected_on_val')})"),
        ("method", lambda s: str((s.get("recipe") or {}).get("method", "–"))),  # its own row: the phrase has commas
        (
            "recipe",
            lambda s: ", ".join(f"{k}={v}" for k, v in (s.get("recipe") or {}).items() if k != "method"),
        ),
    ]
    head = "".join(f"<th class='l'>{escape(m['summary']['model'])}</th>" for m in models)
    rows = "".join(
        f'<tr><td class="l">{label}</td>'
        + "".join(f'<td class="l">{escape(str(get(m["summary"])))}</td>' for m in models)
        + "</tr>"
        for label, get in facts
    )
    table = f'<table id="summary"><thead><tr><th class="l"></th>{head}</tr></thead><tbody>{rows}</tbody></table>'
    keys = ("CP", "CR", "CF1", "OP", "OR", "OF1")
    metric_rows = []
    for m in models:
        s = m["summary"]
        for key, label in (
            ("at_threshold", f"threshold {s['threshold']:g}"),
            ("at_operating", f"operating ({s['operating_thresholds']})"),
            ("top3", "top-3"),
        ):
            cells = "".join(f"<td>{_f(s[key][k])}</td>" for k in keys)
            metric_rows.append(
                f'<tr><td class="l">{escape(s["model"])}</td><td class="l">{escape(label)}</td>{cells}</tr>'
            )
    metrics_head = "<th class='l'>model</th><th class='l'>labels predicted at</th>" + "".join(
        f"<th>{k}</th>" for k in keys
    )
    metrics = f'<table id="metrics"><thead><tr>{metrics_head}</tr></thead><tbody>{"".join(metric_rows)}</tbody></table>'
    return table + metrics


def _per_class_table(models: Sequence[dict[str, Any]], compare: dict[str, Any] | None) -> str:
    cols = [
        ("class", "class", 0),
        ("AP", "AP", 2),
        ("support", "support", 0),
        ("precision", "P", 1),
        ("recall", "R", 1),
        ("F1", "F1", 1),
        ("threshold", "threshold", 3),
        ("best_F1_threshold", "best-F1 thr", 3),
        ("best_F1", "best F1", 1),
        ("ECE", "ECE", 2),
        ("FP", "FP", 0),
        ("FN", "FN", 0),
    ]
    head = "".join(f'<th class="{"l" if k == "class" else ""}" title="{k}">{escape(t)}</th>' for k, t, _ in cols)
    other = models[1]["per_class"] if compare else None
    if compare:
        head += f"<th>AP {escape(models[1]['summary']['model'])}</th><th>ΔAP</th>"
    rows = []
    order = sorted(range(len(models[0]["per_class"])), key=lambda c: _sort_key(models[0]["per_class"][c]["AP"]))
    for c in order:  # worst classes first
        row = models[0]["per_class"][c]
        cells = "".join(_cell(row[k], d) for k, _, d in cols)
        if other is not None:
            d = compare["per_class_delta"][c]
            cls = "" if d is None else ("good" if d > 0 else "bad" if d < 0 else "")
            cells += _cell(other[c]["AP"]) + _cell(d, 2, cls)
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table id="per-class"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _sort_key(ap: float | None) -> float:
    return float("inf") if ap is None else ap


def _curves(models: Sequence[dict[str, Any]]) -> str:
    names = [m["summary"]["model"] for m in models]
    micro = svg.pr_chart(
        [m["curves"]["micro"] for m in models],
        title="micro-averaged (all labels pooled)",
        size=(320, 280),
        ticks=True,
        labels=names if len(models) > 1 else (),
    )
    panels = []
    first = models[0]
    order = sorted(range(len(first["per_class"])), key=lambda c: _sort_key(first["per_class"][c]["AP"]))
    for c in order:
        row = first["per_class"][c]
        panels.append(
            svg.pr_chart([m["curves"]["per_class"][c] for m in models], title=f"{row['class']} AP {_f(row['AP'], 1)}")
        )
    return (
        f'{micro}<p class="sub">Per class, worst AP first; the dot is the operating point.</p>'
        f'<div class="grid" id="pr-grid">{"".join(panels)}</div>'
    )


def _calibration(models: Sequence[dict[str, Any]]) -> str:
    parts, charts = [], []
    for m in models:
        c, name = m["calibration"], m["summary"]["model"]
        series, labels = [c["reliability_before"]], ["raw"]
        line = f"<b>{escape(name)}</b>: test ECE {_f(c['test_ECE_before'])}, NLL {_f(c['test_NLL_before'], 4)}"
        if "reliability_after" in c:
            series.append(c["reliability_after"])
            labels.append(f"temperature ({c['temperature_mode']})")
            t = c["temperature"]
            t_text = _f(t, 3) if not isinstance(t, list) else f"per class, {min(t):.2f}–{max(t):.2f}"
            line += (
                f" → after temperature T = {t_text}: ECE {_f(c['test_ECE_after'])}, NLL {_f(c['test_NLL_after'], 4)}"
            )
            if "val_NLL_before" in c:
                line += f" (val NLL {_f(c['val_NLL_before'], 4)} → {_f(c['val_NLL_after'], 4)})"
        parts.append(f"<li>{line}</li>")
        charts.append(svg.reliability_chart(series, title=f"reliability: {name}", labels=labels))
    return f'<ul>{"".join(parts)}</ul><div class="grid">{"".join(charts)}</div>'


def _pairs_table(rows: list[dict[str, Any]], names: Sequence[str], kind: str) -> str:
    if not rows:
        return '<p class="sub">No pair with enough errors.</p>'
    a, b, score = ("fp", "present", "fp_lift") if kind == "fp" else ("missed", "absent", "miss_lift")
    head = (
        "<th class='l'>false positive</th><th class='l'>true label present</th>"
        if kind == "fp"
        else "<th class='l'>missed label</th><th class='l'>label absent</th>"
    )
    body = "".join(
        f"<tr><td class='l'>{escape(names[r[a]])}</td><td class='l'>{escape(names[r[b]])}</td><td>{r['count']}</td>"
        f"<td>{_f(r[score])}</td><td>{_f(r['train_lift'])}</td></tr>"
        for r in rows
    )
    head = f"<thead><tr>{head}<th>images</th><th>{score}</th><th>train lift</th></tr></thead>"
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _cooccurrence(model: dict[str, Any], names: Sequence[str]) -> str:
    co = model["cooccurrence"]
    maps = []
    if co.get("train") is not None:
        maps.append(svg.heatmap(co["train"], names, title="training labels: P(column | row)"))
    maps.append(svg.heatmap(co["predicted"], names, title="predicted labels on this split: P(column | row)"))
    return (
        "<h3>False positives next to a present label</h3>"
        + _pairs_table(co["fp_pairs"], names, "fp")
        + "<h3>Misses when a usual companion is absent</h3>"
        + _pairs_table(co["fn_pairs"], names, "fn")
        + f'<div class="grid">{"".join(maps)}</div>'
    )


def _examples(examples: list[dict[str, Any]], names: Sequence[str]) -> str:
    if not examples:
        return '<p class="sub">No example images (synthetic scores, or no errors in the worst classes).</p>'
    figs = "".join(
        f'<figure><img src="{e["image"]}" alt="{escape(names[e["class"]])} {e["kind"]}">'
        f"{escape(names[e['class']])} {e['kind']} {e['score']:.2f}</figure>"
        for e in examples
    )
    return (
        f'<p class="sub">Worst classes: top-scoring false positives (FP) and lowest-scoring misses (FN), with that '
        f'label\'s attention.</p><div class="grid" id="examples">{figs}</div>'
    )


def _compare(models: Sequence[dict[str, Any]], compare: dict[str, Any], names: Sequence[str]) -> str:
    a, b = models[0]["summary"]["model"], models[1]["summary"]["model"]
    ci = compare["bootstrap"]
    order = sorted(range(len(names)), key=lambda c: -(compare["per_class_delta"][c] or 0))
    bars = svg.delta_bars(
        [names[c] for c in order], [compare["per_class_delta"][c] for c in order], title=f"ΔAP per class ({a} − {b})"
    )
    return (
        f"<p>ΔmAP ({escape(a)} − {escape(b)}) = <b>{_f(compare['delta_mAP'])}</b>, "
        f"{100 * ci['confidence']:.0f} % paired bootstrap CI over images [{_f(ci['low'])}, {_f(ci['high'])}] "
        f"({ci['resamples']} resamples; {escape(a)} not better in {100 * ci['p_not_better']:.1f} % of them).</p>{bars}"
    )


def render_page(data: dict[str, Any]) -> str:
    """The whole page for a report dict (``models`` first = the reported model, ``compare`` optional)."""
    models, compare, names = data["models"], data.get("compare"), data["class_names"]
    s = models[0]["summary"]
    title = f"sadcl report: {s['model']} on {data['split']}"
    if compare:
        title += f" vs {models[1]['summary']['model']}"
    sections = [
        ("summary", "Summary", _summary(models)),
        ("table", "Per-class results", _per_class_table(models, compare)),
        ("curves", "Precision-recall curves", _curves(models)),
        ("calibration", "Calibration", _calibration(models)),
        ("cooccurrence", "Co-occurrence errors", _cooccurrence(models[0], names)),
        ("examples", "Examples", _examples(data.get("examples") or [], names)),
    ]
    if compare:
        sections.insert(1, ("compare", "Compare", _compare(models, compare, names)))
    nav = " · ".join(f'<a href="#{k}">{escape(t)}</a>' for k, t, _ in sections)
    body = "".join(f'<section id="{k}"><h2>{escape(t)}</h2>{html}</section>' for k, t, html in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1 id='title'>{escape(title)}</h1>"
        f'<p class="sub">{escape(data["checkpoint"])} · {s["num_images"]} images · {s["num_classes"]} labels · '
        f"sadcl {escape(data['version'])}</p><p>{nav}</p>{body}"
        f"<section id='definitions'><h2>Definitions</h2>{_DEFINITIONS}</section><script>{_JS}</script></body></html>"
    )


_DEFINITIONS = """<dl>
<dt>AP / mAP</dt><dd>VOC all-point interpolated average precision per class (the official code's), mean over classes
with a positive; x100. Same numbers as <code>sadcl evaluate</code>.</dd>
<dt>CP, CR, CF1 / OP, OR, OF1</dt><dd>per-class (macro) and overall (micro) precision, recall, F1 of
<code>probability &gt; threshold</code>; top-3: each image predicts its 3 best labels.</dd>
<dt>operating thresholds</dt><dd>the thresholds file, else thresholds tuned on the validation split, else the global
threshold; best-F1 thr is the best threshold on this split itself (optimistic).</dd>
<dt>ECE</dt><dd>every (image, label) pair is one prediction; 15 equal-width probability bins;
sum over bins of (bin share) x |fraction positive − mean probability|; x100.</dd>
<dt>temperature</dt><dd>probability = sigmoid(logit / T), T fitted on the validation split to minimise the NLL.
It keeps each class's ranking (AP) and the predictions.</dd>
<dt>fp_lift / miss_lift / train lift</dt><dd>P(f false positive | t present) / P(f false positive);
P(m missed | a absent) / P(m missed | a present); P(i, j) / (P(i) P(j)) on the training labels.</dd>
</dl>"""

"""``index.html``: a static gallery of a batch, one card per item × classifier.

A card shows the input's thumbnail, the finding, the prediction on the input and at both
ends of the Latent Shift, and the outcome; a click opens the GIF. Filters: finding, label,
classifier and outcome (crossed / did not cross / no threshold / error, and true or false
positive or negative when labels are given). Everything is in the one file (inline CSS and
JS, system fonts) and every link is relative, so the page works from ``file://`` and from
any static host the output folder is copied to.
"""

from __future__ import annotations

import html
from pathlib import Path
from string import Template
from urllib.parse import quote

from ..explanation import DISCLAIMER

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:14px 20px;background:#1d2330;color:#fff}header h1{margin:0 0 4px;font-size:20px}
header p{margin:0;font-size:13px;opacity:.85}
.filters{display:flex;flex-wrap:wrap;gap:14px;padding:12px 20px;background:#fff;border-bottom:1px solid #dde}
.filters label{font-size:13px}.filters select{margin-left:6px;font-size:13px}
#shown{font-size:13px;align-self:center;color:#556}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(215px,1fr));gap:14px;padding:16px 20px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.15);overflow:hidden;font-size:12.5px}
.card button{display:block;width:100%;padding:0;border:0;background:#000;cursor:zoom-in}
.card img{display:block;width:100%;aspect-ratio:1;object-fit:cover}
.card .body{padding:8px 10px}.card .name{font-weight:600;word-break:break-all}
.preds{font-variant-numeric:tabular-nums;margin:4px 0}.muted{color:#667}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;margin:2px 4px 0 0;font-size:11.5px;background:#e4e7ee}
.crossed{background:#d3f3dc;color:#135c2c}.did-not-cross{background:#fde2cf;color:#7a3410}
.error{background:#f9d6d6;color:#8a1010}.errortext{color:#8a1010;word-break:break-word}
dialog{border:0;border-radius:8px;padding:12px;width:min(92vw,620px)}dialog img{width:100%;display:block}
dialog::backdrop{background:rgba(0,0,0,.7)}dialog p{font-size:13px}
"""

SCRIPT = """
const selects = Array.from(document.querySelectorAll('.filters select'));
function applyFilters() {
  let shown = 0;
  document.querySelectorAll('.card').forEach(card => {
    const ok = selects.every(s => {
      if (!s.value) return true;
      const [key, value] = s.value.split(':');
      return card.dataset[key] === value;
    });
    card.hidden = !ok;
    if (ok) shown++;
  });
  document.getElementById('shown').textContent = shown + ' shown';
}
selects.forEach(s => s.addEventListener('change', applyFilters));
const viewer = document.getElementById('viewer');
document.querySelectorAll('.card button').forEach(b => b.addEventListener('click', () => {
  document.getElementById('viewer-img').src = b.dataset.gif;
  document.getElementById('viewer-text').textContent = b.dataset.text;
  document.getElementById('viewer-folder').href = b.dataset.folder;
  viewer.showModal();
}));
viewer.addEventListener('click', e => { if (e.target === viewer || e.target.id === 'viewer-close') viewer.close(); });
applyFilters();
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Latent Shift gallery</title><style>$css</style></head>
<body>
<header><h1>Latent Shift gallery</h1><p>$summary $disclaimer Click a picture for its GIF.</p></header>
<div class="filters">$filters<span id="shown"></span></div>
<main class="grid">
$cards
</main>
<dialog id="viewer"><img id="viewer-img" alt="Latent Shift GIF"><p id="viewer-text"></p>
<p><a id="viewer-folder" href="#">summary.json</a> (beside it: every file of the item) · <button id="viewer-close">close</button></p></dialog>
<script>$script</script>
</body></html>
""")


def outcome_of(row: dict) -> str:
    """crossed / did not cross / no threshold / error, for the card and its filter."""
    if row.get("error"):
        return "error"
    crossed = {row.get("curtail_crossed"), row.get("exaggerate_crossed")}
    if crossed <= {None, ""}:
        return "no threshold"
    return "crossed" if True in crossed or "true" in crossed else "did not cross"


def _url(path: str) -> str:
    return html.escape(quote(path), quote=True)


def _preds_line(row: dict) -> str:
    if row.get("initial_pred") in (None, ""):
        return ""
    threshold = row.get("threshold")
    shown = "" if threshold in (None, "") else f" · threshold {float(threshold):.2f}"
    return (f'<div class="preds">input {float(row["initial_pred"]):.2f}<span class="muted">{shown}</span><br>'
            f'curtail {float(row["pred_curtail"]):.2f} · exaggerate {float(row["pred_exaggerate"]):.2f}</div>')


def _card(row: dict) -> str:
    outcome, e = outcome_of(row), html.escape
    data = {"finding": row.get("target") or "", "label": row.get("label") or "", "outcome": outcome,
            "result": row.get("result") or "", "classifier": row.get("classifier") or ""}
    attributes = " ".join(f'data-{key}="{e(value)}"' for key, value in data.items())
    badges = f'<span class="badge {outcome.replace(" ", "-")}">{e(outcome)}</span>'
    badges += "".join(f'<span class="badge">{e(row[k])}</span>' for k in ("result", "label") if row.get(k))
    if row.get("error"):
        picture = ""
        details = f'<div class="errortext">{e(row["error"])}</div>'
    else:
        text = f'{row["name"]} · {row["classifier"]} · {row.get("outcome", "")}'
        picture = (f'<button type="button" data-gif="{_url(row["gif"])}" data-folder="{_url(row["folder"] + "/summary.json")}" '
                   f'data-text="{e(text)}"><img loading="lazy" src="{_url(row["thumbnail"])}" '
                   f'alt="{e(row["name"])}"></button>')
        details = _preds_line(row)
    return (f'<article class="card" {attributes}>{picture}<div class="body">'
            f'<div class="name">{e(row["name"])}</div><div class="muted">{e(data["finding"] or "—")} · '
            f'{e(data["classifier"])}</div>{details}{badges}</div></article>')


def _select(key: str, title: str, values: list[str]) -> str:
    options = "".join(f'<option value="{html.escape(key)}:{html.escape(v)}">{html.escape(v)}</option>'
                      for v in values)
    return f'<label>{title}<select id="filter-{key}"><option value="">all</option>{options}</select></label>'


def _filters(rows: list[dict]) -> str:
    def values(key):
        return sorted({str(row.get(key) or "") for row in rows} - {""})

    outcomes = [o for o in ("crossed", "did not cross", "no threshold", "error")
                if any(outcome_of(row) == o for row in rows)]
    parts = [_select("finding", "finding", values("target")), _select("label", "label", values("label"))]
    if len(values("classifier")) > 1:
        parts.append(_select("classifier", "classifier", values("classifier")))
    parts.append(_select("outcome", "outcome", outcomes).replace(
        "</select>", "".join(f'<option value="result:{html.escape(v)}">{html.escape(v)}</option>'
                             for v in values("result")) + "</select>"))
    return "".join(parts)


def write_gallery(rows: list[dict], out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` for these results rows; returns its path."""
    errors = sum(1 for row in rows if row.get("error"))
    crossed = sum(1 for row in rows if outcome_of(row) == "crossed")
    summary = (f"{len(rows)} explanations, {crossed} crossed the threshold"
               + (f", {errors} failed." if errors else "."))
    page = PAGE.substitute(css=CSS, script=SCRIPT, summary=html.escape(summary), disclaimer=html.escape(DISCLAIMER),
                           filters=_filters(rows), cards="\n".join(_card(row) for row in rows))
    path = out_dir / "index.html"
    temporary = path.with_name(".index.html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    return path

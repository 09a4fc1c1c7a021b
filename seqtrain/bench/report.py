"""One-page summary of a results folder (``summarize``)."""
from __future__ import annotations

import json
from pathlib import Path

from seqtrain.bench.common import _env_lines, _fmt_ms
from seqtrain.bench.stability import stability_markdown
from seqtrain.bench.training import training_markdown


def _pivot(rows: list[dict], pass_: str) -> list[str]:
  """One line per (cell, D, T, B): each method's time (ratio, iterations)."""
  sel = [r for r in rows if r["pass"] == pass_]
  if not sel:
    return []
  methods = list(dict.fromkeys(r["method"] for r in sel))
  keys = list(dict.fromkeys((r["cell"], r["D"], r["T"], r["batch"]) for r in sel))
  out = [f"| cell | D | T | B | " + " | ".join(methods) + " |",
         "|---|---:|---:|---:|" + "---:|" * len(methods)]
  for k in keys:
    cells = []
    for m in methods:
      r = next((r for r in sel if (r["cell"], r["D"], r["T"], r["batch"]) == k
                and r["method"] == m), None)
      if r is None:
        cells.append("")
      elif r["status"] != "ok":
        cells.append(r["status"])
      else:
        it = f", {r['iterations']} it." if r.get("iterations") else ""
        cells.append(f"{_fmt_ms(r['time_s'])} ms (x{r['ratio']:.2f}{it})"
                     if r.get("ratio") is not None else f"{_fmt_ms(r['time_s'])} ms")
    out.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cells) + " |")
  return out


def summarize(out_dir: str | Path) -> str:
  """A markdown summary of every report (check/solvers/training/stability JSON)
  found under ``out_dir`` (searched recursively)."""
  out_dir = Path(out_dir)
  docs = []
  for p in sorted(out_dir.rglob("*.json")):
    try:
      doc = json.loads(p.read_text())
    except (OSError, ValueError):
      continue
    if isinstance(doc, dict) and doc.get("kind") in ("check", "solvers", "training",
                                                       "stability"):
      docs.append((p, doc))
  order = {"check": 0, "solvers": 1, "training": 2, "stability": 3}
  docs.sort(key=lambda pd: (order[pd[1]["kind"]], str(pd[0])))
  lines = [f"# Benchmark summary: {out_dir}", ""]
  if docs:
    lines += _env_lines(docs[0][1].get("environment", {}))
  for p, doc in docs:
    kind, rows = doc["kind"], doc.get("rows", [])
    rel = p.relative_to(out_dir)
    if kind == "check":
      failed = [r for r in rows if r.get("check") != "pass"]
      lines += [f"## Correctness ({rel})", "",
                f"{len(rows) - len(failed)}/{len(rows)} rows pass" +
                ("" if not failed else ": FAILED " + "; ".join(
                    f"{r['pass']} {r['cell']} {r['method']}: {r['check']}" for r in failed)), ""]
    elif kind == "solvers":
      for pass_ in ("forward", "grad"):
        table = _pivot(rows, pass_)
        if table:
          lines += [f"## Layer, {'forward' if pass_ == 'forward' else 'forward + gradient'} "
                    f"({rel})", "", "time (ratio to sequential, iterations)", ""] + table + [""]
      skipped = [r for r in rows if r["status"] != "ok"]
      if skipped:
        lines += [f"{len(skipped)} rows skipped/failed (reasons in {rel.with_suffix('.md')})",
                  ""]
    elif kind == "training":
      lines += [f"## Training ({rel})", ""] + training_markdown(rows).split("\n")[2:] + [""]
    elif kind == "stability":
      lines += [f"## Stability ({rel})", ""] + stability_markdown(rows).split("\n")[2:] + [""]
  if not docs:
    lines.append("(no benchmark reports found)")
  return "\n".join(lines)

"""The evaluation's tables: fold results averaged per protocol (`summarise`), the README
table, the quick-versus-full agreement and the seed summary; `write_report` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import nanmean
from .protocol import METRICS, PROTOCOLS

__all__ = ["agreement_table", "markdown_table", "seed_summary", "seed_table", "summarise", "write_report"]


def summarise(results_dir: str | Path) -> dict[str, Any]:
    """Average every (variant, method) over the held-out sections of each protocol.

    Each held-out section counts once (patient protocol: B4 and C2-C6; LOSO: C2-C6).
    """
    root = Path(results_dir)
    summary: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        rows: dict[str, dict[str, list]] = {}
        ceilings = []
        for path in sorted((root / protocol).glob("*/*.json")):
            rec = json.loads(path.read_text(encoding="utf-8"))
            for method, per_section in rec["results"].items():
                row = rows.setdefault(f"{rec['variant']}:{method}", {m: [] for m in METRICS} | {"sections": []})
                for section, scores in per_section.items():
                    row["sections"].append(section)
                    for m in METRICS:
                        row[m].append(scores.get(m))
            if rec["variant"] == "untrained":
                ceilings += [v for v in rec["tumor_auc_ceiling_measured"].values() if v is not None]
        summary[protocol] = {
            "label": PROTOCOLS[protocol]["label"],
            "methods": {
                name: {m: nanmean([v for v in row[m] if v is not None]) for m in METRICS}
                | {"n_sections": len(row["sections"]), "sections": sorted(row["sections"])}
                for name, row in rows.items()
            },
            "tumor_auc_ceiling_measured": nanmean(ceilings) if ceilings else None,
        }
    return summary


_NAMES = {
    "cmrcnet:retrieval_train_bank": "CMRCNet, retrieval over the training spots (the paper's setting)",
    "cmrcnet:retrieval": "CMRCNet, retrieval, bank + other patients' count-only spots",
    "cmrcnet:ridge": "CMRCNet, ridge head",
    "contrastive:retrieval_train_bank": "contrastive only (BLEEP), retrieval over the training spots",
    "contrastive:retrieval": "contrastive only (BLEEP), retrieval, bank + other patients' spots",
    "contrastive:ridge": "contrastive only (BLEEP), ridge head",
    "ridge_features:ridge": "ridge on colour/stain/texture statistics",
    "untrained:retrieval": "untrained encoder, retrieval (trivial)",
}


def markdown_table(summary: dict[str, Any]) -> str:
    """The README table: one block per protocol, methods as rows."""
    lines = []
    for protocol, block in summary.items():
        if not block["methods"]:
            continue
        lines.append(f"**{block['label']}** ({protocol})\n")
        lines.append("| method | HEG50 r | HVG50 r | markers r | all genes r | gene-gene | tumour AUC |")
        lines.append("|---|---|---|---|---|---|---|")
        for name in _NAMES:
            if name not in block["methods"]:
                continue
            m = block["methods"][name]
            cells = [f"{m[k]:.3f}" if m[k] is not None and np.isfinite(m[k]) else "-" for k in METRICS]
            lines.append(f"| {_NAMES[name]} | " + " | ".join(cells) + " |")
        ceiling = block.get("tumor_auc_ceiling_measured")
        if ceiling is not None:
            lines.append(f"| measured expression (ceiling) | | | | | | {ceiling:.3f} |")
        n = next(iter(block["methods"].values()))["n_sections"]
        lines.append(f"\nMean over {n} held-out sections.\n")
    return "\n".join(lines)


def agreement_table(
    quick: dict[str, Any], full: dict[str, Any], tolerance: float = 0.03, heading: str = "Quick minus full"
) -> str:
    """How far the ``--quick`` summary is from the full one, cell by cell.

    Parameters
    ----------
    quick, full : dict
        Outputs of `summarise` for the quick and the full results.
    tolerance : float
        The agreement asked of the quick setting (absolute difference).
    heading : str
        What is subtracted from what (the first words of the text).

    Returns
    -------
    str
        Markdown: per protocol, quick minus full for every method and metric both hold,
        the largest absolute difference, and whether every cell is within ``tolerance``.
    """
    lines = [f"{heading}, per cell (agreement asked: within ±{tolerance:.2f}).\n"]
    worst_all = 0.0
    for protocol, block in quick.items():
        other = full.get(protocol, {}).get("methods", {})
        names = [n for n in _NAMES if n in block.get("methods", {}) and n in other]
        if not names:
            continue
        lines.append(f"**{block['label']}** ({protocol})\n")
        lines.append("| method | HEG50 r | HVG50 r | markers r | all genes r | gene-gene | tumour AUC |")
        lines.append("|---|---|---|---|---|---|---|")
        for name in names:
            diffs = [block["methods"][name][k] - other[name][k] for k in METRICS]
            worst_all = max([worst_all] + [abs(d) for d in diffs if np.isfinite(d)])
            lines.append(f"| {_NAMES[name]} | " + " | ".join(f"{d:+.3f}" for d in diffs) + " |")
        lines.append("")
    verdict = "within" if worst_all <= tolerance else "NOT within"
    lines.append(f"Largest absolute difference: {worst_all:.3f} ({verdict} ±{tolerance:.2f}).")
    return "\n".join(lines) + "\n"


#: Rows of the seed table: the shipped recipe's methods, then the ablation of its
#: retrieval settings (same trained models).
_SEED_ROWS = {
    "cmrcnet:retrieval": "CMRCNet, retrieval (the shipped recipe)",
    "cmrcnet:retrieval_train_bank": "CMRCNet, retrieval over the training spots only",
    "cmrcnet:ridge": "CMRCNet, ridge head",
}


#: Rows of `seed_table` for the recipe with one of its changes removed, measured by its own
#: trainings (``without:pretraining``: the same recipe trained from a randomly initialised encoder).
WITHOUT_PREFIX = "without:"


def _ablation_label(setting: str) -> str:
    setting, _, adapted = setting.partition("_adapt-")
    k, ctx = setting.removeprefix("k").split("_ctx")
    context = "no context" if float(ctx) == 0 else f"context σ {ctx} µm"
    return f"ablation: top-k {k}, {context}" + (f", adapted to the slide ({adapted})" if adapted else "")


def seed_result_dirs(results: str | Path, seeds=(0, 1, 2)) -> dict[int, Path]:
    """Seed -> the ``full`` results folder of an evaluation's ``out_dir`` (seed 0 in ``full``,
    another seed N in ``seeds/seed<N>/full``: where `EvalConfig.overridden` puts it)."""
    results = Path(results)
    return {s: results / "full" if s == 0 else results / "seeds" / f"seed{s}" / "full" for s in seeds}


def seed_summary(result_dirs: dict[int, str | Path], protocol: str = "patient") -> dict[str, Any]:
    """Per seed, the mean over held-out sections of every method and ablation setting;
    then mean and sd over the seeds.

    Parameters
    ----------
    result_dirs : dict
        Seed -> a results folder written by ``stpredict evaluate`` (``.../full``).
    protocol : str
        Which protocol's folds to read.

    Returns
    -------
    dict
        ``{row: {"per_seed": {seed: {metric: value}}, "mean": {...}, "sd": {...}}}``;
        rows are ``variant:method`` and ``ablation:<setting>`` (cmrcnet only).
    """
    import statistics

    rows: dict[str, dict] = {}
    for seed, folder in result_dirs.items():
        per_row: dict[str, dict[str, list]] = {}
        for path in sorted((Path(folder) / protocol).glob("*/cmrcnet.json")):
            rec = json.loads(path.read_text(encoding="utf-8"))
            blocks = {f"cmrcnet:{m}": v for m, v in rec["results"].items()}
            blocks |= {f"ablation:{s}": v for s, v in rec.get("ablation", {}).items()}
            for name, per_section in blocks.items():
                row = per_row.setdefault(name, {m: [] for m in METRICS})
                for scores in per_section.values():
                    for m in METRICS:
                        if scores.get(m) is not None:
                            row[m].append(scores[m])
        for name, row in per_row.items():
            entry = rows.setdefault(name, {"per_seed": {}})
            entry["per_seed"][seed] = {m: nanmean(v) if v else None for m, v in row.items()}
    for entry in rows.values():
        seeds = list(entry["per_seed"].values())
        entry["mean"], entry["sd"] = {}, {}
        for m in METRICS:
            values = [s[m] for s in seeds if s[m] is not None]
            entry["mean"][m] = statistics.mean(values) if values else None
            entry["sd"][m] = statistics.stdev(values) if len(values) > 1 else None
    return rows


def seed_table(summary: dict[str, Any], recipe: str = "the shipped recipe") -> str:
    """Markdown of `seed_summary`: mean ± sd over seeds, the recipe's rows, the rows of the
    recipe without one of its changes (``without:<change>``), then the retrieval ablation.

    ``recipe`` names the recipe in its first row (another experiment's table says which).
    """
    lines = [
        "| method | seeds | HEG50 r | HVG50 r | markers r | all genes r | gene-gene | tumour AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = [n for n in _SEED_ROWS if n in summary]
    names += [n for n in summary if n.startswith(WITHOUT_PREFIX)]
    names += sorted((n for n in summary if n.startswith("ablation:")), key=_ablation_order)
    for name in names:
        entry = summary[name]
        if name.startswith(WITHOUT_PREFIX):
            label = f"ablation: without {name.removeprefix(WITHOUT_PREFIX)}"
        else:
            label = _SEED_ROWS.get(name) or _ablation_label(name.removeprefix("ablation:"))
        label = label.replace("the shipped recipe", recipe)
        cells = []
        for m in METRICS:
            mean, sd = entry["mean"][m], entry["sd"][m]
            cells.append("-" if mean is None else f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
        lines.append(f"| {label} | {len(entry['per_seed'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ablation_order(name: str) -> tuple[bool, int, float]:
    setting, _, adapted = name.removeprefix("ablation:k").partition("_adapt-")
    k, ctx = setting.split("_ctx")
    return bool(adapted), int(k), float(ctx)


def write_report(out_dir: str | Path, quick: bool = False) -> tuple[Path, list[str]]:
    """Write ``summary.json`` and ``table.md`` of an evaluation's results (and, for
    ``quick``, ``agreement.md`` against the full results when they exist).

    Parameters
    ----------
    out_dir : str or Path
        The evaluation's ``out_dir``; results lie in its ``full/`` or ``quick/`` folder.
    quick : bool
        Whether to report the ``--quick`` results.

    Returns
    -------
    results : Path
        The folder written to.
    tables : list of str
        The Markdown tables written (the README table, then the agreement table if any).
    """
    from ..io.atomic import atomic_path

    results = Path(out_dir) / ("quick" if quick else "full")
    summary = summarise(results)
    tables = [markdown_table(summary)]
    written = {"summary.json": json.dumps(summary, indent=1), "table.md": tables[0]}
    full_summary = Path(out_dir) / "full" / "summary.json"
    if quick and full_summary.exists():  # how well the quick setting stands in for the full one
        tables.append(agreement_table(summary, json.loads(full_summary.read_text(encoding="utf-8"))))
        written["agreement.md"] = tables[1]
    for name, text in written.items():
        with atomic_path(results / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return results, tables

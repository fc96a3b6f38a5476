"""The cohort's table files and figures: cohort.csv, cohort.h5ad, cohort_overview.png and a
per-gene plot of each slide's mean predicted expression inside its predicted tumour."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["write_cohort_outputs", "overview_grid", "gene_plot"]

MAX_TILES = 120  # beyond this a grid is unreadable; the table has every slide
CELL = 320
LABEL_H = 18


def write_cohort_outputs(table: pd.DataFrame, out: Path, genes: list[str]) -> None:
    """Write the table (CSV and h5ad) and the figures into ``out``, each atomically.

    Why h5ad beside the CSV: the per-gene means form a slides x genes matrix that scanpy
    and anndata users open directly (``X`` = mean over tissue, ``layers["tumour_mean"]``,
    the other columns in ``obs``), with no new dependency (Parquet would need pyarrow).
    """
    from PIL import Image

    from ..io.atomic import atomic_path
    from ..io.tables import write_csv

    write_csv(table, out / "cohort.csv", index=False)
    with atomic_path(out / "cohort.h5ad") as tmp:
        _anndata(table, genes).write_h5ad(tmp)
    grid = overview_grid(table, out, genes[0])
    with atomic_path(out / "cohort_overview.png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    from ..vocabulary import safe_filename

    for gene in genes:
        with atomic_path(out / f"cohort_{safe_filename(gene)}.png") as tmp:
            gene_plot(table, gene, tmp)


def _anndata(table: pd.DataFrame, genes: list[str]):
    import anndata as ad

    mean = table[[f"{g}_mean" for g in genes]].to_numpy(np.float32)
    tumour = table[[f"{g}_tumour_mean" for g in genes]].to_numpy(np.float32)
    obs = table.drop(columns=[c for c in table.columns if c.endswith("_mean") and c[: -len("_mean")] in genes])
    obs = obs.drop(columns=[f"{g}_tumour_mean" for g in genes], errors="ignore")
    obs = obs.set_index("id")
    obs.index = obs.index.astype(str)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].fillna("").astype(str)
    adata = ad.AnnData(X=mean, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    adata.layers["tumour_mean"] = tumour
    adata.uns["stpredict_cohort"] = {
        "X": "mean predicted log1p(counts per 10,000) over each slide's tissue",
        "tumour_mean": "the same over the spots called tumour (NaN: none)",
        "note": "Research use only; not for diagnosis.",
    }
    return adata


def overview_grid(table: pd.DataFrame, out: Path, gene: str) -> np.ndarray:
    """Thumbnails of the slides with ``gene``'s heatmap and the tumour contour, named by id;
    failed slides as grey cells with the word "failed"."""
    from PIL import Image, ImageDraw, ImageFont

    from ..inference.overview import colormap
    from .record import TILE_NAME, read_record

    font = ImageFont.load_default()
    shown = table.head(MAX_TILES)
    n = max(1, len(shown))
    cols = min(6, n)
    rows = math.ceil(n / cols)
    header = 44
    canvas = Image.new("RGB", (max(cols * CELL, 900), header + rows * (CELL + LABEL_H)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    more = f" (first {MAX_TILES} of {len(table)} slides; cohort.csv has all)" if len(table) > MAX_TILES else ""
    limits = None
    for slide_id in shown["id"]:
        record = read_record(out / str(slide_id))
        if record and (record.get("tile") or {}).get("gene") == gene:
            limits = record["tile"]["limits"]
            break
    x = 8
    if limits is not None:  # one colour range for every tile: the model's fixed range of the gene
        bar = colormap(np.linspace(0, 1, 160)[None, :].repeat(10, 0), 0.0, 1.0)
        draw.text((x, 4), f"{limits[0]:.2f}", fill=(20, 20, 20), font=font)
        canvas.paste(Image.fromarray(bar), (x + 34, 6))
        draw.text((x + 200, 4), f"{limits[1]:.2f}", fill=(20, 20, 20), font=font)
        x += 240
    draw.text(
        (x, 4),
        f"{gene}, predicted log1p(counts per 10,000), the model's fixed range; red: predicted tumour{more}",
        fill=(20, 20, 20),
        font=font,
    )
    draw.text((8, 24), "Research use only; not for diagnosis.", fill=(90, 90, 90), font=font)
    for k, row in enumerate(shown.itertuples(index=False)):
        x0 = (k % cols) * CELL
        y0 = header + (k // cols) * (CELL + LABEL_H)
        tile_path = out / str(row.id) / TILE_NAME
        status = row.status
        if status in ("done", "reused") and tile_path.is_file():
            with Image.open(tile_path) as tile:
                tile = tile.convert("RGB")
                tile.thumbnail((CELL - 8, CELL - 8))
                canvas.paste(tile, (x0 + (CELL - tile.width) // 2, y0 + (CELL - tile.height) // 2))
            label = str(row.id) if row.domain in ("in domain", "unknown") else f"{row.id} ({row.domain})"
        else:
            draw.rectangle([x0 + 4, y0 + 4, x0 + CELL - 4, y0 + CELL - 4], fill=(225, 225, 225))
            draw.text((x0 + CELL // 2 - 15, y0 + CELL // 2 - 6), "failed", fill=(180, 0, 0), font=font)
            label = f"{row.id} (failed)"
        draw.text((x0 + 6, y0 + CELL + 2), label[:50], fill=(20, 20, 20), font=font)
    return np.asarray(canvas)


def gene_plot(table: pd.DataFrame, gene: str, path) -> None:
    """Each slide's mean predicted ``gene`` inside its predicted tumour (and over all its
    tissue), sorted; failed slides and slides without tumour listed below the plot."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; never touches a GUI backend
    import matplotlib.pyplot as plt

    ok = table[table["status"].isin(["done", "reused"])]
    tumour = ok[f"{gene}_tumour_mean"].astype(float)
    with_tumour = ok[np.isfinite(tumour)].sort_values(f"{gene}_tumour_mean")
    no_tumour = ok[~np.isfinite(tumour)]["id"].astype(str).tolist()
    failed = table[table["status"] == "failed"]["id"].astype(str).tolist()
    n = max(1, len(with_tumour))
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.22 * min(n, 150)), dpi=110)
    y = np.arange(len(with_tumour))
    ax.scatter(with_tumour[f"{gene}_mean"].astype(float), y, marker="|", s=80, color="0.5", label="all tissue")
    ax.scatter(with_tumour[f"{gene}_tumour_mean"].astype(float), y, s=22, color="tab:red", label="inside tumour")
    ax.set_yticks(y)
    ax.set_yticklabels(with_tumour["id"].astype(str).tolist() if len(with_tumour) <= 150 else [], fontsize=7)
    ax.set_xlabel(f"{gene}, mean predicted log1p(counts per 10,000)")
    ax.set_title(f"{gene} per slide, sorted by the mean inside the predicted tumour", fontsize=10, pad=22)
    ax.grid(axis="x", alpha=0.3)
    if len(with_tumour):
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, fontsize=8, frameon=False)
    notes = []
    if no_tumour:
        notes.append(f"No tumour called ({len(no_tumour)}): {_listing(no_tumour)}")
    if failed:
        notes.append(f"Failed ({len(failed)}): {_listing(failed)}")
    notes.append("Research use only; not for diagnosis.")
    fig.text(0.01, 0.005, "\n".join(notes), fontsize=7, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.03 + 0.03 * len(notes), 1, 1))
    fig.savefig(path, format="png")
    plt.close(fig)


def _listing(ids: list[str], limit: int = 12) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more (see cohort.csv)" if len(ids) > limit else "")

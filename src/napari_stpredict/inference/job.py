"""One slide, start to finish, without a terminal or a viewer: the job `predict` and
`cohort` share.

`PredictOptions` holds what the user chose (the result-shaping settings apart from the
run control), `PredictOptions.problems` checks them against the model before any slide is
read, and `predict_to_folder` opens a slide, predicts it (through the cache) and writes
its output folder whole or not at all. `slide_summary` is the slide's row of a cohort
table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..vocabulary import GeneIndex

__all__ = [
    "PredictOptions",
    "SlideOutcome",
    "folder_names",
    "predict_to_folder",
    "pseudonym",
    "slide_summary",
    "write_slide_outputs",
]


#: Extra per-slide files ``--export`` can add.
EXPORTS = ("qupath", "spatialdata")


@dataclass(frozen=True)
class PredictOptions:
    """The prediction options of ``stpredict predict`` and ``stpredict cohort``.

    Parameters
    ----------
    genes : tuple of str, optional
        Genes exported as GeoTIFF and summarised (default: ERBB2, else the model's first).
    markers : tuple of str, optional
        Tumour marker genes (default: the model's panel).
    threshold : float, optional
        Tumour score threshold (default: the model's calibrated one, or Otsu per slide).
    threshold_mode : {"auto", "absolute", "slide"}
        Units of the tumour score; see `napari_stpredict.inference.tumor.tumor_mask`.
    tumour_out_of_domain : bool
        Also call tumour in out-of-domain spots and slides.
    check_stain : bool
        Refuse slides that do not look like H&E.
    stride_um : float, optional
        Spot spacing in µm (default: the model's patch size).
    method : {"retrieval", "ridge"}
        How expression is read from the image embedding.
    adaptation : {"none", "centre", "standardise"}, optional
        Per-slide adaptation (default: the model's).
    roi : list of polygons, optional
        Region in level-0 pixels (outer rings ``[[x, y], ...]``).
    mpp : float, optional
        µm per pixel for slides that do not record it.
    exports : tuple of str
        Extra files per slide: ``"qupath"`` writes ``qupath_detections.geojson`` (one QuPath
        detection per spot, with measurements; `napari_stpredict.inference.qupath`);
        ``"spatialdata"`` writes ``prediction.zarr`` (image, spots, table and tumour
        contours; `napari_stpredict.inference.spatial_data`, needs the optional extra).
    export_genes : {"chosen", "all"}
        The genes in the QuPath file: the chosen ones (``genes``) or every gene of the
        model (the SpatialData table always holds every gene).
    batch_size : int
        Patches per model call. Run control: never changes a result.
    use_cache : bool
        Use the on-disk prediction cache. Run control.
    """

    genes: tuple[str, ...] | None = None
    markers: tuple[str, ...] | None = None
    threshold: float | None = None
    threshold_mode: str = "auto"
    tumour_out_of_domain: bool = False
    check_stain: bool = True
    stride_um: float | None = None
    method: str = "retrieval"
    adaptation: str | None = None
    roi: list | None = None
    mpp: float | None = None
    exports: tuple[str, ...] = ()
    export_genes: str = "chosen"
    batch_size: int = field(default=64, compare=False)
    use_cache: bool = field(default=True, compare=False)

    @classmethod
    def from_args(cls, args, roi=None) -> PredictOptions:
        """The options of a parsed ``predict``/``cohort`` command line."""
        return cls(
            genes=tuple(args.genes) if args.genes else None,
            markers=tuple(args.markers) if args.markers else None,
            threshold=args.threshold,
            threshold_mode=args.threshold_mode,
            tumour_out_of_domain=args.tumour_out_of_domain,
            check_stain=not args.no_stain_check,
            stride_um=args.stride_um,
            method=args.method,
            adaptation=getattr(args, "adaptation", None),
            roi=roi,
            mpp=args.mpp,
            exports=tuple(dict.fromkeys(getattr(args, "export", None) or ())),
            export_genes=getattr(args, "export_genes", "chosen"),
            batch_size=args.batch_size,
            use_cache=not args.no_cache,
        )

    def problems(self, model) -> list[str]:
        """What is wrong with these options for ``model`` (empty when all is well).

        Messages name the command-line option, which is how most users meet them.
        """
        from ..io.resolution import mpp_pair

        problems = []
        if self.stride_um is not None:
            smallest = model.io.patch_um / 8
            if not (math.isfinite(self.stride_um) and self.stride_um >= smallest):
                problems.append(
                    f"--stride-um must be at least {smallest:g} µm (1/8 of the model's "
                    f"{model.io.patch_um:g} µm patch), got {self.stride_um}"
                )
        if self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.mpp is not None:
            try:
                mpp_pair(self.mpp, "--mpp")
            except ValueError as exc:
                problems.append(str(exc))
        if self.threshold is not None and not math.isfinite(self.threshold):
            problems.append(f"--threshold must be a finite number, got {self.threshold}")
        if self.threshold_mode not in ("auto", "absolute", "slide"):
            problems.append(f"--threshold-mode must be auto, absolute or slide, got {self.threshold_mode!r}")
        if self.adaptation not in (None, "none", "centre", "standardise"):
            problems.append(f"--adaptation must be none, centre or standardise, got {self.adaptation!r}")
        unknown_exports = [e for e in self.exports if e not in EXPORTS]
        if unknown_exports:
            problems.append(f"--export must be one of {', '.join(EXPORTS)}, got {', '.join(unknown_exports)}")
        if "spatialdata" in self.exports:
            from .spatial_data import spatialdata_missing

            if missing := spatialdata_missing():
                problems.append(f"--export spatialdata: {missing}")
        if self.export_genes not in ("chosen", "all"):
            problems.append(f"--export-genes must be chosen or all, got {self.export_genes!r}")
        if self.method not in ("retrieval", "ridge"):
            problems.append(f"--method must be retrieval or ridge, got {self.method!r}")
        known = GeneIndex(model.genes)
        unknown = [g for g in (self.genes or []) if g not in known]
        if unknown:
            problems.append(f"the model does not predict {', '.join(unknown)} (list its genes: stpredict genes)")
        if self.markers and not any(m in known for m in self.markers):
            problems.append(
                f"--markers: the model predicts none of {', '.join(self.markers)} (list its genes: stpredict genes)"
            )
        return problems

    def chosen_genes(self, model) -> list[str]:
        """The genes to export, spelt as the model spells them."""
        if self.genes:
            return [GeneIndex(model.genes).canonical(g) for g in self.genes]
        return ["ERBB2"] if "ERBB2" in model.genes else list(model.genes[:1])

    def usable_markers(self, model) -> list[str] | None:
        """The given markers the model predicts (None: the model's own panel)."""
        if not self.markers:
            return None
        known = GeneIndex(model.genes)
        return [m for m in self.markers if m in known]

    def engine_params(self) -> dict[str, Any]:
        """Keyword arguments of `cached_predict_slide` (the cache key ignores run control)."""
        return {
            "stride_um": self.stride_um,
            "roi": self.roi,
            "batch_size": self.batch_size,
            "method": self.method,
            "check_stain": self.check_stain,
            **({"adaptation": self.adaptation} if self.adaptation is not None else {}),
        }

    def result_settings(self) -> dict[str, Any]:
        """Every setting that can change an output file, as plain values (for fingerprints)."""
        settings = asdict(self)
        for run_control in ("batch_size", "use_cache"):
            settings.pop(run_control)
        # Options added later, at their defaults: fingerprints (cohort records) as before them.
        for key, default in (("adaptation", None), ("exports", ()), ("export_genes", "chosen")):
            if settings[key] == default or (key == "exports" and not settings[key]):
                settings.pop(key)
        if "exports" in settings:
            settings["exports"] = list(settings["exports"])
        return settings


@dataclass
class SlideOutcome:
    """What `predict_to_folder` did for one slide."""

    slide: Any  # the (closed) Slide, for its name and summary
    prediction: Any  # Prediction
    mask: Any  # TumorMask
    folder: Path
    genes: list[str]


def predict_to_folder(
    path: Path,
    model,
    model_path: Path,
    options: PredictOptions,
    folder: Path,
    *,
    mpp: float | None = None,
    shown_as: str | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel_event=None,
    also_write: Callable[..., None] | None = None,
) -> SlideOutcome:
    """Predict one slide and write its output folder (whole or not at all).

    Parameters
    ----------
    path : Path
        The slide file.
    model : STModel
        The loaded model; ``model_path`` is its checkpoint (cache key, config.yaml).
    options : PredictOptions
        Checked beforehand with `PredictOptions.problems`.
    folder : Path
        The slide's output folder: written whole, or (a folder of an earlier run) its
        product files replaced; files the product did not write are kept
        (`napari_stpredict.io.output_folder`).
    mpp : float, optional
        This slide's resolution, overriding ``options.mpp``.
    shown_as : str, optional
        A pseudonym that replaces the slide's name in every output.
    progress : callable, optional
        Called with each progress dict of the engine.
    also_write : callable, optional
        ``also_write(folder, slide, prediction, mask)`` writes more files into the
        temporary folder, so they appear together with the outputs (or not at all).

    Raises
    ------
    StPredictError, ValueError, OSError
        For a slide that cannot be read or predicted; `OutputError` when the folder
        cannot be written, `ForeignFolderError` (before the prediction) when ``folder``
        holds the slide or was not written by the product. The previous folder is left
        as it was then.
    """
    from .._progress import drain
    from ..errors import OutputError
    from ..io.output_folder import ForeignFolderError, check_output_folder, output_folder
    from ..io.slide import open_slide
    from .cache import cached_predict_slide

    genes = options.chosen_genes(model)
    check_output_folder(folder, inputs=[path])  # before the slow work
    with open_slide(path, mpp=mpp if mpp is not None else options.mpp) as slide:
        prediction = drain(
            cached_predict_slide(
                slide,
                model,
                model_path=model_path,
                use_cache=options.use_cache,
                cancel_event=cancel_event,
                **options.engine_params(),
            ),
            progress,
        )
        if shown_as:
            prediction.set_meta(prediction.meta.with_slide_name(shown_as))
        try:
            with output_folder(folder, inputs=[path]) as tmp:
                mask = write_slide_outputs(tmp, slide, prediction, model, model_path, genes, options)
                if also_write is not None:
                    also_write(tmp, slide, prediction, mask)
        except ForeignFolderError:
            raise
        except (OSError, RuntimeError) as exc:  # h5py reports a full disk as RuntimeError
            raise OutputError(
                f"{slide.name}: cannot write the outputs to {folder.parent} ({getattr(exc, 'strerror', None) or exc})"
            ) from exc
    return SlideOutcome(slide=slide, prediction=prediction, mask=mask, folder=folder, genes=genes)


def write_slide_outputs(folder: Path, slide, prediction, model, model_path: Path, genes, options: PredictOptions):
    """Everything ``predict`` writes for one slide, into ``folder``; returns the tumour mask."""
    import yaml

    from .._version import __version__
    from ..io.atomic import require_free_space
    from .export import export_gene_geotiff, export_overview, export_tumor, safe_filename
    from .tumor import add_tumour_columns, tumor_mask

    require_free_space(folder, 2 * prediction.adata.X.nbytes + (4 << 20))  # the table plus maps and images
    mask = tumor_mask(
        prediction,
        options.usable_markers(model),
        threshold=options.threshold,
        mode=options.threshold_mode,
        include_out_of_domain=options.tumour_out_of_domain,
    )
    add_tumour_columns(prediction, mask)  # the spot table carries each spot's call
    prediction.save(folder / "prediction.h5ad")
    for gene in genes:
        export_gene_geotiff(prediction, gene, folder / f"{safe_filename(gene)}.tif")
    export_tumor(prediction, mask, folder / "tumor_mask.tif", folder / "tumor.geojson")
    export_overview(slide, prediction, genes[0], mask, folder / "overview.png")
    if "qupath" in options.exports:
        from .qupath import QUPATH_FILE, write_qupath_detections

        listed = list(prediction.genes) if options.export_genes == "all" else list(genes)
        write_qupath_detections(prediction, listed, folder / QUPATH_FILE, threshold=mask.threshold)
    if "spatialdata" in options.exports:
        from .spatial_data import SPATIALDATA_FILE, to_spatialdata, write_spatialdata

        write_spatialdata(to_spatialdata(prediction, slide, mask), folder / SPATIALDATA_FILE)
    meta = prediction.meta
    config = {
        "napari_stpredict": __version__,
        "slide": meta.slide.name,
        "model": str(model_path.name),
        # A rerun answered by the cache never loads the network (`LazyModel`).
        "device": str(model.device) if getattr(model, "loaded", True) else "none (read from the cache)",
        "genes": list(genes),
        "markers": mask.markers,
        "threshold": mask.threshold,
        "threshold_automatic": mask.automatic,
        "threshold_mode": mask.mode,
        "tumour_note": mask.note or None,
        "tumour_fraction": round(mask.fraction, 4),
        "stain": meta.trust.stain.kind,
        "domain": {
            "verdict": meta.trust.domain.verdict,
            "share_out": meta.trust.domain.share_out,
            "threshold": meta.trust.domain.threshold,
        },
        "stride_um": meta.stride_um,
        "patch_um": meta.patch_um,
        "batch_size": options.batch_size,
        "method": options.method,
        "roi": options.roi,
        "mpp": [slide.mpp_x, slide.mpp_y],
        "spots": len(prediction),
        "cache": meta.cache,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return mask


def slide_summary(prediction, mask, genes: list[str]) -> dict[str, Any]:
    """One slide's figures for a cohort table.

    Returns
    -------
    dict
        ``tissue_mm2`` (the predicted grid cells' tissue, i.e. tissue under a spot),
        ``spots``, ``tumour_fraction``, ``mean_confidence``, ``share_out_of_domain``
        (spots beyond the model's calibrated domain threshold; None without calibration),
        ``domain``, ``stain`` and per gene ``<gene>_mean`` (over tissue) and
        ``<gene>_tumour_mean`` (over spots called tumour; NaN when there are none).
    """
    obs = prediction.adata.obs
    stride_um = prediction.meta.stride_um
    tissue_mm2 = float(np.sum(obs["tissue_fraction"])) * stride_um * stride_um / 1e6
    domain = prediction.trust.domain
    from .tumor import spots_called

    tumour = spots_called(prediction, mask.raster)  # the cleaned mask, as drawn and exported
    row: dict[str, Any] = {
        "tissue_mm2": round(tissue_mm2, 3),
        "spots": len(prediction),
        "tumour_fraction": round(mask.fraction, 4),
        "mean_confidence": round(float(np.mean(prediction.confidence)), 4) if len(prediction) else math.nan,
        "share_out_of_domain": domain.share_out,
        "domain": domain.verdict or "unknown",
        "stain": prediction.trust.stain.kind,
    }
    for gene in genes:
        values = prediction.expression(gene)
        row[f"{gene}_mean"] = round(float(np.mean(values)), 4) if len(values) else math.nan
        row[f"{gene}_tumour_mean"] = round(float(np.mean(values[tumour])), 4) if tumour.any() else math.nan
    return row


def folder_names(paths: list[Path], taken: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One output folder name per slide: the file's stem, made safe.

    Slides that share a stem (``a/slide.svs`` and ``b/slide.svs``), compared without case
    as case-insensitive file systems do, or whose stem is in ``taken`` (names given
    otherwise, e.g. a manifest's ids, lower case), get a short hash of their resolved
    path appended: neither overwrites the other, and the same file always gets the same
    name.
    """
    import hashlib

    from ..vocabulary import safe_filename

    stems = [_bounded(safe_filename(path.stem)) for path in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    names = []
    for path, stem in zip(paths, stems, strict=True):
        if counts[stem.lower()] > 1 or stem.lower() in taken:
            stem = f"{stem}-{hashlib.sha1(str(path.resolve()).encode('utf-8')).hexdigest()[:8]}"
        names.append(stem)
    return names


#: Longest output folder name in UTF-8 bytes (file systems allow 255; the hidden
#: temporary folder beside it adds about 40).
MAX_FOLDER_NAME_BYTES = 200


def _bounded(stem: str) -> str:
    """``stem`` cut to `MAX_FOLDER_NAME_BYTES` with a hash of the whole name appended, so
    that two long names sharing their start stay apart."""
    import hashlib

    if len(stem.encode("utf-8")) <= MAX_FOLDER_NAME_BYTES:
        return stem
    digest = hashlib.sha1(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    cut = stem.encode("utf-8")[: MAX_FOLDER_NAME_BYTES - 9].decode("utf-8", "ignore")
    return f"{cut}-{digest}"


def pseudonym(path: Path) -> str:
    """``slide-<12 hex>`` from the file's content (`slide_fingerprint`): the id that replaces
    a slide's file name with ``--pseudonymize``, the same on every run."""
    from .cache import slide_fingerprint

    return f"slide-{slide_fingerprint(path)[:12]}"

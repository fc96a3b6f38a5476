"""A prediction's metadata as typed, frozen objects: the only reader of ``uns["stpredict"]``.

A `Prediction` stores its metadata in ``adata.uns["stpredict"]`` (plain values, so the
``.h5ad`` opens anywhere). Code reads it through `PredictionMeta`: what model, which slide,
the spot grid, the trust verdicts, the tumour calibration and call, the cache state.
`PredictionMeta.from_uns` accepts every layout written so far (schema 1, the 0.1.0 files,
which carry no ``schema`` key; a committed fixture is tested) and fills what an older file
lacks; `to_uns` writes schema `SCHEMA`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..grid import GridGeometry
from ..vocabulary import RESEARCH_USE, UNITS

__all__ = [
    "SCHEMA",
    "ModelInfo",
    "SlideInfo",
    "DomainVerdict",
    "ResolutionVerdict",
    "StainVerdict",
    "Trust",
    "TumourCalibration",
    "PredictionMeta",
]

#: Layout version written by `PredictionMeta.to_uns`.
SCHEMA = 2

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(value: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ModelInfo:
    """The model a prediction came from and the retrieval settings it ran with."""

    name: str
    backbone: str | None = None
    trained_on: tuple[str, ...] = ()
    bank_spots: int | None = None
    method: str = "retrieval"
    top_k: int | None = None
    context_sigma_um: float | None = None
    markers: tuple[str, ...] = ()
    adaptation: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    confidence_reference: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_uns(cls, d: Mapping[str, Any]) -> ModelInfo:
        return cls(
            name=str(d.get("name", "?")),
            backbone=d.get("backbone"),
            trained_on=tuple(str(s) for s in d.get("trained_on") or ()),
            bank_spots=None if d.get("bank_spots") is None else int(d["bank_spots"]),
            method=str(d.get("method", "retrieval")),
            top_k=None if d.get("top_k") is None else int(d["top_k"]),
            context_sigma_um=_float(d.get("context_sigma_um")),
            markers=tuple(str(m) for m in d.get("markers") or ()),
            adaptation=_frozen(d.get("adaptation") or {"mode": "none"}),
            confidence_reference=_frozen(d.get("confidence_reference")),
        )

    def to_uns(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backbone": self.backbone,
            "trained_on": list(self.trained_on),
            "bank_spots": self.bank_spots,
            "method": self.method,
            "top_k": self.top_k,
            "context_sigma_um": self.context_sigma_um,
            "adaptation": dict(self.adaptation),
            "markers": list(self.markers),
            "confidence_reference": dict(self.confidence_reference),
        }


@dataclass(frozen=True)
class SlideInfo:
    """The slide as the prediction records it (``Slide.summary``: no folder path); ``summary``
    holds its other fields (vendor, levels, objective)."""

    name: str
    dimensions: tuple[int, int]
    summary: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_uns(cls, d: Mapping[str, Any]) -> SlideInfo:
        w, h = d.get("dimensions") or (0, 0)
        rest = {k: v for k, v in d.items() if k not in ("name", "dimensions")}
        return cls(str(d.get("name", "slide")), (int(w), int(h)), _frozen(rest))

    def to_uns(self) -> dict[str, Any]:
        return {**dict(self.summary), "name": self.name, "dimensions": list(self.dimensions)}


@dataclass(frozen=True)
class DomainVerdict:
    """How much of the tissue is unlike the model's training images."""

    verdict: str | None = None  # "in domain", "partly out of domain", "out of domain"; None: not measured
    share_out: float | None = None
    threshold: float | None = None
    message: str = ""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def out_of_domain(self) -> bool:
        """The whole slide is out of domain."""
        return self.verdict == "out of domain"

    @classmethod
    def from_uns(cls, d: Mapping[str, Any] | None) -> DomainVerdict:
        d = d or {}
        return cls(
            d.get("verdict"),
            _float(d.get("share_out")),
            _float(d.get("threshold")),
            str(d.get("message") or ""),
            _frozen(d),
        )

    def to_uns(self) -> dict[str, Any] | None:
        if not self.extra and self.verdict is None:
            return None
        return {
            **dict(self.extra),
            "verdict": self.verdict,
            "share_out": self.share_out,
            "threshold": self.threshold,
            "message": self.message,
        }

    def summary(self) -> dict[str, Any]:
        """Verdict and share out, as layer metadata and tables carry them (empty when not measured)."""
        return {"verdict": self.verdict, "share_out": self.share_out} if self.extra else {}


@dataclass(frozen=True)
class ResolutionVerdict:
    """Whether the slide is coarser than the model's input."""

    coarse: bool = False
    message: str = ""
    slide_mpp: float | None = None
    model_mpp: float | None = None

    @classmethod
    def from_uns(cls, d: Mapping[str, Any] | None) -> ResolutionVerdict:
        d = d or {}
        return cls(
            bool(d.get("coarse")), str(d.get("message") or ""), _float(d.get("slide_mpp")), _float(d.get("model_mpp"))
        )

    def to_uns(self) -> dict[str, Any]:
        return {
            "slide_mpp": self.slide_mpp,
            "model_mpp": self.model_mpp,
            "coarse": self.coarse,
            "message": self.message,
        }


@dataclass(frozen=True)
class StainVerdict:
    """The stain check (``stain.StainCheck.to_dict``)."""

    kind: str | None = None
    action: str | None = None
    message: str = ""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_uns(cls, d: Mapping[str, Any] | None) -> StainVerdict:
        d = d or {}
        return cls(d.get("kind"), d.get("action"), str(d.get("message") or ""), _frozen(d))

    def to_uns(self) -> dict[str, Any]:
        return {**dict(self.extra), "kind": self.kind, "action": self.action, "message": self.message}


@dataclass(frozen=True)
class Trust:
    """The verdicts a user must see beside the maps."""

    stain: StainVerdict = field(default_factory=StainVerdict)
    resolution: ResolutionVerdict = field(default_factory=ResolutionVerdict)
    domain: DomainVerdict = field(default_factory=DomainVerdict)

    @classmethod
    def from_uns(cls, d: Mapping[str, Any] | None) -> Trust:
        d = d or {}
        return cls(
            StainVerdict.from_uns(d.get("stain")),
            ResolutionVerdict.from_uns(d.get("resolution")),
            DomainVerdict.from_uns(d.get("domain")),
        )

    def to_uns(self) -> dict[str, Any]:
        return {"stain": self.stain.to_uns(), "resolution": self.resolution.to_uns(), "domain": self.domain.to_uns()}

    def lines(self) -> list[str]:
        """What a user must be told, one line each (empty when all is well)."""
        lines = []
        if self.stain.action in ("warn", "refuse"):
            prefix = "stain check overridden: " if self.stain.action == "refuse" else "stain: "
            lines.append(prefix + self.stain.message)
        if self.resolution.coarse:
            lines.append(self.resolution.message)
        if self.domain.verdict != "in domain" and self.domain.message:
            lines.append(self.domain.message)
        return lines


@dataclass(frozen=True)
class TumourCalibration:
    """The model's tumour calibration: training-spot statistics and the threshold."""

    markers: tuple[str, ...] = ()
    gene_mean: tuple[float, ...] = ()
    gene_std: tuple[float, ...] = ()
    threshold: float | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def has_statistics(self) -> bool:
        """Whether absolute scores and the model's fixed colour range can be computed."""
        return bool(self.gene_mean)

    @classmethod
    def from_uns(cls, d: Mapping[str, Any] | None) -> TumourCalibration | None:
        if not d:
            return None
        return cls(
            tuple(str(m) for m in d.get("markers") or ()),
            tuple(float(v) for v in d.get("gene_mean") or ()),
            tuple(float(v) for v in d.get("gene_std") or ()),
            _float(d.get("threshold")),
            _frozen(d),
        )

    def to_uns(self) -> dict[str, Any]:
        return {
            **dict(self.extra),
            "markers": list(self.markers),
            "gene_mean": list(self.gene_mean),
            "gene_std": list(self.gene_std),
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class PredictionMeta:
    """Everything a prediction records besides its spot table.

    Attributes
    ----------
    cache : str or None
        ``"hit"`` (loaded from the cache), ``"miss"`` (computed and cached), ``"off"``.
    tumour_call : mapping
        Threshold and mode of the tumour call written into the spot table, once made.
    """

    model: ModelInfo
    slide: SlideInfo
    grid: GridGeometry
    mpp_x: float | None
    mpp_y: float | None
    patch_um: float
    stride_um: float
    input_px: int | None = None
    units: str = UNITS
    roi: Any = None  # the region predicted, as given (level-0 box or polygons), plain lists
    trust: Trust = field(default_factory=Trust)
    tumour_calibration: TumourCalibration | None = None
    tumour_call: Mapping[str, Any] | None = None
    cache: str | None = None
    cache_key: str | None = None
    seconds: float | None = None
    note: str = RESEARCH_USE

    @property
    def mpp(self) -> tuple[float | None, float | None]:
        return (self.mpp_x, self.mpp_y)

    @classmethod
    def from_uns(cls, d: Mapping[str, Any]) -> PredictionMeta:
        """From ``uns["stpredict"]`` of any version written so far.

        Raises
        ------
        ValueError
            When a key every version wrote (model, slide, grid, patch and stride) is missing.
        """
        missing = [
            k for k in ("model", "slide", "grid_origin_l0", "grid_stride_l0", "grid_shape", "patch_um") if k not in d
        ]
        if missing:
            raise ValueError(f"not napari-stpredict prediction metadata: {', '.join(missing)} missing")
        roi = d.get("roi")
        return cls(
            model=ModelInfo.from_uns(d["model"]),
            slide=SlideInfo.from_uns(d["slide"]),
            grid=GridGeometry.from_meta(d),
            mpp_x=_float(d.get("mpp_x")),
            mpp_y=_float(d.get("mpp_y")),
            patch_um=float(d["patch_um"]),
            stride_um=float(d.get("stride_um", d["patch_um"])),
            input_px=None if d.get("input_px") is None else int(d["input_px"]),
            units=str(d.get("units", UNITS)),
            roi=roi,
            trust=Trust.from_uns(d.get("trust")),
            tumour_calibration=TumourCalibration.from_uns(d.get("tumor_calibration")),
            tumour_call=None if d.get("tumour_call") is None else _frozen(d["tumour_call"]),
            cache=d.get("cache"),
            cache_key=d.get("cache_key"),
            seconds=_float(d.get("seconds")),
            note=str(d.get("note", RESEARCH_USE)),
        )

    def to_uns(self) -> dict[str, Any]:
        """Plain values for ``uns["stpredict"]`` (schema `SCHEMA`)."""
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "model": self.model.to_uns(),
            "slide": self.slide.to_uns(),
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "patch_um": self.patch_um,
            "input_px": self.input_px,
            "stride_um": self.stride_um,
            **self.grid.to_meta(),
            "units": self.units,
            "roi": self.roi,
            "trust": self.trust.to_uns(),
            "tumor_calibration": None if self.tumour_calibration is None else self.tumour_calibration.to_uns(),
            "seconds": self.seconds,
            "note": self.note,
        }
        for key, value in (("tumour_call", self.tumour_call), ("cache", self.cache), ("cache_key", self.cache_key)):
            if value is not None:
                out[key] = dict(value) if isinstance(value, Mapping) else value
        return out

    def with_changes(self, **changes: Any) -> PredictionMeta:
        """A copy with these fields replaced (`dataclasses.replace`)."""
        return replace(self, **changes)

    def with_slide_name(self, name: str) -> PredictionMeta:
        """A copy naming the slide ``name`` (a pseudonym, or the current file's name)."""
        return replace(self, slide=replace(self.slide, name=name))

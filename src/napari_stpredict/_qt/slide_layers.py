"""`SlideLayers`: a slide analysis's napari layers, without any widget.

Every prediction layer is named after its slide layer (``"ERBB2 (predicted) [slide]"``)
and takes the slide layer's placement, so several slides in one window keep their own
layers. The dock's panels call this; tests may too.
"""

from __future__ import annotations

import numpy as np

from ..analysis import SlideAnalysis
from .common import _same, canvas_caption, notify_error

__all__ = ["SlideLayers"]


class SlideLayers:
    """Adds, updates and arranges the layers of slide analyses in one viewer."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self._visibility_before_grid: dict[str, bool] = {}
        #: Visibility of other slides' prediction layers hidden by `focus`, to restore.
        self._hidden_by_focus: dict[str, bool] = {}

    # --- generic ---------------------------------------------------------------------
    def upsert(self, analysis: SlideAnalysis, data, kwargs: dict, layer_type: str):
        """Add a layer of the analysis's slide, or replace the data (and placement) of the
        one with the same name; names carry the slide layer's name."""
        kwargs = dict(kwargs)
        name = kwargs["name"] = analysis.label(kwargs["name"])
        meta = kwargs.get("metadata", {}).get("stpredict")
        if meta is not None:
            kwargs["metadata"] = {"stpredict": {**meta, "slide_layer": analysis.layer_name}}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            for key in ("scale", "translate", "affine", "units", "contrast_limits", "metadata"):
                if key in kwargs and not _same(getattr(layer, key), kwargs[key]):
                    setattr(layer, key, kwargs[key])  # only what changed: each set redraws
            if "affine" not in kwargs and not _same(layer.affine, np.eye(3)):
                layer.affine = np.eye(3)
            return layer
        add = getattr(self.viewer, f"add_{layer_type}")
        return add(data, **kwargs)

    def focus(self, slide_layer: str | None) -> None:
        """Show the prediction layers of the slide chosen in the dock and hide the other
        slides' (a map or banner of one slide beside another's is misread); hiding is
        undone when their slide is chosen again. The slide images stay as they are."""
        for layer in self.viewer.layers:
            meta = layer.metadata.get("stpredict", {})
            owner = meta.get("slide_layer")
            if owner is None or meta.get("kind") in (None, "slide_copy"):
                continue
            if owner == slide_layer:
                if layer.name in self._hidden_by_focus:
                    layer.visible = self._hidden_by_focus.pop(layer.name)
            elif layer.name not in self._hidden_by_focus:
                self._hidden_by_focus[layer.name] = layer.visible
                layer.visible = False

    @staticmethod
    def is_mine(layer, analysis: SlideAnalysis, kind: str) -> bool:
        """Whether ``layer`` is a prediction layer of ``kind`` of the analysis's slide."""
        meta = layer.metadata.get("stpredict", {})
        return meta.get("kind") == kind and meta.get("slide_layer") == analysis.layer_name

    # --- prediction ------------------------------------------------------------------
    def show_prediction(self, analysis: SlideAnalysis) -> None:
        """The per-spot layers of a new prediction: confidence and out of domain."""
        from ..layers import confidence_layer, domain_layer

        prediction = analysis.prediction
        self.upsert(analysis, *confidence_layer(prediction, analysis.placement))
        if "domain_distance" in prediction.adata.obs and prediction.meta.tumour_calibration is not None:
            self.upsert(analysis, *domain_layer(prediction, analysis.placement))

    def show_genes(
        self, analysis: SlideAnalysis, genes: list[str], *, fixed_limits: bool = True, show_out_of_domain: bool = False
    ):
        """A heatmap layer per gene; returns the last one shown (None if none).

        One gene at a time (browsing) reuses the layer of the gene browsed before, renamed
        and refilled: adding a napari layer costs ~250 ms under software OpenGL, this
        ~20 ms. Genes shown together are pinned: each keeps a layer of its own.
        """
        from ..layers import heatmap_layer

        shown = None
        pinned = len(genes) > 1
        for gene in genes:
            try:
                data, kwargs, kind = heatmap_layer(
                    analysis.prediction,
                    gene,
                    placement=analysis.placement,
                    fixed_limits=fixed_limits,
                    show_out_of_domain=show_out_of_domain,
                )
            except KeyError as exc:
                notify_error(str(exc).strip("'\""))
                continue
            kwargs["metadata"]["stpredict"]["pinned"] = pinned
            browsing = self._browsing_layer(analysis)
            if not pinned and analysis.label(kwargs["name"]) not in self.viewer.layers and browsing is not None:
                browsing.name = analysis.label(kwargs["name"])
            shown = self.upsert(analysis, data, kwargs, kind)
            self.raise_map(shown)  # what was just asked for is on top, never under a pinned map
        if shown is None:
            return None
        if not pinned:
            analysis.browsing_layer = shown.name
        analysis.shown_genes = list(genes)
        self.follow(shown)
        return shown

    def refill_maps(self, analysis: SlideAnalysis, *, fixed_limits: bool = True, show_out_of_domain: bool = False):
        """Refill every gene map of the analysis's slide from its (new) prediction, in
        place and in the same order, so that a rerun leaves no map of the previous run on
        screen; maps of genes the new prediction lacks are removed."""
        from ..layers import heatmap_layer

        for layer in [layer for layer in self.viewer.layers if self.is_mine(layer, analysis, "heatmap")]:
            meta = layer.metadata["stpredict"]
            try:
                data, kwargs, _ = heatmap_layer(
                    analysis.prediction,
                    meta["gene"],
                    placement=analysis.placement,
                    fixed_limits=fixed_limits,
                    show_out_of_domain=show_out_of_domain,
                )
            except KeyError:
                self.viewer.layers.remove(layer)
                continue
            kwargs["metadata"]["stpredict"]["pinned"] = meta.get("pinned", False)
            self.upsert(analysis, data, kwargs, "image")

    def raise_map(self, layer) -> None:
        """Move ``layer`` just above the topmost map (gene, confidence or out-of-domain
        layer) of any slide; contours and spots stay above it."""
        layers = self.viewer.layers
        maps = [i for i, other in enumerate(layers) if other.metadata.get("stpredict", {}).get("kind") in _BARRED]
        index = layers.index(layer)
        if maps and maps[-1] > index:
            layers.move(index, maps[-1] + 1)  # inserted before maps[-1] + 1: after the old top map

    def topmost_map(self):
        """The visible map drawn over the others (None when no map is visible)."""
        for layer in reversed(list(self.viewer.layers)):
            if layer.visible and layer.metadata.get("stpredict", {}).get("kind") in _BARRED:
                return layer
        return None

    def _browsing_layer(self, analysis: SlideAnalysis):
        name = analysis.browsing_layer
        if not name or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        meta = layer.metadata.get("stpredict", {})
        return layer if meta.get("kind") == "heatmap" and not meta.get("pinned") else None

    def follow(self, layer) -> None:
        """Caption of the prediction layer ``layer`` (a gene map, the confidence or
        out-of-domain map, the tumour mask or contour, the measured spots) and, for a map,
        its colour bar (the other maps hide theirs). Any other layer leaves them as they are."""
        meta = layer.metadata.get("stpredict", {}) if layer is not None else {}
        kind = meta.get("kind")
        if (kind not in _CAPTIONS and kind != "heatmap") or not layer.visible:
            # A hidden layer (napari selects every layer it adds, the confidence map too)
            # does not take the caption or bar from the map on screen.
            return
        if kind in _BARRED:  # a layer without a bar of its own (tumour, measured) leaves the bars as they are
            for other in self.viewer.layers:
                if other.metadata.get("stpredict", {}).get("kind") in _BARRED:
                    other.colorbar.visible = other.name == layer.name  # plugin viewers hand out proxies: no `is`
        caption = canvas_caption(self.viewer)
        slide = f" ({meta['slide_layer']})" if meta.get("slide_layer") else ""
        if kind == "heatmap":
            text = f"{meta['gene']}: predicted {meta['units']}{slide}"
        else:
            text = _CAPTIONS[kind].format(**{"units": "", "gene": "", **meta}) + slide
        top = self.topmost_map() if kind in _BARRED else None
        if top is not None and top.name != layer.name and not _grid(self.viewer).enabled:
            # The caption describes the layer the user selected; say when another is on top.
            text += f"\n(selected; {top.name} is drawn over it)"
        caption.text = text + _domain_caption(meta)  # whichever layer: a screenshot carries the verdict
        caption.font_size = CAPTION_FONT_SIZE
        caption.visible = True

    def show_tumour(self, analysis: SlideAnalysis) -> None:
        """The tumour mask (hidden, under the contour) and its contour."""
        from ..layers import tumor_contour_layer, tumor_labels_layer

        self.upsert(analysis, *tumor_labels_layer(analysis.prediction, analysis.tumor, analysis.placement))
        self.upsert(analysis, *tumor_contour_layer(analysis.prediction, analysis.tumor, analysis.placement))

    def show_measured(self, analysis: SlideAnalysis, gene: str) -> str:
        """The measured spots coloured by ``gene``; returns the line for the dock (r or why not)."""
        from ..layers import measured_points_layer

        prediction = analysis.prediction
        try:
            data, kwargs, _ = measured_points_layer(
                analysis.spots,
                gene,
                placement=analysis.placement,
                mpp=prediction.meta.mpp,
            )
        except KeyError as exc:
            return str(exc).strip("'\"")
        kwargs["name"] = analysis.label(kwargs["name"])
        kwargs["metadata"] = {"stpredict": {**kwargs["metadata"]["stpredict"], "slide_layer": analysis.layer_name}}
        existing = [layer for layer in self.viewer.layers if self.is_mine(layer, analysis, "measured")]
        if existing and len(existing[0].data) == len(data):
            # Same spots, another gene: recolour in place (removing and adding a Points layer
            # costs half a second of scene-graph work in napari).
            layer = existing[0]
            layer.features = kwargs["features"]
            layer.face_contrast_limits = kwargs["face_contrast_limits"]
            layer.face_color = "expression"
            layer.metadata = kwargs["metadata"]
            layer.name = kwargs["name"]
        else:
            for layer in existing:
                self.viewer.layers.remove(layer)
            self.viewer.add_points(data, **kwargs)
        analysis.last_r = analysis.pearson(gene, kwargs["features"]["expression"])
        bad = kwargs["metadata"]["stpredict"].get("not_finite", 0)
        counted = analysis.spots.n_obs - bad
        line = f"{gene}: predicted vs measured at {counted} spots, Pearson r = {analysis.last_r:.2f}"
        if bad:
            line += f" ({bad} spots of {analysis.spots_source} have no finite {gene} count: left out)"
        return line

    # --- two genes side by side ------------------------------------------------------
    def side_by_side(
        self, analysis: SlideAnalysis, genes: list[str], *, fixed_limits: bool = True, show_out_of_domain: bool = False
    ) -> None:
        """Two genes next to each other in napari's grid view, each over its own view of the
        slide (a second layer sharing the slide's data: nothing is read twice)."""
        self.show_genes(analysis, genes, fixed_limits=fixed_limits, show_out_of_domain=show_out_of_domain)
        slide = self.viewer.layers[analysis.layer_name]
        copy = self.viewer.add_image(
            slide.data,
            multiscale=slide.multiscale,
            rgb=True,
            scale=slide.scale,
            translate=slide.translate,
            affine=slide.affine,
            units=slide.units,
            name=analysis.label("slide, second view"),
            metadata={"stpredict": {"kind": "slide_copy", "slide_layer": analysis.layer_name}},
        )
        heat = [self.viewer.layers[analysis.label(f"{gene} (predicted)")] for gene in genes]
        ordered = [slide, heat[0], copy, heat[1]]
        self._visibility_before_grid = {layer.name: layer.visible for layer in self.viewer.layers}
        for layer in self.viewer.layers:
            layer.visible = any(layer.name == keep.name for keep in ordered)
        # The grid puts each run of `stride` layers, counted from the bottom, in a view of its
        # own and drops views with nothing visible: slide + first gene, second view + second gene.
        for index, layer in enumerate(ordered):
            self.viewer.layers.move(self.viewer.layers.index(layer), index)
        for layer in heat:
            if hasattr(layer, "name_overlay"):  # napari >= 0.9: the gene's name in its view
                layer.name_overlay.visible = True
            layer.colorbar.visible = True  # each map its own colour bar: their ranges differ
            layer.colorbar.position = "bottom_right"  # clear of the view's title at the top
        # The canvas caption names one gene; in two views it would sit over the second's title.
        canvas_caption(self.viewer).visible = False
        _grid(self.viewer).stride = 2
        _grid(self.viewer).enabled = True
        self.viewer.reset_view()

    def single_view(self, analysis: SlideAnalysis | None) -> None:
        """Leave the grid view: the second view goes, what was visible is visible again."""
        _grid(self.viewer).enabled = False
        if analysis is not None:
            for layer in [layer for layer in self.viewer.layers if self.is_mine(layer, analysis, "slide_copy")]:
                self.viewer.layers.remove(layer)
        for name, visible in self._visibility_before_grid.items():
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = visible
        self._visibility_before_grid = {}
        if analysis is None:
            return
        # One view again: the first gene's map on top, with its colour bar and the caption;
        # the second gene's map hidden rather than stacked under it, no view titles left.
        heat = [layer for layer in self.viewer.layers if self.is_mine(layer, analysis, "heatmap")]
        for layer in heat:
            layer.colorbar.position = "top_right"
            if hasattr(layer, "name_overlay"):
                layer.name_overlay.visible = False
        first = analysis.label(f"{analysis.shown_genes[0]} (predicted)") if analysis.shown_genes else None
        for layer in heat:
            if layer.name != first and layer.metadata.get("stpredict", {}).get("pinned"):
                layer.visible = False
        if first in self.viewer.layers:
            self.raise_map(self.viewer.layers[first])  # over the browsed map, if one is visible
            self.follow(self.viewer.layers[first])


def _grid(viewer):
    """The viewer's grid settings: ``viewer.canvas.grid`` since napari 0.9 (``viewer.grid``,
    deprecated there, before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _domain_caption(meta: dict) -> str:
    """The slide's out-of-domain verdict for the canvas caption, so that a screenshot of
    the canvas carries it (the dock's banner does not)."""
    domain = meta.get("domain") or {}
    verdict, hidden = domain.get("verdict"), meta.get("hidden_out_of_domain", 0)
    if verdict == "out of domain":
        if meta.get("kind") == "heatmap":
            what = "map hidden" if hidden else "the map is not meaningful"
        else:
            what = "no tumour called, maps hidden"
        return f"\nOUT OF DOMAIN: tissue unlike the model's training data; {what}"
    if hidden:
        return f"\n{hidden} spots out of domain left blank"
    return ""


#: The canvas caption's size (napari's default 10 read small and cramped on a slide).
CAPTION_FONT_SIZE = 13
#: Layer kinds with a colour bar (image layers of values).
_BARRED = ("heatmap", "confidence", "out_of_domain")
#: The canvas caption of each prediction layer kind other than a gene map: what its
#: colours or marks mean, so a screenshot explains itself.
_CAPTIONS = {
    "confidence": "Confidence: {units} (dark: less like the training data than 95 % of it)",
    "out_of_domain": "Out of domain: {units} (above 1: unlike the training data, never called tumour)",
    "tumor_mask": "Tumour mask (predicted from the marker panel; research use only)",
    "tumor_contour": "Tumour contour, red (predicted from the marker panel; research use only)",
    "measured": "{gene} MEASURED at the data's spots (ringed dots), {units}; the map is the prediction",
}

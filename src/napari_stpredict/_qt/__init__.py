"""Qt dock widgets: the only place that imports qtpy or napari.qt."""

"""File input and output: slides, pyramids for napari, ST data, exports."""

"""Whole-slide prediction: the engine, its result, tumour masks."""

from .predict import PredictionCancelled, predict_slide, run_prediction
from .prediction import Heatmap, Prediction

__all__ = ["Heatmap", "Prediction", "PredictionCancelled", "predict_slide", "run_prediction"]

"""Whole-slide prediction: the engine, its result, tumour masks."""

from .prediction import Heatmap, Prediction
from .predict import PredictionCancelled, predict_slide, run_prediction

__all__ = ["Heatmap", "Prediction", "PredictionCancelled", "predict_slide", "run_prediction"]

"""Training and evaluation: datasets, the train loop, metrics and the evaluation protocol."""

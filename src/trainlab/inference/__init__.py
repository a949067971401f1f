"""Using a trained checkpoint: src/predict.py's classes of new images and src/evaluate.py's scores of a split."""

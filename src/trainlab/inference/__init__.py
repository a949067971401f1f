"""Using a trained checkpoint: src/predict.py's classes of new images (from a checkpoint or its ONNX export),
src/evaluate.py's scores of a split, and src/export.py's model files for other runtimes."""

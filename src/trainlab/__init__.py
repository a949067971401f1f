"""trainlab: Hydra-configured PyTorch experiments. The recipe is trainlab.train.run; src/run.py is its command line."""

__version__ = "0.1.0"

"""trainlab: Hydra-configured PyTorch experiments. The recipe is trainlab.training.recipe.run; src/run.py is its command line."""

__version__ = "0.1.0"

from trainlab.config.schema import register_configs  # noqa: E402 (after __version__, which the modules read)

# Importing trainlab registers its schemas, so a config composed with Hydra's Compose API (a notebook, a test) runs
# as src/run.py's does.
register_configs()

"""trainlab's Hydra sweeper for Optuna searches: hydra/sweeper=trainlab_optuna (conf/hydra/sweeper/).

Hydra finds it in the `hydra_plugins` namespace package: optuna_sweeper.py holds the schema and the Sweeper class,
and _search.py, which the plugin scanner skips (a leading underscore), the work, so that Optuna is imported only
when a search starts.
"""

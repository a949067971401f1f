"""The config: schemas in Hydra's ConfigStore, the allow-list and the rules for hydra.*, what a resume may change.
With the entrypoints, the only package that imports Hydra."""

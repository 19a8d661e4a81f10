"""The world-model classes: MrCoM (the paper's model) and the comparison baselines. Each module holds one
class (its sizes, steps and training pass) and registers in :mod:`mrcom_core.registry`."""

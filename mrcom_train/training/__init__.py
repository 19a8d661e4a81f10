"""World-model training: run configs (``config``), the trainer (``trainer``, DDP under torchrun),
checkpoints (``checkpoint``) and the open-loop error metric (``evaluation``)."""

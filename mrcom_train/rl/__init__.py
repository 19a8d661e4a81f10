"""Scenario adaptation on real + imagined data: ``adapt`` (the loop), ``adapt_config`` (a run's config),
``adapt_checkpoint`` (its checkpoints and result), ``refit`` (fine-tuning the world model on the target's
data), ``gate`` (imagination rounds truncated by the ensemble's disagreement), ``oracle`` (the target's own
simulator as the model), ``diagnostics`` (the model's error on the agent's transitions) and ``scoring``
(returns and floors). The SAC agent itself is :mod:`mrcom_train.agents.sac`."""

"""Policy learning: SAC (``sac``) and scenario adaptation on real + imagined data (``adapt``: the loop;
``adapt_config``: a run's config; ``adapt_checkpoint``: its checkpoints and result)."""

"""Policy learning: SAC (``sac``) and scenario adaptation on real + imagined data (``adapt``)."""

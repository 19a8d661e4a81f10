"""MrCoM training side: scenarios, data collection, datasets, trainers and the ``mrcom`` CLI.

Everything here may touch environments, files and processes; the model itself lives in ``mrcom_core``.
"""

__version__ = "0.1.0"

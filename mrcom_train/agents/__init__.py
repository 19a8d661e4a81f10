"""The agents: SAC (:mod:`.sac`), which collects behaviour data (``mrcom collect --policy sac``) and adapts to a
target (``mrcom adapt``). A leaf of ``mrcom_train``: it imports only ``mrcom_core``."""

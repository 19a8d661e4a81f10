import logging
import os
import warnings

os.environ.setdefault("MUJOCO_GL", "disable")  # no rendering in tests; silences glfw's display warning
warnings.filterwarnings("ignore", module="glfw")
logging.getLogger("absl").setLevel(logging.ERROR)

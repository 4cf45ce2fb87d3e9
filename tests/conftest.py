"""Tests never autoload third-party plugins; the built-ins (bifamily's own entry points) still load."""

import os

os.environ["BIFAMILY_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

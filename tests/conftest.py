"""Tests never autoload third-party plugins; the built-ins (bifamily's own entry points) still load.
The ``third_party`` fixture installs fake plugin distributions for the tests of plugin loading."""

import os

os.environ["BIFAMILY_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import sys  # noqa: E402  (after the environment the imports below read)
import textwrap  # noqa: E402

import pytest  # noqa: E402

from bifamily.plugins import AUTOLOAD_ENV, default_plugins  # noqa: E402

# Assertions in shared helpers (tests/helpers/checkpoints.py) report their operands as in a test module.
pytest.register_assert_rewrite("tests.helpers")


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install fake distributions (module + dist-info on sys.path) and load plugins afresh."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)

    def install(distribution: str, module: str, source: str) -> None:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[bifamily]\n{module} = {module}\n")

    default_plugins.cache_clear()
    yield install
    default_plugins.cache_clear()
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]

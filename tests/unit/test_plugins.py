"""Plugin loading: entry points, third-party distributions, switches, duplicates and failures."""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

from bifamily import hookspecs
from bifamily.errors import PluginError
from bifamily.hookspecs import hookimpl
from bifamily.plugins import AUTOLOAD_ENV, BLOCK_ENV, REGISTERED_KINDS, load_plugins

BUILTINS = {"priors", "posteriors", "losses", "dcgan", "datasets", "biggan", "resnet", "metrics"}


def fake_distribution(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """Write an importable module plus a *.dist-info with an entry point in the bifamily group."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"  # wheel naming: '-' only before the version
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[bifamily]\n{ep_name or module} = {module}\n")


THIRD_PARTY = """
    import attrs
    from bifamily.config import option
    from bifamily.hookspecs import hookimpl

    @attrs.frozen
    class LaplacePriorConfig:
        dim: int = option(8, help="Latent dimension.")

        def build(self, ctx):
            raise NotImplementedError

    @hookimpl
    def bifamily_register_priors(register):
        register("laplace", LaplacePriorConfig)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]


def test_builtins_load_through_the_entry_point_group():
    plugins = load_plugins()
    names = {info.name for info in plugins.infos}
    assert BUILTINS <= names
    assert all(info.distribution == "bifamily" for info in plugins.infos if info.name in BUILTINS)
    assert "gaussian" in plugins.registry.names("prior")
    assert plugins.registry.get("loss", "bigbigan").plugin == "losses"


def test_third_party_distribution_adds_a_component(site, monkeypatch):
    fake_distribution(site, "bifamily-laplace", "thirdparty_laplace", THIRD_PARTY)
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    plugins = load_plugins()
    entry = plugins.registry.get("prior", "laplace")
    assert entry is not None and entry.plugin == "thirdparty_laplace"
    info = next(i for i in plugins.infos if i.name == "thirdparty_laplace")
    assert (info.distribution, info.version, info.error) == ("bifamily-laplace", "1.2.3", None)


def test_autoload_switch_keeps_builtins_only(site, monkeypatch):
    fake_distribution(site, "bifamily-laplace", "thirdparty_laplace", THIRD_PARTY)
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    plugins = load_plugins()
    assert plugins.registry.get("prior", "laplace") is None
    assert BUILTINS <= {info.name for info in plugins.infos}


def test_block_list_skips_named_plugins(site, monkeypatch):
    fake_distribution(site, "bifamily-laplace", "thirdparty_laplace", THIRD_PARTY)
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.setenv(BLOCK_ENV, "thirdparty_laplace, dcgan")
    plugins = load_plugins()
    assert plugins.registry.get("prior", "laplace") is None
    assert plugins.registry.get("generator", "dcgan") is None
    assert plugins.registry.get("prior", "gaussian") is not None


def test_plugin_failing_to_import_is_recorded_and_others_load(site, monkeypatch):
    fake_distribution(site, "bifamily-broken", "thirdparty_broken", "raise RuntimeError('boom')\n")
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    plugins = load_plugins()
    [failed] = plugins.failed
    assert failed.name == "thirdparty_broken" and "boom" in failed.error
    assert plugins.registry.get("prior", "gaussian") is not None
    with pytest.raises(PluginError, match=r"thirdparty_broken.*bifamily-broken.*boom.*BIFAMILY_BLOCK_PLUGINS"):
        plugins.check_healthy()


def test_plugin_raising_in_a_hook_is_recorded(site, monkeypatch):
    source = """
        from bifamily.hookspecs import hookimpl

        @hookimpl
        def bifamily_register_generators(register):
            raise ValueError("bad hook")
    """
    fake_distribution(site, "bifamily-badhook", "thirdparty_badhook", source)
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    plugins = load_plugins()
    [failed] = plugins.failed
    assert failed.name == "thirdparty_badhook" and "bad hook" in failed.error
    assert plugins.registry.get("generator", "dcgan") is not None


def test_duplicate_names_are_an_error_naming_both_plugins():
    @attrs.frozen
    class Config:
        def build(self, ctx):
            return None

    class Shadowing:
        __name__ = "Shadowing"

        @staticmethod
        @hookimpl
        def bifamily_register_priors(register):
            register("gaussian", Config)

    with pytest.raises(PluginError, match=r"prior 'gaussian' is registered twice: by plugin '(priors|Shadowing)' and by plugin '(priors|Shadowing)'"):
        load_plugins(extra=[Shadowing])


def test_every_hook_is_documented_and_mapped_to_a_kind():
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("bifamily_")]
    assert set(specs) == set(REGISTERED_KINDS.values())
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 40, f"hook {name} lacks documentation"


def test_every_registered_config_field_has_help():
    plugins = load_plugins()
    for kind in REGISTERED_KINDS:
        for entry in plugins.registry.entries(kind):
            for field in attrs.fields(entry.config_cls):
                assert field.metadata.get("help"), f"{kind} {entry.name}: field {field.name} has no help"

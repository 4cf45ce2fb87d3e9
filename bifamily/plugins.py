"""Plugin loading and the component registry.

Every plugin, built-in or third-party, is an entry point in the ``bifamily`` group. Loading is
explicit: ``BIFAMILY_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the plugins that ship with bifamily itself,
and ``BIFAMILY_BLOCK_PLUGINS=a,b`` skips the named entry points. A plugin that fails to import, or
raises in a registration hook, is recorded as failed; the others still load.
"""

from __future__ import annotations

import functools
import os
from importlib.metadata import entry_points
from typing import Any

import attrs
import pluggy

from bifamily import hookspecs
from bifamily.config import SAFE_NAME_RULE, is_safe_name
from bifamily.errors import PluginError

AUTOLOAD_ENV = "BIFAMILY_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "BIFAMILY_BLOCK_PLUGINS"
OWN_DISTRIBUTION = "bifamily"

# Recipe section -> registration hook. The order is the order `bifamily plugins` lists kinds in.
KINDS: dict[str, str] = {
    "data": "bifamily_register_datasets",
    "prior": "bifamily_register_priors",
    "generator": "bifamily_register_generators",
    "encoder": "bifamily_register_encoders",
    "posterior": "bifamily_register_posteriors",
    "discriminator": "bifamily_register_discriminators",
    "loss": "bifamily_register_losses",
}
# Evaluation plugins: named in `[eval]` and the fid metric rather than given one section each.
EVALUATION_KINDS: dict[str, str] = {
    "metric": "bifamily_register_metrics",
    "feature_network": "bifamily_register_feature_networks",
}
REGISTERED_KINDS: dict[str, str] = {**KINDS, **EVALUATION_KINDS}


@attrs.frozen
class PluginInfo:
    name: str
    distribution: str
    version: str
    error: str | None = None


@attrs.frozen
class Entry:
    kind: str
    name: str
    config_cls: type
    plugin: str


class Registry:
    """Component config classes by kind and name, with the plugin that registered each."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in REGISTERED_KINDS}

    def add(self, kind: str, name: str, config_cls: type, plugin: str) -> None:
        if not is_safe_name(name):  # names become parts of file names (eval/METRIC-IMAGE/)
            raise PluginError(
                f"plugin {plugin!r} registered a {kind} with an invalid name {name!r} (use {SAFE_NAME_RULE})"
            )
        if not attrs.has(config_cls) or not hasattr(config_cls, "build"):
            raise PluginError(
                f"plugin {plugin!r}: {kind} {name!r} must be an attrs class with a build(ctx) method"
            )
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"and by plugin {plugin!r}"
            )
        self._entries[kind][name] = Entry(kind, name, config_cls, plugin)

    def get(self, kind: str, name: str) -> Entry | None:
        return self._entries[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][name] for name in self.names(kind)]


class PluginSet:
    """The loaded plugins, the components they registered, and the plugins that failed."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        infos: list[PluginInfo],
        blocked: list[str] = (),
        unknown_blocked: list[str] = (),
    ):
        self.manager = manager
        self.infos = infos
        self.blocked = list(blocked)  # installed plugins that BIFAMILY_BLOCK_PLUGINS skipped
        self.unknown_blocked = list(unknown_blocked)  # names in it that no installed plugin has
        self.registry = Registry()
        for kind, hook_name in REGISTERED_KINDS.items():
            self._collect(kind, hook_name)

    @property
    def failed(self) -> list[PluginInfo]:
        return [info for info in self.infos if info.error is not None]

    def _collect(self, kind: str, hook_name: str) -> None:
        hook_caller = getattr(self.manager.hook, hook_name)
        for impl in hook_caller.get_hookimpls():
            plugin_name = impl.plugin_name

            def register(name: str, config_cls: type, _plugin: str = plugin_name) -> None:
                self.registry.add(kind, name, config_cls, _plugin)

            try:
                impl.function(register=register)
            except (PluginError, KeyboardInterrupt):
                raise
            except BaseException as exc:  # a broken plugin must not take the others down, nor exit
                self._mark_failed(plugin_name, f"{hook_name} raised {_described(exc)}")

    def _mark_failed(self, plugin_name: str, error: str) -> None:
        for index, info in enumerate(self.infos):
            if info.name == plugin_name:
                self.infos[index] = attrs.evolve(info, error=error)
                return
        self.infos.append(PluginInfo(plugin_name, "?", "?", error))

    def check_healthy(self) -> None:
        """Raise if any plugin failed to load, or the block list names none: running with a silently
        missing plugin is worse."""
        if self.unknown_blocked:
            raise PluginError(self.unknown_blocked_line())
        if self.failed:
            info = self.failed[0]
            raise PluginError(
                f"plugin {info.name!r} (distribution {info.distribution} {info.version}) failed to "
                f"load: {info.error}. Fix or uninstall it, or skip it with {BLOCK_ENV}={info.name}"
            )


    def unknown_blocked_line(self) -> str:
        installed = ", ".join(info.name for info in self.infos)
        return (
            f"{BLOCK_ENV} names {', '.join(map(repr, self.unknown_blocked))}, which no installed plugin is "
            f"called (installed: {installed}); correct or remove the name"
        )


def _described(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (it called sys.exit({exc.code!r}))"
    return f"{type(exc).__name__}: {exc}"


def _blocked() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def load_plugins(extra: list[Any] = ()) -> PluginSet:
    """Load the entry-point plugins (subject to the environment switches) plus ``extra`` objects."""
    manager = pluggy.PluginManager("bifamily")
    manager.add_hookspecs(hookspecs)
    autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    blocked = _blocked()
    infos: list[PluginInfo] = []
    available = sorted(entry_points(group="bifamily"), key=lambda ep: ep.name)
    for ep in available:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in blocked or (not autoload and dist != OWN_DISTRIBUTION):
            continue
        if manager.has_plugin(ep.name):
            continue  # the same distribution can be visible twice on sys.path
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a plugin's import must not end the command
            infos.append(PluginInfo(ep.name, dist, version, _described(exc)))
            continue
        infos.append(PluginInfo(ep.name, dist, version))
    for index, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", f"extra-{index}")
        manager.register(plugin, name=name)
        infos.append(PluginInfo(name, "(registered in code)", "-"))
    infos = _unregister_unknown_hooks(manager, infos)
    names = {ep.name for ep in available}
    return PluginSet(
        manager, infos, blocked=sorted(blocked & names), unknown_blocked=sorted(blocked - names)
    )


def _unregister_unknown_hooks(manager: pluggy.PluginManager, infos: list[PluginInfo]) -> list[PluginInfo]:
    """Record as failed (and unregister) each plugin implementing a hook bifamily does not define,
    such as a misspelt ``bifamily_register_prior``: its components would silently never register."""
    infos = list(infos)
    while True:
        try:
            manager.check_pending()
            return infos
        except pluggy.PluginValidationError as exc:
            name = manager.get_name(exc.plugin)
            unknown = sorted(
                hook
                for hook, caller in vars(manager.hook).items()
                if not hook.startswith("_") and not caller.has_spec()
                and any(impl.plugin is exc.plugin for impl in caller.get_hookimpls())
            )
            manager.unregister(exc.plugin)
            error = (
                f"implements unknown hook {', '.join(map(repr, unknown))} (bifamily's hooks: "
                f"{', '.join(sorted(REGISTERED_KINDS.values()))})"
            )
            infos = [attrs.evolve(info, error=error) if info.name == name else info for info in infos]


@functools.lru_cache(maxsize=1)
def default_plugins() -> PluginSet:
    """The process-wide plugin set, loaded once."""
    return load_plugins()

"""Trained networks for use outside bifamily: load one as a plain module, or export it.

:func:`load_module` rebuilds the EMA encoder (as a feature extractor) or the EMA generator of a
snapshot, in eval mode, with bifamily installed. :func:`export` writes what needs nothing but torch:
a ``torch.export`` program (``.pt2``, load it with ``torch.export.load(path).module()``) whose input
resolution is fixed and batch size free, and beside it the module's weights as a bifamily snapshot
(``.safetensors``, the recipe in its metadata), which :func:`load_module` reads as well (docs/interop.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bifamily import __version__
from bifamily.build import make_context
from bifamily.checkpoint.loading import find_snapshot
from bifamily.checkpoint.snapshot import rebuild_model, save_snapshot, snapshot_metadata
from bifamily.errors import BifamilyError
from bifamily.interfaces import Encoder
from bifamily.plugins import PluginSet, default_plugins
from bifamily.recipe import Recipe

MODULES = ("encoder", "generator")
EXPORT_INFO = "bifamily.json"  # the name of the description stored in the .pt2 file (extra_files)
_EXAMPLE_BATCH = 2  # export traces a batch of 2: a batch of 1 would let torch.export fix the size


class EncoderFeatures(nn.Module):
    """Images (N, C, R, R) in [-1, 1] -> ``{"features": (N, F)}``, the representation the linear probe
    and k-NN read, plus ``"latent"``: the posterior's point estimate (N, D) that G(E(x)) decodes,
    when ``latent`` (one more pass through the backbone). ``encoder`` is the full bifamily encoder."""

    def __init__(self, encoder: Encoder, *, latent: bool = False):
        super().__init__()
        self.encoder = encoder
        self.latent = latent

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {"features": self.encoder.features(x).flatten(1)}
        if self.latent:
            outputs["latent"] = self.encoder(x).point
        return outputs


def load_module(
    snapshot: str | Path,
    module: str = "encoder",
    *,
    latent: bool = False,
    device: torch.device | str = "cpu",
    overrides: list[str] = (),
    plugins: PluginSet | None = None,
) -> nn.Module:
    """The EMA ``module`` of ``snapshot`` (a snapshot file, checkpoint folder, RUN_DIR/best, a run
    directory or an exported .safetensors file) in eval mode, without gradients: for "encoder" an
    :class:`EncoderFeatures`, for "generator" the generator (latents (N, D) -> images in [-1, 1])."""
    built, _, _ = _load(snapshot, module, latent, device, list(overrides), plugins or default_plugins())
    return built


def _load(
    target: str | Path, module: str, latent: bool, device: torch.device | str, overrides: list[str], plugins: PluginSet
) -> tuple[nn.Module, Recipe, int]:
    if module not in MODULES:
        raise BifamilyError(f"module {module!r}: choose one of {', '.join(MODULES)}")
    path, _ = find_snapshot(Path(target))
    model, recipe, step = rebuild_model(path, plugins, overrides, device, ema=(module,))
    network = model.encoder if module == "encoder" else model.generator
    built = EncoderFeatures(network, latent=latent) if module == "encoder" else network
    built.to(device).eval().requires_grad_(False)
    return built, recipe, step


def export_paths(out: str | Path) -> tuple[Path, Path]:
    """The program and weights files ``bifamily export -o OUT`` writes: OUT with .pt2 and .safetensors."""
    out = Path(out)
    if out.suffix not in (".pt2", ".safetensors"):
        raise BifamilyError(f"-o {out}: name a .pt2 or .safetensors file (both are written, side by side)")
    return out.with_suffix(".pt2"), out.with_suffix(".safetensors")


def export(
    snapshot: str | Path,
    out: str | Path,
    module: str = "encoder",
    *,
    latent: bool = False,
    overrides: list[str] = (),
    plugins: PluginSet | None = None,
) -> tuple[Path, Path]:
    """Export the EMA ``module`` of ``snapshot`` on the CPU; returns the .pt2 and .safetensors paths.

    The program is checked against the module on a random batch of another size before it is written.
    """
    program_path, weights_path = export_paths(out)
    network, recipe, step = _load(snapshot, module, latent, "cpu", list(overrides), plugins or default_plugins())
    example = _example_input(recipe, module)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # a plugin's module torch.export cannot trace: say which, in one line
        kind = recipe.kinds[module]
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise BifamilyError(
            f"{module} {kind!r} cannot be exported with torch.export ({type(exc).__name__}: {first_line}); "
            "load it with bifamily.interop.load_module instead"
        ) from exc
    _check_program(program, network, example)
    info = _description(recipe, module, step, latent, tuple(example.shape[1:]))
    program_path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, program_path, extra_files={EXPORT_INFO: json.dumps(info, indent=2)})
    inner = network.encoder if isinstance(network, EncoderFeatures) else network
    save_snapshot(weights_path, {f"{module}_ema": inner}, snapshot_metadata(recipe, step, exported=module))
    return program_path, weights_path


def _example_input(recipe: Recipe, module: str) -> torch.Tensor:
    ctx = make_context(recipe)
    if module == "encoder":
        size = ctx.encoder_input_resolution
        return torch.zeros(_EXAMPLE_BATCH, ctx.channels, size, size)
    return torch.zeros(_EXAMPLE_BATCH, ctx.latent_dim)


def _check_program(program: torch.export.ExportedProgram, network: nn.Module, example: torch.Tensor) -> None:
    """The exported program computes what the module does, at a batch size it was not traced with."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((_EXAMPLE_BATCH + 1, *example.shape[1:]), generator=generator).clamp(-1, 1)
    with torch.no_grad():
        expected, found = network(probe), program.module()(probe)
    pairs = zip(expected.values(), found.values()) if isinstance(expected, dict) else [(expected, found)]
    if not all(torch.allclose(want, have, rtol=1e-4, atol=1e-5) for want, have in pairs):
        raise BifamilyError("the exported program does not reproduce the module's outputs; load it with "
                            "bifamily.interop.load_module instead")


def _description(recipe: Recipe, module: str, step: int, latent: bool, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What the .pt2 file holds, stored in it as ``bifamily.json``."""
    if module == "encoder":
        inputs = f"images (N, {', '.join(map(str, input_shape))}) float32 in [-1, 1]"
        outputs = {"features": "(N, F) the representation the linear probe and k-NN read"}
        if latent:
            outputs["latent"] = "(N, D) the posterior's point estimate"
    else:
        inputs = f"latents (N, {input_shape[0]}) float32 from the prior {recipe.kinds['prior']!r}"
        outputs = {"images": "(N, C, R, R) float32 in [-1, 1]"}
    return {
        "module": f"EMA {module}",
        "kind": recipe.kinds[module],
        "inputs": inputs,
        "outputs": outputs,
        "step": step,
        "bifamily_version": __version__,
        "recipe": recipe.to_dict(),
    }

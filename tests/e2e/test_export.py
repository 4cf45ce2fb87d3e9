"""Using a trained encoder or generator outside bifamily: `load_module` in three lines, and
`bifamily export`'s torch.export program, which loads with torch alone and computes what the framework does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from bifamily.build import build_model, make_context
from bifamily.checkpoint import save_snapshot
from bifamily.cli import main
from bifamily.errors import BifamilyError
from bifamily.checkpoint.loading import load_snapshot
from bifamily.interop import EXPORT_INFO, EncoderFeatures, load_module
from bifamily.plugins import default_plugins
from bifamily.recipe import load

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart.toml"
TINY = [
    "generator.ch=8", "encoder.ch=8", "discriminator.ch=8", "discriminator.z_width=32",
    "discriminator.joint_width=32", "prior.dim=16", "data.resolution=16",
]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A snapshot as a run writes it, with weights and batch-norm statistics away from their initial values."""
    recipe = load(QUICKSTART, default_plugins(), TINY)
    model = build_model(recipe, make_context(recipe))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (model.generator, model.encoder):
            for name, tensor in module.state_dict().items():
                if tensor.is_floating_point():
                    tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
                    if "running_var" in name:
                        tensor.abs_()
    path = tmp_path_factory.mktemp("snapshot") / "snapshot.safetensors"
    modules = {**model.modules(), "generator_ema": model.generator, "encoder_ema": model.encoder}
    save_snapshot(path, modules, {"recipe": recipe.to_json(), "step": "7"})
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_load_module_gives_the_ema_encoder_features_in_eval_mode_without_gradients(snapshot):
    reference = load_snapshot(snapshot, default_plugins()).model.encoder
    encoder = load_module(snapshot, "encoder", latent=True)
    assert isinstance(encoder, EncoderFeatures) and not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    x = images(5)
    with torch.no_grad():
        out = encoder(x)
        torch.testing.assert_close(out["features"], reference.features(x).flatten(1), rtol=0, atol=0)
        torch.testing.assert_close(out["latent"], reference(x).point, rtol=0, atol=0)
    assert set(load_module(snapshot, "encoder")(x)) == {"features"}


def test_load_module_gives_the_ema_generator(snapshot):
    reference = load_snapshot(snapshot, default_plugins()).model.generator
    generator = load_module(snapshot, "generator")
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(generator(z), reference(z), rtol=0, atol=0)


def test_load_module_refuses_an_unknown_module(snapshot):
    with pytest.raises(BifamilyError, match="module 'discriminator': choose one of encoder, generator"):
        load_module(snapshot, "discriminator")


# A process with torch alone: importing bifamily would fail there.
TORCH_ONLY = """
import sys
sys.modules["bifamily"] = None
import torch
program = torch.export.load(sys.argv[1]).module()
inputs = torch.load(sys.argv[2])
torch.save({name: program(x) for name, x in inputs.items()}, sys.argv[3])
"""


def run_without_bifamily(program: Path, inputs: dict[str, torch.Tensor], tmp_path: Path) -> dict:
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", TORCH_ONLY, str(program), str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "outputs.pt")


def test_exported_encoder_loads_with_torch_alone_and_matches_the_framework_at_any_batch_size(snapshot, tmp_path):
    result = invoke("export", str(snapshot), "--latent", "-o", str(tmp_path / "encoder.safetensors"))
    assert result.exit_code == 0, result.output
    program, weights = tmp_path / "encoder.pt2", tmp_path / "encoder.safetensors"
    assert result.output.split() == [str(program), str(weights)]
    inputs = {"one": images(1, seed=1), "seven": images(7, seed=2)}
    outputs = run_without_bifamily(program, inputs, tmp_path)
    reference = load_snapshot(snapshot, default_plugins()).model.encoder
    with torch.no_grad():
        for name, x in inputs.items():
            assert set(outputs[name]) == {"features", "latent"}
            torch.testing.assert_close(outputs[name]["features"], reference.features(x).flatten(1), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(outputs[name]["latent"], reference(x).point, rtol=1e-5, atol=1e-6)


def test_the_exported_program_fixes_the_resolution_and_describes_itself(snapshot, tmp_path):
    invoke("export", str(snapshot), "-o", str(tmp_path / "encoder.pt2"))
    extra = {EXPORT_INFO: ""}
    program = torch.export.load(tmp_path / "encoder.pt2", extra_files=extra).module()
    info = json.loads(extra[EXPORT_INFO])
    assert info["module"] == "EMA encoder" and info["kind"] == "dcgan" and info["step"] == 7
    assert info["inputs"] == "images (N, 3, 16, 16) float32 in [-1, 1]" and set(info["outputs"]) == {"features"}
    assert info["recipe"]["data"]["resolution"] == 16
    with pytest.raises(AssertionError, match=r"x.size\(\)\[2\] == 16"):
        program(torch.zeros(2, 3, 32, 32))


def test_exported_generator_matches_the_framework(snapshot, tmp_path):
    result = invoke("export", str(snapshot), "--module", "generator", "-o", str(tmp_path / "generator.pt2"))
    assert result.exit_code == 0, result.output
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    outputs = run_without_bifamily(tmp_path / "generator.pt2", {"z": z}, tmp_path)
    reference = load_snapshot(snapshot, default_plugins()).model.generator
    with torch.no_grad():
        torch.testing.assert_close(outputs["z"], reference(z), rtol=1e-5, atol=1e-6)


def test_the_exported_weights_hold_the_module_and_load_back(snapshot, tmp_path):
    invoke("export", str(snapshot), "-o", str(tmp_path / "encoder.pt2"))
    weights = tmp_path / "encoder.safetensors"
    with safe_open(weights, "pt") as handle:
        metadata = handle.metadata()
        names = set(handle.keys())
    assert metadata["exported"] == "encoder" and json.loads(metadata["recipe"])["prior"]["dim"] == 16
    assert names and all(name.startswith("encoder_ema.") for name in names)
    x = images(3)
    with torch.no_grad():
        again, original = load_module(weights)(x), load_module(snapshot)(x)
    torch.testing.assert_close(again["features"], original["features"], rtol=0, atol=0)


def test_a_wrong_output_name_is_a_one_line_error(snapshot, tmp_path):
    result = invoke("export", str(snapshot), "-o", str(tmp_path / "encoder.bin"))
    assert result.exit_code == 2
    assert result.stderr == f"error: -o {tmp_path / 'encoder.bin'}: name a .pt2 or .safetensors file (both are written, side by side)\n"


def test_a_module_torch_export_cannot_trace_is_a_one_line_error(snapshot, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("data-dependent control flow\nfull explanation")

    monkeypatch.setattr(torch.export, "export", refuse)
    result = invoke("export", str(snapshot), "-o", str(tmp_path / "encoder.pt2"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: encoder 'dcgan' cannot be exported with torch.export (RuntimeError: data-dependent")
    assert not (tmp_path / "encoder.pt2").exists()

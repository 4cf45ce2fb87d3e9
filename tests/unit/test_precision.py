"""train.precision = "auto": bf16 exactly where the hardware has bf16 arithmetic, fp32 elsewhere."""

from __future__ import annotations

import pytest
import torch

from bifamily.precision import Precision, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_explicit_precisions_are_kept(name: str) -> None:
    assert resolve_precision(name, CPU) == name
    assert Precision(name, CPU).name == name


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")],
)
def test_auto_on_cpu_follows_the_bf16_instructions(monkeypatch, amx: bool, avx512_bf16: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    precision = Precision("auto", CPU)
    assert precision.name == expected
    assert precision.dtype == (torch.bfloat16 if expected == "bf16" else None)


def test_auto_without_the_feature_checks_falls_back_to_fp32(monkeypatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert resolve_precision("auto", CPU) == "fp32"


def test_auto_on_cuda_asks_torch_cuda(monkeypatch) -> None:
    for supported, expected in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_precision("auto", torch.device("cuda")) == expected


def test_auto_elsewhere_is_fp32() -> None:
    assert resolve_precision("auto", torch.device("meta")) == "fp32"

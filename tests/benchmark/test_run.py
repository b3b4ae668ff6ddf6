"""A whole quick run (custom.benchmark.run): every section present, equal surface Dice; no timing assertions.

The numbers depend on the machine and its load.
"""

from __future__ import annotations

import json

import pytest

from tests.benchmark.common import positive, run_script


def _check_results(results: dict, device: str) -> None:
    meta = results["meta"]
    assert meta["device"] == device and meta["device_name"]
    assert {"torch", "monai", "numpy"} <= set(meta["versions"]) and meta["date"]
    settings = meta["settings"]
    assert settings["quick"] is True and settings["roi"] == 64 and settings["volume_shape"] == [48, 64, 64]

    t = results["training"]
    for key in ("bare_step", "bundle_loop"):
        assert positive(t[key]["slices_per_s"])
        assert len(t[key]["repeats_slices_per_s"]) == settings["repeats"]
        assert all(positive(v) for v in t[key]["repeats_slices_per_s"])
    assert positive(t["ratio_bundle_to_bare"]) and t["cached_slices"] > 0

    inf = results["inference"]
    assert inf["volume_shape"] == [48, 64, 64]
    for name in ("fp32_contiguous", "fp32_channels_last"):
        assert positive(inf["cpu"][name]["seconds"])
    assert positive(inf["cpu"]["speedup_channels_last"])
    # the bundle's own inference path at --precision auto, timed in the same run as fp32 channels_last
    from custom.precision import cpu_has_native_bf16

    auto = inf["cpu"]["bundle_auto"]
    assert positive(auto["seconds"]) and auto["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert inf["cpu"]["speedup_auto_over_fp32_channels_last"] == pytest.approx(
        inf["cpu"]["fp32_channels_last"]["seconds"] / auto["seconds"])
    # ... and against batch_size slices per pass (no CPU pixel budget), in the same run
    assert inf["cpu_pixels_per_pass"] == 2**17 and inf["slice_batch_size"] == 32
    assert inf["cpu"]["speedup_pixel_budget_over_batch_size"] == pytest.approx(
        inf["cpu"]["bundle_auto_batch_size"]["seconds"] / auto["seconds"])

    sd = results["surface_dice"]
    assert sd["equal"] is True
    assert len(sd["pairs"]) == 2
    assert any(p["spacing_mm"] == [1.0, 1.0, 1.0] for p in sd["pairs"])
    assert any(len(set(p["spacing_mm"])) > 1 for p in sd["pairs"])  # an anisotropic pair
    for pair in sd["pairs"]:
        assert pair["equal"] is True and all(d < 1e-6 for d in pair["abs_diff"].values())
        assert 0.0 < pair["surface_dice"] < 1.0  # a realistic, imperfect pair
        assert all(positive(v) for v in pair["seconds"].values())
        assert all(positive(v) for v in pair["speedup_over_deepmind"].values())

    ft = results["fine_tuning"]["strategies"]
    assert set(ft) == {"full", "first", "last"}
    assert all(positive(ft[s]["slices_per_s"]) and positive(ft[s]["relative_cost"]) for s in ft)
    assert ft["full"]["relative_cost"] == 1.0
    assert ft["first"]["trainable_parameters"] < ft["full"]["trainable_parameters"]

    assert results["table"] and all(len(row) == 3 for row in results["table"])


def test_quick_cpu_run_writes_every_section(quick_cpu):
    proc, out = quick_cpu
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    _check_results(results, "cpu")
    assert "cuda" not in results["inference"]


@pytest.mark.gpu
def test_quick_cuda_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script("--quick", "--device", "cuda", "--compile", "true", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    _check_results(results, "cuda")
    assert results["training"]["precision"] == "bf16 autocast + channels_last"
    assert positive(results["training"]["compile"]["slices_per_s"])
    assert all(positive(r["slices_per_s"]) for r in results["training"]["references"].values())
    cuda = results["inference"]["cuda"]
    assert positive(cuda["fp32_contiguous"]["seconds"]) and positive(cuda["bf16_channels_last"]["seconds"])
    for pair in results["surface_dice"]["pairs"]:
        assert positive(pair["seconds"]["custom_cuda"]) and pair["abs_diff"]["custom_cuda"] < 1e-6
    for row in ("ratio: cuda fp32 / bf16 + channels_last time", "ratio: DeepMind cpu / custom cuda time",
                "ratio: compiled / bare step"):
        assert row in proc.stdout

"""The one table: ``(section, measurement, result)`` rows from the results, rendered as aligned text or Markdown."""

from __future__ import annotations

import math

from custom.benchmark.settings import STRATEGY_NAMES

__all__ = ["render_markdown", "render_text", "table_rows"]


def _num(x: float, digits: int = 3) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def _seconds(x: float) -> str:
    return f"{_num(x * 1000)} ms" if x < 1 else f"{_num(x)} s"


def _spacing_label(spacing) -> str:
    return "1 mm" if all(v == 1.0 for v in spacing) else "x".join(f"{v:g}" for v in spacing) + " mm"


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """``(section, measurement, result)`` rows; the ratio rows start with ``ratio:``."""
    rows: list[tuple[str, str, str]] = []
    t = results["training"]
    sec = f"training ({t['precision']})"
    rows += [
        (sec, "bare step: forward + backward + SGD on a pre-made batch",
         f"{_num(t['bare_step']['slices_per_s'])} slices/s"),
        (sec, "bundle loop: SupervisedTrainer from train.yaml (SliceDataset, DataLoader)",
         f"{_num(t['bundle_loop']['slices_per_s'])} slices/s"),
        (sec, "ratio: bundle loop / bare step (goal >= 0.9)", f"{t['ratio_bundle_to_bare']:.2f}"),
    ]
    for name, ref in t.get("references", {}).items():
        label = name.replace("_", " ").replace("channels last", "channels_last")
        rows += [(sec, f"bare step, {label}", f"{_num(ref['slices_per_s'])} slices/s"),
                 (sec, f"ratio: bf16 + channels_last / {label} (speedup)",
                  f"{ref['speedup_of_bf16_channels_last']:.2f}")]
    if "compile" in t:
        c = t["compile"]
        rows += [(sec, f"bare step + torch.compile (first call {_seconds(c['first_call_s'])})",
                  f"{_num(c['slices_per_s'])} slices/s"),
                 (sec, "ratio: compiled / bare step (speedup)", f"{c['speedup_over_bare']:.2f}")]

    inf = results["inference"]
    sec = f"inference ({'x'.join(map(str, inf['volume_shape']))} volume, SliceBatchInferer)"
    rows += [
        (sec, "cpu fp32, contiguous slices", _seconds(inf["cpu"]["fp32_contiguous"]["seconds"])),
        (sec, "cpu fp32, channels_last slices", _seconds(inf["cpu"]["fp32_channels_last"]["seconds"])),
        (sec, "ratio: cpu contiguous / channels_last time (speedup)", f"{inf['cpu']['speedup_channels_last']:.2f}"),
    ]
    if "bundle_auto" in inf["cpu"]:  # saved runs of earlier versions lack it
        ran = inf["cpu"]["bundle_auto"]["precision"]
        how = "bf16 autocast + channels_last" if ran == "bf16" else "fp32 + channels_last"
        rows += [
            (sec, f"cpu bundle inference.yaml, --precision auto ({how})",
             _seconds(inf["cpu"]["bundle_auto"]["seconds"])),
            (sec, "ratio: cpu fp32 channels_last / --precision auto time (speedup)",
             f"{inf['cpu']['speedup_auto_over_fp32_channels_last']:.2f}"),
        ]
    if "bundle_auto_batch_size" in inf["cpu"]:  # saved runs of earlier versions lack it
        n, px = inf["slice_batch_size"], inf["cpu_pixels_per_pass"]
        rows += [
            (sec, f"cpu --precision auto, {n} slices per pass (cpu_pixels=None)",
             _seconds(inf["cpu"]["bundle_auto_batch_size"]["seconds"])),
            (sec, f"ratio: cpu {n} slices / at most {px:,} pixels per pass time (speedup)",
             f"{inf['cpu']['speedup_pixel_budget_over_batch_size']:.2f}"),
        ]
    if "cuda" in inf:
        rows += [
            (sec, "cuda fp32, contiguous slices", _seconds(inf["cuda"]["fp32_contiguous"]["seconds"])),
            (sec, "cuda bf16 autocast + channels_last", _seconds(inf["cuda"]["bf16_channels_last"]["seconds"])),
            (sec, "ratio: cuda fp32 / bf16 + channels_last time (speedup)",
             f"{inf['cuda']['speedup_bf16_channels_last']:.2f}"),
        ]

    sd = results["surface_dice"]
    sec = f"surface Dice ({'x'.join(map(str, sd['shape']))}, tolerance {sd['tolerance_mm']:g} mm)"
    for pair in sd["pairs"]:
        sp = _spacing_label(pair["spacing_mm"])
        secs, speed = pair["seconds"], pair["speedup_over_deepmind"]
        rows += [
            (sec, f"DeepMind surface_distance (cpu), {sp}", _seconds(secs["deepmind_cpu"])),
            (sec, f"custom.metrics.surface_dice (cpu), {sp}", _seconds(secs["custom_cpu"])),
            (sec, f"ratio: DeepMind / custom cpu time (speedup), {sp}", f"{speed['custom_cpu']:.2f}"),
        ]
        if "custom_cuda" in secs:
            via = "cuCIM" if sd["cucim"] else "no cuCIM: CPU distance transform"
            rows += [
                (sec, f"custom.metrics.surface_dice (cuda tensors, {via}), {sp}", _seconds(secs["custom_cuda"])),
                (sec, f"ratio: DeepMind cpu / custom cuda time (speedup, goal >= 100), {sp}",
                 f"{speed['custom_cuda']:.1f}"),
            ]
        worst = max(pair["abs_diff"].values())
        rows.append((sec, f"equal to DeepMind (|diff| < {sd['atol']:g}), {sp}: {pair['surface_dice']:.6f}",
                     f"{'yes' if pair['equal'] else 'NO'} (max |diff| {worst:.1e})"))

    st = results["fine_tuning"]
    sec = f"fine-tuning step ({st['precision']})"
    for name in STRATEGY_NAMES:
        row = st["strategies"][name]
        rows.append((sec, f"{name}: {row['trainable_parameters']:,} trainable parameters",
                     f"{_num(row['slices_per_s'])} slices/s"))
    for name in STRATEGY_NAMES[1:]:
        rows.append((sec, f"ratio: {name} / full step time (relative cost)",
                     f"{st['strategies'][name]['relative_cost']:.2f}"))
    return rows


def _title(results: dict) -> str:
    m, st = results["meta"], results["meta"]["settings"]
    quick = ", quick" if st["quick"] else ""
    return (f"benchmark on {m['device_name']} ({m['device']}, {m['torch_threads']} threads), batch {st['batch_size']} "
            f"x {st['roi']}x{st['roi']}, median of {st['repeats']} x {st['steps']} step(s){quick}; "
            f"torch {m['versions']['torch']}, monai {m['versions']['monai']}, {m['date']}")


def render_text(results: dict) -> str:
    """The table as plain text, columns aligned."""
    header = ("Section", "Measurement", "Result")
    rows = [header, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [_title(results)]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    """The table as Markdown (pipes escaped), the title as an italic caption above it; for the docs."""
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [f"*{esc(_title(results))}*", "", "| Section | Measurement | Result |", "|---|---|---:|"]
    lines += [f"| {esc(a)} | {esc(b)} | {esc(c)} |" for a, b, c in table_rows(results)]
    return "\n".join(lines)

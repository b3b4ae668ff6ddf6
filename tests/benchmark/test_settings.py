"""The options checked and their defaults filled in (custom.benchmark.settings), without running anything."""

from __future__ import annotations

import pytest

from custom.benchmark.settings import HEAD_SHAPE, QUICK_HEAD_SHAPE, UsageError, flag_option, resolve_settings


def test_full_sizes_on_cpu():
    s = resolve_settings(device="cpu")
    assert (s.device, s.batch_size, s.roi, s.volume_shape, s.train_slices) == ("cpu", 32, 256, HEAD_SHAPE, 24)
    assert (s.steps, s.repeats, s.warmup) == (1, 3, 1)
    assert s.quick is False and s.compile is False and str(s.torch_device) == "cpu"


def test_quick_sizes_and_given_values_win():
    s = resolve_settings(device="cpu", quick="true", steps=2)
    assert (s.batch_size, s.roi, s.volume_shape, s.train_slices) == (4, 64, QUICK_HEAD_SHAPE, 8)
    assert (s.steps, s.repeats, s.warmup) == (2, 2, 1) and s.quick is True
    s = resolve_settings(device="cpu", batch_size=2, roi=32, repeats=5, warmup=3, compile=True)
    assert (s.batch_size, s.roi, s.repeats, s.warmup, s.compile) == (2, 32, 5, 3, True)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"device": "tpu"}, "--device must be auto, cpu or cuda, got 'tpu'"),
        ({"roi": 60}, "--roi must be a multiple of 8 (three stride-2 downsamplings), got 60"),
        ({"roi": 4}, "--roi must be an integer >= 8, got 4"),
        ({"batch_size": True}, "--batch_size must be an integer >= 1, got True"),
        ({"compile": "maybe"}, "--compile must be true or false, got 'maybe'"),
    ],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError) as info:
        resolve_settings(**{"device": "cpu", **options})
    assert str(info.value) == message


def test_flag_option():
    assert flag_option("yes", "markdown") is True and flag_option(False, "markdown") is False
    with pytest.raises(UsageError, match="--markdown must be true or false"):
        flag_option("perhaps", "markdown")

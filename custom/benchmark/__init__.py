"""Benchmark the bundle's training loop, inference and surface Dice; every ratio comes from ONE run.

Usage::

    brain-extraction-benchmark --output bench.json                  # full sizes, CUDA if available
    brain-extraction-benchmark --device cpu --steps 1 --repeats 3    # full sizes on CPU, fewer steps
    brain-extraction-benchmark --quick --device cpu                  # tiny sizes, seconds (the tests use this)
    brain-extraction-benchmark --device cuda --compile true          # plus a torch.compile row
    brain-extraction-benchmark --from_json bench.json --markdown true  # re-render a saved run for the docs

(``python scripts/benchmark.py`` takes the same options.) Sections (one table, JSON with the same numbers plus
device, versions, date and settings):

* training: the source bundle's training loop, i.e. a ``monai.engines.SupervisedTrainer`` built from
  ``bundles/brain_extraction_source/configs/train.yaml`` by ``monai.bundle.ConfigParser`` (its ``initialize``
  section run, its SliceDataset and DataLoader reading synthetic NIfTI volumes written to a temporary folder),
  against the bare model step (forward, BCE loss, backward, SGD step on a pre-made batch) in the same precision and
  memory format: bf16 autocast + channels_last on CUDA (as the bundle), fp32 + channels_last on CPU. The blocks of
  the two alternate (bundle, bare, bundle, bare, ...) inside one training run, so both see the same machine load;
  the ratio is the median of the per-pair ratios (goal >= 0.9).
* inference: seconds per preprocessed 1 mm head volume (176 x 256 x 256) with the bundle's ``SliceBatchInferer``
  (from ``inference.yaml``): CPU fp32 with contiguous vs channels_last slices, and the bundle's own inference path
  (``inference.yaml``'s network and ``AutocastInferer`` at ``--precision auto``: bf16 autocast on CPUs with AMX or
  AVX512-BF16, fp32 elsewhere) against fp32 channels_last, and against itself with ``batch_size`` slices per pass
  instead of the CPU pixel budget (``cpu_pixels``), the four alternating in one run; on CUDA fp32 vs bf16
  autocast + channels_last.
* surface Dice: ``custom.metrics.surface_dice`` against DeepMind's ``surface_distance`` on a brain-like mask and a
  perturbed copy (same size, 1 mm and anisotropic voxels), values checked equal (|diff| < 1e-6); on CUDA also the
  CUDA-tensor path (goal >= 100x faster than DeepMind on CPU; needs cuCIM for a GPU distance transform).
* fine-tuning: the bare step with only the strategy's parameters trainable (``custom.freeze.freeze``: full, first,
  last), cost relative to the full step.

Timing: warm-up first, ``torch.cuda.synchronize()`` around every timed block on CUDA, the median of ``--repeats``
blocks of ``--steps`` steps (one volume or one mask pair per inference / surface Dice repeat), measurements that
are compared run alternately; ``torch.set_num_threads`` is left at its default. Progress goes to stderr, the table
to stdout. Bad options: one line ``benchmark: error: ...`` on stderr, exit 2, nothing written.

Modules: ``settings`` (options and defaults), ``bundle`` (the source bundle's configs), ``timing``, ``phantoms``
(synthetic data), one per section (``training``, ``inference``, ``surface_dice``, ``strategies``), ``report`` (the
table), ``run`` (all sections, with device and versions) and ``cli``. No bundle config loads this package.
"""

__all__ = [
    "bundle", "cli", "inference", "phantoms", "report", "run", "settings", "strategies", "surface_dice", "timing",
    "training",
]

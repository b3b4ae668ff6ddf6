"""The paper's whole experiment as a grid of resumable cells, each one a run of a bundle.

Cells (one folder each under ``<output_dir>/cells/``, finished when its ``done.json`` exists):

* ``train/baseline/<source>``: the source bundle's ``train.yaml`` on the one2all split of one domain;
* ``eval/baseline/<source>/<target>``: that model on every scan of another domain (``inference.yaml`` +
  ``evaluate.yaml``);
* ``train/oracle/<domain>/fold<k>`` and ``eval/oracle/<domain>/fold<k>``: 3-fold cross-validation inside a
  domain (``--oracle``);
* ``train/<first|last|full>/<source>_to_<target>/<n>slices``: a fine-tuning bundle's ``train.yaml`` on the
  one2one split with the slice budget's annotated scans and slice interval, starting from the source model;
* ``eval/<first|last|full>/<source>_to_<target>/<n>slices``: the fine-tuned model on the target's test scans;
* the same two per budget for ``spottune`` (its own bundle) and the sweep's ``<block>`` / ``upto_<block>`` (the full
  bundle with ``--strategy``), and ``eval/<adabn|histmatch>/<source>_to_<target>``: the source model adapted
  without annotations, on every scan of the target (``custom.reproduction.grid``).

A cell runs its bundle in-process through ``monai.bundle.ConfigWorkflow`` with command-line-style overrides
(recorded in ``done.json``), so the bundles stay the single definition of training and evaluation. A cell is
identified by a fingerprint of its settings and its scans: a rerun skips finished cells, restarts unfinished ones
(training resumes from its last epoch checkpoint when the settings are unchanged) and refuses an output folder
whose finished cells were made with other settings. The fingerprint holds no absolute path (files in the data or
output folder count by their path there, shipped weights by their sha256): moving the checkout, the data or the
output folder keeps every finished cell.

The evaluation cells share ``<output_dir>/cache/preprocessed``: each test scan preprocessed once, reused by every
cell that evaluates it (``custom.data.preprocessed_dataset``; ``--cache_preprocessing false`` turns it off). It is
a path, not a setting: the fingerprints and the results are the same with or without it.

Modules, in the order a run uses them: ``profiles``, ``grid``, ``selection``, ``spec``, ``plan``, ``cell``,
``executors``, ``records``, ``results`` (with ``stats``), ``report``, ``figures``, ``manifest``, ``run``, and
``cli`` (the ``brain-extraction-reproduce`` command). Nothing here imports torch or MONAI at module level: worker
processes set ``CUDA_VISIBLE_DEVICES`` first. No bundle config loads this package.
"""

__all__ = [
    "cell", "cli", "executors", "figures", "grid", "manifest", "plan", "profiles", "records", "report", "results",
    "run", "selection", "spec", "stats",
]

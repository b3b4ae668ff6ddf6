"""The bad-input corpus through every bundle's real command lines: train, evaluate and inference.

Each case runs ``python -m monai.bundle run`` in a subprocess and must end with exit code 2, ONE line
``error: <file>: <problem>`` (no traceback anywhere, no ERROR log lines), and its folder exactly as it was before:
no new file, no changed file (a previous model or result sits there on purpose). A control case (a singleton 4th
axis, which is simply handled) runs the same command line to success, so a refusal is the input's doing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from custom.networks import UNet2D
from tests import corpus
from tests.bundle_utils import ALL_BUNDLES, FINETUNE, SOURCE
from tests.corpus import IMAGE_PROBLEMS, MASK_PROBLEMS, SPACING, bad_image, bad_mask, good_pair, head, save

pytestmark = pytest.mark.slow

SMALL = ["--spacing", json.dumps(list(SPACING))]
TRAIN_SMALL = [*SMALL, "--roi_size", "[32,32]", "--iterations_per_epoch", "1", "--batch_size", "2",
               "--max_epochs", "1", "--slice_interval", "1"]
CONTROL = "singleton_4d (control)"


@dataclass
class Case:
    """One command line in its own folder, and what it must answer."""

    kind: str
    folder: Path
    args: list[str]
    names: str = ""  # the file the error must name
    problem: str = ""  # words the error must contain
    outputs: list[str] = field(default_factory=list)  # for the control: files the run must write


def _config(bundle: Path, entry: str) -> str:
    configs = bundle / "configs"
    if entry == "evaluate":
        return json.dumps([str(configs / "inference.yaml"), str(configs / "evaluate.yaml")])
    return str(configs / f"{entry}.yaml")


def _entry(image: Path, mask: Path, scan_id: str = "scan") -> dict:
    return {"image": str(image), "label": str(mask), "id": scan_id, "domain": "test"}


def _datalist(folder: Path, key: str, entries: list[dict]) -> Path:
    path = folder / "datalist.json"
    path.write_text(json.dumps({"training": [], "validation": [], "test": [], key: entries}))
    return path


def _labelled_cases(root: Path, entry: str) -> list[Case]:
    """train and evaluate: a datalist whose one scan is broken (image, mask or the datalist itself)."""
    key = "training" if entry == "train" else "test"
    cases = []

    def case(kind: str) -> Path:
        folder = root / kind
        (folder / "inputs").mkdir(parents=True)
        (folder / "models").mkdir()
        # what an earlier run left: a model (fine-tuning would even start from it) and a result
        torch.save(UNet2D().state_dict(), folder / "models" / "model.pt")
        (folder / "out").mkdir()
        (folder / "out" / "metrics.csv").write_text("id,domain,surface_dice,dice\nold,test,0.5,0.5\n")
        return folder

    for kind, problem in {**IMAGE_PROBLEMS, **MASK_PROBLEMS}.items():
        folder = case(kind)
        if kind in IMAGE_PROBLEMS:
            image, mask = bad_image(folder / "inputs", kind), good_pair(folder / "inputs")[1]
            named = image
        else:
            image, mask = bad_mask(folder / "inputs", kind)
            named = mask
        datalist = _datalist(folder, key, [_entry(image, mask)])
        cases.append(Case(kind, folder, ["--datalist_file", str(datalist)], str(named), problem))

    folder = case("duplicate_id")
    a, b = good_pair(folder / "inputs", "a"), good_pair(folder / "inputs", "b")
    datalist = _datalist(folder, key, [_entry(*a, "same"), _entry(*b, "same")])
    cases.append(Case("duplicate_id", folder, ["--datalist_file", str(datalist)], str(datalist), "duplicate id same"))

    # datalists: a misnamed list, the needed list empty, an entry without its mask
    wrong = "testing" if key == "test" else "train"
    for kind, problem in (("misnamed_list", f"unknown list '{wrong}'"), ("empty_list", f"'{key}' is missing or empty"),
                          ("entry_without_label", f"entry 0 of '{key}' has no 'label'")):
        folder = case(kind)
        image, mask = good_pair(folder / "inputs")
        content = {"misnamed_list": {wrong: [_entry(image, mask)]}, "empty_list": {key: []},
                   "entry_without_label": {key: [{"image": str(image)}]}}[kind]
        path = folder / "datalist.json"
        path.write_text(json.dumps(content))
        cases.append(Case(kind, folder, ["--datalist_file", str(path)], str(path), problem))

    folder = case("missing_datalist")
    cases.append(Case("missing_datalist", folder, ["--datalist_file", str(folder / "nowhere.json")],
                      str(folder / "nowhere.json"), "datalist not found"))

    folder = case("unknown_option")
    datalist = _datalist(folder, key, [_entry(*good_pair(folder / "inputs"))])
    cases.append(Case("unknown_option", folder, ["--datalist_file", str(datalist), "--max_epoch", "5"],
                      f"{entry}.yaml" if entry == "train" else "evaluate.yaml", "unknown option --max_epoch"))

    folder = case(CONTROL.split()[0])
    if entry == "train":  # a fine-tuning control starts from the source weights, as a fresh adapter does
        (folder / "models" / "model.pt").unlink()
    datalist = _datalist(folder, key, [_entry(*corpus.singleton_4d(folder / "inputs"))])
    outputs = ["models/model.pt"] if entry == "train" else ["out/metrics.csv", "out/t1_4d_brainmask.nii.gz"]
    cases.append(Case(CONTROL, folder, ["--datalist_file", str(datalist)], outputs=outputs))

    for c in cases:
        if entry == "train":
            c.args += [*TRAIN_SMALL, "--output_dir", str(c.folder / "runs"), "--ckpt_dir", str(c.folder / "models")]
        else:
            c.args += [*SMALL, "--output_dir", str(c.folder / "out"), "--model_path", str(c.folder / "models/model.pt"),
                       "--datalist_key", "test", "--save_masks", "true"]
    return cases


def _inference_cases(root: Path) -> list[Case]:
    """inference: a folder of volumes, a good one first (its mask must not appear either) and one broken."""
    cases = []

    def case(kind: str) -> tuple[Path, Path]:
        folder = root / kind
        inputs = folder / "inputs"
        inputs.mkdir(parents=True)
        save(inputs / "a_good.nii.gz", head()[0])
        (folder / "out").mkdir()
        (folder / "out" / "a_good_brainmask.nii.gz").write_bytes(b"an earlier result, not to be overwritten")
        return folder, inputs

    for kind, problem in IMAGE_PROBLEMS.items():
        folder, inputs = case(kind)
        if kind == "missing":  # for a folder of volumes: the folder itself
            inputs = folder / "no_such_folder"
            cases.append(Case(kind, folder, ["--dataset_dir", str(inputs)], str(inputs), "no such folder"))
        else:
            cases.append(Case(kind, folder, ["--dataset_dir", str(inputs)], str(bad_image(inputs, kind)), problem))

    folder, inputs = case("same_name")
    save(inputs / "a_good.nii", head()[0])
    cases.append(Case("same_name", folder, ["--dataset_dir", str(inputs)], str(inputs / "a_good.nii.gz"),
                      "their masks would overwrite each other"))

    folder, inputs = case("empty_folder")
    (inputs / "a_good.nii.gz").unlink()
    cases.append(Case("empty_folder", folder, ["--dataset_dir", str(inputs)], str(inputs), "no NIfTI"))

    folder, inputs = case("cache_is_a_file")
    (folder / "cache").write_text("not a folder")
    cases.append(Case("cache_is_a_file", folder, ["--dataset_dir", str(inputs), "--cache_dir", str(folder / "cache")],
                      str(folder / "cache"), "must be a folder"))

    folder, inputs = case("unknown_option")
    cases.append(Case("unknown_option", folder, ["--dataset_dir", str(inputs), "--save_strippd", "true"],
                      "inference.yaml", "unknown option --save_strippd"))

    # weights: a pickle that would run code, a truncated file, an empty one, another network's state dict
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    def bad_weights(kind: str, folder: Path) -> Path:
        path = folder / "weights.pt"
        good = UNet2D().state_dict()
        if kind == "pickle_weights":
            torch.save({"model": Exploit()}, path)
        elif kind == "truncated_weights":
            torch.save(good, path)
            path.write_bytes(path.read_bytes()[:4000])
        elif kind == "empty_weights":
            path.write_bytes(b"")
        else:
            torch.save(UNet2D(n_filters=8).state_dict(), path)
        return path

    for kind, problem in (("pickle_weights", "not a readable tensor-only weights file"),
                          ("truncated_weights", "not a readable tensor-only weights file"),
                          ("empty_weights", "empty weights file"), ("wrong_weights", "weights do not fit UNet2D")):
        folder, inputs = case(kind)
        weights = bad_weights(kind, folder)
        cases.append(Case(kind, folder, ["--dataset_dir", str(inputs), "--model_path", str(weights)], str(weights),
                          problem))

    folder, inputs = case("singleton_4d")
    corpus.singleton_4d(inputs)
    cases.append(Case(CONTROL, folder, ["--dataset_dir", str(inputs)], outputs=["out/t1_4d_brainmask.nii.gz"]))

    for c in cases:
        c.args += [*SMALL, "--output_dir", str(c.folder / "out")]
    return cases


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check(case: Case, config: str) -> str | None:
    """Run one case; the reason it fails its contract, or None."""
    before = _snapshot(case.folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BUNDLE_TRACEBACK", None)
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *case.args],
                          capture_output=True, text=True, timeout=300, cwd=case.folder, env=env)
    after = _snapshot(case.folder)
    if case.kind == CONTROL:
        changed = {k for k in after if before.get(k) != after[k]}
        missing = [o for o in case.outputs if o not in changed]
        if proc.returncode != 0 or missing:
            return f"exit {proc.returncode}, did not write {missing}: {proc.stderr.strip().splitlines()[-1:]}"
        return None
    lines = proc.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    if proc.returncode != 2:
        return f"exit {proc.returncode} (want 2): {last}"
    if not last.startswith("error: ") or case.names not in last or case.problem not in last:
        return f"error line {last!r} should name {case.names!r} and say {case.problem!r}"
    noise = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Traceback" in ln or " - ERROR - " in ln]
    if noise:
        return f"more than one line of error: {noise[0]!r}"
    if after != before:
        new = sorted(set(after) - set(before))
        changed = sorted(k for k in before if after.get(k) != before[k])
        return f"files written {new} or changed {changed}"
    return None


def _run_all(cases: list[Case], config: str) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=2) as pool:  # subprocesses: two at a time on a 2-core machine
        results = pool.map(lambda c: (c.kind, _check(c, config)), cases)
        return {kind: problem for kind, problem in results if problem}


@pytest.fixture(scope="module")
def untouched_bundles():
    """No command line may write into the repository's bundles."""
    before = {b.name: _snapshot(b) for b in ALL_BUNDLES}
    yield
    assert {b.name: _snapshot(b) for b in ALL_BUNDLES} == before


# The whole corpus runs through every distinct config file: the source bundle's three and the first-layers
# train.yaml. The other bundles' evaluate/inference configs are copies of the source's (asserted below) and their
# train.yaml differs from first-layers' only in `strategy` (test_bundles), so a sample of each kind of problem
# runs through them: a broken volume, a broken mask or name clash, an unknown option, and the control.
SAMPLE = {"nan_voxels", "empty_mask", "same_name", "unknown_option", CONTROL}
ENTRIES = [(bundle, entry) for bundle in ALL_BUNDLES for entry in ("train", "evaluate", "inference")]


def _whole_corpus(bundle: Path, entry: str) -> bool:
    return bundle == SOURCE or (bundle == FINETUNE["first"] and entry == "train")


@pytest.mark.parametrize("bundle, entry", ENTRIES, ids=[f"{b.name}-{e}" for b, e in ENTRIES])
def test_every_bad_input_gets_one_line_and_changes_nothing(bundle, entry, tmp_path, untouched_bundles):
    cases = _inference_cases(tmp_path) if entry == "inference" else _labelled_cases(tmp_path, entry)
    assert {c.kind for c in cases} >= set(IMAGE_PROBLEMS) | {CONTROL, "unknown_option"}
    if not _whole_corpus(bundle, entry):
        if entry != "train":
            for name in ("inference.yaml", "evaluate.yaml"):
                generated = (bundle / "configs" / name).read_text().split("\n", 1)[1]  # below its header
                assert generated == (SOURCE / "configs" / name).read_text()
        cases = [c for c in cases if c.kind in SAMPLE]
        assert len(cases) == 4
    failures = _run_all(cases, _config(bundle, entry))
    assert not failures, "\n".join(f"{kind}: {why}" for kind, why in failures.items())

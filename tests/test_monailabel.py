"""The five bundles behind a real MONAI Label server: inference, label upload, fine-tuning, model reloading, load.

One server per module (its start-up and the training runs dominate the time) serves all five bundles; its studies
are thin axial slabs of demo volumes (the bundles resample every study to 1 x 0.95 x 0.95 mm, so a whole demo head
would take minutes per inference on a CPU):

* three scans of the fine-tuning bundles' default target scanner (``ge_3``): two get their true masks as ``final``
  labels and are the training data, the third is held out for inference;
* one scan of the source scanner (``siemens_15``), where the source U-Net must find the brain;
* a tiny crop for the concurrent requests.

Only the served copies are touched. Two copies are edited before the server starts, the ``train.yaml`` of the
first-layers and of the SpotTUnet bundle: MONAI Label 0.8.5 overrides only ``max_epochs`` (and the data, device and
handlers) of a bundle, and passes nothing else from a train request to it (only the keys of a bundle's
``displayable_configs``, which these bundles do not have), so the fine-tuning recipe (100 iterations of 32 crops of
256 x 256 per epoch) is shortened there to ``FAST_RECIPE``. A bundle whose repository folder has no
``models/model.pt`` yet gets a stand-in in its served copy (see ``_provide_weights``); with stand-in source weights
only the geometry of its masks is checked.

Runs in the MONAI Label environment (.venv-label/) through tests.label_server; skipped only when that environment
has not been built.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from custom.adapters import apply_adapter
from custom.checkpoints import atomic_save, load_state_dict, sha256
from custom.freeze import STRATEGIES
from custom.networks import UNet2D
from custom.spottune import split_state
from tests.corpus import corrupt_image
from tests.label_server import ROOT, LabelServer, LabelServerError, label_python

if not label_python().exists():
    pytest.skip(
        f"MONAI Label environment not built ({label_python()} missing; see requirements-label.txt)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow

BUNDLES = ROOT / "bundles"
SOURCE = "brain_extraction_source"
FIRST = "brain_extraction_first_layers"
SPOTTUNE = "brain_extraction_spottune"
NAMES = [SOURCE, FIRST, "brain_extraction_last_layers", "brain_extraction_full", SPOTTUNE]

TARGET, SOURCE_DOMAIN = "ge_3", "siemens_15"
# Slab thickness in the demo volumes' ~2 mm voxels. A training slab must offer at least one slice at the slice
# interval of the default budget (24 slices: every 12th slice of the resampled scan, so 8 slices -> 16 -> 1).
TRAIN_SLICES, INFER_SLICES = 8, 4
TINY = "tiny"
TINY_SHAPE = (40, 40, 3)

# The shortened fine-tuning recipe of the served first-layers copy (see the module docstring).
FAST_RECIPE = {"iterations_per_epoch": 2, "batch_size": 4, "roi_size": [128, 128]}
EPOCHS = 2
CPU = {"device": "cpu"}
# val_split 0: train on every labelled scan, no validation (the paper keeps the last epoch)
TRAIN_REQUEST = {"max_epochs": EPOCHS, "val_split": 0, "device": "cpu", "multi_gpu": False}
TRAIN_TIMEOUT = 400.0
REQUEST_TIMEOUT = 180.0
# One torch thread per process (server, training runs, local inference): on a few busy cores a thread pool waits
# more than it computes on slices this small (measured on 2 busy cores: 0.04 s instead of 3.5 s for a 3-slice
# forward pass).
THREADS = 1
N_CONCURRENT = 20

# Dice of the source U-Net on the source-scanner slab. Modest on purpose: it tells working weights and geometry from
# broken ones (an all-brain mask scores ~0.5 here); a briefly trained source U-Net scores ~0.9.
DICE_MIN = 0.7
# Served vs. locally computed masks: voxels may flip only where the probability is ~0.5 (float noise between the two
# environments' torch builds; none measured). The fine-tuning must change clearly more (measured: 2-7 %).
MAX_MISMATCH = 1e-3
MIN_CHANGE = 5 * MAX_MISMATCH

FIRST_PREFIXES = STRATEGIES["first"]
# A parameter the first-layer strategy freezes, used to tag the model a second run must start from.
MARKER = "out_path.1.layer.weight"
RESTORED = re.compile(r"Restored all variables from (\S+)")


@dataclass
class Studies:
    folder: Path
    truth: dict[str, Path] = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)
    heldout_id: str = ""
    source_id: str = ""

    def image(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.nii.gz"

    @property
    def ids(self) -> list[str]:
        return sorted(p.name[: -len(".nii.gz")] for p in self.folder.glob("*.nii.gz"))


def _slab(image: Path, mask: Path, n: int, studies: Path, truth: Path) -> tuple[str, Path]:
    """The ``n`` middle axial slices of a scan and of its mask (affine shifted accordingly)."""
    image_id = image.name[: -len(".nii.gz")]
    img, msk = nib.load(image), nib.load(mask)
    start = img.shape[2] // 2 - n // 2
    nib.save(img.slicer[:, :, start : start + n], studies / image.name)
    nib.save(msk.slicer[:, :, start : start + n], truth / image.name)
    return image_id, truth / image.name


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Studies:
    from custom.demo_data import make_demo_data

    root = tmp_path_factory.mktemp("monailabel")
    demo = make_demo_data(str(root / "demo"), n_subjects=3, seed=0, resolution="small", verbose=False)
    found = Studies(root / "studies")
    found.folder.mkdir()
    truth = root / "truth"
    truth.mkdir()

    def pick(domain: str) -> list[tuple[Path, Path]]:
        images = sorted((demo / "Original").glob(f"*_{domain}_*.nii.gz"))
        return [(p, demo / "Silver-standard" / p.name.replace(".nii.gz", "_ss.nii.gz")) for p in images]

    target = pick(TARGET)
    assert len(target) == 3
    for image, mask in target[:2]:
        image_id, found.truth[image_id] = _slab(image, mask, TRAIN_SLICES, found.folder, truth)
        found.train_ids.append(image_id)
    found.heldout_id, found.truth[found.heldout_id] = _slab(*target[2], INFER_SLICES, found.folder, truth)
    image, mask = pick(SOURCE_DOMAIN)[0]
    found.source_id, found.truth[found.source_id] = _slab(image, mask, INFER_SLICES, found.folder, truth)

    img = nib.load(target[2][0])
    corner = [(s - t) // 2 for s, t in zip(img.shape, TINY_SHAPE, strict=True)]
    crop = tuple(slice(c, c + t) for c, t in zip(corner, TINY_SHAPE, strict=True))
    nib.save(img.slicer[crop], found.image(TINY))
    return found


def _provide_weights(server: LabelServer) -> set[str]:
    """Stand-ins, in the served copies only, for weights the repository does not ship (yet); returns their bundles.

    The source gets a freshly initialised U-Net; a fine-tuning bundle without its own model gets the source weights
    (fine-tuning from the source starts there). MONAI Label only serves a bundle that has a ``models/model.pt``.
    """
    stand_ins = set()
    source = server.model_dir(SOURCE) / "models" / "model.pt"
    if not source.is_file():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            torch.save(UNet2D().state_dict(), source)
        stand_ins.add(SOURCE)
    for name in NAMES[1:]:
        own = server.model_dir(name) / "models" / "model.pt"
        if not own.is_file():
            shutil.copyfile(source, own)
            stand_ins.add(name)
    return stand_ins


@dataclass
class Served:
    server: LabelServer
    stand_ins: set[str]


def _shorten_recipe(train_yaml: Path) -> None:
    config = yaml.safe_load(train_yaml.read_text())
    config.update(FAST_RECIPE)
    train_yaml.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def served(studies, tmp_path_factory):
    # The app folder lives under pytest's temporary folder, so the server log outlives a failed run.
    app = tmp_path_factory.mktemp("app") / "monaibundle"
    srv = LabelServer(
        app,
        studies.folder,
        [BUNDLES / name for name in NAMES],
        env={"OMP_NUM_THREADS": str(THREADS)},
        request_timeout=REQUEST_TIMEOUT,
    )
    try:
        srv.prepare()
        stand_ins = _provide_weights(srv)
        for name in (FIRST, SPOTTUNE):
            _shorten_recipe(srv.model_dir(name) / "configs" / "train.yaml")
        srv.start()
        yield Served(srv, stand_ins)
    finally:
        srv.close()


@pytest.fixture(scope="module")
def server(served) -> LabelServer:
    return served.server


# ---- helpers ------------------------------------------------------------------------------------------------


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _check_geometry(mask_path: Path, study: Path) -> np.ndarray:
    """The served mask is a NIfTI on the study's exact grid, binary; returns its voxels."""
    mask_img, ref = nib.load(mask_path), nib.load(study)
    assert mask_img.shape == ref.shape
    np.testing.assert_allclose(mask_img.affine, ref.affine, atol=1e-4)
    voxels = np.asarray(mask_img.dataobj)
    assert set(np.unique(voxels).tolist()) <= {0, 1}
    return voxels.astype(np.uint8)


def _is_trainable(name: str) -> bool:
    return any(name.startswith(prefix + ".") for prefix in FIRST_PREFIXES)


PARAMETERS = [name for name, _ in UNet2D().named_parameters()]


def _train(server: LabelServer, name: str = FIRST) -> tuple[dict, str]:
    """One training run of bundle ``name``; returns the finished task and what the server logged meanwhile."""
    assert server.log_path is not None
    offset = server.log_path.stat().st_size
    server.train(name, **TRAIN_REQUEST)
    task = server.wait_train(timeout=TRAIN_TIMEOUT)
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        log = f.read().decode(errors="replace")
    return task, log


def _restored_from(log: str) -> list[Path]:
    return [Path(p).resolve() for p in RESTORED.findall(log)]


def _local_inference(bundle: Path, study: Path, model: Path, work: Path) -> np.ndarray:
    """The bundle's own inference workflow (configs/inference.yaml) in this process, with the weights ``model``."""
    from monai.bundle import ConfigWorkflow

    inputs, outputs = work / "in", work / "out"
    inputs.mkdir(parents=True)
    shutil.copyfile(study, inputs / study.name)
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.yaml"),
        workflow_type="infer",
        bundle_root=str(bundle),
        dataset_dir=str(inputs),
        output_dir=str(outputs),
        model_path=str(model),
        device="$torch.device('cpu')",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    finally:
        torch.set_num_threads(threads)
    (saved,) = outputs.glob("*_brainmask.nii.gz")
    return _check_geometry(saved, study)


def _processes_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# ---- the first fine-tuning run, shared by the training tests ----------------------------------------------------


@pytest.fixture(scope="module")
def first_run(server, studies):
    """Serve the held-out scan with the pre-training weights (the server caches that network), upload two true
    masks as final labels, then fine-tune the first layers through ``POST /train``."""
    model = server.model_dir(FIRST) / "models" / "model.pt"
    before = {"state": load_state_dict(model), "sha256": sha256(model)}
    served_before = _check_geometry(
        server.infer(FIRST, studies.heldout_id, params=CPU), studies.image(studies.heldout_id)
    )
    for image_id in studies.train_ids:
        assert server.put_label(image_id, studies.truth[image_id]) == {"image": image_id, "label": image_id}
    assert server.info()["datastore"]["label_tags"] == {"final": len(studies.train_ids)}
    task, log = _train(server)
    return {"before": before, "served_before": served_before, "task": task, "log": log}


# ---- tests --------------------------------------------------------------------------------------------------


def test_info_lists_the_five_bundles(server, studies):
    info = server.info()
    for name in NAMES:
        model = info["models"][name]
        assert model["labels"] == {"brain": 1}  # channel_def without background
        assert model["dimension"] == 2  # len(inputs.image.spatial_shape)
        assert name in info["trainers"]
    assert info["datastore"]["total"] == len(studies.ids)
    # The served copies stand alone: the fine-tuning bundles' configs are real copies of the source's files.
    for name in NAMES:
        assert not [p for p in server.model_dir(name).rglob("*") if p.is_symlink()]
        copy = server.model_dir(name) / "configs" / "inference.yaml"
        text = copy.read_text()
        if text.startswith("# Generated from"):  # a fine-tuning bundle's copy, below its header line
            text = text.split("\n", 1)[1]
        if name == SPOTTUNE:  # the source's inference with its own network
            text = text.replace("_target_: custom.spottune.SpotTUNet", "_target_: custom.networks.UNet2D")
        assert text == (BUNDLES / SOURCE / "configs" / "inference.yaml").read_text()


def test_source_inference_over_http(served, studies):
    """Automatic segmentation: a binary NIfTI on the study's exact grid that finds the brain."""
    study = studies.image(studies.source_id)
    mask = _check_geometry(served.server.infer(SOURCE, studies.source_id, params=CPU), study)
    assert mask.any()
    if SOURCE not in served.stand_ins:  # real weights: they must find the brain
        truth = _mask(studies.truth[studies.source_id])
        assert _dice(mask, truth) > DICE_MIN


def test_spottune_inference_over_http(served, studies):
    """The SpotTUnet bundle's network (two copies of every block and the policy) behind the same server."""
    study = studies.image(studies.source_id)
    mask = _check_geometry(served.server.infer(SPOTTUNE, studies.source_id, params=CPU), study)
    assert mask.any()


def test_training_first_layers_changes_only_them_and_is_served_next(server, studies, first_run, tmp_path):
    assert first_run["task"]["status"] == "DONE"
    folder = server.model_dir(FIRST) / "models"
    model, adapter = folder / "model.pt", folder / "adapter.pt"
    source = server.model_dir(SOURCE) / "models" / "model.pt"

    # The bundle's own CheckpointLoader started the run from its own model (MONAI Label injected none) ...
    assert set(_restored_from(first_run["log"])) == {model.resolve()}
    # ... and wrote the whole fine-tuned network back to the served bundle's models/model.pt ...
    assert sha256(model) != first_run["before"]["sha256"]
    tuned, source_state = load_state_dict(model), load_state_dict(source)
    assert set(tuned) == set(source_state)
    # ... where only first-layer parameters differ from the source (BatchNorm statistics adapt everywhere) ...
    differing = [name for name in PARAMETERS if not torch.equal(tuned[name], source_state[name])]
    assert differing and all(_is_trainable(name) for name in differing), differing
    assert any(not torch.equal(tuned[n], first_run["before"]["state"][n]) for n in PARAMETERS if _is_trainable(n))
    # ... and an adapter tied to the served source weights that rebuilds it bit for bit.
    saved = torch.load(adapter, map_location="cpu", weights_only=True)
    assert saved["strategy"] == "first"
    assert saved["source_sha256"] == sha256(source)
    rebuilt = apply_adapter(source, adapter)
    assert all(torch.equal(rebuilt[k], tuned[k]) for k in tuned)

    # The next request is answered by the new weights: the server noticed that model.pt changed.
    study = studies.image(studies.heldout_id)
    served_mask = _check_geometry(server.infer(FIRST, studies.heldout_id, params=CPU), study)
    local_mask = _local_inference(server.model_dir(FIRST), study, model, tmp_path)
    mismatch = float(np.mean(served_mask != local_mask))
    changed = float(np.mean(served_mask != first_run["served_before"]))
    assert mismatch <= MAX_MISMATCH, f"served and local masks differ in {mismatch:.2%} of the voxels"
    assert changed > MIN_CHANGE, f"fine-tuning changed only {changed:.4%} of the served mask"


def test_second_training_continues_from_the_bundles_own_model(server, first_run):
    folder = server.model_dir(FIRST) / "models"
    model, source = folder / "model.pt", server.model_dir(SOURCE) / "models" / "model.pt"
    # Tag the current model in a tensor the strategy freezes: a run that starts from it keeps the tag.
    first = load_state_dict(model)
    tagged = dict(first)
    tagged[MARKER] = first[MARKER] + 1e-3
    atomic_save(tagged, model)

    task, log = _train(server)
    assert task["status"] == "DONE"
    assert set(_restored_from(log)) == {model.resolve()}
    second, source_state = load_state_dict(model), load_state_dict(source)
    assert torch.equal(second[MARKER], tagged[MARKER])
    for name in PARAMETERS:
        if name != MARKER and not _is_trainable(name):
            assert torch.equal(second[name], source_state[name]), name
    # the trainable layers moved on from where the first run left them
    assert any(not torch.equal(second[n], first[n]) for n in PARAMETERS if _is_trainable(n))
    assert sha256(source) == torch.load(folder / "adapter.pt", weights_only=True)["source_sha256"]


def test_training_spottune_keeps_the_frozen_copies_writes_its_adapter_and_is_served_next(server, studies, first_run):
    """``POST /train`` of the SpotTUnet bundle on the labels the first run uploaded: the whole network (both copies
    and the policy) is written back, its frozen copies still hold the source's parameters, only the fine-tuned
    copies the policy uses are kept, and the adapter rebuilds the served model bit for bit."""
    folder = server.model_dir(SPOTTUNE) / "models"
    model, adapter, source = folder / "model.pt", folder / "adapter.pt", folder / "source_model.pt"
    before = sha256(model)
    task, log = _train(server, SPOTTUNE)
    assert task["status"] == "DONE", log[-2000:]
    assert sha256(model) != before
    state, source_state = load_state_dict(model), load_state_dict(source)
    parts = split_state(state)
    assert set(parts["frozen"]) == set(parts["tuned"]) == set(source_state) and parts["policy"]
    assert all(torch.equal(parts["frozen"][name], source_state[name]) for name in PARAMETERS)
    assert "slices of the training scans the policy runs the fine-tuned copies of" in log
    saved = torch.load(adapter, map_location="cpu", weights_only=True)
    assert saved["strategy"] == "spottune" and saved["source_sha256"] == sha256(source)
    rebuilt = apply_adapter(source, adapter)
    assert all(torch.equal(rebuilt[k], state[k]) for k in state)
    study = studies.image(studies.heldout_id)
    assert _check_geometry(server.infer(SPOTTUNE, studies.heldout_id, params=CPU), study).shape == nib.load(study).shape


def test_concurrent_inference_requests(server, studies):
    """Simultaneous requests from N_CONCURRENT threads all get a correct mask, each within REQUEST_TIMEOUT."""
    study = studies.image(TINY)

    def one(_: int) -> np.ndarray:
        return _check_geometry(server.infer(SOURCE, TINY, params=CPU, timeout=REQUEST_TIMEOUT), study)

    with ThreadPoolExecutor(max_workers=N_CONCURRENT) as pool:
        masks = list(pool.map(one, range(N_CONCURRENT)))
    assert len(masks) == N_CONCURRENT
    assert all(np.array_equal(m, masks[0]) for m in masks)
    assert server.info()["models"][SOURCE]  # still answering


def test_corrupt_study_is_refused_by_name_and_the_server_keeps_serving(server, studies, tmp_path):
    """A study with NaN voxels: the request fails, the server log names the file and the problem in one line, and
    the next request is served. (MONAI Label 0.8.5 answers any task error with a bare HTTP 500.)"""
    bad = corrupt_image(Path(shutil.copy(studies.image(TINY), tmp_path / "corrupt.nii.gz")), "nan_voxels")
    server.put_image("corrupt", bad)
    with pytest.raises(LabelServerError, match=r"HTTP 500"):
        server.infer(SOURCE, "corrupt", params=CPU, timeout=REQUEST_TIMEOUT)
    assert re.search(r"InputError: \S*corrupt\.nii\.gz: contains NaN or infinite voxels", server.log_tail(200))
    _check_geometry(server.infer(SOURCE, TINY, params=CPU, timeout=REQUEST_TIMEOUT), studies.image(TINY))


def test_closing_leaves_no_server_process(server):
    pid, app, port = server.pid, str(server.app_dir), server.port
    assert pid is not None and _processes_mentioning(app)
    server.__exit__(None, None, None)  # what leaving `with LabelServer(...)` does
    assert server.pid is None
    assert not _group_alive(pid)
    assert not _processes_mentioning(app)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

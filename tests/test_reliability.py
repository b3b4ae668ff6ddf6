"""No silent corruption: output folders checked before the work, written files checked before they count, weight
files checked against their bundle's record, volumes too large by their header refused before they are read.

Real ``python -m monai.bundle run`` subprocesses on tiny volumes; each must end with a correct result or ONE line
``error: <file>: <problem>``, exit code 2, and nothing written. A full disk and a mount point use tmpfs where this
machine allows ``mount`` (the same code is covered by a fault-injecting writer that always runs); permissions run the
command as ``nobody`` where ``setpriv`` and root are available.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine

from custom.checkpoints import WeightsError, atomic_save, atomic_write, atomic_write_text, load_state_dict
from custom.handlers import CommitOnCompletion
from custom.storage import OutputError, check_output_dir
from custom.transforms import find_volumes
from tests.bundle_utils import ALL_BUNDLES, SOURCE, copy_bundle
from tests.corpus import SPACING, head, save

SMALL = ["--spacing", json.dumps(list(SPACING)), "--num_threads", "1"]
INFERENCE = str(SOURCE / "configs" / "inference.yaml")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args: list[str], cwd: Path, config: str = INFERENCE, preexec=None, user: str | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BUNDLE_TRACEBACK", None)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    if user:
        import pwd

        entry = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env, preexec_fn=preexec)


def _one_line(proc, names: str, problem: str) -> None:
    lines = proc.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert last.startswith("error: ") and names in last and problem in last, last
    noise = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Traceback" in ln or " - ERROR - " in ln]
    assert not noise, noise[0]


def _inputs(folder: Path) -> Path:
    inputs = folder / "inputs"
    inputs.mkdir(parents=True)
    save(inputs / "head.nii.gz", head()[0])
    return inputs


# ---- one atomic writer, honouring the umask, checked before it commits ---------------------------------------------

def test_every_atomic_output_is_readable_as_the_umask_allows(tmp_path):
    from custom.cc359 import write_meta_csv
    from custom.reproduction.records import write_json
    from custom.splits import write_datalist

    old = os.umask(0o022)
    try:
        written = [
            atomic_write_text(tmp_path / "a.txt", "text\n"),
            atomic_save({"w": torch.zeros(2)}, tmp_path / "w.pt"),
            write_datalist({"training": []}, tmp_path / "datalist.json"),
            write_meta_csv([], tmp_path / "meta.csv"),
        ]
        write_json(tmp_path / "done.json", {"cell": "train/baseline/siemens_15"})
        written.append(tmp_path / "done.json")
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in written)  # no temporaries


def test_a_write_that_does_not_read_back_fails_and_changes_nothing(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("earlier\n")

    def short_write(tmp):  # a writer that, like ITK's on a full disk, stops early and raises nothing
        Path(tmp).write_text("id,do")

    with pytest.raises(OSError, match="metrics.csv.*does not read back|does not read back"):
        atomic_write(target, short_write, verify=lambda tmp: Path(tmp).read_text() == "id,domain\n")
    assert target.read_text() == "earlier\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def _nifti_bytes() -> bytes:
    path = Path(f"/tmp/{uuid.uuid4().hex}.nii.gz")
    save(path, head()[1])
    data = path.read_bytes()
    path.unlink()
    return data


def _engine_writing(stage: CommitOnCompletion, content: bytes) -> Engine:
    def step(engine, batch):
        Path(stage.staging).mkdir(parents=True, exist_ok=True)
        (Path(stage.staging) / f"{batch}_brainmask.nii.gz").write_bytes(content)

    engine = Engine(step)
    stage.attach(engine)
    return engine


@pytest.mark.parametrize("cut", [4096, 20, 0], ids=["truncated", "header-only", "empty"])
def test_commit_refuses_a_mask_cut_short_and_leaves_the_folder_as_it_was(tmp_path, cut):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "a_brainmask.nii.gz").write_bytes(b"earlier result")
    full = _nifti_bytes() + os.urandom(8192)  # long enough that 4096 bytes are a real cut
    stage = CommitOnCompletion(str(out))
    with pytest.raises(OutputError, match="does not read back"):
        _engine_writing(stage, full[:cut] if cut else b"").run(["a", "b"], max_epochs=1)
    assert _snapshot(out) == {"a_brainmask.nii.gz": hashlib.sha256(b"earlier result").hexdigest()}


def test_staging_is_inside_the_output_folder_and_a_new_folder_goes_away_on_failure(tmp_path):
    out = tmp_path / "new" / "masks"
    stage = CommitOnCompletion(str(out))
    assert Path(stage.staging).parent == out and not out.exists()
    with pytest.raises(OutputError):
        _engine_writing(stage, b"not a nifti").run(["a"], max_epochs=1)
    assert not out.exists()
    good = CommitOnCompletion(str(out))
    _engine_writing(good, _nifti_bytes()).run(["a"], max_epochs=1)
    assert sorted(p.name for p in out.iterdir()) == ["a_brainmask.nii.gz"]


def test_output_dir_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(tmp_path / "f" / "sub")


def test_find_volumes_skips_the_outputs_and_staging_folders_in_the_input(tmp_path):
    inputs = _inputs(tmp_path)
    (inputs / "masks").mkdir()
    save(inputs / "masks" / "head_brainmask.nii.gz", head()[1])
    (inputs / ".partial-999999").mkdir()
    save(inputs / ".partial-999999" / "x.nii.gz", head()[1])
    (inputs / ".masks.partial-999999").mkdir()
    save(inputs / ".masks.partial-999999" / "y.nii.gz", head()[1])
    assert find_volumes(inputs, exclude=inputs / "masks") == [{"image": str(inputs / "head.nii.gz")}]
    with pytest.raises(OutputError, match="output_dir is the input folder"):
        find_volumes(inputs, exclude=inputs)


# ---- the real command line -----------------------------------------------------------------------------------------

def test_output_inside_the_input_folder_twice_gives_one_mask(tmp_path):
    inputs = _inputs(tmp_path)
    for _ in range(2):
        proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(inputs / "masks"), *SMALL], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*") if p.is_file()) == [
        "head.nii.gz", "masks/head_brainmask.nii.gz"]


def test_early_refusals_before_any_inference(tmp_path):
    inputs = _inputs(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    before = _snapshot(tmp_path)
    for out, names, problem in ((tmp_path / "a_file", "a_file", "output_dir is a file"),
                                (inputs, str(inputs), "output_dir is the input folder")):
        proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(out), *SMALL], tmp_path)
        _one_line(proc, names, problem)
        assert "volume 1/" not in proc.stdout + proc.stderr  # refused before the first volume
    assert _snapshot(tmp_path) == before


def _can_drop_to_nobody() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


@pytest.mark.skipif(not _can_drop_to_nobody(), reason="needs root and setpriv to run the command as nobody")
def test_unwritable_output_folder_is_one_line_before_inference(tmp_path):
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # nobody must reach the inputs and the code
        if parent != Path("/"):
            parent.chmod(parent.stat().st_mode | 0o005)
    inputs = _inputs(tmp_path)
    inputs.chmod(0o755)
    (inputs / "head.nii.gz").chmod(0o644)
    out = tmp_path / "out"
    out.mkdir(mode=0o755)  # root's, not writable by nobody
    proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(out), *SMALL], tmp_path, user="nobody")
    if "Permission denied" in proc.stderr and "cannot write to output_dir" not in proc.stderr:
        pytest.skip(f"nobody cannot run the code here: {proc.stderr.strip().splitlines()[-1:]}")
    _one_line(proc, str(out), "cannot write to output_dir")
    assert list(out.iterdir()) == []


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(where: Path, size: str = "1m") -> Path:
        if not _mount_tmpfs(where, size):
            pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_full_disk_fails_the_run_and_commits_nothing(tmp_path, tmpfs):
    inputs = _inputs(tmp_path)
    out = tmpfs(tmp_path / "out", "64k")
    (out / "earlier_brainmask.nii.gz").write_bytes(b"earlier result")
    fd = os.open(out / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    before = _snapshot(out)
    proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(out), *SMALL], tmp_path)
    _one_line(proc, str(out), "")
    assert "No space left" in proc.stderr or "does not read back" in proc.stderr, proc.stderr[-500:]
    assert _snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_output_folder_that_is_a_mount_point_inside_a_read_only_parent(tmp_path, tmpfs):
    inputs = _inputs(tmp_path)
    parent = tmpfs(tmp_path / "ro", "1m")
    out = parent / "out"
    out.mkdir()
    tmpfs(out, "4m")
    subprocess.run(["mount", "-o", "remount,ro", str(parent)], check=True)  # out stays writable: its own mount
    proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(out), *SMALL], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["head_brainmask.nii.gz"]


def test_read_only_output_folder_is_one_line_before_inference(tmp_path, tmpfs):
    inputs = _inputs(tmp_path)
    out = tmpfs(tmp_path / "out", "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
    proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(out), *SMALL], tmp_path)
    _one_line(proc, str(out), "Read-only file system")


# ---- weights -------------------------------------------------------------------------------------------------------

def test_repository_bundles_record_the_sha256_of_their_weights():
    for bundle in ALL_BUNDLES:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        hashes = meta.get("weights_sha256") or {}
        files = sorted(p.relative_to(bundle).as_posix() for p in (bundle / "models").glob("*.pt"))
        assert sorted(hashes) == files, f"{bundle.name}: run python scripts/sync_bundles.py"
        for rel, digest in hashes.items():
            actual = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
            assert actual == digest, f"{bundle.name}/{rel} changed: run python scripts/sync_bundles.py"


def test_a_flipped_byte_in_a_bundle_weight_file_is_one_line(tmp_path):
    bundle = copy_bundle(SOURCE, tmp_path)
    model = bundle / "models" / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 is"):
        load_state_dict(model)
    inputs = _inputs(tmp_path)
    proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"), *SMALL], tmp_path,
                config=str(bundle / "configs" / "inference.yaml"))
    _one_line(proc, str(model), "was changed or corrupted")
    assert not (tmp_path / "out").exists()


def test_training_writes_the_new_hash_so_the_bundle_accepts_its_own_model(tmp_path):
    bundle = copy_bundle(SOURCE, tmp_path)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in load_state_dict(bundle / "models/model.pt").items()}
    atomic_save(state, bundle / "models" / "model.pt")  # as FinalModelSaver and AdapterSaver save
    load_state_dict(bundle / "models" / "model.pt")  # accepted: its record was updated


def test_a_source_model_replaced_by_a_link_to_other_weights_is_refused(tmp_path):
    from custom.networks import UNet2D

    bundle = copy_bundle(ALL_BUNDLES[1], tmp_path)
    other = tmp_path / "other.pt"
    torch.save(UNet2D().state_dict(), other)
    source = bundle / "models" / "source_model.pt"
    source.unlink()
    source.symlink_to(other)
    with pytest.raises(WeightsError, match="source_model.pt: sha256 is"):
        load_state_dict(source)


def test_exported_bundle_checks_a_linked_weight_file(tmp_path):
    from custom.weights import WeightsHashError, verified

    bundle = copy_bundle(ALL_BUNDLES[1], tmp_path)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "models/source_model.pt" in meta["weights_sha256"]
    other = tmp_path / "other.pt"
    other.write_bytes((bundle / "models" / "model.pt").read_bytes())
    source = bundle / "models" / "source_model.pt"
    source.unlink()
    source.symlink_to(other)
    with pytest.raises(WeightsHashError, match="source_model.pt: sha256 is"):
        verified(str(source), str(bundle))


# ---- size and geometry ---------------------------------------------------------------------------------------------

def _limit_memory(gib: float):
    def limit():
        size = int(gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return limit


def test_volumes_too_large_by_their_header_are_refused_before_reading(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    # a header claiming 1100^3 voxels with 4 MB of data
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.header.set_data_shape((1100, 1100, 1100))
    claim = inputs / "claims.nii"
    claim.write_bytes(img.header.binaryblock + b"\0" * 4 + b"\0" * (4 << 20))
    proc = _run(["--dataset_dir", str(claim), "--output_dir", str(tmp_path / "out"), *SMALL], tmp_path,
                preexec=_limit_memory(6))
    _one_line(proc, str(claim), "more than the")
    # a 1 MiB gzip that unpacks to 1 GiB
    bomb = inputs / "bomb.nii.gz"
    big = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    big.header.set_data_shape((1024, 1024, 1024))
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(big.header.binaryblock + b"\0" * 4)
        chunk = b"\0" * (64 << 20)
        for _ in range(16):
            f.write(chunk)
    assert bomb.stat().st_size < 2 << 20
    proc = _run(["--dataset_dir", str(bomb), "--output_dir", str(tmp_path / "out"), *SMALL], tmp_path,
                preexec=_limit_memory(6))
    _one_line(proc, str(bomb), "more than the")
    assert not (tmp_path / "out").exists()


def test_a_singular_affine_is_one_line(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 1] = affine[:3, 0]  # two equal columns
    path = save(inputs / "singular.nii.gz", head()[0], affine)
    proc = _run(["--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"), *SMALL], tmp_path)
    _one_line(proc, str(path), "singular affine")
    assert not (tmp_path / "out").exists()

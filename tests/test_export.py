"""Exported bundles: zip layout and weight hashes, adapter-only bundles, hash checks at load, bad input, TorchScript
and ONNX, and (slow) the exported bundle run from another folder in a clean environment of PyPI packages only."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow, download_large_files, verify_metadata

from custom.adapters import save_adapter
from custom.checkpoints import atomic_save, record_weights
from custom.inference import SliceBatchInferer
from custom.networks import UNet2D
from custom.packaging import export_bundle, main
from custom.weights import HASH_KEY, WeightsHashError, verified, verify_bundle
from tests.bundle_utils import ALL_BUNDLES, FAST, FINETUNE, ROOT, SCHEMA, SOURCE, SPOTTUNE, copy_bundle

SCRIPT = ROOT / "scripts" / "export_bundle.py"
COARSE = {"spacing": FAST["spacing"]}
FIRST = FINETUNE["first"].name
# What a user installs to run an exported bundle (no copy of this repository).
CLEAN_REQUIREMENTS = [
    "torch==2.13.0", "monai[nibabel,itk,ignite,fire,pyyaml,tensorboard]==1.6.1", "scipy", "surface-distance",
]
CLEAN_VENV = ROOT / ".venv-export"  # built once, reused while CLEAN_REQUIREMENTS and Python stay the same
# ONNX Runtime vs PyTorch on CPU: logits differ by ~1e-7, so a voxel whose logit is within that of 0 may flip.
ONNX_MAX_FLIPPED = 1e-4  # fraction of the voxels


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _central_slices(image, n: int = 16) -> torch.Tensor:
    """A preprocessed ``(1, H, W, D)`` volume's ``n`` middle axial slices as a ``(1, 1, H, W, n)`` batch."""
    start = max(image.shape[-1] // 2 - n // 2, 0)
    return image.as_tensor()[None, ..., start : start + n]


# ---- fixtures: bundle copies with made-up weights, a demo volume ---------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory, volume):
    """Copies of the four bundles (so tests never depend on shipped weights): a random source U-Net, and in every
    fine-tuning bundle a model whose first layers and a BatchNorm's statistics moved, with its adapter. The output
    of the fine-tuned model is shifted so that half the voxels of ``volume`` are brain (with random weights, every
    voxel is: comparing such masks would prove little)."""
    root = tmp_path_factory.mktemp("bundles")
    bundles = {b.name: copy_bundle(b, root) for b in ALL_BUNDLES}
    torch.manual_seed(0)
    net = UNet2D()
    source = bundles[SOURCE.name] / "models" / "model.pt"
    atomic_save(net.state_dict(), source)
    state = copy.deepcopy(net.state_dict())
    state["init_path.0.weight"] += 0.05 * torch.randn_like(state["init_path.0.weight"])
    state["down3.0.running_mean"] += 0.1
    net.load_state_dict(state)
    parser = ConfigParser()
    parser.read_config(str(bundles[SOURCE.name] / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(bundles[SOURCE.name]), **COARSE})
    image = _central_slices(parser.get_parsed_content("preprocessing")({"image": str(volume)})["image"])
    with torch.no_grad():
        state["out_path.2.bias"] -= SliceBatchInferer(spatial_dim=2)(image, net.eval()).median()
    net.load_state_dict(state)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(("init_path.0.", "init_path.2.")))
    for strategy, bundle in FINETUNE.items():
        models = bundles[bundle.name] / "models"
        for stale in models.glob("*"):
            stale.unlink()
        atomic_save(net.state_dict(), models / "model.pt")
        shutil.copyfile(source, models / "source_model.pt")
        record_weights(bundles[bundle.name], ["models/source_model.pt"])  # a copy made outside atomic_save
        save_adapter(net, models / "source_model.pt", models / "adapter.pt", strategy)
    for bundle in bundles.values():  # these weights are the copies' "shipped" ones
        meta_file = bundle / "configs" / "metadata.json"
        meta = json.loads(meta_file.read_text())
        meta["shipped_weights_sha256"] = {f"models/{p.name}": sha256(p.read_bytes())
                                          for p in (bundle / "models").glob("*.pt")}
        meta["weights_sha256"] = dict(meta["shipped_weights_sha256"])
        meta_file.write_text(json.dumps(meta, indent=4))
    return {"root": root, "bundles": bundles, "source": source, "tuned": state}


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    from custom.demo_data import make_demo_data

    data = make_demo_data(str(tmp_path_factory.mktemp("demo") / "data"), n_subjects=1, seed=0, verbose=False)
    inputs = tmp_path_factory.mktemp("inputs")
    image = sorted((Path(data) / "Original").glob("*siemens_15*.nii.gz"))[0]
    shutil.copyfile(image, inputs / image.name)
    return inputs / image.name


@pytest.fixture(scope="module")
def exported(repo, tmp_path_factory):
    """The first-layers bundle exported whole and adapter-only, zipped and unzipped."""
    out = tmp_path_factory.mktemp("dist")
    bundle = repo["bundles"][FIRST]
    zips = {"full": export_bundle(bundle, out / "full.zip"),
            "adapter": export_bundle(bundle, out / "adapter.zip", adapter_only=True)}
    folders = {}
    for kind, zipped in zips.items():
        with zipfile.ZipFile(zipped) as zf:
            zf.extractall(out / kind)
        folders[kind] = out / kind / FIRST
    return {"zips": zips, "folders": folders}


@pytest.fixture
def keep_sys_path(monkeypatch):
    """Exported configs put their bundle first on sys.path: undo it after an in-process run."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def run_inference(bundle: Path, inputs: Path, output: Path) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.yaml"), workflow_type="infer",
                              bundle_root=str(bundle), dataset_dir=str(inputs), output_dir=str(output), **COARSE)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


def expressions(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from expressions(v)
    elif isinstance(node, list):
        for v in node:
            yield from expressions(v)
    elif isinstance(node, str) and node.startswith("$"):
        yield node


# ---- layout, metadata, hashes ---------------------------------------------------------------------------------

def test_user_trained_weights_get_their_own_version_and_provenance(repo, tmp_path):
    """Weights other than the shipped ones: a new version, a changelog entry and the training's provenance; the
    docs say the numbers are the shipped version's."""
    from custom.handlers import provenance_path, provenance_record

    bundle = copy_bundle(repo["bundles"]["brain_extraction_last_layers"], tmp_path)
    state = torch.load(bundle / "models/model.pt", weights_only=True)
    state["out_path.1.layer.bias"] += 1.0
    atomic_save(state, bundle / "models/model.pt")
    record = provenance_record({"strategy": "last", "datalist": {"training": [{"image": "a.nii.gz"}]}},
                               bundle / "models/model.pt")
    provenance_path(bundle / "models/model.pt").write_text(json.dumps(record))
    shipped = json.loads((bundle / "configs/metadata.json").read_text())["version"]
    digest = sha256((bundle / "models/model.pt").read_bytes())
    for version, expected in ((None, f"{shipped}+{digest[:8]}"), ("2.0.0+site1", "2.0.0+site1")):
        zipped = export_bundle(bundle, tmp_path / f"{version}.zip", version=version)
        with zipfile.ZipFile(zipped) as zf:
            meta = json.loads(zf.read(f"{bundle.name}/configs/metadata.json"))
            readme = zf.read(f"{bundle.name}/docs/README.md").decode()
        assert meta["version"] == expected and list(meta["changelog"])[0] == expected
        assert "strategy last" in meta["changelog"][expected] and record["datalist"]["sha256"][:12] in \
            meta["changelog"][expected]
        assert meta["provenance"]["based_on"] == shipped and meta["provenance"]["weights_sha256"] == digest
        assert meta["provenance"]["training"]["datalist"] == record["datalist"]
        assert "shipped_weights_sha256" not in meta
        assert readme.startswith(f"> **Version {expected}: weights trained by their user**")
    # the shipped weights keep the shipped version
    zipped = export_bundle(repo["bundles"]["brain_extraction_last_layers"], tmp_path / "shipped.zip")
    with zipfile.ZipFile(zipped) as zf:
        assert json.loads(zf.read("brain_extraction_last_layers/configs/metadata.json"))["version"] == shipped


@pytest.mark.parametrize("name", [b.name for b in ALL_BUNDLES])
def test_zip_layout_and_weight_hashes(repo, name, tmp_path):
    bundle = repo["bundles"][name]
    zipped = export_bundle(bundle, tmp_path / "dist" / f"{name}.zip")
    assert sorted(p.name for p in zipped.parent.iterdir()) == [f"{name}.zip"]  # no temporary file left
    with zipfile.ZipFile(zipped) as zf:
        files = {n[len(name) + 1:]: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
        assert all(n.startswith(f"{name}/") for n in zf.namelist())
    configs = {"inference.yaml", "evaluate.yaml", "train.yaml", "multi_gpu_train.yaml", "logging.conf"}
    assert {f"configs/{c}" for c in configs} | {"LICENSE", "configs/metadata.json"} <= set(files)
    assert {"custom/__init__.py", "custom/weights.py", "custom/networks.py", "custom/transforms.py",
            "custom/adapters.py"} <= set(files)
    # only what the configs use: not the packaging code, nor the other subpackages
    assert not any(n.startswith(("custom/packaging", "custom/reproduction", "custom/demo_data")) for n in files)
    for doc in (p for p in (bundle / "docs").rglob("*") if p.is_file()):
        assert files[f"docs/{doc.relative_to(bundle / 'docs').as_posix()}"] == doc.read_bytes()
    models = {n for n in files if n.startswith("models/")}
    finetune = name != SOURCE.name
    assert models == ({"models/model.pt", "models/source_model.pt"} if finetune else {"models/model.pt"})
    assert files["models/model.pt"] == (bundle / "models" / "model.pt").read_bytes()
    if finetune:
        assert files["models/source_model.pt"] == repo["source"].read_bytes()

    meta = json.loads(files["configs/metadata.json"])
    original = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] == original["version"] and meta["changelog"] == original["changelog"]
    assert meta[HASH_KEY] == {m: sha256(files[m]) for m in sorted(models)}
    meta_file = tmp_path / "metadata.json"
    meta_file.write_bytes(files["configs/metadata.json"])
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))  # raises if the schema rejects it

    for config in configs - {"logging.conf"}:
        text = files[f"configs/{config}"].decode()
        assert "$import custom" not in text
        for expr in expressions(yaml.safe_load(text)):  # every use of the code goes through @custom_code
            assert not re.search(r"(?<![\w.@'\"])custom\.", expr), (config, expr)
    inference = yaml.safe_load(files["configs/inference.yaml"])
    assert inference["initialize"][:2] == ["$@custom_code.bundle_cli.install()",
                                           "$@custom_weights.verify_bundle(@bundle_root)"]
    assert "custom_weights.verified" in inference["model_path"]


@pytest.mark.parametrize("adapter_only", [False, True])
def test_exported_training_keeps_model_path_as_where_it_writes(adapter_only):
    """train.yaml's model_path names the weights training WRITES (inference.yaml's, those it reads): the export checks
    and replaces only the read ones."""
    from custom.packaging.configs import export_config, load_config

    configs = FINETUNE["first"] / "configs"
    train = export_config("train.yaml", load_config(configs / "train.yaml"), adapter_only, finetune=True)
    assert train["model_path"] == "$@ckpt_dir + '/model.pt'"
    (saver,) = [h for h in train["train"]["handlers"] if h["_target_"].endswith("FinalModelSaver")]
    assert saver["path"] == "@model_path"
    assert "custom_weights.verified" in train["source_weights"]
    inference = export_config("inference.yaml", load_config(configs / "inference.yaml"), adapter_only, finetune=True)
    assert ("model_path" not in inference) if adapter_only else ("custom_weights.verified" in inference["model_path"])


def test_code_modules_are_what_the_configs_use_never_the_packaging_code():
    from custom.packaging import code_modules

    def configs(bundle: Path) -> list[str]:
        return [p.read_text() for p in sorted((bundle / "configs").iterdir()) if p.name != "metadata.json"]

    source = code_modules(configs(SOURCE))
    assert {"weights", "networks", "transforms", "bundle_cli", "checkpoints"} <= set(source)
    assert not {"packaging", "spottune", "reproduction", "demo_data"} & set(source)
    assert "spottune" in code_modules(configs(SPOTTUNE))  # a subpackage the configs name ships whole
    assert code_modules(["run: $custom.packaging.export_bundle(...)"]) == ["checkpoints", "weights"]


# ---- adapter-only bundles -------------------------------------------------------------------------------------

def test_adapter_only_bundle_reproduces_the_finetuned_model_and_its_masks(repo, exported, volume, tmp_path,
                                                                        keep_sys_path):
    bundle = exported["folders"]["adapter"]
    assert sorted(p.name for p in (bundle / "models").iterdir()) == ["adapter.pt", "source_model.pt"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["adapter"] == {"path": "models/adapter.pt", "source_weights": "models/source_model.pt",
                               "strategy": "first"}
    assert (exported["zips"]["adapter"].stat().st_size < 0.6 * exported["zips"]["full"].stat().st_size)

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    state = parser.get_parsed_content("network").state_dict()
    assert set(state) == set(repo["tuned"])
    assert all(torch.equal(state[k], repo["tuned"][k]) for k in state)
    # the exported inference keeps the input's geometry, and both exports give the same mask
    name = volume.name.replace(".nii.gz", "_brainmask.nii.gz")
    masks = {}
    for kind in ("full", "adapter"):
        run_inference(exported["folders"][kind], volume.parent, tmp_path / kind)
        mask, source = nib.load(tmp_path / kind / name), nib.load(volume)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4)
        masks[kind] = np.asarray(mask.dataobj)
        assert set(np.unique(masks[kind])) == {0, 1}
    np.testing.assert_array_equal(masks["adapter"], masks["full"])


def test_adapter_only_checks_the_given_finetuned_weights(repo, tmp_path):
    bundle = repo["bundles"][FIRST]
    export_bundle(bundle, tmp_path / "ok.zip", adapter_only=True, weights=bundle / "models" / "model.pt")
    other = copy.deepcopy(repo["tuned"])
    other["out_path.2.bias"] += 1
    atomic_save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="do not reproduce"):
        export_bundle(bundle, tmp_path / "bad.zip", adapter_only=True, weights=tmp_path / "other.pt")
    assert not (tmp_path / "bad.zip").exists()


# ---- hash checks at load --------------------------------------------------------------------------------------

def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind, rel", [("full", "models/model.pt"), ("adapter", "models/adapter.pt"),
                                       ("adapter", "models/source_model.pt")])
def test_tampered_weights_stop_the_run_naming_file_and_hashes(exported, volume, kind, rel, tmp_path, keep_sys_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported["folders"][kind], bundle)
    expected = json.loads((bundle / "configs" / "metadata.json").read_text())[HASH_KEY][rel]
    _flip_a_byte(bundle / rel)
    actual = sha256((bundle / rel).read_bytes())
    with pytest.raises(Exception) as info:
        run_inference(bundle, volume.parent, tmp_path / "out")
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    hash_errors = [e for e in chain if isinstance(e, WeightsHashError)]
    assert hash_errors, chain
    message = str(hash_errors[0])
    assert "\n" not in message and message.startswith(rel) and expected in message and actual in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(WeightsHashError, match=actual):
        verified(bundle / rel, bundle)


def test_hash_checks_pass_for_intact_bundles_and_skip_repository_bundles(exported, repo):
    bundle = exported["folders"]["full"]
    assert set(verify_bundle(bundle)) == {"models/model.pt", "models/source_model.pt"}
    assert verified(bundle / "models" / "model.pt", bundle) == str(bundle / "models" / "model.pt")
    own = repo["bundles"][FIRST]  # the repository's bundles record their weights' hashes too
    assert set(verify_bundle(own)) == {"models/model.pt", "models/adapter.pt", "models/source_model.pt"}
    assert verified(own / "models" / "model.pt", own) == str(own / "models" / "model.pt")


# ---- bad input ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def others(repo, tmp_path_factory):
    """Source weights that differ from the adapter's by one tensor; weights of a narrower U-Net."""
    folder = tmp_path_factory.mktemp("others")
    state = torch.load(repo["source"], weights_only=True)
    state["shortcut0.bias"] += 1
    (folder / "truncated.pt").write_bytes((repo["source"]).read_bytes()[:5000])
    (folder / "junk.pt").write_bytes(b"these bytes are not a weights file")
    return {"other": atomic_save(state, folder / "source.pt"),
            "narrow": atomic_save(UNet2D(n_filters=8).state_dict(), folder / "narrow.pt"),
            "truncated": folder / "truncated.pt", "junk": folder / "junk.pt"}


BAD = {
    "missing bundle": (["--bundle", "{root}/nope"], "no such bundle folder"),
    "missing weights": (["--bundle", "{first}", "--weights", "{root}/missing.pt"], "weights not found"),
    "weights of another network": (["--bundle", "{first}", "--weights", "{narrow}"], "do not fit the bundle's"),
    "not a weights file": (["--bundle", "{first}", "--weights", "{first}/models/adapter.pt"], "not hold a model"),
    "truncated weights": (["--bundle", "{first}", "--weights", "{truncated}"], "not a readable tensor-only weights"),
    "bytes that are no weights": (["--bundle", "{first}", "--weights", "{junk}"], "not a readable tensor-only"),
    "adapter for other source weights": (["--bundle", "{first}", "--adapter_only", "true", "--source_weights",
                                          "{other}"], "made for source weights with sha256"),
    "adapter-only source bundle": (["--bundle", "{source}", "--adapter_only", "true"], "no adapter"),
    "unknown option": (["--bundle", "{first}", "--bogus", "1"], "unknown option --bogus"),
    "stray argument": (["{first}"], "unexpected argument"),
    "bad flag value": (["--bundle", "{first}", "--onnx", "maybe"], "--onnx expects true or false"),
    "existing output": (["--bundle", "{first}"], "already exists"),
    "large file without url": (["--bundle", "{first}", "--large_file_mb", "1"], "give --url_base"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, repo, others, tmp_path, capsys):
    args, expected = BAD[case]
    paths = {"root": tmp_path, "first": repo["bundles"][FIRST], "source": repo["bundles"][SOURCE.name], **others}
    output = tmp_path / "dist" / "out.zip"
    if case == "existing output":
        output.parent.mkdir()
        output.write_text("an earlier export")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as info:
        main([a.format(**paths) for a in args] + ["--output", str(output)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("export_bundle: error: ") and expected in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing left behind
    if case == "existing output":
        assert output.read_text() == "an earlier export"


def test_command_line_script(repo, tmp_path):
    env = {**os.environ, "PYTHONPATH": ""}
    bad = subprocess.run([sys.executable, str(SCRIPT), "--bundle", str(repo["bundles"][FIRST]), "--output",
                          str(tmp_path / "x.zip"), "--nope", "1"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and bad.stderr == "export_bundle: error: unknown option --nope\n"
    assert not list(tmp_path.iterdir())


# ---- large files ----------------------------------------------------------------------------------------------

def test_large_weight_files_go_to_large_files_yml(repo, tmp_path, keep_sys_path):
    output = tmp_path / "dist" / "first.zip"
    url_base = (tmp_path / "dist" / "first_large_files").as_uri()
    export_bundle(repo["bundles"][FIRST], output, large_file_mb=1, url_base=url_base)
    large = tmp_path / "dist" / "first_large_files"
    with zipfile.ZipFile(output) as zf:
        names = zf.namelist()
        entries = yaml.safe_load(zf.read(f"{FIRST}/large_files.yml"))["large_files"]
        meta = json.loads(zf.read(f"{FIRST}/configs/metadata.json"))
        zf.extractall(tmp_path / "unzipped")
    assert not [n for n in names if "/models/" in n]
    assert entries == [{"path": rel, "url": f"{url_base}/{rel}", "hash_val": meta[HASH_KEY][rel],
                        "hash_type": "sha256"} for rel in ("models/model.pt", "models/source_model.pt")]
    for entry in entries:
        assert sha256((large / entry["path"]).read_bytes()) == entry["hash_val"]
    bundle = tmp_path / "unzipped" / FIRST
    with pytest.raises(WeightsHashError, match="download_large_files"):
        verify_bundle(bundle)
    download_large_files(bundle_path=str(bundle))  # MONAI's own download, checking each hash
    assert set(verify_bundle(bundle)) == {"models/model.pt", "models/source_model.pt"}
    # --overwrite replaces both the zip and the large files
    export_bundle(repo["bundles"][FIRST], output, large_file_mb=1, url_base=url_base, overwrite=True)
    assert sorted(p.name for p in output.parent.iterdir()) == ["first.zip", "first_large_files"]


# ---- TorchScript and ONNX -------------------------------------------------------------------------------------

def test_torchscript_and_onnx_give_the_same_masks(repo, volume, tmp_path, keep_sys_path):
    import onnxruntime

    zipped = export_bundle(repo["bundles"][FIRST], tmp_path / "ts.zip", torchscript=True, onnx=True)
    with zipfile.ZipFile(zipped) as zf:
        zf.extractall(tmp_path)
    bundle = tmp_path / FIRST
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    for rel in ("models/model.ts", "models/model.onnx"):
        assert meta[HASH_KEY][rel] == sha256((bundle / rel).read_bytes())

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(bundle), **COARSE})
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    image = _central_slices(parser.get_parsed_content("preprocessing")({"image": str(volume)})["image"])
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    session = onnxruntime.InferenceSession(str(bundle / "models" / "model.onnx"), providers=["CPUExecutionProvider"])

    def onnx_net(x):
        return torch.from_numpy(session.run(None, {"image": np.ascontiguousarray(x.numpy())})[0])

    inferer = SliceBatchInferer(spatial_dim=2, batch_size=32)
    with torch.no_grad():
        logits = {k: inferer(image, net) for k, net in
                  (("eager", eager.eval()), ("torchscript", scripted.eval()), ("onnx", onnx_net))}
    masks = {k: v > 0 for k, v in logits.items()}  # sigmoid > 0.5
    assert 0.3 < masks["eager"].float().mean() < 0.7  # both classes: not a degenerate comparison
    assert torch.equal(masks["torchscript"], masks["eager"])
    flipped = (masks["onnx"] != masks["eager"]).float().mean().item()
    assert flipped <= ONNX_MAX_FLIPPED, flipped
    print(f"ONNX: {flipped:.2e} of {masks['eager'].numel()} voxels differ, "
          f"max |logit difference| {(logits['onnx'] - logits['eager']).abs().max():.2e}")
    assert (logits["onnx"] - logits["eager"]).abs().max() < 1e-3


# ---- a clean environment: PyPI packages only, another working directory ---------------------------------------

def clean_venv() -> Path:
    """``.venv-export/env``: a virtual environment of CLEAN_REQUIREMENTS only, built once (about 2 minutes)."""
    CLEAN_VENV.mkdir(exist_ok=True)
    ignore = CLEAN_VENV / ".gitignore"
    if not ignore.is_file():  # a cache, never committed (as .pytest_cache does)
        ignore.write_text("# the clean environment of tests/test_export.py\n*\n")
    env_dir, stamp = CLEAN_VENV / "env", CLEAN_VENV / "env" / ".installed"
    wanted = json.dumps({"python": sys.version.split()[0], "requirements": CLEAN_REQUIREMENTS})
    with open(CLEAN_VENV / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time
        if not (stamp.is_file() and stamp.read_text() == wanted):
            shutil.rmtree(env_dir, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
            subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", *CLEAN_REQUIREMENTS],
                           check=True, timeout=1800)
            stamp.write_text(wanted)
    return env_dir / "bin" / "python"


def clean_env() -> dict:
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONNOUSERSITE": "1"}


@pytest.mark.slow
def test_clean_environment_runs_the_exported_bundle_from_another_folder(repo, volume, tmp_path):
    python = clean_venv()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = subprocess.run([str(python), "-c", "import custom"], cwd=elsewhere, env=clean_env(), capture_output=True)
    assert check.returncode != 0, "the clean environment must not see this repository's code"

    bundles = {}
    for kind, extra in (("full", []), ("adapter", ["--adapter_only", "true"])):
        zipped = tmp_path / "dist" / f"{kind}.zip"
        done = subprocess.run([sys.executable, str(SCRIPT), "--bundle", str(repo["bundles"][FIRST]), "--output",
                               str(zipped), *extra], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        with zipfile.ZipFile(zipped) as zf:
            zf.extractall(tmp_path / kind)
        bundles[kind] = tmp_path / kind / FIRST

    def infer(bundle: Path, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.yaml"),
             "--bundle_root", str(bundle), "--dataset_dir", str(volume.parent), "--output_dir", str(out),
             "--spacing", json.dumps(COARSE["spacing"])],
            cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=600)

    name = volume.name.replace(".nii.gz", "_brainmask.nii.gz")
    masks = {}
    for kind, bundle in bundles.items():
        done = infer(bundle, tmp_path / f"out_{kind}")
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        mask, source = nib.load(tmp_path / f"out_{kind}" / name), nib.load(volume)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4)
        masks[kind] = np.asarray(mask.dataobj)
        assert set(np.unique(masks[kind])) == {0, 1}
    np.testing.assert_array_equal(masks["adapter"], masks["full"])

    # TorchScript export of the unzipped bundle with MONAI's command line, in the same clean environment
    ts = tmp_path / "model.ts"
    bundle = bundles["full"]
    done = subprocess.run(
        [str(python), "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
         str(bundle / "models" / "model.pt"), "--meta_file", str(bundle / "configs" / "metadata.json"),
         "--config_file", str(bundle / "configs" / "inference.yaml"), "--bundle_root", str(bundle)],
        cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and ts.is_file(), (done.stdout + done.stderr)[-3000:]

    # model-zoo CI's checks, through MONAI's API in the clean environment: the network's declared input/output and
    # the required properties of the train, infer and evaluate workflows
    zoo = textwrap.dedent("""
        import sys
        from monai.bundle import ConfigWorkflow, verify_net_in_out
        b, datalist, scans = sys.argv[1], sys.argv[2], sys.argv[3]
        meta = b + "/configs/metadata.json"
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=b + "/configs/inference.yaml",
                          bundle_root=b, n=4)
        for files, kind in ((["train"], "train"), (["inference"], "infer"), (["inference", "evaluate"], "infer")):
            w = ConfigWorkflow(config_file=[f"{b}/configs/{f}.yaml" for f in files], meta_file=meta,
                               workflow_type=kind, bundle_root=b, datalist_file=datalist, dataset_dir=scans,
                               spacing=[4.0, 3.8, 3.8])
            w.initialize()
            assert w.check_properties() == [], (files, w.check_properties())
        print("zoo checks passed")
    """)
    mask = tmp_path / "mask.nii.gz"
    image = nib.load(volume)
    data = np.asanyarray(image.dataobj)
    nib.save(nib.Nifti1Image((data > np.median(data)).astype(np.uint8), image.affine), mask)
    entry = {"image": str(volume), "label": str(mask), "id": "s1", "domain": "test"}
    datalist = tmp_path / "zoo_datalist.json"
    datalist.write_text(json.dumps({"training": [entry], "validation": [entry], "test": [entry]}))
    for exported in bundles.values():
        done = subprocess.run([str(python), "-c", zoo, str(exported), str(datalist), str(volume.parent)], cwd=elsewhere,
                              env=clean_env(),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "zoo checks passed" in done.stdout, (done.stdout + done.stderr)[-3000:]

    # a changed weight file: the run stops, with one line naming the file and both hashes
    expected = json.loads((bundle / "configs" / "metadata.json").read_text())[HASH_KEY]["models/model.pt"]
    _flip_a_byte(bundle / "models" / "model.pt")
    actual = sha256((bundle / "models" / "model.pt").read_bytes())
    done = infer(bundle, tmp_path / "out_tampered")
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if expected in line and actual in line]
    assert lines and all("models/model.pt" in line for line in lines), (done.stdout + done.stderr)[-3000:]
    assert not (tmp_path / "out_tampered").exists()


def test_spottune_bundle_exports_whole_and_adapter_only(volume, tmp_path, keep_sys_path):
    """The SpotTUnet bundle's shipped weights: the adapter-only export rebuilds them from the source weights (a U-Net,
    mapped onto both copies of every block) and the adapter, ships custom.spottune, and gives the same masks."""
    bundle = copy_bundle(SPOTTUNE, tmp_path / "repo")
    shipped = torch.load(bundle / "models" / "model.pt", weights_only=True)
    out = tmp_path / "dist"
    zips = {"full": export_bundle(bundle, out / "full.zip"),
            "adapter": export_bundle(bundle, out / "adapter.zip", adapter_only=True)}
    masks = {}
    for kind, zipped in zips.items():
        with zipfile.ZipFile(zipped) as zf:
            assert f"{SPOTTUNE.name}/custom/spottune/network.py" in zf.namelist()
            zf.extractall(out / kind)
        folder = out / kind / SPOTTUNE.name
        parser = ConfigParser()
        parser.read_config(str(folder / "configs" / "inference.yaml"))
        parser.update({"bundle_root": str(folder), "device": "$torch.device('cpu')"})
        state = parser.get_parsed_content("network").state_dict()
        assert set(state) == set(shipped) and all(torch.equal(state[k], shipped[k]) for k in state)
        run_inference(folder, volume.parent, tmp_path / kind)
        mask = tmp_path / kind / volume.name.replace(".nii.gz", "_brainmask.nii.gz")
        masks[kind] = np.asarray(nib.load(mask).dataobj)
    np.testing.assert_array_equal(masks["adapter"], masks["full"])

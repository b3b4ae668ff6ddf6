"""Write the files the fine-tuning bundles share with the source bundle, from their one definition.

The source bundle (``bundles/brain_extraction_source``) defines inference, evaluation, multi-process training,
logging, the license and the source weights; ``scripts/bundle_templates/finetune_train.yaml`` defines fine-tuning.
Every bundle's metadata records the sha256 of the weights it ships (``shipped_weights_sha256``) and of the weights
it holds (``weights_sha256``, checked before each use): after replacing the shipped weights, run this script.
Each fine-tuning bundle differs only in its ``strategy`` (``FINETUNE_BUNDLES`` below) and its own metadata, docs
and fine-tuned weights. The SpotTUnet bundle (``SPOTTUNE_BUNDLE``) takes its training from
``scripts/bundle_templates/spottune_train.yaml`` and the source's inference with its network swapped
(``NETWORK_SWAP``). Every bundle folder is self-contained (real files, no links): copied alone it can train,
evaluate and infer, and MONAI Label or the model zoo can take it as it is.

Usage::

    python scripts/sync_bundles.py           # rewrite what is out of date
    python scripts/sync_bundles.py --check   # exit 1 and list what is out of date (the tests run this)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SOURCE = BUNDLES / "brain_extraction_source"
TEMPLATE = Path(__file__).resolve().parent / "bundle_templates" / "finetune_train.yaml"
FINETUNE_BUNDLES = {
    "brain_extraction_first_layers": "first",
    "brain_extraction_last_layers": "last",
    "brain_extraction_full": "full",
}
SPOTTUNE_BUNDLE = "brain_extraction_spottune"
SPOTTUNE_TEMPLATE = TEMPLATE.with_name("spottune_train.yaml")
NETWORK_SWAP = ("  _target_: custom.networks.UNet2D\n", "  _target_: custom.spottune.SpotTUNet\n")  # inference.yaml
SHARED = ("configs/inference.yaml", "configs/evaluate.yaml", "configs/multi_gpu_train.yaml", "configs/logging.conf")
COPIED = ("LICENSE", "docs/data_license.txt")
SOURCE_WEIGHTS = ("models/model.pt", "models/source_model.pt")
PLACEHOLDER = "strategy: {strategy}"
WEIGHTS = ("models/model.pt", "models/adapter.pt", "models/source_model.pt")
SHIPPED_KEY = "shipped_weights_sha256"  # custom.packaging: weights with other hashes were trained by their user
HASH_KEY = "weights_sha256"  # the weights the bundle holds: every load checks them, its own training re-records them


def _generated_header(origin: str) -> str:
    return f"# Generated from {origin} by scripts/sync_bundles.py: edit that file, then run the script.\n"


def expected_files() -> dict[Path, bytes]:
    """Every generated file and the bytes it must hold."""
    template = TEMPLATE.read_text()
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(f"{TEMPLATE}: needs exactly one line {PLACEHOLDER!r}")
    out: dict[Path, bytes] = {}
    trains = {name: ("finetune_train.yaml", template.replace(PLACEHOLDER, f"strategy: {strategy}"))
              for name, strategy in FINETUNE_BUNDLES.items()}
    trains[SPOTTUNE_BUNDLE] = (SPOTTUNE_TEMPLATE.name, SPOTTUNE_TEMPLATE.read_text())
    for name, (origin, train) in trains.items():
        bundle = BUNDLES / name
        header = _generated_header(f"scripts/bundle_templates/{origin}")
        out[bundle / "configs" / "train.yaml"] = (header + train).encode()
        for rel in SHARED:
            text = (SOURCE / rel).read_text()
            if name == SPOTTUNE_BUNDLE and rel == "configs/inference.yaml":
                if text.count(NETWORK_SWAP[0]) != 1:
                    raise ValueError(f"{SOURCE / rel}: needs exactly one line {NETWORK_SWAP[0].strip()!r}")
                text = text.replace(*NETWORK_SWAP)
            out[bundle / rel] = (_generated_header(f"bundles/{SOURCE.name}/{rel}") + text).encode()
        for rel in COPIED:
            out[bundle / rel] = (SOURCE / rel).read_bytes()
        out[bundle / SOURCE_WEIGHTS[1]] = (SOURCE / SOURCE_WEIGHTS[0]).read_bytes()
    for bundle in [SOURCE, *(BUNDLES / name for name in trains)]:
        weights = {rel: out.get(bundle / rel) or (bundle / rel).read_bytes() for rel in WEIGHTS
                   if bundle / rel in out or (bundle / rel).is_file()}
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        meta[SHIPPED_KEY] = {rel: hashlib.sha256(data).hexdigest() for rel, data in weights.items()}
        meta[HASH_KEY] = dict(meta[SHIPPED_KEY])  # checked before every use of a weight file (custom.checkpoints)
        out[bundle / "configs" / "metadata.json"] = (json.dumps(meta, indent=4, ensure_ascii=False) + "\n").encode()
    return out


def stale() -> list[Path]:
    """The generated files that are missing, links, or differ from what their definition gives."""
    return [p for p, data in expected_files().items() if p.is_symlink() or not p.is_file() or p.read_bytes() != data]


def sync() -> list[Path]:
    """Rewrite the stale files; returns them."""
    from custom.checkpoints import atomic_write

    changed = stale()
    files = expected_files()
    for path in changed:
        if path.is_symlink():
            path.unlink()
        data = files[path]
        atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data),
                     verify=lambda tmp, data=data: Path(tmp).read_bytes() == data)
    return changed


def main(check: bool = False) -> None:
    """Rewrite the fine-tuning bundles' shared files (``--check``: only list what is out of date, exit 1 if any)."""
    paths = stale() if check else sync()
    for p in paths:
        print(f"sync_bundles: {'out of date' if check else 'wrote'} {p.relative_to(ROOT)}")
    if check and paths:
        print("sync_bundles: run `python scripts/sync_bundles.py`", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    import fire

    from custom.options import refuse_unknown_options

    fire.Fire(main, command=refuse_unknown_options(main, None, "sync_bundles: error: "), name="sync_bundles")

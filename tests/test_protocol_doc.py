"""docs/PROTOCOL.md agrees with the code: every row of its settings table holds the value the bundles' YAML defaults
and the profiles' overrides give (demo values are read from the DEMO profile, never written here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from custom import splits
from custom.reproduction import profiles

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PROTOCOL.md"
CONFIGS = ROOT / "bundles" / "brain_extraction_source" / "configs"
FINETUNE = ROOT / "bundles" / "brain_extraction_first_layers" / "configs"

# row key -> (profile kind, bundle config files, config id)
SETTINGS = {
    "orientation": ("baseline", [CONFIGS / "train.yaml"], "orientation"),
    "inference orientation": ("evaluate", [CONFIGS / "inference.yaml", CONFIGS / "evaluate.yaml"], "orientation"),
    "spacing": ("baseline", [CONFIGS / "train.yaml"], "spacing"),
    "mask_interpolation": ("baseline", [CONFIGS / "train.yaml"], "mask_interpolation"),
    "evaluation mask_interpolation": ("evaluate", [CONFIGS / "inference.yaml", CONFIGS / "evaluate.yaml"],
                                      "mask_interpolation"),
    "roi_size": ("baseline", [CONFIGS / "train.yaml"], "roi_size"),
    "crop_mode": ("baseline", [CONFIGS / "train.yaml"], "crop_mode"),
    "precision": ("baseline", [CONFIGS / "train.yaml"], "precision"),
    "baseline max_epochs": ("baseline", [CONFIGS / "train.yaml"], "max_epochs"),
    "baseline lr_decay_epoch": ("baseline", [CONFIGS / "train.yaml"], "lr_decay_epoch"),
    "baseline iterations_per_epoch": ("baseline", [CONFIGS / "train.yaml"], "iterations_per_epoch"),
    "baseline batch_size": ("baseline", [CONFIGS / "train.yaml"], "batch_size"),
    "baseline learning_rate": ("baseline", [CONFIGS / "train.yaml"], "learning_rate"),
    "finetune max_epochs": ("finetune", [FINETUNE / "train.yaml"], "max_epochs"),
    "finetune lr_decay_epoch": ("finetune", [FINETUNE / "train.yaml"], "lr_decay_epoch"),
    "finetune iterations_per_epoch": ("finetune", [FINETUNE / "train.yaml"], "iterations_per_epoch"),
    "finetune batch_size": ("finetune", [FINETUNE / "train.yaml"], "batch_size"),
    "finetune learning_rate": ("finetune", [FINETUNE / "train.yaml"], "learning_rate"),
    "freeze_bn_stats": ("finetune", [FINETUNE / "train.yaml"], "freeze_bn_stats"),
    "surface Dice tolerance (mm)": ("evaluate", [CONFIGS / "inference.yaml", CONFIGS / "evaluate.yaml"],
                                    "key_metric#surface_dice#tolerance"),
}


def render(value) -> str:
    if isinstance(value, list | tuple):
        return " x ".join(render(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting(profile: profiles.Profile, key: str) -> str:
    from monai.bundle import ConfigParser

    kind, files, config_id = SETTINGS[key]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(profiles.profile_overrides(profile, kind))
    return render(parser.get_parsed_content(config_id))


def profile_values(profile: profiles.Profile) -> dict[str, str]:
    values = {key: setting(profile, key) for key in SETTINGS}
    values["validation scans per source"] = render(profile.n_val)
    values["validation scans per oracle fold"] = render(
        __import__("inspect").signature(splits.oracle).parameters["n_val"].default)
    values["split seed"] = hex(profile.split_seed)
    return values


def doc_rows() -> dict[str, dict[str, str]]:
    """The settings table: ``| key | item | authors | paper | set by | demo |`` rows, keyed by the first cell."""
    text = DOC.read_text()
    table = text[text.index("<!-- settings -->"):text.index("<!-- /settings -->")]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("key", "") or set(cells[0]) <= set("-: "):
            continue
        rows[cells[0]] = dict(zip(("item", "authors", "paper", "set_by", "demo"), cells[1:], strict=True))
    return rows


def test_the_protocol_document_is_in_the_repository_and_cited_by_path():
    assert DOC.is_file()
    for path in [*ROOT.glob("custom/**/*.py"), *ROOT.glob("scripts/*.py"), ROOT / "README.md"]:
        for match in re.finditer(r"(\S*)PROTOCOL\.md", path.read_text()):
            assert match.group(1).endswith("docs/"), f"{path.name} cites {match.group(0)}"


@pytest.fixture(scope="module")
def rows():
    return doc_rows()


def test_every_setting_has_a_row(rows):
    assert set(profile_values(profiles.PAPER)) <= set(rows), set(profile_values(profiles.PAPER)) - set(rows)


@pytest.mark.parametrize("profile", ["paper", "demo"])
def test_rows_hold_the_profiles_values(rows, profile):
    values = profile_values(profiles.PROFILES[profile])
    wrong = {k: (rows[k][profile], v) for k, v in values.items() if rows[k][profile] != v}
    assert not wrong, f"docs/PROTOCOL.md (documented, actual) for --profile {profile}: {wrong}"


def test_the_paper_profile_has_the_authors_values(rows):
    values = profile_values(profiles.PAPER)
    assert {k: rows[k]["authors"] for k in values} == values
    assert profiles.shortened(profiles.PAPER) == []


def test_set_by_names_the_config_key(rows):
    for key, (_, _, config_id) in SETTINGS.items():
        assert config_id.split("#")[0] in rows[key]["set_by"], key

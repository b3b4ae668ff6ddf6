"""The README's MONAI Label commands, run exactly as written (only the study folder and the port filled in).

They run in a fresh folder that holds what a checkout holds (``bundles/``, the built ``.venv-label``), through
``bash``, with the MONAI Label environment activated by the README's own first line. The server must come up on
loopback only, list the five bundles and return a mask for a real head.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.label_server import _multipart, free_port, label_python

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("brain_extraction_source", "brain_extraction_first_layers", "brain_extraction_last_layers",
           "brain_extraction_full", "brain_extraction_spottune")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not label_python().exists(), reason="MONAI Label environment not built (make label-setup)"),
]


def readme_label_commands() -> str:
    """The bash block of the README's "MONAI Label" section, line continuations kept."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## MONAI Label\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the MONAI Label section should hold one bash block"
    return blocks[0]


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def test_commands_name_the_five_bundles_and_loopback():
    commands = readme_label_commands()
    assert "--host 127.0.0.1" in commands
    for name in BUNDLES:
        assert name in commands
    assert commands.startswith(". .venv-label/bin/activate")


def test_readme_commands_serve_the_bundles_as_written(tmp_path):
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv-label").symlink_to(ROOT / ".venv-label")  # the environment `make label-setup` built
    shutil.copytree(ROOT / "bundles", work / "bundles",
                    ignore=shutil.ignore_patterns("runs", "eval", "__pycache__"))
    studies = tmp_path / "studies"
    studies.mkdir()
    head = nib.load(ROOT / "custom" / "resources" / "colin27_t1.nii.gz")
    middle = head.shape[2] // 2
    nib.save(head.slicer[:, :, middle - 12 : middle + 12], studies / "colin27.nii.gz")  # 24 axial slices: fast

    port = free_port()
    script = readme_label_commands().replace("<folder of volumes>", str(studies))
    script = script.replace("--port 8000", f"--port {port}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in p + "/")
    env.setdefault("OMP_NUM_THREADS", "2")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        info = None
        while time.monotonic() < deadline and info is None:
            assert proc.poll() is None, f"the README's commands exited early:\n{log.read_text()[-3000:]}"
            try:
                info = json.loads(_get(f"{url}/info/"))
            except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError):
                time.sleep(1)
        assert info is not None, f"no server on port {port}:\n{log.read_text()[-3000:]}"
        assert set(BUNDLES) <= set(info["models"])
        served = work / "apps" / "monaibundle" / "model"
        assert (served / "brain_extraction_full" / "models" / "source_model.pt").is_file()
        assert _listening_addresses(port) == {"127.0.0.1"}

        body, content_type = _multipart({"params": "{}"}, {})
        request = urllib.request.Request(f"{url}/infer/brain_extraction_source?image=colin27&output=image",
                                         method="POST", data=body, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=300) as r:
            (tmp_path / "mask.nii.gz").write_bytes(r.read())
        mask = nib.load(tmp_path / "mask.nii.gz")
        assert mask.shape == (*head.shape[:2], 24)
        assert np.allclose(mask.affine, head.slicer[:, :, middle - 12 : middle + 12].affine, atol=1e-4)
        values = np.unique(np.asarray(mask.dataobj))
        assert set(values.tolist()) == {0, 1}, values  # a real mask: brain and background
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

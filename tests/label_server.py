"""Run a MONAI Label server (the ``monaibundle`` sample app) on loopback, for tests and demos.

Standard library only, so the core environment needs nothing extra; the server itself runs in the separate
MONAI Label environment (``.venv-label/``, built from ``requirements-label.txt``).

    with LabelServer(None, studies_dir, [bundle_dir]) as server:
        mask = server.infer(bundle_dir.name, "sub01")        # path of the returned NIfTI
        server.put_label("sub01", "sub01_mask.nii.gz")       # becomes a training pair
        server.train(bundle_dir.name, max_epochs=1, val_split=-1)
        server.wait_train(timeout=600)                       # raises if the training failed

What the server does with its inputs:

* ``app_dir`` receives a copy of the installed ``monaibundle`` app; each bundle is copied to
  ``<app_dir>/model/<name>/``, so training rewrites ``models/model.pt`` in that copy, never in the source.
* ``studies_dir`` is the datastore: the server adds ``datastore_v2.json``, ``.lock`` and
  ``labels/{final,original}/`` to it. Images are the ``*.nii.gz`` / ``*.nii`` files at its top level; the id of
  ``sub01.nii.gz`` is ``sub01``.
* It runs offline: ``--conf zoo_source github`` (the default source fetches the model-zoo index even for local
  bundles) and ``--conf sam2 false`` (otherwise the app downloads SAM2 weights at start-up). It listens on
  127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ENV_PYTHON", "ROOT", "LabelServer", "LabelServerError", "free_port", "label_python"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV_PYTHON = ".venv-label/bin/python"
APP_NAME = "monaibundle"
# What `monailabel apps --download` leaves out when it copies a sample app.
_APP_IGNORE = shutil.ignore_patterns("logs", "model", "__pycache__")


class LabelServerError(RuntimeError):
    """The server failed to start, or a request to it failed; the message ends with the server log tail."""


def label_python(env_python: str | os.PathLike = DEFAULT_ENV_PYTHON) -> Path:
    """The MONAI Label interpreter; a relative path is taken from the repository root.

    The path is made absolute but not resolved: resolving a venv's ``bin/python`` symlink would start the base
    interpreter outside the virtual environment.
    """
    p = Path(env_python).expanduser()
    return p if p.is_absolute() else ROOT / p


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(fields: Mapping[str, str], files: Mapping[str, Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _suffix(filename: str) -> str:
    name = filename.lower()
    for ext in (".nii.gz", ".nii", ".seg.nrrd", ".nrrd"):
        if name.endswith(ext):
            return ext
    return Path(filename).suffix or ".nii.gz"


class LabelServer:
    """Context manager around ``monailabel start_server`` with the ``monaibundle`` app.

    Args:
        app_dir: where the app is built; ``None`` makes a temporary folder that is removed on exit. A folder that
            already holds the app's ``main.py`` is reused as is (its ``model/`` bundles included).
        studies_dir: the datastore folder (see the module docstring for what the server writes into it).
        models: bundle folders (a folder with ``configs/``; copied to ``<app_dir>/model/<folder name>/``,
            replacing an earlier copy) or names of bundles already in ``<app_dir>/model/``.
        port: TCP port on 127.0.0.1; ``None`` picks a free one.
        env_python: the MONAI Label interpreter; relative paths start at the repository root.
        conf: extra ``--conf key value`` pairs for the app (e.g. ``{"preload": "true"}``).
        env: extra environment variables for the server and its training runs (e.g. ``{"OMP_NUM_THREADS": "1"}``).
        startup_timeout: seconds to wait for ``GET /info/`` to answer.
        request_timeout: default seconds for one HTTP request (inference, uploads).
    """

    def __init__(
        self,
        app_dir: str | os.PathLike | None,
        studies_dir: str | os.PathLike,
        models: Iterable[str | os.PathLike],
        port: int | None = None,
        env_python: str | os.PathLike = DEFAULT_ENV_PYTHON,
        conf: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 180.0,
        request_timeout: float = 600.0,
    ):
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.app_dir = Path(app_dir).absolute() if app_dir is not None else None
        self.studies_dir = Path(studies_dir).absolute()
        self._models = [Path(m) if isinstance(m, os.PathLike) else m for m in models]
        if not self._models:
            raise ValueError("LabelServer needs at least one bundle")
        self._requested_port = port
        self.port: int | None = None
        self.python = label_python(env_python)
        self.conf = dict(conf or {})
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.model_names: list[str] = []
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._train_id: str | None = None
        self._results: Path | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self.port is None:
            raise LabelServerError("the server is not started")
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LabelServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> LabelServer:
        try:
            return self._start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise

    def prepare(self) -> LabelServer:
        """Build the app folder and copy the bundles into it, without starting the server.

        ``start()`` does this itself; call it first to adjust the served copies (``model_dir(name)``) before the
        server reads them. Runs once: a later ``prepare()`` or ``start()`` keeps those copies as they are. On an
        error, or when the server is never started, ``close()`` still removes a temporary app folder.
        """
        if self.model_names:
            return self
        if not self.python.exists():
            raise LabelServerError(f"MONAI Label interpreter not found: {self.python} (build .venv-label first)")
        if not self.studies_dir.is_dir():
            raise LabelServerError(f"studies folder not found: {self.studies_dir}")
        if self.app_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="monailabel-")
            self.app_dir = Path(self._tmp.name) / APP_NAME
        self._prepare_app()
        self.model_names = [self._install_bundle(m) for m in self._models]
        return self

    @property
    def pid(self) -> int | None:
        """The server's process id (also the id of its process group, which holds its training runs)."""
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> LabelServer:
        self.prepare()
        assert self.app_dir is not None
        self._results = self.app_dir / "results"
        self._results.mkdir(exist_ok=True)
        self.log_path = self.app_dir / "logs" / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            self.port = self._requested_port if self._requested_port is not None else free_port()
            self._launch()
            try:
                self._wait_ready()
                return self
            except LabelServerError:
                port_taken = "address already in use" in self.log_tail(40).lower()
                self._terminate()
                if not port_taken or attempt == attempts - 1:
                    raise
        return self

    def close(self) -> None:
        """Stop the server and everything it started (training runs are its children), then clean up."""
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.model_names = []  # the copies are gone: a later start() prepares them again

    def _prepare_app(self) -> None:
        assert self.app_dir is not None
        if (self.app_dir / "main.py").exists():
            return
        # `monailabel apps --download` only copies <sys.prefix>/monailabel/sample-apps/<name> (no network);
        # copying it directly saves the ~10 s the CLI spends importing monailabel.
        installed = self.python.parent.parent / "monailabel" / "sample-apps" / APP_NAME
        self.app_dir.parent.mkdir(parents=True, exist_ok=True)
        if installed.is_dir():
            shutil.copytree(installed, self.app_dir, ignore=_APP_IGNORE, dirs_exist_ok=True)
            return
        with tempfile.TemporaryDirectory(prefix="monailabel-app-") as staging:
            cmd = [
                str(self.python),
                "-m",
                "monailabel.main",
                "apps",
                "--download",
                "--name",
                APP_NAME,
                "--output",
                staging,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=self._env())
            if res.returncode != 0 or not (Path(staging) / APP_NAME / "main.py").exists():
                raise LabelServerError(f"could not copy the {APP_NAME} app:\n{res.stdout}\n{res.stderr}")
            shutil.copytree(Path(staging) / APP_NAME, self.app_dir, dirs_exist_ok=True)

    def _install_bundle(self, model: str | Path) -> str:
        assert self.app_dir is not None
        model_root = self.app_dir / "model"
        model_root.mkdir(parents=True, exist_ok=True)
        src = Path(model)
        if src.is_dir() and (src / "configs").is_dir():
            dest = model_root / src.name
            if src.absolute() != dest.absolute():
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "eval", "logs"))
            return src.name
        name = str(model)
        if os.sep in name or not (model_root / name / "configs").is_dir():
            raise LabelServerError(f"bundle {name!r} is neither a bundle folder nor in {model_root}")
        return name

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The server must see only its own environment: no core-venv paths, no half-set CUDA settings.
        for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(key, None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def _launch(self) -> None:
        assert self.app_dir is not None and self.log_path is not None
        conf = {"models": ",".join(self.model_names), "zoo_source": "github", "sam2": "false"}
        conf.update(self.conf)
        cmd = [
            str(self.python),
            "-m",
            "monailabel.main",
            "start_server",
            "--app",
            str(self.app_dir),
            "--studies",
            str(self.studies_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        for key, value in conf.items():
            cmd += ["--conf", key, str(value)]
        self._log_file = open(self.log_path, "ab")  # closed in _terminate
        self._log_file.write(f"\n$ {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.app_dir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: close() takes the training children down too
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise LabelServerError(f"MONAI Label server exited with code {code} during start-up{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/info/", timeout=5) as r:
                    if r.status == 200:
                        json.loads(r.read())
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
                pass
            time.sleep(0.5)
        raise LabelServerError(
            f"MONAI Label server did not answer /info/ within {self.startup_timeout:.0f} s{self._tail()}"
        )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # start_new_session=True made the server the leader of group proc.pid; training runs are members.
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 5
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ------------------------------------------------------------------ logs
    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _tail(self, lines: int = 60) -> str:
        tail = self.log_tail(lines)
        return f"\n--- server log ({self.log_path}), last {lines} lines ---\n{tail}" if tail else ""

    # ------------------------------------------------------------------ HTTP
    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        url = f"{self.url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        req = urllib.request.Request(url, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            if e.code >= 500:
                time.sleep(1.0)  # the server logs the traceback only after it has answered
            raise LabelServerError(f"{method} {url} -> HTTP {e.code}: {detail}{self._tail()}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise LabelServerError(f"{method} {url} failed: {e}{self._tail()}") from None

    def _json(self, method: str, path: str, **kwargs) -> Any:
        _, _, data = self._request(method, path, **kwargs)
        return json.loads(data) if data else None

    def info(self) -> dict:
        """``GET /info/``: models (with ``dimension``, ``labels``), trainers, datastore counts."""
        return self._json("GET", "/info/")

    def datastore(self) -> dict:
        """``GET /datastore/?output=all``: every image and its label tags."""
        return self._json("GET", "/datastore/", query={"output": "all"})

    def infer(
        self,
        model: str,
        image_id: str,
        params: Mapping[str, Any] | None = None,
        output_path: str | os.PathLike | None = None,
        timeout: float | None = None,
    ) -> Path:
        """``POST /infer/<model>?image=<id>&output=image``; returns the path of the mask written locally.

        ``params`` (e.g. ``{"device": "cpu"}``) go in the multipart form field ``params`` as JSON. The server
        answers with the mask file itself (``application/octet-stream``, a NIfTI for NIfTI studies) in the
        study's grid and affine.
        """
        body, ctype = _multipart({"params": json.dumps(dict(params or {}))}, {})
        _, headers, data = self._request(
            "POST",
            f"/infer/{urllib.parse.quote(model)}",
            query={"image": image_id, "output": "image"},
            body=body,
            content_type=ctype,
            timeout=timeout,
        )
        if not data:
            raise LabelServerError(f"inference of {image_id!r} with {model!r} returned no file{self._tail()}")
        disposition = headers.get("content-disposition", "")
        filename = disposition.split("filename=")[-1].strip('"; ') if "filename=" in disposition else ""
        if output_path is None:
            assert self._results is not None
            output_path = self._results / f"{model}_{image_id}_{uuid.uuid4().hex[:8]}{_suffix(filename)}"
        out = Path(output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return out

    def put_image(self, image_id: str, path: str | os.PathLike) -> dict:
        """``PUT /datastore/image?image=<id>`` with the file as ``file``: adds a study to the datastore."""
        body, ctype = _multipart({"params": "{}"}, {"file": Path(path)})
        return self._json("PUT", "/datastore/image", query={"image": image_id}, body=body, content_type=ctype)

    def put_label(
        self, image_id: str, path: str | os.PathLike, tag: str = "final", params: Mapping[str, Any] | None = None
    ) -> dict:
        """``PUT /datastore/label?image=<id>&tag=<tag>`` with the file as ``label``.

        The saved label keeps the uploaded file's extension, so ``path`` must end in ``.nii.gz`` (or ``.nii``).
        Only ``final`` labels enter the training datalist.
        """
        body, ctype = _multipart({"params": json.dumps(dict(params or {}))}, {"label": Path(path)})
        return self._json(
            "PUT", "/datastore/label", query={"image": image_id, "tag": tag}, body=body, content_type=ctype
        )

    def train(self, model: str, **params: Any) -> dict:
        """``POST /train/<model>`` with ``params`` as the JSON body; returns the submitted task.

        Useful keys: ``max_epochs`` (50), ``val_split`` (0.2; ``-1`` keeps the bundle's own
        ``validate#dataset#data``), ``pretrained`` (True; False crashes in monailabel 0.8.5), ``device``,
        ``model_filename``. HTTP 429 means a training run is already going. No other config id of the bundle can
        be set from here: monailabel 0.8.5 passes on only the keys of a bundle's own ``displayable_configs``.
        """
        task = self._json(
            "POST",
            f"/train/{urllib.parse.quote(model)}",
            body=json.dumps(params).encode(),
            content_type="application/json",
        )
        self._train_id = task.get("id") if isinstance(task, dict) else None
        return task

    def train_status(self, all_tasks: bool = False) -> Any:
        """``GET /train/`` (the latest task) or ``GET /train/?all=true`` (every task of this server)."""
        return self._json("GET", "/train/", query={"all": "true" if all_tasks else None})

    def wait_train(self, timeout: float = 600.0, poll: float = 1.0, raise_on_error: bool = True) -> dict:
        """Poll ``GET /train/`` until the last submitted run is ``DONE`` or ``ERROR``; returns that task.

        A task has ``id``, ``status`` (SUBMITTED/RUNNING/DONE/ERROR), ``request``, ``start_ts``, ``end_ts`` and
        ``details`` (its last 20 log lines). ``DONE`` only means the process exited with code 0: whether
        ``models/model.pt`` changed is up to the bundle's checkpoint handlers.
        """
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.train_status(all_tasks=True) or []
            task = next((t for t in tasks if t.get("id") == self._train_id), None) if self._train_id else None
            task = task or (tasks[-1] if tasks else None)
            if task and task.get("status") in ("DONE", "ERROR"):
                if task["status"] == "ERROR" and raise_on_error:
                    details = "\n".join(task.get("details") or [])
                    raise LabelServerError(f"training {task.get('id')} failed:\n{details}{self._tail()}")
                return task
            if time.monotonic() > deadline:
                raise LabelServerError(f"training did not finish within {timeout:.0f} s{self._tail()}")
            time.sleep(poll)

    def model_dir(self, name: str) -> Path:
        """The served copy of a bundle: ``<app_dir>/model/<name>`` (training writes its ``models/`` here)."""
        assert self.app_dir is not None
        return self.app_dir / "model" / name


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False

"""Start a real AUTOMATIC1111 webui (``ANYBODY_A1111_DIR``) as a server with this extension installed, in a data
folder of its own (``--data-dir``: extensions, embeddings, config and outputs there, the user's untouched).

The webui's Python is ``$ANYBODY_A1111_PYTHON`` or its ``venv/bin/python``; the checkpoint is
``$ANYBODY_A1111_CKPT`` or a random-weight SD1.5 the harness builds once (``full_size_sd15``). The environment is
passed through (an offline machine sets ``HF_HOME``/``HF_HUB_OFFLINE`` for the CLIP tokenizer there).
CPU flags as in hosts/a1111_headless.md; ``$ANYBODY_A1111_ARGS`` adds more.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CPU_FLAGS = ["--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test", "--skip-python-version-check",
             "--skip-version-check", "--use-cpu", "all", "--no-half", "--precision", "full", "--no-download-sd-model",
             "--no-hashing", "--disable-nan-check", "--disable-safe-unpickle"]


def checkpoint(cache: Path) -> Path:
    given = os.environ.get("ANYBODY_A1111_CKPT")
    if given:
        return Path(given)
    path = cache / "anybody-random-sd15.safetensors"
    if not path.exists():
        sys.path.insert(0, str(REPO / "tests"))
        from ldm_checkpoint import full_size_sd15, save_sd1_checkpoint

        save_sd1_checkpoint(path, *full_size_sd15(seed=0))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webui:
    """A running webui server and a small JSON client for it."""

    def __init__(self, webui_dir: Path, data: Path, ckpt: Path, extra_extensions: dict[str, str] | None = None,
                 ui: bool = False, flags: list[str] | None = None) -> None:
        self.data, self.port = data, free_port()
        (data / "extensions").mkdir(parents=True, exist_ok=True)
        link = data / "extensions" / "anybody"
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        for name, code in (extra_extensions or {}).items():
            (data / "extensions" / name / "scripts").mkdir(parents=True, exist_ok=True)
            (data / "extensions" / name / "scripts" / f"{name}.py").write_text(code)
        config = data / "config.json"
        if not config.exists():
            config.write_text(json.dumps({"live_previews_enable": False, "show_progress_every_n_steps": -1,
                                          "persistent_cond_cache": False}))  # images must reflect each job's own conds
        python = os.environ.get("ANYBODY_A1111_PYTHON") or str(webui_dir / "venv" / "bin" / "python")
        flags = [*CPU_FLAGS, "--api", "--server-name", "127.0.0.1", "--port", str(self.port), "--ckpt", str(ckpt),
                 "--data-dir", str(data), *([] if ui else ["--nowebui"]), *(flags or []),
                 *shlex.split(os.environ.get("ANYBODY_A1111_ARGS", ""))]
        self.log_path = data / "webui.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([python, "launch.py", *flags], cwd=webui_dir, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 600) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the webui exited ({self.proc.returncode}); log:\n{self.tail()}")
            try:
                status, info = self.request("GET", "/anybody/v1/info", timeout=600)
                if status == 200 and (info["model"]["family"] or not info["model"]["problem"].startswith("No checkpoint")):
                    return  # up, routes added, and the checkpoint loaded (the webui loads it in the background)
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(2)  # not up yet, or up before on_app_started added the extension's routes (404)
        raise RuntimeError(f"the webui did not answer in {timeout:.0f} s; log:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def request(self, method: str, path: str, body=None, timeout: float = 1800) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str, timeout: float = 60):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise AssertionError((status, body))
        return body

    def post(self, path: str, body, expect: int = 200):
        status, answer = self.request("POST", path, body)
        if status != expect:
            raise AssertionError(f"{path}: {status} {answer}\n{self.tail(30)}")
        return answer

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def png_b64(array) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()

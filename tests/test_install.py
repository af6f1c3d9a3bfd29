"""install.py: never both onnxruntime packages, GPU one only with CUDA, nothing asked of pip when all is there."""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("anybody_install", Path(__file__).parents[1] / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)


@pytest.mark.parametrize("present,cuda,expect", [
    ({}, True, "onnxruntime-gpu"), ({}, False, "onnxruntime"),
    ({"onnxruntime": "1.20"}, True, None), ({"onnxruntime-gpu": "1.20"}, False, None),
])
def test_onnxruntime_choice(monkeypatch, present, cuda, expect):
    monkeypatch.setattr(install, "installed", lambda d: present.get(d))
    assert install.onnxruntime_choice(cuda) == expect


def test_nothing_to_do_when_everything_is_present(monkeypatch):
    monkeypatch.setattr(install, "installed", lambda d: "1.0")
    monkeypatch.setattr(install, "pip_install", lambda pkgs: pytest.fail(f"pip was asked for {pkgs}"))
    assert install.main(["--dev"]) == 0


def test_host_owned_packages_are_pinned_not_upgraded(monkeypatch):
    versions = {"torch": "2.1.2", "transformers": "4.30.2", "gradio": "3.41.2"}
    monkeypatch.setattr(install, "installed", lambda d: versions.get(d))
    calls = []
    monkeypatch.setattr(install.subprocess, "check_call",
                        lambda cmd: calls.append((cmd, Path(cmd[cmd.index("-c") + 1]).read_text().split())))
    install.pip_install(["diffusers>=0.30"])
    cmd, pins = calls[0]
    assert "only-if-needed" in cmd and "diffusers>=0.30" in cmd and "--upgrade" not in cmd
    assert set(pins) == {"torch==2.1.2", "transformers==4.30.2", "gradio==3.41.2"}


def test_plan_never_lists_torch(monkeypatch):
    monkeypatch.setattr(install, "installed", lambda d: None)
    todo = install.plan(True, True, onnx=True, cuda=False)
    assert not any(install.requirement_name(r) in ("torch", "gradio") for r in todo)
    assert sum(r.startswith("onnxruntime") for r in todo) == 1

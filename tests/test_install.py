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
    monkeypatch.setattr(install, "pip_install", lambda pkgs, **kw: pytest.fail(f"pip was asked for {pkgs}"))
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


@pytest.mark.parametrize("present,expect", [({}, "opencv-python"), ({"opencv-python-headless": "4.10"}, None),
                                            ({"opencv-contrib-python": "4.10"}, None)])
def test_opencv_is_added_only_when_no_opencv_is_there(monkeypatch, present, expect):
    monkeypatch.setattr(install, "installed", lambda d: present.get(d))
    assert install.opencv_choice() == expect


def test_insightface_comes_without_its_onnxruntime_and_opencv_pins(monkeypatch):
    """insightface asks for the CPU onnxruntime and opencv-python; beside onnxruntime-gpu that breaks CUDA."""
    declared = ["numpy", "onnx>=1.13", "onnxruntime", "opencv-python", "scikit-image", "tqdm",
                'albumentations; extra == "face3d"']
    present = {"onnxruntime-gpu": "1.20", "opencv-python-headless": "4.10", "numpy": "2.0", "torch": "2.4"}
    monkeypatch.setattr(install.md, "requires", lambda dist: declared)
    monkeypatch.setattr(install, "installed", lambda d: present.get(d))
    calls = []
    monkeypatch.setattr(install, "pip_install", lambda pkgs, no_deps=False: calls.append((pkgs, no_deps)))
    assert install.main([]) == 0
    assert (["insightface"], True) in calls
    asked = [p for pkgs, _ in calls for p in pkgs]
    assert "onnx>=1.13" in asked and "scikit-image" in asked and "tqdm" in asked
    assert not any(install.requirement_name(p).startswith(("onnxruntime", "opencv", "albumentations")) for p in asked)


def test_pip_builds_a_wheel_with_the_core_its_assets_and_the_anybody_command(tmp_path):
    """`pip install .` must work for CLI users: one top-level package, its data files, a console script."""
    import subprocess
    import sys
    import zipfile

    import shutil

    repo = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(Path(__file__).parents[1], repo, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "anybody_out", "models"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(repo)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("anybody-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("anybody-")} == {"anybody"}, "no nodes/, tests/ ..."
    for asset in ("anybody/assets/clip_tokenizer/merges.txt", "anybody/assets/configs/sd15/unet/config.json",
                  "anybody/assets/celebrity_names.txt", "anybody/assets/ti_templates.txt", "anybody/cli.py"):
        assert asset in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "anybody = anybody.cli:main" in entry_points


def test_host_pins_hold_the_webuis_packages(monkeypatch):
    versions = {"gradio": "3.41.2", "transformers": "4.30.2", "numpy": "1.26.2", "protobuf": "3.20.0"}
    monkeypatch.setattr(install, "installed", versions.get)
    pins = install.host_pins()
    assert {"gradio==3.41.2", "transformers==4.30.2", "numpy==1.26.2", "protobuf==3.20.0"} == set(pins)


def test_cuda_is_only_probed_when_an_onnxruntime_must_be_chosen(monkeypatch):
    monkeypatch.setattr(install, "installed", lambda name: "1.0" if name == "onnxruntime" else None)

    def probe():
        raise AssertionError("torch imported although onnxruntime is installed")

    assert "onnxruntime-gpu" not in install.plan(False, False, onnx=True, cuda=probe)
    monkeypatch.setattr(install, "installed", lambda name: None)
    assert "onnxruntime-gpu" in install.plan(False, False, onnx=True, cuda=lambda: True)


def test_an_insightface_that_cannot_be_built_is_reported_not_fatal(monkeypatch, capsys):
    import subprocess

    monkeypatch.setattr(install, "installed", lambda d: None if d == "insightface" else "1.0")

    def pip(pkgs, no_deps=False):
        if pkgs == ["insightface"]:
            raise subprocess.CalledProcessError(1, ["pip"])
        pytest.fail(f"pip was asked for {pkgs}")

    monkeypatch.setattr(install, "pip_install", pip)
    assert install.main([]) == 0
    out = capsys.readouterr().out
    assert "insightface could not be installed" in out and "FaceModelFromMediaPipe" in out

"""The GPU acceptance script's CPU dry mode runs in CI, so the script itself is known to work before a GPU is lent."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def test_dry_mode_runs_the_diffusers_part_and_reports(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--json", str(out)], capture_output=True, text=True,
                          timeout=600, env={"PATH": "", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verdict: all checks passed" in proc.stdout and "ComfyUI part skipped" in proc.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["mode"] == "diffusers cpu float32" and row["steps"] == 5 and row["s_per_step"] > 0


def test_verdict_names_each_failed_acceptance_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    rows = [{"mode": "default", "train_ok": True, "embedding_loads": True, "ksampler_unchanged": False,
             "grad_cos_vs_fp32": 0.97, "copy_loaded_whole": True, "render_grad_cos": 0.98},
            {"mode": "lowvram", "train_ok": False, "error": "CUDA out of memory"},
            {"mode": "diffusers cuda bfloat16", "time_target_met": False, "memory_target_met": True}]
    failures = gpu_check.verdict(rows)
    assert failures == ["default: ksampler_unchanged", "default: grad cosine 0.97 < 0.99",
                        "default: gradient after a likeness render 0.98 < 0.9999",
                        "lowvram: training failed (CUDA out of memory)", "diffusers cuda bfloat16: time_target_met"]
    assert "| default | True |" in gpu_check.table(rows)

"""Ctrl-C and SIGTERM on the command line: held back during state changes, saved like a Cancel."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anybody.train.interrupts import held_signals


def test_a_signal_inside_a_held_block_is_raised_when_the_block_ends():
    reached_end = False
    with pytest.raises(KeyboardInterrupt):
        with held_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached_end = True
    assert reached_end, "the block ran to its end before the interrupt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_saves_progress_and_resume_continues(tmp_path):
    """`kill` (a container stop) is handled like Ctrl-C: progress saved, exit 130, --resume continues from it."""
    cmd = [sys.executable, "-m", "anybody", "demo", "--out", str(tmp_path), "--steps", "400", "--save-every", "1000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    seen = ""
    while "step 3/" not in seen:
        chunk = proc.stderr.read(64)
        assert chunk, f"the demo ended early: {seen[-500:]}"
        seen += chunk
    proc.send_signal(signal.SIGTERM)
    seen += proc.stderr.read()
    assert proc.wait(timeout=60) == 130, seen[-500:]
    assert "progress saved" in seen and (tmp_path / "training_state" / "demo.state.safetensors").is_file()
    assert not (tmp_path / "embeddings" / "demo.safetensors").exists()
    from anybody.train.state import TrainingState

    saved = TrainingState(tmp_path / "training_state", "demo", {}).saved_step()
    assert saved >= 3
    done = subprocess.run(cmd[:-4] + ["--steps", str(saved + 2), "--resume"], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    assert f"resuming at step {saved}" in done.stderr and (tmp_path / "embeddings" / "demo.safetensors").is_file()

"""The loss curve every trainer shows under its previews and writes beside its saved state."""
import csv
import math

import numpy as np
import pytest
import torch

from anybody.train import curve
from anybody.train.engine import StepResult, Trainer
from anybody.train.sink import ProgressSink
from anybody.train.state import TrainingState


class Cancelled(Exception):
    pass


class RecordingSink(ProgressSink):
    shows_previews = True

    def __init__(self, cancel_after: int | None = None) -> None:
        self.previews, self.done, self.cancel_after = [], 0, cancel_after

    def progress(self, step, total, loss=None, preview=None):
        self.done = step
        if preview is not None:
            self.previews.append(preview)

    def check_cancel(self):
        if self.cancel_after is not None and self.done >= self.cancel_after:
            raise Cancelled()


def _train(tmp_path, sink, steps=12, start=None):
    """A real (tiny) regression trained by the product's engine; the loss is noisy like a diffusion loss."""
    weight = torch.zeros(4, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 0.5, 3.0])
    optimizer = torch.optim.Adam([weight], lr=0.1)
    state = TrainingState(tmp_path, "toy", {"lr": 0.1})
    begin = state.load({"w": weight}, optimizer) if state.exists() else 0

    def loss_fn(gen):
        noise = torch.randn(4, generator=gen) * 0.1
        loss = ((weight - target + noise) ** 2).mean()
        return StepResult(loss, preview=lambda: torch.full((64, 48, 3), 0.5))

    trainer = Trainer({"w": weight}, optimizer, loss_fn, sink, steps, seed=3, save_every=4, preview_every=4,
                      state=state, save_minutes=0)
    trainer.run(begin)
    return trainer


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_previews_carry_the_curve_and_the_csv_holds_every_step(tmp_path):
    sink = RecordingSink()
    trainer = _train(tmp_path, sink)
    assert len(sink.previews) == 3
    preview = sink.previews[-1]
    assert preview.shape == (64 + 160, 256, 3), "the chart sits below the preview, at least 256 px wide"
    assert torch.allclose(preview[:64, :48], torch.tensor(0.5)), "the preview itself is unchanged"
    rows = _csv(trainer.curve_csv())
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert np.allclose([float(r["loss"]) for r in rows], trainer.history, rtol=1e-5)
    assert float(rows[-1]["average"]) < float(rows[0]["average"]), "the loss of this regression falls"


def test_a_resumed_run_continues_the_same_curve(tmp_path):
    whole = _train(tmp_path / "whole", RecordingSink())
    with pytest.raises(Cancelled):
        _train(tmp_path / "parts", RecordingSink(cancel_after=6))
    resumed = _train(tmp_path / "parts", RecordingSink())
    assert resumed.history == pytest.approx(whole.history, rel=1e-5), "steps before the resume are on the curve"
    assert _csv(resumed.curve_csv()) == _csv(whole.curve_csv())


def test_the_average_is_bias_corrected_and_skips_missing_steps():
    assert curve.smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    values = curve.smoothed([math.nan, 1.0, 3.0])
    assert math.isnan(values[0]) and values[1] == pytest.approx(1.0)
    assert values[2] == pytest.approx((0.9 * 0.1 * 1.0 + 0.1 * 3.0) / (1 - 0.9 ** 2))


def test_a_falling_loss_is_drawn_falling():
    chart = (curve.render([1.0 / (1 + i) for i in range(200)], 200, 400, 160).numpy() * 255).round().astype(int)
    rows, cols = np.nonzero(np.all(np.abs(chart - np.array(curve.SMOOTH)) <= 2, axis=-1))
    assert cols.size > 100, "the average is drawn"
    assert rows[cols < 60].mean() < rows[cols > 340].mean() - 40, "early steps high, late steps low"


def test_the_csv_reads_back_as_the_curve_it_was_written_from(tmp_path):
    losses = [0.5, 0.4, float("nan"), 0.3]
    curve.write_csv(tmp_path / "c.csv", losses, [(2, 0.41, 1.0), (4, None, 0.0)])
    back, likeness = curve.read_csv(tmp_path / "c.csv")
    assert back[:2] == pytest.approx([0.5, 0.4]) and math.isnan(back[2]) and likeness == [(2, pytest.approx(0.41))]
    assert curve.read_csv(tmp_path / "missing.csv") == ([], [])

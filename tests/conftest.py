import pytest
import torch

from anybody.train.sink import ProgressSink


class RecordingSink(ProgressSink):
    """Records progress; raises ``cancel_with`` once ``cancel_after`` steps are done (like pressing Cancel)."""

    shows_previews = True

    def __init__(self, cancel_after=None, cancel_with=KeyboardInterrupt):
        self.steps, self.previews, self.logs = [], [], []
        self.cancel_after, self.cancel_with = cancel_after, cancel_with

    def progress(self, step, total, loss=None, preview=None):
        self.steps.append(step)
        if preview is not None:
            self.previews.append(preview)

    def check_cancel(self):
        if self.cancel_after is not None and self.steps and self.steps[-1] >= self.cancel_after:
            raise self.cancel_with()

    def log(self, message):
        self.logs.append(message)


@pytest.fixture(name="RecordingSink")
def recording_sink_class():
    return RecordingSink


@pytest.fixture(scope="session")
def _tiny_host():
    from anybody.host.tiny import tiny_host

    return tiny_host("unused", seed=0, sink=RecordingSink())


@pytest.fixture
def host(_tiny_host, tmp_path):
    """The session's tiny SD1.x host, writing into this test's own folder with a fresh sink."""
    _tiny_host.out_dir = tmp_path
    _tiny_host.sink = RecordingSink()
    return _tiny_host


@pytest.fixture
def faces():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 80, 72, 3, generator=g)

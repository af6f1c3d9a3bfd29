"""Photos as users have them: odd modes decode to the right 8-bit RGB, odd paths are clear errors, huge photos are
read at the size training needs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anybody.errors import BadInputError
from anybody.images import image_files, read_image_uint8


@pytest.mark.parametrize("mode,values,expect", [
    ("F", np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),                   # float TIFF in 0..1
    ("F", np.array([[0.0, 127.5, 255.0]], np.float32), [0, 128, 255]),               # float TIFF in 0..255
    ("I", np.array([[0, 32768, 65535]], np.int32), [0, 128, 255]),                   # 32-bit holding 16-bit data
    ("I", np.array([[-1000, 0, 1_000_000]], np.int32), [0, 0, 255]),                 # 32-bit, its own range
    ("I;16", np.array([[0, 32896, 65535]], np.uint16), [0, 128, 255]),
])
def test_high_bit_depth_and_float_tiffs_decode_to_the_right_grey(tmp_path, mode, values, expect):
    path = tmp_path / "x.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    rgb = read_image_uint8(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, :, 0].tolist() == pytest.approx(expect, abs=1) and (rgb[..., 0] == rgb[..., 2]).all()


def test_device_and_pipe_paths_are_clear_errors(tmp_path):
    with pytest.raises(BadInputError, match="not a photo or a folder"):
        image_files("/dev/null")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError, match="pipe"):
        image_files(fifo)


def test_a_huge_jpeg_is_read_at_the_working_size_with_bounded_memory(tmp_path):
    """48 megapixels (144 MB as RGB) read with max_side 2048 in a fresh process: its peak RSS grows by far less
    than the full image."""
    path = tmp_path / "huge.jpg"
    gradient = np.linspace(0, 255, 8000, dtype=np.uint8)[None, :, None].repeat(6000, 0).repeat(3, 2)
    Image.fromarray(gradient).save(path, quality=80)
    del gradient
    code = ("import resource, sys; from anybody.images import read_image_uint8; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"a = read_image_uint8({str(path)!r}, max_side=2048); "
            "print(a.shape, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1]).stdout.split(")")
    assert out[0] + ")" == "(1536, 2048, 3)"
    assert int(out[1]) < 60, f"peak grew by {out[1]} MiB while decoding a 144 MB photo"

"""Small ONNX face models with the real insightface signatures, built by the tests (no downloads).

Detector: SCRFD-style, input ``[1,3,H,W]`` (BGR->RGB, (x-127.5)/128 done by insightface), nine outputs: scores
``[N,1]``, box distances ``[N,4]`` and 5-point offsets ``[N,10]`` for strides 8, 16, 32 with two anchors per cell,
exactly what ``SCRFD`` decodes. Its "faces" are what tests paint: a pure red 16x16 cell on the 16-pixel grid
is a face centred on that cell's top-left corner; the cell's blue value sets the face size (0 -> small,
255 -> large). Only stride 16 ever fires, so each painted cell is one detection.

Recognizer: ArcFace-style ``[N,3,112,112] -> [N,512]`` (an 8x8/8 conv, ReLU, a dense layer), random but fixed
weights, so identical crops embed identically and different crops do not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: landmark offsets from the face centre in units of (face size x stride): eyes, nose, mouth corners
KPS_OFFSETS = np.array([[-0.35, -0.3], [0.35, -0.3], [0.0, 0.05], [-0.3, 0.35], [0.3, 0.35]], np.float32)
STRIDE = 16


def face_scale(blue: int) -> float:
    """Face half-size in stride units for a painted cell's blue value (normalised as SCRFD does)."""
    b = (blue - 127.5) / 128.0
    return 2.5 + 1.5 * (b + 1.0)


def expected_face(x0: int, y0: int, blue: int) -> tuple[np.ndarray, np.ndarray]:
    """Box and landmarks the detector reports for a red cell whose top-left corner is (x0, y0)."""
    half = face_scale(blue) * STRIDE
    centre = np.array([x0, y0], np.float64)
    box = np.array([x0 - half, y0 - half, x0 + half, y0 + half])
    return box, centre + KPS_OFFSETS.astype(np.float64) * half


def paint_face(image: np.ndarray, x0: int, y0: int, blue: int = 0) -> None:
    assert x0 % STRIDE == 0 and y0 % STRIDE == 0
    image[y0:y0 + STRIDE, x0:x0 + STRIDE] = (255, 0, blue)


def _model(nodes, inputs, outputs, initializers):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "anybody_test", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="anybody-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_detector(path: str | Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    inits = [const("ones4", np.ones((1, 4))), const("kps", KPS_OFFSETS.reshape(1, 10)), const("one", 1.0),
             const("onehalf", 1.5), const("base", 2.5),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "col"),
             numpy_helper.from_array(np.array([0], np.int64), "c0"), numpy_helper.from_array(np.array([1], np.int64), "c1"),
             numpy_helper.from_array(np.array([2], np.int64), "c2"), numpy_helper.from_array(np.array([3], np.int64), "c3"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    nodes, outs = [], {"score": [], "bbox": [], "kps": []}
    for s in (8, 16, 32):
        gain, bias = (6.0, -6.0) if s == STRIDE else (0.0, -20.0)
        inits += [const(f"gain{s}", gain), const(f"bias{s}", bias)]
        p = f"s{s}_"
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [p + "pool"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Slice", [p + "pool", "c0", "c1", "ax1"], [p + "r"]),
            helper.make_node("Slice", [p + "pool", "c1", "c2", "ax1"], [p + "g"]),
            helper.make_node("Slice", [p + "pool", "c2", "c3", "ax1"], [p + "b"]),
            helper.make_node("Sub", [p + "r", p + "g"], [p + "red"]),
            helper.make_node("Mul", [p + "red", f"gain{s}"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", f"bias{s}"], [p + "logit"]),
            helper.make_node("Sigmoid", [p + "logit"], [p + "prob"]),
            helper.make_node("Add", [p + "b", "one"], [p + "b1"]),
            helper.make_node("Mul", [p + "b1", "onehalf"], [p + "b15"]),
            helper.make_node("Add", [p + "b15", "base"], [p + "size"]),
        ]
        for what in ("prob", "size"):  # [1,1,h,w] -> [h*w*2, 1], anchors innermost as SCRFD lays them out
            nodes += [helper.make_node("Transpose", [p + what], [p + what + "_t"], perm=[0, 2, 3, 1]),
                      helper.make_node("Concat", [p + what + "_t", p + what + "_t"], [p + what + "_2"], axis=3),
                      helper.make_node("Reshape", [p + what + "_2", "col"], [p + what + "_col"])]
        nodes += [helper.make_node("Identity", [p + "prob_col"], [f"score_{s}"]),
                  helper.make_node("Mul", [p + "size_col", "ones4"], [f"bbox_{s}"]),
                  helper.make_node("Mul", [p + "size_col", "kps"], [f"kps_{s}"])]
        outs["score"].append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT, ["n", 1]))
        outs["bbox"].append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT, ["n", 4]))
        outs["kps"].append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT, ["n", 10]))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])
    model = _model(nodes, [inp], outs["score"] + outs["bbox"] + outs["kps"], inits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_recognizer(path: str | Path, seed: int = 0, size: int = 112) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    cells = (size // 8) ** 2 * 16
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (16, 3, 8, 8)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(cells), (512, cells)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(np.zeros(512, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["data", "conv_w"], ["feat"], strides=[8, 8], name="conv0"),
             helper.make_node("Relu", ["feat"], ["act"], name="relu0"),
             helper.make_node("Flatten", ["act"], ["flat"], axis=1, name="flatten0"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc1"], transB=1, name="fc1")]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, size, size])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])
    model = _model(nodes, [inp], [out], inits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_pack(root: str | Path, name: str = "testpack") -> Path:
    """``root/models/<name>/{det_test.onnx, rec_test.onnx}``: the layout insightface's FaceAnalysis expects."""
    folder = Path(root) / "models" / name
    build_detector(folder / "det_test.onnx")
    build_recognizer(folder / "rec_test.onnx")
    return folder

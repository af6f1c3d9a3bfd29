"""The webui's request fields (no webui needed): the ComfyUI node's names and defaults, checked like the node."""
import base64
import io
import sys
import types

import numpy as np
import pytest
import torch

from anybody.a1111 import fields
from anybody.a1111.inject import parse_infotext
from anybody.errors import BadInputError
from anybody.host.a1111 import _fixes_for
from anybody.methods.cross_init import CrossInitConfig


def _node_inputs(monkeypatch, node_name="AnybodyCrossInitTrain"):
    """A node's input names and defaults, read from the node class itself."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fake = types.SimpleNamespace(models_dir=str(root / "models"), folder_names_and_paths={},
                                 get_filename_list=lambda name: [],
                                 add_model_folder_path=lambda name, path, *a, **k: fake.folder_names_and_paths
                                 .setdefault(name, ([], set()))[0].append(path))
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    spec = importlib.util.spec_from_file_location("anybody_pack", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    pack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "anybody_pack", pack)
    spec.loader.exec_module(pack)
    node = pack.NODE_CLASS_MAPPINGS[node_name]
    spec = node.INPUT_TYPES()
    return {**spec["required"], **spec.get("optional", {})}


def test_fields_are_the_nodes_inputs_with_the_nodes_defaults(monkeypatch):
    inputs = _node_inputs(monkeypatch)
    assert set(fields.CROSS_INIT_FIELDS) == set(inputs) - {"model", "clip", "vae"}
    for name, default in fields.CROSS_INIT_FIELDS.items():
        options = inputs[name][1] if len(inputs[name]) > 1 else {}
        if name not in ("images", "names_file", "face_model", "init_identity"):  # objects in ComfyUI, names in the webui
            assert options.get("default") == default, name


@pytest.mark.parametrize("node_name, spec, renamed", [
    ("AnybodyRigRender", fields.RIG_RENDER_FIELDS, {"image": "images", "target_image": "target_images"}),
    ("AnybodyRigPersonalize", fields.RIG_PERSONALIZE_FIELDS, {})])
def test_rig_fields_are_the_nodes_inputs_with_the_nodes_defaults(monkeypatch, node_name, spec, renamed):
    """Photos come as lists of images in the webui; the loaders' files are named in the request itself."""
    inputs = {renamed.get(k, k): v for k, v in _node_inputs(monkeypatch, node_name).items()}
    loader_files = set(_node_inputs(monkeypatch, "AnybodyRigAssetsLoader"))
    assert set(spec) == set(inputs) - {"rig_assets"} | loader_files
    for name, default in spec.items():
        if name in inputs and len(inputs[name]) > 1 and "default" in inputs[name][1]:
            assert inputs[name][1]["default"] == default, name


def test_defaults_make_the_paper_recipe():
    checked, config = fields.cross_init_request({"images": ["x"]})
    assert config == CrossInitConfig(resolution=0, likeness_every=-1)  # auto: on with a face model on a GPU
    assert checked["saved_progress"] == "resume" and checked["overwrite"] is False


def test_custom_steps_resume_alias_and_numbers():
    checked, config = fields.cross_init_request({"preset": "custom", "steps": 7, "lr": 1, "resume": False})
    assert config.steps == 7 and config.lr == 1.0 and checked["saved_progress"] == "start over"
    _, chosen = fields.cross_init_request({"steps": 7})
    assert chosen.steps == 7  # steps alone means the custom preset
    with pytest.raises(BadInputError, match="counts only with preset 'custom'"):
        fields.cross_init_request({"preset": "fast-25", "steps": 7})  # the node ignores it there; a request says so


@pytest.mark.parametrize("body, words", [
    ({"stepz": 3}, "Unknown field(s) stepz"),
    ({"batch": "8"}, "'batch' must be int"),
    ({"batch": True}, "'batch' must be int"),
    ({"overwrite": 1}, "'overwrite' must be bool"),
    ({"preset": "paper"}, "'preset' must be one of paper-320, fast-25, custom"),
    ({"saved_progress": "continue"}, "'saved_progress' must be one of"),
    ({"resume": "yes"}, "'resume' must be true or false"),
    ({"lr": float("nan")}, "learning rate"),
])
def test_bad_fields_are_named(body, words):
    with pytest.raises(BadInputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        checked, config = fields.cross_init_request(body)
        from anybody.methods.cross_init import check_settings

        check_settings("ok", config)


def _png(array, fmt="PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_images_decode_from_base64_and_data_urls():
    array = (np.arange(64 * 80 * 3) % 251).astype(np.uint8).reshape(64, 80, 3)
    plain = base64.b64encode(_png(array)).decode()
    decoded = fields.decode_images([plain, "data:image/png;base64," + plain])
    assert all(torch.equal((d * 255).round().byte(), torch.from_numpy(array)) for d in decoded)


@pytest.mark.parametrize("value, words", [
    ([], "non-empty list"),
    ("abc", "non-empty list"),
    (["%%%"], r"images\[0\] is not valid base64"),
    ([base64.b64encode(b"GIF89a? no").decode()], r"images\[0\] is not an image"),
    ([123], r"images\[0\] must be a base64"),
])
def test_bad_images_are_named(value, words):
    with pytest.raises(BadInputError, match=words):
        fields.decode_images(value)


def test_fixes_splice_each_run_of_vectors_after_its_offset():
    v = [torch.full((4,), float(i)) for i in range(3)]
    rows = [49406, 320, v[0], v[1], 1125, v[2], 49407, 49407]
    ids, fixes = _fixes_for(rows)
    assert ids == [49406, 320, 0, 0, 1125, 0, 49407, 49407]
    assert [(offset, emb.vec.shape[0]) for offset, emb in fixes] == [(1, 2), (4, 1)]
    # the webui keeps rows [0, offset] and puts the vectors right after them
    assert torch.equal(fixes[0][1].vec, torch.stack(v[:2])) and torch.equal(fixes[1][1].vec, v[2][None])


def test_infotext_round_trip():
    assert parse_infotext("ohwx=faces/annie.safetensors@1a2b3c4d") == ("faces/annie.safetensors", "ohwx")


def test_every_host_adapter_implements_the_whole_host_seam():
    """The webui and ComfyUI adapters only run inside their hosts; a method they lack must still fail here, in CI."""
    import inspect

    from anybody.host import a1111, comfy, diffusers

    for cls in (a1111.A1111TextEncoder, a1111.A1111Host, comfy.ComfyTextEncoder, comfy.ComfyHost,
                diffusers.DiffusersTextEncoder, diffusers.DiffusersHost):
        assert not inspect.isabstract(cls), (cls.__name__, sorted(cls.__abstractmethods__))


def test_magicapture_fields_have_their_own_presets_and_the_nodes_names():
    from anybody.a1111 import fields

    checked, config = fields.magicapture_request({"preset": "fast", "subject_name": "a", "resume": False})
    assert checked["preset"] == "fast" and config.ti_steps == 300 and checked["saved_progress"] == "start over"
    with pytest.raises(BadInputError, match="'preset' must be one of paper, fast"):
        fields.magicapture_request({"preset": "paper-320"})
    with pytest.raises(BadInputError, match="Unknown field"):
        fields.magicapture_request({"steps": 3})

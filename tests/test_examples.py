"""Shipped example workflows: each UI workflow and its API twin describe the same graph, with the Anybody nodes'
widget values in the order the nodes declare them (shared workflows store widgets by position)."""
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


@pytest.fixture(scope="module")
def node_classes():
    saved = sys.modules.get("folder_paths")
    fake = types.SimpleNamespace(models_dir=str(ROOT / "models"), folder_names_and_paths={},
                                 get_filename_list=lambda name: [], get_folder_paths=lambda name: [])
    fake.add_model_folder_path = lambda name, path, *a, **k: fake.folder_names_and_paths.setdefault(
        name, ([], set()))[0].append(path)
    sys.modules["folder_paths"] = fake
    try:
        spec = importlib.util.spec_from_file_location("anybody_pack_examples", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["anybody_pack_examples"] = pack
        spec.loader.exec_module(pack)
        yield pack.NODE_CLASS_MAPPINGS
    finally:
        sys.modules.pop("anybody_pack_examples", None)
        if saved is None:
            sys.modules.pop("folder_paths", None)
        else:
            sys.modules["folder_paths"] = saved


@pytest.mark.parametrize("api_path", sorted((ROOT / "example_workflows").glob("*.api.json")), ids=lambda p: p.name)
def test_ui_workflow_and_api_twin_agree(api_path, node_classes):
    api = json.loads(api_path.read_text())
    ui = json.loads(api_path.with_name(api_path.name.replace(".api.json", ".json")).read_text())
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert set(nodes) == set(api) and all(nodes[k]["type"] == v["class_type"] for k, v in api.items())
    links = {(str(l[1]), l[2], str(l[3])) for l in ui["links"]}
    for node_id, node in api.items():
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert (str(value[0]), value[1], node_id) in links, (node_id, value)
        if node["class_type"] in node_classes:
            spec = node_classes[node["class_type"]].INPUT_TYPES()
            declared = {**spec["required"], **spec.get("optional", {})}
            values = list(nodes[node_id]["widgets_values"])
            for name, kind in declared.items():
                if not (isinstance(kind[0], list) or kind[0] in WIDGET_TYPES):
                    continue  # a socket
                assert values.pop(0) == node["inputs"][name], (node["class_type"], name)
                if name == "seed" or (len(kind) > 1 and kind[1].get("control_after_generate")):
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")  # the UI's seed control
            assert not values, (node["class_type"], "extra widget values", values)

"""Start a real ComfyUI in this process (no server socket), with the pack installed, and run API graphs in its
executor. Shared by the host tests and ``benchmarks/gpu_check.py``. ComfyUI parses its command line once, at
the first import, so one process runs one set of flags.
"""
from __future__ import annotations

import asyncio
import inspect
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_comfy(comfy_dir: str | Path, base: Path, flags: list[str], as_launched: bool = False) -> dict:
    """ComfyUI from ``comfy_dir`` with its folders under ``base`` and the pack linked into custom_nodes.

    ``as_launched``: import ComfyUI's own ``main.py`` (everything a launch does before serving: flags, logging,
    DynamicVRAM/aimdo set-up on NVIDIA), so the run sees the model patcher users get; else only its flags parser.
    """
    for sub in ("checkpoints", "embeddings", "loras", "custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "anybody"
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(comfy_dir))
    argv, sys.argv = sys.argv, ["main.py", *flags]
    if as_launched:
        import main  # noqa: F401  (ComfyUI's main.py: its start-up code runs at import, its server does not)
    else:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the flags)
    sys.argv = argv
    import folder_paths
    import utils.extra_config  # noqa: F401  (as main.py does, before anything can shadow the 'utils' package)

    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_temp_directory(str(base / "temp"))
    folder_paths.folder_names_and_paths["checkpoints"] = ([str(base / "checkpoints")], {".safetensors"})
    folder_paths.folder_names_and_paths["embeddings"] = ([str(base / "embeddings")], {".safetensors", ".pt"})
    folder_paths.folder_names_and_paths["loras"] = ([str(base / "loras")], {".safetensors"})  # never the install's
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(base / "custom_nodes")], set())
    folder_paths.add_model_folder_path("insightface", str(base / "insightface"))  # as extra_model_paths.yaml does
    folder_paths.add_model_folder_path("face_parsing", str(base / "face_parsing"))
    folder_paths.add_model_folder_path("facerestore_models", str(base / "facerestore_models"))
    folder_paths.add_model_folder_path("detection", str(base / "detection"))  # ComfyUI's MediaPipe face model
    folder_paths.add_model_folder_path("celebrity_names", str(base / "celebrity_names"))
    for rig_folder in ("diffusionrig", "flame", "deca"):  # DiffusionRig's files (RigRender)
        folder_paths.add_model_folder_path(rig_folder, str(base / rig_folder))
    import execution
    import nodes
    import server

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    if "AnybodyCrossInitTrain" not in nodes.NODE_CLASS_MAPPINGS:
        raise RuntimeError("the Anybody pack failed to import into ComfyUI (see the log)")

    class Stub:
        client_id, last_node_id = None, None

        def send_sync(self, *a, **k):
            pass

        def queue_updated(self):
            pass

    takes = inspect.signature(execution.PromptExecutor.__init__).parameters  # cache_size before 0.3.6x
    cache = {"cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}} if "cache_args" in takes else {"cache_size": 0}

    def run(prompt):
        """Validate and execute an API graph; returns (executor, error/interrupt events)."""
        pid = str(uuid.uuid4())
        valid, err, outputs, node_errors = loop.run_until_complete(execution.validate_prompt(pid, prompt, None))
        if not valid:
            raise AssertionError((err, node_errors))
        ex = execution.PromptExecutor(Stub(), cache_type=execution.CacheType.CLASSIC, **cache)
        loop.run_until_complete(ex.execute_async(prompt, pid, {}, outputs))
        errors = [d for ev, d in ex.status_messages if ev in ("execution_error", "execution_interrupted")]
        return ex, errors

    return {"base": base, "run": run, "nodes": nodes}


def pack_module(name: str):
    """The pack's own copy of ``anybody.<...>`` as ComfyUI imported it (its package name is a path)."""
    from importlib import import_module

    pack = next(m for m in sys.modules if m.endswith("anybody") and hasattr(sys.modules[m], "NODE_CLASS_MAPPINGS"))
    return import_module(f"{pack}.{name}")

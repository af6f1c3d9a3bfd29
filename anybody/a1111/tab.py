"""The "Anybody" tab of the webui (``on_ui_tabs``): Cross-Init, Celeb Basis and MagiCapture training, AdaFace,
DiffusionRig, FaceAlign and IdentityScore.

Controls carry the ComfyUI node's input names and defaults (``fields.py``); long work runs through the webui's
``wrap_gradio_gpu_call`` (its queue lock, progress bar with live previews, Interrupt). Written for gradio 3.41
(the webui's pin); it also builds headless, because the webui builds every tab even with ``--nowebui``.
"""
from __future__ import annotations

import html
from typing import Any

from ..errors import AnybodyError, TrainingCancelled
from ..methods.cross_init import PRESETS
from . import fields, jobs

ELEM = "anybody"


def _photos(files, label: str) -> list:
    """Uploaded files (gradio temp files) -> ``[H,W,3]`` tensors; a non-image upload names itself."""
    from ..errors import BadInputError
    from ..images import load_images

    if not files:
        raise BadInputError(f"No {label} uploaded: add one or more photos (PNG or JPEG).")
    paths = [getattr(f, "name", f) for f in files]
    return load_images(paths, max_side=2048)


def _message(text: str, error: bool = False) -> str:
    cls = "error" if error else "anybody-result"
    return f"<div class='{cls}'>{html.escape(text).replace(chr(10), '<br>')}</div>"


def _guarded(run):
    """User errors and Interrupt become a readable message in the tab instead of a traceback in the console."""
    try:
        return run()
    except TrainingCancelled as exc:
        return None, _message(str(exc), error=True)
    except AnybodyError as exc:
        return None, _message(str(exc), error=True)


LIKENESS_CONTROLS = ("likeness_every", "likeness_patience", "keep_best")


def _likeness_controls(gr, prefix: str):
    """The likeness-curve controls every training section has (the face model scores the renders)."""
    with gr.Row():
        every = gr.Number(label="likeness_every (-1: auto, a quarter of the run on a GPU within 10 % of the time; 0: off)", value=-1,
                          precision=0, elem_id=f"{ELEM}_{prefix}likeness_every")
        patience = gr.Number(label="likeness_patience (stop after N evaluations without gain; 0: never)", value=0,
                             precision=0)
        best = gr.Checkbox(label="keep_best (save the best-scoring step)", value=True)
    return [every, patience, best]


def _likeness_values(body: dict) -> None:
    body["likeness_every"], body["likeness_patience"] = int(body["likeness_every"]), int(body["likeness_patience"])
    body["keep_best"] = bool(body["keep_best"])


def train_from_tab(task_id: str, files, *values) -> tuple[Any, str]:
    names = [k for k in fields.CROSS_INIT_FIELDS if k != "images"]

    def run():
        body = dict(zip(names, values))
        body["face_model"] = body["face_model"] if body["face_model"] != "none" else ""
        for key in ("steps", "batch", "grad_accum", "resolution", "seed", "save_every", "preview_every"):
            body[key] = int(body[key])
        if "likeness_every" in body:
            _likeness_values(body)
        if body["preset"] != "custom":
            del body["steps"]  # the box only counts for the custom preset
        checked, config = fields.cross_init_request(body)
        from pathlib import Path

        result = jobs.cross_init(_photos(files, "photos"), checked, config,
                                 file_names=[Path(getattr(f, "name", f)).name for f in files])
        text = (f"{'Loaded (already trained with these photos and settings)' if result['reused'] else 'Trained'} "
                f"'{result['name']}': {result['vectors']} vectors, {result['family']}, saved to {result['path']}.\n"
                f"Write {result['prompt_word']} in a txt2img prompt.")
        return None, _message("\n".join([*result["warnings"], text]))

    out = _guarded(run)
    return "", out[1]


CB_CONTROLS = ("names", "steps", "lr", "batch", "resolution", "seed", "views", "save_every", "preview_every",
               "saved_progress", "overwrite", "names_file", "gradient_checkpointing", "face_model", "recognizer",
               *LIKENESS_CONTROLS)


def celeb_basis_from_tab(task_id: str, files, *values) -> tuple[Any, str]:
    def run():
        from pathlib import Path

        body = dict(zip(CB_CONTROLS, values))
        for key in ("steps", "batch", "resolution", "seed", "views", "save_every", "preview_every"):
            body[key] = int(body[key])
        if "likeness_every" in body:
            _likeness_values(body)
        body["lr"] = float(body["lr"])
        body["recognizer"] = body["recognizer"] or "auto"
        body["face_model"] = body["face_model"] or "antelopev2"  # none installed: the error says where it goes
        checked, config = fields.celeb_basis_request(body)
        result = jobs.celeb_basis(_photos(files, "photos"), checked, config,
                                  file_names=[Path(getattr(f, "name", f)).name for f in files])
        done = "Loaded (already trained with these photos and settings)" if result["reused"] else "Trained"
        lines = [f"{done} {', '.join(p['name'] for p in result['people'])} ({result['family']}):"]
        lines += [f"  {p['name']} -> {p['path']}" for p in result["people"]]
        lines.append("Write e.g. 'a photo of " + " person and ".join(p["prompt_word"] for p in result["people"])
                     + " person' in a txt2img prompt.")
        return None, _message("\n".join([*result["warnings"], *lines]))

    return "", _guarded(run)[1]


MC_CONTROLS = ("subject_name", "style_name", "preset", "resolution", "seed", "save_every", "preview_every",
               "saved_progress", "overwrite", "gradient_checkpointing", "face_model", "recognizer", "parsing_model",
               *LIKENESS_CONTROLS)


def magicapture_from_tab(task_id: str, subject_files, style_files, *values) -> tuple[Any, str]:
    def run():
        body = dict(zip(MC_CONTROLS, values))
        for key in ("resolution", "seed", "save_every", "preview_every"):
            body[key] = int(body[key])
        if "likeness_every" in body:
            _likeness_values(body)
        body["face_model"] = body["face_model"] or "antelopev2"
        body["recognizer"] = body["recognizer"] or "auto"
        checked, config = fields.magicapture_request(body)
        result = jobs.magicapture(_photos(subject_files, "subject photos"), _photos(style_files, "style photos"),
                                  checked, config)
        done = "Loaded (already trained with these photos and settings)" if result["reused"] else "Trained"
        return None, _message(f"{done}: {result['lora']}\nEmbeddings: {', '.join(result['embeddings'])}\n"
                              f"Prompt: {result['prompt']}")

    return "", _guarded(run)[1]


def adaface_from_tab(files, name, strength, face_model, adaface_file, arc2face, save_embedding, overwrite):
    def run():
        from pathlib import Path

        checked = fields.checked_fields({"name": name, "strength": float(strength), "face_model": face_model,
                                         "adaface": adaface_file, "arc2face": arc2face,
                                         "save_embedding": bool(save_embedding), "overwrite": bool(overwrite)},
                                        fields.ADAFACE_FIELDS, "adaface")
        result, identity = jobs.adaface(_photos(files, "photos"), checked,
                                        file_names=[Path(getattr(f, "name", f)).name for f in files])
        where = (f"saved to {result['path']}; write {result['prompt_word']} in a txt2img prompt" if result["path"]
                 else "not saved (tick save_embedding to use it in prompts)")
        return None, _message("\n".join([*result["warnings"], f"{identity.describe()}: {where}."]))

    return "", _guarded(run)[1]


def align_from_tab(files, face_model, template, face, index, if_no_face, border="black"):
    def run():
        checked = fields.checked_fields({"face_model": face_model, "template": template, "face": face,
                                         "index": int(index), "if_no_face": if_no_face, "border": border},
                                        fields.ALIGN_FIELDS, "align")
        result, crops = jobs.align(_photos(files, "photos"), checked)
        return crops, _message(f"{result['found']}/{result['total']} face(s) aligned to {template}.")

    crops, message = _guarded(run)
    return crops or [], message


def score_from_tab(files, reference_files, face_model):
    def run():
        checked = fields.checked_fields({"face_model": face_model}, fields.SCORE_FIELDS, "identity-score")
        result, plot = jobs.identity_score(_photos(files, "generated images"),
                                           _photos(reference_files, "reference photos"), checked)
        lines = result["summary"].split("\n") + [f"image {i + 1}: {'no face' if s is None else f'{s:.4f}'}"
                                                  for i, s in enumerate(result["scores"])]
        return plot, _message("\n".join(lines))

    plot, message = _guarded(run)
    return plot, message


RIG_RENDER_CONTROLS = ("face_model", "rig_model", "edit_light", "edit_expression", "edit_pose", "edit_latent", "yaw",
                       "pitch", "roll", "jaw_open", "expression_scale", "light_azimuth", "light_elevation",
                       "light_strength", "seed", "paste_back")
RIG_PERSONALIZE_CONTROLS = ("face_model", "rig_model", "name", "steps", "batch", "learning_rate", "seed", "save_every",
                            "preview_every", "saved_progress", "overwrite", "fp16")


def rig_render_from_tab(files, target_files, *values):
    def run():
        body = dict(zip(RIG_RENDER_CONTROLS, values))
        body["seed"] = int(body["seed"])
        body["rig_model"] = "" if body["rig_model"] in (None, "none") else body["rig_model"]
        body["face_model"] = body["face_model"] or "antelopev2"
        checked = fields.checked_fields(body, fields.RIG_RENDER_FIELDS, "rig/render")
        targets = _photos(target_files, "target photos") if target_files else None
        result, (edits, pictures) = jobs.rig_render(_photos(files, "photos"), targets, checked)
        gallery = [(e, label) for e, label in zip(edits, result["labels"])]
        gallery += [(p, f"{name}: {label}") for name, group in pictures.items() for p, label in zip(group, result["labels"])]
        note = result["model"] or "no DiffusionRig model chosen: the images are the shaded renders"
        return gallery, _message(f"{len(edits)} image(s) ({note}).")

    gallery, message = _guarded(run)
    return gallery or [], message


def rig_personalize_from_tab(task_id: str, files, *values) -> tuple[Any, str]:
    def run():
        body = dict(zip(RIG_PERSONALIZE_CONTROLS, values))
        for key in ("steps", "batch", "seed", "save_every", "preview_every"):
            body[key] = int(body[key])
        body["learning_rate"] = float(body["learning_rate"])
        body["face_model"] = body["face_model"] or "antelopev2"
        checked = fields.checked_fields(body, fields.RIG_PERSONALIZE_FIELDS, "train/rig-personalize")
        result = jobs.rig_personalize(_photos(files, "album photos"), checked)
        done = "Loaded (already trained with these photos and settings)" if result["reused"] else "Trained"
        return None, _message(f"{done}: {result['path']} ({result['model']}). Choose it as rig_model above.")

    return "", _guarded(run)[1]


def _rig_section(gr, wrap_gradio_gpu_call, packs) -> None:
    """DiffusionRig: render edits of a photo, and personalise a model on an album (stage 2)."""
    rd, pd = fields.RIG_RENDER_FIELDS, fields.RIG_PERSONALIZE_FIELDS
    models = jobs.rig_files()
    gr.HTML("<p>DiffusionRig (its own 256 px model, not the checkpoint above): needs your FLAME files in "
            "models/flame, DECA's in models/deca and a DiffusionRig model in models/diffusionrig (see the README). "
            "The checkpoint above leaves the GPU while DiffusionRig runs.</p>")
    with gr.Row():
        with gr.Column():
            photos = gr.File(label="Photo(s) to edit", file_count="multiple", file_types=["image"],
                             elem_id=f"{ELEM}_rig_photos")
            targets = gr.File(label="Target photo (its light / expression / pose)", file_count="multiple",
                              file_types=["image"], elem_id=f"{ELEM}_rig_targets")
            with gr.Row():
                pack = gr.Dropdown(label="face_model", choices=packs, value=packs[0] if packs else None)
                model = gr.Dropdown(label="rig_model (models/diffusionrig)", choices=["none", *models],
                                    value=models[0] if models else "none", elem_id=f"{ELEM}_rig_model")
            with gr.Row():
                edits = [gr.Checkbox(label=key, value=rd[key]) for key in ("edit_light", "edit_expression",
                                                                            "edit_pose", "edit_latent")]
            with gr.Row():
                sliders = [gr.Slider(label=key, minimum=low, maximum=high, step=step, value=rd[key])
                           for key, low, high, step in (("yaw", -60, 60, 1), ("pitch", -45, 45, 1), ("roll", -45, 45, 1),
                                                        ("jaw_open", -5, 30, 1), ("expression_scale", -1, 3, 0.05))]
            with gr.Row():
                lights = [gr.Slider(label=key, minimum=low, maximum=high, step=step, value=rd[key])
                          for key, low, high, step in (("light_azimuth", -180, 180, 5), ("light_elevation", -90, 90, 5),
                                                       ("light_strength", 0, 3, 0.05))]
            with gr.Row():
                seed = gr.Number(label="seed", value=rd["seed"], precision=0)
                paste = gr.Checkbox(label="paste_back", value=rd["paste_back"])
            render = gr.Button("Render", variant="primary", elem_id=f"{ELEM}_rig_render")
        with gr.Column():
            gallery = gr.Gallery(label="Edits and buffers", elem_id=f"{ELEM}_rig_edits", columns=4)
            render_result = gr.HTML(value="")
    render.click(fn=wrap_gradio_gpu_call(rig_render_from_tab, extra_outputs=[[]]),
                 inputs=[photos, targets, pack, model, *edits, *sliders, *lights, seed, paste],
                 outputs=[gallery, render_result])
    with gr.Accordion("Personalise a model (stage 2, ~20 photos of the person)", open=False):
        with gr.Row():
            with gr.Column():
                album = gr.File(label="Album: photos of one person", file_count="multiple", file_types=["image"],
                                elem_id=f"{ELEM}_rig_album")
                with gr.Row():
                    stage1 = gr.Dropdown(label="rig_model (the stage-1 model to start from)", choices=models,
                                         value=models[0] if models else None)
                    name = gr.Textbox(label="name", value=pd["name"], info="models/diffusionrig/<name>.safetensors")
                with gr.Row():
                    steps = gr.Number(label="steps", value=pd["steps"], precision=0)
                    batch = gr.Number(label="batch", value=pd["batch"], precision=0)
                    lr = gr.Number(label="learning_rate", value=pd["learning_rate"])
                    p_seed = gr.Number(label="seed", value=pd["seed"], precision=0)
                with gr.Row():
                    save_every = gr.Number(label="save_every", value=pd["save_every"], precision=0)
                    preview_every = gr.Number(label="preview_every", value=pd["preview_every"], precision=0)
                    saved = gr.Radio(label="saved_progress", choices=list(fields.SAVED_PROGRESS),
                                     value=pd["saved_progress"])
                    overwrite = gr.Checkbox(label="overwrite", value=False)
                    fp16 = gr.Checkbox(label="fp16 (CUDA, with loss scaling)", value=True)
                task = gr.Textbox(visible=False, elem_id=f"{ELEM}_rig_task_id")
                train = gr.Button("Personalise", variant="primary", elem_id=f"{ELEM}_rig_train")
            with gr.Column():
                text = gr.Text(elem_id=f"{ELEM}_rig_output", value="", show_label=False)
                gr.Gallery(label="Preview", show_label=False, elem_id=f"{ELEM}_rig_gallery", columns=1)
                gr.HTML(elem_id=f"{ELEM}_rig_progress", value="")
                result = gr.HTML(elem_id=f"{ELEM}_rig_result", value="")
        train.click(fn=wrap_gradio_gpu_call(rig_personalize_from_tab, extra_outputs=[""]),
                    _js="anybody_start_rig",
                    inputs=[task, album, pack, stage1, name, steps, batch, lr, p_seed, save_every, preview_every,
                            saved, overwrite, fp16],
                    outputs=[text, result])


def build():
    """The tab, as ``on_ui_tabs`` wants it: ``[(blocks, title, elem_id)]``."""
    import gradio as gr
    from modules.call_queue import wrap_gradio_gpu_call

    from ..face.align import BORDERS
    from ..face.detect import SELECT_MODES
    from ..face.pipeline import NO_FACE
    from ..face.templates import TEMPLATES

    d = fields.CROSS_INIT_FIELDS
    packs = jobs.face_packs()
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.HTML("<p>Put anybody into Stable Diffusion from a few photos, on the checkpoint selected above (SD1.x, SD2.x "
                "or SDXL). Trained identities land in the embeddings folder: write their name in a prompt.</p>")
        with gr.Tabs():
            with gr.Tab("Cross-Init training", elem_id=f"{ELEM}_cross_init_tab"):
                with gr.Row():
                    with gr.Column():
                        photos = gr.File(label="Face photos of one person", file_count="multiple",
                                         file_types=["image"], elem_id=f"{ELEM}_train_photos")
                        with gr.Row():
                            name = gr.Textbox(label="name", value=d["name"], elem_id=f"{ELEM}_name",
                                              info="embeddings/<name>.safetensors; letters, digits, _ - . (no spaces)")
                            preset = gr.Dropdown(label="preset", choices=[*PRESETS, "custom"], value=d["preset"],
                                                 elem_id=f"{ELEM}_preset", info="paper-320, fast-25, or custom steps")
                            steps = gr.Number(label="steps", value=d["steps"], precision=0, elem_id=f"{ELEM}_steps")
                        with gr.Row():
                            lr = gr.Number(label="lr", value=d["lr"], elem_id=f"{ELEM}_lr")
                            batch = gr.Number(label="batch", value=d["batch"], precision=0, elem_id=f"{ELEM}_batch")
                            grad_accum = gr.Number(label="grad_accum", value=d["grad_accum"], precision=0)
                            resolution = gr.Number(label="resolution (0: the model's own)", value=d["resolution"],
                                                   precision=0)
                            seed = gr.Number(label="seed", value=d["seed"], precision=0)
                        with gr.Row():
                            save_every = gr.Number(label="save_every", value=d["save_every"], precision=0)
                            preview_every = gr.Number(label="preview_every", value=d["preview_every"], precision=0)
                            saved_progress = gr.Radio(label="saved_progress", choices=list(fields.SAVED_PROGRESS),
                                                      value=d["saved_progress"], elem_id=f"{ELEM}_saved_progress")
                            overwrite = gr.Checkbox(label="overwrite", value=d["overwrite"],
                                                    elem_id=f"{ELEM}_overwrite")
                        with gr.Row():
                            names_file = gr.Dropdown(label="names_file", choices=jobs.name_lists(),
                                                     value=d["names_file"])
                            checkpointing = gr.Checkbox(label="gradient_checkpointing", value=False)
                            face_model = gr.Dropdown(label="face_model", choices=["none", *packs], value="none")
                            crop_to_face = gr.Checkbox(label="crop_to_face", value=False)
                            from .inject import identity_files

                            init_identity = gr.Dropdown(label="init_identity (start from an embedding, e.g. AdaFace's)",
                                                        choices=["", *identity_files()], value="",
                                                        elem_id=f"{ELEM}_init_identity")
                        likeness = _likeness_controls(gr, "")
                        task_id = gr.Textbox(visible=False, elem_id=f"{ELEM}_task_id")
                        train = gr.Button("Train", variant="primary", elem_id=f"{ELEM}_train")
                    with gr.Column(elem_id=f"{ELEM}_train_output_column"):
                        train_text = gr.Text(elem_id=f"{ELEM}_train_output", value="", show_label=False)
                        gr.Gallery(label="Preview", show_label=False, elem_id=f"{ELEM}_train_gallery", columns=1)
                        gr.HTML(elem_id=f"{ELEM}_train_progress", value="")
                        train_result = gr.HTML(elem_id=f"{ELEM}_train_result", value="")
                train.click(fn=wrap_gradio_gpu_call(train_from_tab, extra_outputs=[""]),
                            _js="anybody_start_training",
                            inputs=[task_id, photos, name, preset, steps, lr, batch, grad_accum, resolution, seed,
                                    save_every, preview_every, saved_progress, overwrite, names_file, checkpointing,
                                    face_model, crop_to_face, init_identity, *likeness],
                            outputs=[train_text, train_result])
            with gr.Tab("Celeb Basis training", elem_id=f"{ELEM}_celeb_basis_tab"):
                cbd = fields.CELEB_BASIS_FIELDS
                recognizers = ["auto", "pack", *jobs.recognizer_files()]
                with gr.Row():
                    with gr.Column():
                        cb_photos = gr.File(label="Face photos: one person, or several (one name per photo)",
                                            file_count="multiple", file_types=["image"], elem_id=f"{ELEM}_cb_photos")
                        with gr.Row():
                            cb_names = gr.Textbox(label="names", value=cbd["names"], elem_id=f"{ELEM}_cb_names",
                                                  info="one name for all photos, or one per photo in upload order, "
                                                       "repeated for the same person: 'alice, alice, bob'")
                            cb_steps = gr.Number(label="steps (per person)", value=cbd["steps"], precision=0)
                            cb_lr = gr.Number(label="lr", value=cbd["lr"])
                            cb_batch = gr.Number(label="batch", value=cbd["batch"], precision=0)
                        with gr.Row():
                            cb_resolution = gr.Number(label="resolution (0: the model's own)", value=0, precision=0)
                            cb_seed = gr.Number(label="seed", value=cbd["seed"], precision=0)
                            cb_views = gr.Number(label="views (per person)", value=cbd["views"], precision=0)
                            cb_save_every = gr.Number(label="save_every", value=cbd["save_every"], precision=0)
                            cb_preview_every = gr.Number(label="preview_every", value=cbd["preview_every"], precision=0)
                        with gr.Row():
                            cb_saved = gr.Radio(label="saved_progress", choices=list(fields.SAVED_PROGRESS),
                                                value=cbd["saved_progress"])
                            cb_overwrite = gr.Checkbox(label="overwrite", value=False)
                            cb_names_file = gr.Dropdown(label="names_file", choices=jobs.name_lists(),
                                                        value=cbd["names_file"])
                            cb_checkpointing = gr.Checkbox(label="gradient_checkpointing", value=False)
                        with gr.Row():
                            cb_pack = gr.Dropdown(label="face_model (aligns the faces)", choices=packs,
                                                  value=packs[0] if packs else None)
                            cb_recognizer = gr.Dropdown(label="recognizer (auto: the file in models/face_recognition, "
                                                              "else the pack's)", choices=recognizers, value="auto",
                                                        elem_id=f"{ELEM}_cb_recognizer")
                        cb_likeness = _likeness_controls(gr, "cb_")
                        cb_task = gr.Textbox(visible=False, elem_id=f"{ELEM}_cb_task_id")
                        cb_button = gr.Button("Train", variant="primary", elem_id=f"{ELEM}_cb_train")
                    with gr.Column():
                        cb_text = gr.Text(elem_id=f"{ELEM}_cb_output", value="", show_label=False)
                        gr.Gallery(label="Preview", show_label=False, elem_id=f"{ELEM}_cb_gallery", columns=1)
                        gr.HTML(elem_id=f"{ELEM}_cb_progress", value="")
                        cb_result = gr.HTML(elem_id=f"{ELEM}_cb_result", value="")
                cb_button.click(fn=wrap_gradio_gpu_call(celeb_basis_from_tab, extra_outputs=[""]),
                                _js="anybody_start_celeb_basis",
                                inputs=[cb_task, cb_photos, cb_names, cb_steps, cb_lr, cb_batch, cb_resolution, cb_seed,
                                        cb_views, cb_save_every, cb_preview_every, cb_saved, cb_overwrite,
                                        cb_names_file, cb_checkpointing, cb_pack, cb_recognizer, *cb_likeness],
                                outputs=[cb_text, cb_result])
            with gr.Tab("MagiCapture (person + style)", elem_id=f"{ELEM}_magicapture_tab"):
                mcd = fields.MAGICAPTURE_FIELDS
                from ..methods.magicapture import PRESETS as MC_PRESETS

                parsing_files = jobs.weight_files("face_parsing") or [mcd["parsing_model"]]
                with gr.Row():
                    with gr.Column():
                        mc_subjects = gr.File(label="Photos of the person", file_count="multiple", file_types=["image"],
                                              elem_id=f"{ELEM}_mc_subjects")
                        mc_styles = gr.File(label="Portraits in the style (each with a face)", file_count="multiple",
                                            file_types=["image"], elem_id=f"{ELEM}_mc_styles")
                        with gr.Row():
                            mc_subject = gr.Textbox(label="subject_name", value=mcd["subject_name"],
                                                    elem_id=f"{ELEM}_mc_subject_name")
                            mc_style = gr.Textbox(label="style_name", value=mcd["style_name"],
                                                  elem_id=f"{ELEM}_mc_style_name")
                            mc_preset = gr.Dropdown(label="preset", choices=list(MC_PRESETS), value=mcd["preset"],
                                                    info="paper: 1,200 + 1,500 steps; fast: 300 + 400 (ours)")
                        with gr.Row():
                            mc_resolution = gr.Number(label="resolution (0: the model's own)", value=0, precision=0)
                            mc_seed = gr.Number(label="seed", value=mcd["seed"], precision=0)
                            mc_save_every = gr.Number(label="save_every", value=mcd["save_every"], precision=0)
                            mc_preview_every = gr.Number(label="preview_every", value=mcd["preview_every"], precision=0)
                        with gr.Row():
                            mc_saved = gr.Radio(label="saved_progress", choices=list(fields.SAVED_PROGRESS),
                                                value=mcd["saved_progress"])
                            mc_overwrite = gr.Checkbox(label="overwrite", value=False)
                            mc_checkpointing = gr.Checkbox(label="gradient_checkpointing", value=False)
                        with gr.Row():
                            mc_pack = gr.Dropdown(label="face_model", choices=packs, value=packs[0] if packs else None)
                            mc_recognizer = gr.Dropdown(label="recognizer (models/face_recognition; torch ArcFace)",
                                                        choices=["auto", *jobs.recognizer_files()], value="auto")
                            mc_parsing = gr.Dropdown(label="parsing_model (models/face_parsing)", choices=parsing_files,
                                                     value=parsing_files[0])
                        mc_likeness = _likeness_controls(gr, "mc_")
                        mc_task = gr.Textbox(visible=False, elem_id=f"{ELEM}_mc_task_id")
                        mc_button = gr.Button("Train", variant="primary", elem_id=f"{ELEM}_mc_train")
                    with gr.Column():
                        mc_text = gr.Text(elem_id=f"{ELEM}_mc_output", value="", show_label=False)
                        gr.Gallery(label="Preview", show_label=False, elem_id=f"{ELEM}_mc_gallery", columns=1)
                        gr.HTML(elem_id=f"{ELEM}_mc_progress", value="")
                        mc_result = gr.HTML(elem_id=f"{ELEM}_mc_result", value="")
                mc_button.click(fn=wrap_gradio_gpu_call(magicapture_from_tab, extra_outputs=[""]),
                                _js="anybody_start_magicapture",
                                inputs=[mc_task, mc_subjects, mc_styles, mc_subject, mc_style, mc_preset, mc_resolution,
                                        mc_seed, mc_save_every, mc_preview_every, mc_saved, mc_overwrite,
                                        mc_checkpointing, mc_pack, mc_recognizer, mc_parsing, *mc_likeness],
                                outputs=[mc_text, mc_result])
            with gr.Tab("AdaFace (no training)", elem_id=f"{ELEM}_adaface_tab"):
                ada = fields.ADAFACE_FIELDS
                checkpoints, arc_folders = jobs.adaface_files()
                with gr.Row():
                    with gr.Column():
                        ada_photos = gr.File(label="Face photo(s) of one person", file_count="multiple",
                                             file_types=["image"], elem_id=f"{ELEM}_adaface_photos")
                        with gr.Row():
                            ada_name = gr.Textbox(label="name", value=ada["name"], elem_id=f"{ELEM}_adaface_name")
                            ada_strength = gr.Slider(label="strength", minimum=0.0, maximum=10.0, step=0.1,
                                                     value=ada["strength"], elem_id=f"{ELEM}_adaface_strength",
                                                     info="1.0: AdaFace's vectors as they are; higher pushes the identity")
                        with gr.Row():
                            ada_pack = gr.Dropdown(label="face_model", choices=packs,
                                                   value=packs[0] if packs else None)
                            ada_file = gr.Dropdown(label="adaface (models/adaface)", choices=checkpoints,
                                                   value=checkpoints[0])
                            ada_arc = gr.Dropdown(label="arc2face (models/arc2face)", choices=arc_folders,
                                                  value=arc_folders[0])
                        with gr.Row():
                            ada_save = gr.Checkbox(label="save_embedding", value=ada["save_embedding"])
                            ada_overwrite = gr.Checkbox(label="overwrite", value=False)
                        ada_button = gr.Button("Encode", variant="primary", elem_id=f"{ELEM}_adaface")
                    with gr.Column():
                        ada_text = gr.Text(value="", show_label=False)
                        ada_result = gr.HTML(value="", elem_id=f"{ELEM}_adaface_result")
                ada_button.click(fn=wrap_gradio_gpu_call(adaface_from_tab, extra_outputs=[""]),
                                 inputs=[ada_photos, ada_name, ada_strength, ada_pack, ada_file, ada_arc, ada_save,
                                         ada_overwrite], outputs=[ada_text, ada_result])
            with gr.Tab("DiffusionRig (relight / re-pose)", elem_id=f"{ELEM}_rig_tab"):
                _rig_section(gr, wrap_gradio_gpu_call, packs)
            with gr.Tab("FaceAlign", elem_id=f"{ELEM}_align_tab"):
                with gr.Row():
                    with gr.Column():
                        align_photos = gr.File(label="Photos", file_count="multiple", file_types=["image"],
                                               elem_id=f"{ELEM}_align_photos")
                        with gr.Row():
                            align_pack = gr.Dropdown(label="face_model", choices=packs,
                                                     value=packs[0] if packs else None)
                            template = gr.Dropdown(label="template", choices=list(TEMPLATES), value="ffhq512")
                            face = gr.Dropdown(label="face", choices=[m for m in SELECT_MODES if m != "most_similar"],
                                               value="largest")
                            index = gr.Number(label="index", value=0, precision=0)
                            if_no_face = gr.Dropdown(label="if_no_face", choices=list(NO_FACE), value="error")
                            border = gr.Dropdown(label="border", choices=list(BORDERS), value="black",
                                                 info="beyond the photo's edge: black, or reflect (FFHQ's mirrored, "
                                                      "blurred fill)")
                        align = gr.Button("Align", variant="primary", elem_id=f"{ELEM}_align")
                    with gr.Column():
                        crops = gr.Gallery(label="Aligned crops", elem_id=f"{ELEM}_crops", columns=4)
                        align_result = gr.HTML(value="")
                align.click(fn=wrap_gradio_gpu_call(align_from_tab, extra_outputs=[[]]),
                            inputs=[align_photos, align_pack, template, face, index, if_no_face, border],
                            outputs=[crops, align_result])
            with gr.Tab("IdentityScore", elem_id=f"{ELEM}_score_tab"):
                with gr.Row():
                    with gr.Column():
                        generated = gr.File(label="Generated images", file_count="multiple", file_types=["image"])
                        references = gr.File(label="Reference photos", file_count="multiple", file_types=["image"])
                        score_pack = gr.Dropdown(label="face_model", choices=packs, value=packs[0] if packs else None)
                        score = gr.Button("Score", variant="primary", elem_id=f"{ELEM}_score")
                    with gr.Column():
                        chart = gr.Image(label="Identity similarity", type="numpy", interactive=False)
                        score_result = gr.HTML(value="")
                score.click(fn=wrap_gradio_gpu_call(score_from_tab, extra_outputs=[None]),
                            inputs=[generated, references, score_pack], outputs=[chart, score_result])
        if not jobs.face_packs(installed_only=True):
            from ..host.a1111 import face_model_roots

            gr.HTML(_message("No insightface pack found for FaceAlign, IdentityScore and crop_to_face: unzip "
                             "antelopev2 (or buffalo_l) so its .onnx files sit in "
                             f"{face_model_roots()[0]}/models/antelopev2/."))
    return [(tab, "Anybody", ELEM)]

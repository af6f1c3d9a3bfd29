"""HTTP routes under ``/anybody/v1/`` (registered by ``on_app_started``); bodies use the ComfyUI node's input names.

Handlers run in FastAPI's thread pool. Work on the model takes the webui's queue lock without waiting: a
request that arrives while a generation or training runs is answered 409 at once (retry later), rather than
holding an HTTP connection open for the length of someone else's job. Progress and Interrupt are the webui's
own: ``GET /sdapi/v1/progress``, ``POST /sdapi/v1/interrupt``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

from ..errors import AnybodyError, OutOfMemoryAnybodyError, TrainingCancelled
from . import fields, jobs

PREFIX = "/anybody/v1"


class Busy(Exception):
    """The webui is generating or training; the queue lock is taken."""


@contextlib.contextmanager
def webui_job(job: str):
    """The queue lock (not waited for) and ``shared.state`` of one job, as the webui's own API handlers do."""
    from modules import call_queue, shared

    if not call_queue.queue_lock.acquire(blocking=False):
        raise Busy("The webui is busy with a generation or a training run; send the request again when it has "
                   "finished (GET /sdapi/v1/progress shows how far it is).")
    try:
        shared.state.begin(job=job)
        try:
            yield
        finally:
            shared.state.end()
    finally:
        call_queue.queue_lock.release()


def answer(run: Callable[[], Any]):
    """Run a job; user errors become JSON ``{"error", "detail"}`` with a status that says who must act."""
    from fastapi.responses import JSONResponse

    try:
        return run()
    except Busy as exc:
        return JSONResponse({"error": "busy", "detail": str(exc)}, status_code=409)
    except TrainingCancelled as exc:
        return JSONResponse({"error": "interrupted", "detail": str(exc)}, status_code=409)
    except OutOfMemoryAnybodyError as exc:
        return JSONResponse({"error": "out_of_memory", "detail": str(exc)}, status_code=507)
    except AnybodyError as exc:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=400)


def _auth_dependency():
    """HTTP Basic against ``--api-auth``, as the webui's own API routes check it; None when no auth is set."""
    import secrets

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials
    from modules import shared

    spec = getattr(shared.cmd_opts, "api_auth", None)
    if not spec:
        return None
    users = dict(pair.split(":", 1) for pair in spec.split(",") if ":" in pair)

    def check(credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        password = users.get(credentials.username)
        if password is None or not secrets.compare_digest(credentials.password, password):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

    return Depends(check)


def enabled() -> bool:
    """The routes exist when the webui serves its API (``--api`` or ``--nowebui``), as its own routes do."""
    from modules import shared

    return bool(getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False))


def register(app) -> None:
    from fastapi import APIRouter, Body

    if not enabled():
        print("[Anybody] HTTP routes off: start the webui with --api to use /anybody/v1/.", flush=True)
        return
    auth = _auth_dependency()
    router = APIRouter(dependencies=[auth] if auth is not None else [])

    @router.get(f"{PREFIX}/info")
    def anybody_info():
        """Version, the loaded model's family, capabilities and model files present."""
        return jobs.info()

    @router.post(f"{PREFIX}/train/cross-init")
    def anybody_train_cross_init(body: dict = Body(...)):
        """Cross-Init training on the loaded model -> the embedding path and vector statistics."""
        def run():
            checked, config = fields.cross_init_request(body)
            images = fields.decode_images(checked["images"])
            with webui_job("anybody-cross-init"):
                return jobs.cross_init(images, checked, config)
        return answer(run)

    @router.post(f"{PREFIX}/train/celeb-basis")
    def anybody_train_celeb_basis(body: dict = Body(...)):
        """Celeb Basis training of one or several people on the loaded model -> one embedding per person."""
        def run():
            checked, config = fields.celeb_basis_request(body)
            images = fields.decode_images(checked["images"])
            with webui_job("anybody-celeb-basis"):
                return jobs.celeb_basis(images, checked, config)
        return answer(run)

    @router.post(f"{PREFIX}/train/magicapture")
    def anybody_train_magicapture(body: dict = Body(...)):
        """MagiCapture: a subject and a portrait style -> a kohya LoRA and two embeddings (SD1.x)."""
        def run():
            checked, config = fields.magicapture_request(body)
            subjects = fields.decode_images(checked["subject_images"], "subject_images")
            styles = fields.decode_images(checked["style_images"], "style_images")
            with webui_job("anybody-magicapture"):
                return jobs.magicapture(subjects, styles, checked, config)
        return answer(run)

    @router.post(f"{PREFIX}/align")
    def anybody_align(body: dict = Body(...)):
        """FaceAlign: aligned crops (base64 PNG) and per-photo face records."""
        def run():
            checked = fields.checked_fields(body, fields.ALIGN_FIELDS, "align")
            images = fields.decode_images(checked["images"])
            if checked["reference"] is not None:
                checked["reference"] = fields.decode_images(checked["reference"], "reference")
            with webui_job("anybody-align"):
                result, crops = jobs.align(images, checked)
            return {**result, "crops": [fields.encode_png(c) for c in crops]}
        return answer(run)

    @router.post(f"{PREFIX}/identity-score")
    def anybody_identity_score(body: dict = Body(...)):
        """IdentityScore: cosine similarity of generated faces to reference photos, and the chart (base64 PNG)."""
        def run():
            checked = fields.checked_fields(body, fields.SCORE_FIELDS, "identity-score")
            images = fields.decode_images(checked["images"])
            references = fields.decode_images(checked["reference"], "reference")
            with webui_job("anybody-identity-score"):
                result, plot = jobs.identity_score(images, references, checked)
            return {**result, "plot": fields.encode_png(plot)}
        return answer(run)

    @router.post(f"{PREFIX}/adaface")
    def anybody_adaface(body: dict = Body(...)):
        """AdaFaceEncode: face photos -> a 16-vector SD1.x embedding in the embeddings folder (no training)."""
        def run():
            checked = fields.checked_fields(body, fields.ADAFACE_FIELDS, "adaface")
            images = fields.decode_images(checked["images"])
            with webui_job("anybody-adaface"):
                return jobs.adaface(images, checked)[0]
        return answer(run)

    @router.post(f"{PREFIX}/rig/render")
    def anybody_rig_render(body: dict = Body(...)):
        """RigRender (DiffusionRig): edits of the photos (base64 PNG) with their buffers and labels."""
        def run():
            checked = fields.checked_fields(body, fields.RIG_RENDER_FIELDS, "rig/render")
            images = fields.decode_images(checked["images"])
            targets = (fields.decode_images(checked["target_images"], "target_images")
                       if checked["target_images"] is not None else None)
            with webui_job("anybody-rig-render"):
                result, (edits, pictures) = jobs.rig_render(images, targets, checked)
            return {**result, "images": [fields.encode_png(e) for e in edits],
                    **{name: [fields.encode_png(p) for p in group] for name, group in pictures.items()}}
        return answer(run)

    @router.post(f"{PREFIX}/train/rig-personalize")
    def anybody_rig_personalize(body: dict = Body(...)):
        """RigPersonalize (DiffusionRig stage 2): an album of one person -> models/diffusionrig/<name>.safetensors."""
        def run():
            checked = fields.checked_fields(body, fields.RIG_PERSONALIZE_FIELDS, "train/rig-personalize")
            images = fields.decode_images(checked["images"])
            with webui_job("anybody-rig-personalize"):
                return jobs.rig_personalize(images, checked)
        return answer(run)

    app.include_router(router)

"""The txt2img/img2img script: bind a saved identity (any Anybody embedding file) to a word for one generation.

The vectors are registered as a temporary embedding in the webui's embedding database after it reloads its
folder (``process``) and removed again afterwards, so ``word`` works exactly like an embedding file's name:
emphasis, long prompts and hires fix included. The binding is written into the infotext ("Anybody: word=file"),
so PNG info and "send to txt2img" reproduce it. Over the API: ``"alwayson_scripts": {"anybody identity":
{"args": [true, "alice.safetensors", "ohwx"]}}``; a face photo instead of a file (AdaFace, no training):
``"args": [true, "", "ohwx", "<base64 PNG/JPEG>", 1.0]``.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import AnybodyError, BadInputError
from ..host import a1111 as webui
from ..identity import Identity

TITLE = "Anybody identity"  # alwayson_scripts key: its lower case
INFOTEXT_KEY = "Anybody"
_WORD = re.compile(r"^[A-Za-z0-9_.<>\-]{1,64}$")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def identity_files() -> list[str]:
    """Embedding files in the webui's embeddings folder (subfolders too), as paths relative to it."""
    root = webui.embeddings_dir()
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)).replace("\\", "/") for p in root.rglob("*")
                  if p.suffix.lower() in EMBEDDING_SUFFIXES and p.is_file())


def resolve(choice: str) -> Path:
    """A file named relative to the embeddings folder; never a path outside it (the API takes any string)."""
    root = webui.embeddings_dir().resolve()
    path = (root / choice).resolve()
    if root not in path.parents or path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise BadInputError(f"Identity {choice!r} must be an embedding file inside {root} (e.g. alice.safetensors).")
    if not path.is_file():
        raise BadInputError(f"Identity file {choice!r} not found in {root}; train one in the Anybody tab or copy "
                            "an Anybody embedding file there.")
    return path


def binding(choice: str, word: str) -> tuple[Identity, str, str]:
    """The identity in ``choice``, the word it binds (its own name when empty) and the infotext value."""
    identity = Identity.load(resolve(choice))
    word = (word or "").strip() or identity.name
    if not _WORD.match(word):
        raise BadInputError(f"The word {word!r} must be one token-like word (letters, digits, _ - . < >; no spaces), "
                            "e.g. ohwx.")
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in identity.vectors.values())).hexdigest()[:8]
    return identity, word, f"{word}={choice}@{digest}"


def table_warning(identity: Identity, sd_model) -> str | None:
    """A warning when a token-space identity (Celeb Basis) was trained on another text encoder's token table."""
    if not any(k.startswith("anybody.token_table.") for k in identity.metadata):
        return None  # files that record no table: nothing to compare
    from ..methods.celeb_space import token_table_warning

    return token_table_warning(identity.metadata, webui.text_encoders(sd_model), f"The identity '{identity.name}'")


def face_binding(face, word: str, strength: float):
    """A face photo (PIL image from the page, base64 string over the API) -> an AdaFace identity bound to ``word``,
    with the first installed face pack and the default AdaFace files (SD1.x only)."""
    import numpy as np

    from ..methods.adaface import adaface_identity
    from . import fields, jobs

    if isinstance(face, str):
        image = fields.decode_image(face, "face photo")
    else:
        image = torch_image(face)
    packs = jobs.face_packs(installed_only=True)
    if not packs:
        raise BadInputError("AdaFace needs an insightface pack in models/insightface/models/ (e.g. antelopev2).")
    word = (word or "").strip() or "adaface_face"
    if not _WORD.match(word):
        raise BadInputError(f"The word {word!r} must be one token-like word (letters, digits, _ - . < >; no spaces).")
    identity, _ = adaface_identity(jobs.adaface_encoder(fields.ADAFACE_FIELDS), jobs.face_models(packs[0]), [image],
                                   word.strip("<>") or "adaface_face", strength)
    digest = hashlib.sha256(np.ascontiguousarray((image * 255).round().byte().numpy()).tobytes()).hexdigest()[:8]
    return identity, word, f"{word}=face:{digest}@{strength:g}"


def torch_image(pil):
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.uint8).copy()).float() / 255.0


def parse_infotext(value: str) -> tuple[str, str]:
    """``word=file@hash`` -> (file, word)."""
    word, _, rest = value.partition("=")
    return rest.rpartition("@")[0] or rest, word


#: words bound for the running generation -> what the embedding database held under them before (module-wide:
#: txt2img and img2img are separate script objects, and a failed job skips postprocess)
_BOUND: dict[str, object] = {}


def unbind_all(sd_model) -> None:
    from modules import sd_hijack

    while _BOUND:
        word, previous = _BOUND.popitem()
        sd_hijack.model_hijack.embedding_db.register_embedding_by_name(previous, sd_model, word)


def make_script_class():
    """The ``scripts.Script`` subclass (built here, so this module imports without the webui)."""
    import gradio as gr
    from modules import scripts, sd_hijack, shared
    from modules.ui_components import InputAccordion, ToolButton

    class AnybodyIdentityScript(scripts.Script):
        def title(self):
            return TITLE

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            with InputAccordion(False, label=TITLE, elem_id=self.elem_id("enabled")) as enabled:
                with gr.Row():
                    choice = gr.Dropdown(label="Identity (embedding file)", choices=identity_files(),
                                         elem_id=self.elem_id("identity"))
                    refresh = ToolButton(value="\U0001f504", elem_id=self.elem_id("refresh"))
                    word = gr.Textbox(label="Word in the prompt", placeholder="empty: the identity's name",
                                      elem_id=self.elem_id("word"))
                with gr.Row():
                    face = gr.Image(label="...or a face photo (AdaFace, SD1.x, no training)", type="pil",
                                    source="upload", elem_id=self.elem_id("face"))
                    strength = gr.Slider(label="AdaFace strength", minimum=0.0, maximum=10.0, step=0.1, value=1.0,
                                         elem_id=self.elem_id("strength"))
                gr.HTML("<p>Write the word in the prompt where the person goes, e.g. <code>photo of ohwx, "
                        "smiling</code>. Any Anybody embedding in the embeddings folder works; a face photo, when "
                        "given, is used instead.</p>")
            refresh.click(fn=lambda: gr.update(choices=identity_files()), inputs=[], outputs=[choice])
            self.infotext_fields = [
                # a face photo cannot come back from the infotext: only file bindings switch the script on
                (enabled, lambda d: INFOTEXT_KEY in d and not parse_infotext(d[INFOTEXT_KEY])[0].startswith("face:")),
                (choice, lambda d: parse_infotext(d[INFOTEXT_KEY])[0]
                 if INFOTEXT_KEY in d and not parse_infotext(d[INFOTEXT_KEY])[0].startswith("face:") else gr.update()),
                (word, lambda d: parse_infotext(d[INFOTEXT_KEY])[1] if INFOTEXT_KEY in d else gr.update()),
            ]
            self.paste_field_names = [INFOTEXT_KEY]
            return [enabled, choice, word, face, strength]

        def process(self, p, enabled=False, choice="", word="", face=None, strength=1.0, *rest):
            unbind_all(shared.sd_model)  # a job that failed before postprocess left its word registered
            if not enabled or not (choice or face is not None):
                return
            try:
                if face is not None and face != "":
                    identity, word, record = face_binding(face, word, float(strength))
                else:
                    identity, word, record = binding(choice, word)
                identity.require_family(webui.model_family(shared.sd_model))
            except AnybodyError as exc:  # the webui swallows script errors: say it where the user looks
                message = f"Anybody identity not applied: {exc}"
                print(f"[Anybody] {message}", flush=True)
                p.comment(message)
                p.extra_generation_params[f"{INFOTEXT_KEY} error"] = str(exc)  # the API's infotexts show it too
                return
            warning = table_warning(identity, shared.sd_model)
            if warning:
                print(f"[Anybody] {warning}", flush=True)
                p.comment(warning)
                p.extra_generation_params[f"{INFOTEXT_KEY} warning"] = warning  # the infotext (and the API) show it
            vecs = {k: v.to(webui.device_of_webui()) for k, v in identity.vectors.items()}
            vec = vecs if identity.family == "sdxl" else next(iter(vecs.values()))
            _BOUND[word] = sd_hijack.model_hijack.embedding_db.word_embeddings.get(word)
            webui.register_vectors(shared.sd_model, word, vec)
            # conditioning is cached by prompt text; the same words with other vectors must be encoded again
            p.cached_c, p.cached_uc = [None, None], [None, None]
            if hasattr(p, "cached_hr_c"):
                p.cached_hr_c, p.cached_hr_uc = [None, None], [None, None]
            p.extra_generation_params[INFOTEXT_KEY] = record

        def postprocess(self, p, processed, *args):
            unbind_all(shared.sd_model)

    return AnybodyIdentityScript

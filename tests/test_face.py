"""Face stack: templates, alignment math, pack loading, detection and selection with real onnxruntime sessions."""
import math

import numpy as np
import torch
import pytest

pytest.importorskip("insightface")
pytest.importorskip("onnx")

from face_onnx import build_detector, build_pack, build_recognizer, expected_face, paint_face  # noqa: E402

from anybody.errors import BadInputError, ModelFileError  # noqa: E402
from anybody.face import align as al  # noqa: E402
from anybody.face.detect import detect_faces, select_face  # noqa: E402
from anybody.face.models import find_pack, list_packs, load_face_models  # noqa: E402
from anybody.face.pipeline import align_images, to_uint8  # noqa: E402
from anybody.face.templates import ARCFACE_112, FFHQ_512, TEMPLATES, template  # noqa: E402


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    build_pack(root)
    return root


@pytest.fixture(scope="module")
def models(pack_root):
    return load_face_models("testpack", [pack_root], "CPU")


def _similarity(angle_deg, scale, tx, ty):
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def _canvas(h=640, w=640, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(90, 140, (h, w, 3), dtype=np.uint8)  # greyish noise: never red enough to be a face


# --- templates and alignment math ---------------------------------------------------------------------------

def test_templates_are_the_published_constants():
    from insightface.utils import face_align

    np.testing.assert_allclose(TEMPLATES["arcface112"].points, face_align.arcface_dst, atol=1e-4)
    np.testing.assert_allclose(TEMPLATES["ffhq512"].points[0], [192.98, 239.95])
    np.testing.assert_allclose(TEMPLATES["ffhq512"].points[4], [313.09, 371.15])
    for size in (256, 1024):
        np.testing.assert_allclose(TEMPLATES[f"ffhq{size}"].points, FFHQ_512 * size / 512)
    assert TEMPLATES["arcface112"].size == 112 and ARCFACE_112[0, 0] < ARCFACE_112[1, 0]
    with pytest.raises(BadInputError, match="ffhq512"):
        template("ffhq333")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("pose", [(0, 1, 0, 0), (23, 2.7, 130.5, -40), (-170, 0.3, 900, 1200)])
def test_landmarks_on_a_moved_template_map_exactly_onto_it(name, pose):
    tpl = TEMPLATES[name]
    moved = al.apply(al.invert(_similarity(*pose)), tpl.points)  # the template seen in some source photo
    m = al.similarity_matrix(moved, tpl)
    assert np.abs(al.apply(m, moved) - tpl.points).max() <= 1e-3


def test_arcface_alignment_equals_insightface_norm_crop():
    from insightface.utils import face_align

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
    lmk = al.apply(_similarity(12, 1.8, 40, 30), ARCFACE_112 * 0.9).astype(np.float32)
    m = al.similarity_matrix(lmk, TEMPLATES["arcface112"])
    # insightface keeps its template in float32: the matrices agree to 1e-4 px, the crops to one grey level
    np.testing.assert_allclose(m, face_align.estimate_norm(lmk, 112), atol=1e-4)
    ours, theirs = al.warp_to_crop(image, m, 112).astype(int), face_align.norm_crop(image, lmk, 112).astype(int)
    assert np.abs(ours - theirs).max() <= 1 and (ours == theirs).mean() > 0.99


@pytest.mark.parametrize("name", ["ffhq512", "arcface112"])
def test_paste_back_puts_a_dot_back_within_one_pixel(name):
    tpl = TEMPLATES[name]
    source = np.zeros((700, 900, 3), np.float32)
    m = al.similarity_matrix(al.apply(_similarity(17, 1.25, 300, 100), tpl.points), tpl)
    dot = al.apply(al.invert(m), tpl.points[2])[0]  # the nose, in source pixels
    y, x = np.round(dot[::-1]).astype(int)
    source[y - 1:y + 2, x - 1:x + 2] = 1.0
    crop = al.warp_to_crop(source, m, tpl.size)
    back = al.paste_back(np.zeros_like(source), crop, m)[..., 0]
    ys, xs = np.nonzero(back > 0.05)
    weights = back[ys, xs]
    centroid = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    assert np.linalg.norm(centroid - [x, y]) <= 1.0


def _disc_centroid(crop: np.ndarray) -> np.ndarray:
    weights = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:crop.shape[0], :crop.shape[1]]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def test_antialiased_warp_does_not_alias_fine_detail_and_keeps_the_geometry():
    """A face 8x the crop's size (a phone photo into ffhq256): the plain bilinear warp turns 1-px detail into
    moire, the antialiased one (area shrink by 4 first) into its average; both put a point in the same place."""
    tpl = TEMPLATES["ffhq256"]
    m = al.similarity_matrix(al.apply(al.invert(_similarity(7, 1 / 8, 40, 30)), tpl.points), tpl)
    assert abs(al.scale_of(m) - 1 / 8) < 1e-9
    checker = ((np.indices((2400, 2400)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    plain, smooth = al.warp_to_crop(checker, m, 256), al.warp_to_crop(checker, m, 256, antialias=True)
    inside = (slice(64, 192), slice(64, 192))
    assert plain[inside].std() > 30 and smooth[inside].std() < 2 and abs(smooth[inside].mean() - 127.5) < 1
    for ratio in (1.6, 3.0):  # below FFHQ's integer shrink: the supersampled warp still takes every pixel in
        near = al.similarity_matrix(al.apply(al.invert(_similarity(7, 1 / ratio, 40, 30)), tpl.points), tpl)
        stripes = ((np.indices((900, 900))[1] % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
        plain, smooth = al.warp_to_crop(stripes, near, 256), al.warp_to_crop(stripes, near, 256, antialias=True)
        assert plain[inside].std() > 2 * smooth[inside].std() and abs(smooth[inside].mean() - 127.5) < 3, ratio
    nose = al.apply(al.invert(m), tpl.points[2])[0]
    disc = np.zeros((2400, 2400, 3), np.uint8)
    ys, xs = np.ogrid[:2400, :2400]
    disc[(xs - nose[0]) ** 2 + (ys - nose[1]) ** 2 <= 60 ** 2] = 255
    for antialias in (False, True):
        centroid = _disc_centroid(al.warp_to_crop(disc, m, 256, antialias=antialias))
        assert np.linalg.norm(centroid - tpl.points[2]) < 0.25, (antialias, centroid)
    assert TEMPLATES["ffhq512"].antialias and not TEMPLATES["arcface112"].antialias, "recognition crops as insightface's"


def test_reflect_border_fills_beyond_the_photo_as_ffhq_does():
    """Where a crop leaves its photo: black, or FFHQ's fill (mirrored, blurred, fading to the median colour): a
    one-colour photo stays that colour everywhere, and well inside the photo both borders give the same pixels."""
    tpl = TEMPLATES["ffhq256"]
    m = al.similarity_matrix(al.apply(al.invert(_similarity(-9, 1.1, 60, 70)), tpl.points), tpl)  # near a corner
    flat = np.full((300, 400, 3), (90, 140, 200), np.uint8)
    black = al.warp_to_crop(flat, m, 256)
    assert (black.max(axis=2) == 0).mean() > 0.05, "the crop does leave the photo"
    filled = al.warp_to_crop(flat, m, 256, border="reflect")
    assert np.abs(filled.astype(int) - (90, 140, 200)).max() <= 1
    photo = _canvas(300, 400)
    black, filled = al.warp_to_crop(photo, m, 256), al.warp_to_crop(photo, m, 256, border="reflect")
    source = al.apply(al.invert(m), np.stack(np.meshgrid(np.arange(256), np.arange(256)), -1).reshape(-1, 2))
    margin = 0.3 * 256 / al.scale_of(m)  # beyond the blur's reach into the photo
    deep = ((source[:, 0] > margin) & (source[:, 0] < 400 - margin) & (source[:, 1] > margin)
            & (source[:, 1] < 300 - margin)).reshape(256, 256)
    assert deep.sum() > 1000 and np.abs(black[deep].astype(int) - filled[deep]).max() <= 1
    assert filled.max(axis=2).min() > 60, "no black left"
    with pytest.raises(ValueError, match="border"):
        al.warp_to_crop(photo, m, 256, border="wrap")


def test_landmark_mask_covers_the_face_and_not_the_corners():
    tpl = TEMPLATES["ffhq512"]
    mask = al.landmark_mask(tpl.points, 512)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    for x, y in tpl.points.round().astype(int):
        assert mask[y, x] == 1.0
    assert mask[5, 5] == 0.0 and mask[506, 506] == 0.0


# --- model packs --------------------------------------------------------------------------------------------

def test_pack_is_found_in_the_insightface_layout_and_listed(pack_root, models):
    assert find_pack("testpack", [pack_root]) == pack_root / "models" / "testpack"
    assert "testpack" in list_packs([pack_root]) and list_packs([pack_root])[:2] == ["antelopev2", "buffalo_l"]
    assert models.detector.taskname == "detection" and models.recognizer.taskname == "recognition"
    assert "CPUExecutionProvider" in models.describe()


def test_missing_pack_names_the_folders_files_and_source(tmp_path):
    with pytest.raises(ModelFileError) as err:
        find_pack("antelopev2", [tmp_path / "insightface"])
    msg = str(err.value)
    assert str(tmp_path / "insightface" / "models" / "antelopev2") in msg
    assert "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg and "insightface" in msg


def test_pack_one_folder_too_deep_is_explained(tmp_path):
    build_detector(tmp_path / "models" / "antelopev2" / "antelopev2" / "scrfd_10g_bnkps.onnx")
    with pytest.raises(ModelFileError, match="one folder too deep"):
        find_pack("antelopev2", [tmp_path])


def test_corrupt_onnx_is_an_error_naming_the_file(tmp_path):
    folder = tmp_path / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "det_10g.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelFileError, match="det_10g.onnx.*damaged"):
        load_face_models("broken", [tmp_path], "CPU")


def test_pack_without_a_detector_is_refused(tmp_path):
    build_recognizer(tmp_path / "models" / "reconly" / "w600k_r50.onnx")
    with pytest.raises(ModelFileError, match="No face detector"):
        load_face_models("reconly", [tmp_path], "CPU")


def test_unsafe_pack_name_and_unknown_provider(pack_root):
    with pytest.raises(BadInputError, match="not a model pack name"):
        find_pack("../etc", [pack_root])
    with pytest.raises(BadInputError, match="provider"):
        load_face_models("testpack", [pack_root], "TPU")


# --- detection and choosing a face --------------------------------------------------------------------------

def test_detector_reports_boxes_and_landmarks_left_to_right(models):
    image = _canvas()
    paint_face(image, 416, 320, blue=255)
    paint_face(image, 160, 160, blue=0)
    faces = detect_faces(models, image)
    assert len(faces) == 2
    for face, (x, y, b) in zip(faces, [(160, 160, 0), (416, 320, 255)]):
        box, lmk = expected_face(x, y, b)
        np.testing.assert_allclose(face.box, box, atol=1e-3)
        np.testing.assert_allclose(face.landmarks, lmk, atol=1e-3)
        assert face.score > 0.9


def test_choose_largest_index_and_errors(models):
    image = _canvas()
    paint_face(image, 160, 320, blue=255)
    paint_face(image, 448, 320, blue=0)
    faces = detect_faces(models, image)
    assert select_face(faces, "largest") is faces[0]
    assert select_face(faces, "index", 1) is faces[1]
    with pytest.raises(BadInputError, match="2 face"):
        select_face(faces, "index", 2)
    with pytest.raises(BadInputError, match="reference"):
        select_face(faces, "most_similar")


def _textured_faces(seed_a, seed_b):
    """Two same-size faces, each inside its own noise texture (so their crops differ)."""
    image = _canvas(seed=9)
    rng_a, rng_b = np.random.default_rng(seed_a), np.random.default_rng(seed_b)
    image[96:224, 96:224] = rng_a.integers(0, 120, (128, 128, 3))
    image[352:480, 416:544] = rng_b.integers(0, 120, (128, 128, 3))
    paint_face(image, 160, 160, blue=60)
    paint_face(image, 480, 416, blue=60)
    return image


def test_most_similar_picks_the_face_that_matches_the_reference(models):
    image = _textured_faces(1, 2)
    for right in (False, True):
        reference = _canvas(seed=3)
        sy, sx = ((352, 416) if right else (96, 96))
        reference[288:416, 288:416] = image[sy:sy + 128, sx:sx + 128]  # the same face, elsewhere in another photo
        (out,) = align_images(models, [image], "arcface112", "most_similar", references=[reference])
        expect_x = 480 if right else 160
        assert abs(out.face.box[0] + out.face.box[2] - 2 * expect_x) < 1e-3
        assert out.similarity > 0.99


def test_no_face_is_an_error_or_a_pass_through(models):
    blank = _canvas(480, 640)
    with pytest.raises(BadInputError, match="No face found in image 1"):
        align_images(models, [blank], "ffhq256")
    (out,) = align_images(models, [blank], "ffhq256", on_no_face="pass_through")
    assert out.face is None and out.crop.shape == (256, 256, 3) and out.mask.max() == 0
    record = out.record()
    assert record["found"] is False and record["source_size"] == [480, 640]
    # the pass-through crop is the centred square of the photo
    np.testing.assert_array_equal(al.apply(out.matrix, [[320, 240]])[0], [128, 128])


def test_align_gives_template_crops_masks_and_a_json_record(models):
    image = _canvas()
    paint_face(image, 320, 320, blue=128)
    (out,) = align_images(models, [image.astype(np.float32) / 255.0], "ffhq512")
    record = out.record()
    # the test detector's 5 points are not exactly FFHQ-shaped: they land on the template up to the fit's residual
    np.testing.assert_allclose(record["landmarks_in_crop"], al.apply(out.matrix, out.face.landmarks))
    np.testing.assert_allclose(out.matrix, al.similarity_matrix(out.face.landmarks, TEMPLATES["ffhq512"]))
    assert np.abs(np.array(record["landmarks_in_crop"]) - TEMPLATES["ffhq512"].points).max() < 6
    assert out.crop.shape == (512, 512, 3) and out.crop.dtype == np.uint8
    assert out.mask.shape == (512, 512) and out.mask[300, 256] == 1.0
    import json

    json.dumps(record)


# --- awkward images -----------------------------------------------------------------------------------------

def test_to_uint8_handles_gray_rgba_16bit_and_refuses_empty():
    rgba = np.zeros((4, 5, 4), np.float32)
    rgba[..., 0] = 1.0
    assert to_uint8(rgba).shape == (4, 5, 3) and to_uint8(rgba)[0, 0, 0] == 255
    gray = np.full((4, 5), 0.5, np.float32)
    assert (to_uint8(gray) == 128).all()
    deep = np.full((4, 5, 3), 65535, np.uint16)
    assert (to_uint8(deep) == 255).all()
    with pytest.raises(BadInputError, match="shape"):
        to_uint8(np.zeros((0, 5, 3), np.float32))


def test_one_pixel_image_passes_through_without_a_crash(models):
    (out,) = align_images(models, [np.zeros((1, 1, 3), np.uint8)], "arcface112", on_no_face="pass_through")
    assert out.face is None and out.crop.shape == (112, 112, 3)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n broken"])
def test_corrupt_and_empty_files_are_clear_errors(tmp_path, content):
    from anybody.images import read_image_uint8

    bad = tmp_path / "face.png"
    bad.write_bytes(content)
    with pytest.raises(BadInputError, match="face.png is not a readable image"):
        read_image_uint8(bad)


def test_16bit_and_rgba_png_files_decode_to_rgb(tmp_path):
    from PIL import Image

    from anybody.images import read_image_uint8

    deep = np.full((20, 30), 40000, np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    img = read_image_uint8(tmp_path / "deep.png")
    assert img.shape == (20, 30, 3) and abs(int(img[0, 0, 0]) - 40000 // 256) <= 1
    Image.new("RGBA", (30, 20), (10, 200, 30, 0)).save(tmp_path / "alpha.png")
    assert read_image_uint8(tmp_path / "alpha.png")[0, 0].tolist() == [10, 200, 30]


def test_a_very_large_photo_is_aligned_with_bounded_memory(models):
    import tracemalloc

    big = np.full((8000, 8000, 3), 110, np.uint8)
    big[2960:3360, 3960:4360] = (255, 0, 255)  # a "face" big enough to survive the 2048-px detection copy
    tracemalloc.start()
    (out,) = align_images(models, [big], "ffhq512", on_no_face="pass_through")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.face is not None
    assert peak < 0.5 * big.nbytes, f"aligning used {peak / 2**20:.0f} MiB on top of a {big.nbytes / 2**20:.0f} MiB photo"


def test_insightface_sample_photos_run_through_the_pipeline(models):
    """The photos shipped inside the insightface wheel: the small test models find no real faces in them, but the
    whole path (decode, detect at every size, pass-through, crop, record) must run without error."""
    import insightface

    from pathlib import Path

    from anybody.images import read_image_uint8

    folder = Path(insightface.__file__).parent / "data" / "images"
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    assert photos, "the insightface wheel ships sample images"
    outs = align_images(models, [read_image_uint8(p) for p in photos[:4]], "ffhq256", on_no_face="pass_through")
    assert len(outs) == min(4, len(photos)) and all(o.crop.shape == (256, 256, 3) for o in outs)


def test_cli_align_writes_crops_and_landmarks_json(pack_root, tmp_path):
    import json

    from PIL import Image

    from anybody.cli import main

    photos = tmp_path / "in"
    photos.mkdir()
    face = _canvas(seed=4)
    paint_face(face, 320, 320, blue=128)
    Image.fromarray(face).save(photos / "a.png")
    Image.fromarray(_canvas(seed=5)).save(photos / "b.jpg")  # no face: skipped by default
    rc = main(["align", str(photos), str(tmp_path / "out"), "--template", "arcface112", "--pack", "testpack",
               "--models-root", str(pack_root), "--provider", "CPU"])
    assert rc == 0
    data = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    assert data["template"] == "arcface112" and data["skipped"] == ["b.jpg"]
    (rec,) = data["faces"]
    assert rec["file"] == "a.png" and rec["found"] and len(rec["landmarks"]) == 5
    assert Image.open(tmp_path / "out" / "a.png").size == (112, 112)
    assert main(["align", str(photos), str(tmp_path / "out"), "--pack", "nosuchpack",
                 "--models-root", str(pack_root)]) == 2


def test_cli_align_never_writes_over_the_input_photos(pack_root, tmp_path, capsys):
    from PIL import Image

    from anybody.cli import main

    photos = tmp_path / "in"
    (photos / "sub").mkdir(parents=True)
    face = _canvas(seed=4)
    paint_face(face, 320, 320, blue=128)
    Image.fromarray(face).save(photos / "a.png")
    original = (photos / "a.png").read_bytes()
    common = ["--pack", "testpack", "--models-root", str(pack_root), "--provider", "CPU", "--overwrite"]
    for out in (photos, photos / "sub", tmp_path):  # the input itself, inside it, around it
        assert main(["align", str(photos), str(out), *common]) == 2
        assert "input folder" in capsys.readouterr().err
    assert main(["align", str(photos / "a.png"), str(photos), *common, "--output-inside-input"]) == 2
    assert "replace input photo(s) a.png" in capsys.readouterr().err
    assert (photos / "a.png").read_bytes() == original
    assert main(["align", str(photos), str(photos / "sub"), *common, "--output-inside-input"]) == 0
    assert (photos / "sub" / "a.png").is_file() and (photos / "a.png").read_bytes() == original


def test_training_photos_without_a_face_are_named_and_face_crops_are_aligned(models):
    from anybody.face.training_photos import describe_missing, face_crops, photos_without_faces

    with_face = _canvas(seed=4)
    paint_face(with_face, 320, 320, blue=128)
    photos = [with_face, _canvas(seed=5), with_face]
    assert photos_without_faces(models, photos) == [1]
    assert "photo 2 (b.jpg)" in describe_missing([1], ["a.png", "b.jpg", "c.png"])
    crops = face_crops(models, photos, 300)
    assert [tuple(c.shape) for c in crops] == [(512, 512, 3)] * 3 and 0 <= float(crops[0].min()) <= float(crops[0].max()) <= 1


def test_cli_training_lists_photos_without_a_face(pack_root, tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import save_file

    from anybody.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    face = _canvas(seed=4)
    paint_face(face, 320, 320, blue=128)
    Image.fromarray(face).save(photos / "a.png")
    Image.fromarray(_canvas(seed=5)).save(photos / "b.png")
    ckpt = tmp_path / "not_really.safetensors"  # passes the family check, fails to load after the face check
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}, str(ckpt))
    rc = main(["train", "cross-init", "--checkpoint", str(ckpt), "--images", str(photos), "--name", "x",
               "--out", str(tmp_path / "out"), "--face-pack", "testpack", "--models-root", str(pack_root)])
    err = capsys.readouterr().err
    assert "warning: No face found in photo 2 (b.png)" in err and rc == 2


def test_identity_score_is_cosine_to_the_reference_and_none_without_a_face(models):
    from anybody.face.pipeline import embed_faces
    from anybody.face.score import identity_report, score_plot, summarize

    image = _textured_faces(1, 2)
    reference = _canvas(seed=3)
    reference[288:416, 288:416] = image[96:224, 96:224]  # the left face
    other = _textured_faces(7, 8)
    blank = _canvas(seed=11)
    report = identity_report(models, [image, other, blank], [reference])
    scores = report.scores
    assert scores[0] > 0.99 and scores[2] is None and report.face_rate == pytest.approx(2 / 3)
    # the second image's score is exactly the best cosine of its faces to the reference embedding
    ref_face = detect_faces(models, reference)[0]
    ref = embed_faces(models, reference, [ref_face])[0]
    emb = embed_faces(models, other, detect_faces(models, other))
    assert scores[1] == pytest.approx(float((emb @ ref).max()), abs=1e-6) and scores[1] < 0.99
    assert report.baseline is None and report.copy_paste is None, "one reference photo: nothing to compare it with"
    text = summarize(report)
    assert "faces found in 2/3 image(s)" in text and "2 or more reference photos" in text
    plot = score_plot(report)
    assert plot.shape == (192, 512, 3) and plot.dtype == np.uint8
    with pytest.raises(BadInputError, match="reference"):
        identity_report(models, [image], [])
    with pytest.raises(BadInputError, match="reference photo 2"):
        identity_report(models, [image], [reference, blank])


def _units(*rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_baseline_is_the_references_to_each_other_leaving_one_out():
    from anybody.face.score import report_from_embeddings

    refs = _units([1, 0, 0], [0, 1, 0], [0, 0, 1])  # three photos, pairwise unrelated
    report = report_from_embeddings([], refs)
    assert report.baseline == pytest.approx(0.0, abs=1e-12)
    refs = _units([1, 0, 0], [1, 0, 0], [1, 0, 0])  # three identical photos
    assert report_from_embeddings([], refs).baseline == pytest.approx(1.0)
    refs = _units([1, 0], [0, 1])  # two photos: each against the other alone
    assert report_from_embeddings([], refs).baseline == pytest.approx(0.0, abs=1e-12)
    refs = _units([1, 0], [1, 1], [0, 1])
    expect = np.mean([_units(refs[[1, 2]].mean(0))[0] @ refs[0], _units(refs[[0, 2]].mean(0))[0] @ refs[1],
                      _units(refs[[0, 1]].mean(0))[0] @ refs[2]])
    assert report_from_embeddings([], refs).baseline == pytest.approx(expect)


def test_copy_paste_separates_a_replicated_photo_from_the_person():
    from anybody.face.score import report_from_embeddings

    refs = _units([1, 0.3, 0, 0], [1, 0, 0.3, 0], [1, 0, 0, 0.3])  # one person, three photos
    person = _units([1, 0.1, 0.1, 0.1])  # like all of them equally
    copy = refs[:1]  # exactly photo 1
    report = report_from_embeddings([person, copy, np.zeros((0, 4))], refs)
    assert report.copy_paste == pytest.approx(np.mean([0.0, 1.0 - refs[0] @ refs[1]]))
    assert report.closest[0] - report.others[0] == pytest.approx(0.0, abs=1e-12)
    assert report.closest[1] == pytest.approx(1.0) and report.others[1] == pytest.approx(refs[0] @ refs[1])
    assert report.scores[2] is None and report.face_rate == pytest.approx(2 / 3)
    assert report.copy_paste_references == pytest.approx(0.0, abs=1e-12), "the photos are equally alike"
    lopsided = _units([1, 0.3, 0, 0], [1, 0.3, 0.05, 0], [1, 0, 0, 0.3])  # photos 1 and 2 nearly the same
    gaps = []
    for i in range(3):
        sims = sorted((lopsided[j] @ lopsided[i] for j in range(3) if j != i), reverse=True)
        gaps.append(sims[0] - sims[1])
    assert report_from_embeddings([], lopsided).copy_paste_references == pytest.approx(np.mean(gaps))
    assert report_from_embeddings([], lopsided[:2]).copy_paste_references is None
    # in an image of two people the face most like the person is the one measured
    stranger = _units([0, 1, 0, 0])
    report = report_from_embeddings([np.concatenate([stranger, person])], refs)
    assert report.scores[0] == pytest.approx(float(person[0] @ _units(refs.mean(0))[0]))


def test_to_uint8_accepts_half_precision_tensors():
    import torch

    img = torch.full((4, 5, 3), 0.5, dtype=torch.bfloat16)
    assert (to_uint8(img) == 128).all()

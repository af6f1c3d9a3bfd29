"""Celeb Basis: the spec's acceptance checks (shared/methods/celeb_basis.md §11) and the product's training loop."""
import colorsys
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anybody.assets import read_lines
from anybody.errors import BadInputError, FileExistsAnybodyError, ModelFileError
from anybody.face.recognizer import torch_recognizer
from anybody.host.base import TextEncoder
from anybody.identity import Identity
from anybody.methods import celeb_basis as cb
from anybody.methods import celeb_space as cs
from anybody.nets.iresnet import IResNet
from anybody.text.names import BUNDLED_NAMES
from anybody.train import augment

FAST = cb.CelebBasisConfig(steps=3, resolution=64, views=4, save_every=0, preview_every=2)


class TableEncoder(TextEncoder):
    """A text encoder that is only a token table and the CLIP tokenizer: enough for everything basis-related."""

    key, bos, eos, pad = "clip_l", 49406, 49407, 49407

    def __init__(self, table: torch.Tensor) -> None:
        from anybody.assets import clip_tokenizer

        self.table, self.width, self.tok = table, int(table.shape[1]), clip_tokenizer()

    @property
    def vocab_size(self):
        return len(self.table)

    def tokenize(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def token_rows(self, ids):
        return self.table[torch.as_tensor(list(ids), dtype=torch.long)].float().clone()

    def encode_rows(self, batch):
        raise NotImplementedError


@pytest.fixture(scope="module")
def recognizer_file(tmp_path_factory):
    """A small IResNet in insightface's file layout (one block per stage), random but fixed."""
    torch.manual_seed(7)
    net = IResNet((1, 1, 1, 1))
    state = {k: (v.abs() + 1.0 if k.endswith("running_var") else v + 0.01 * torch.randn_like(v.float()).to(v.dtype)
                 if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("recognizer") / "backbone.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def recognizer(recognizer_file):
    return torch_recognizer(recognizer_file)


@pytest.fixture
def people():
    g = torch.Generator().manual_seed(3)
    return [cb.Person("alice", [torch.rand(64, 64, 3, generator=g)]),
            cb.Person("bob", [torch.rand(64, 64, 3, generator=g), torch.rand(64, 64, 3, generator=g)])]


# --- §11.1 names ------------------------------------------------------------------------------------------------

def test_names_are_deduplicated_sorted_and_columns_are_bpe_positions(host):
    enc = host.encoders["clip_l"]
    names = ["Zoe Saldana", "Brad Pitt", "Brad Pitt", "Madonna", "Brad Smith"]
    columns = cs.name_token_columns(enc, names)
    # de-duplicated and sorted: Brad Pitt, Brad Smith, Madonna, Zoe Saldana
    order = ["Brad Pitt", "Brad Smith", "Madonna", "Zoe Saldana"]
    assert columns[0] == [enc.tokenize(n)[0] for n in order]
    assert columns[1] == [enc.tokenize(n)[1] for n in order if len(enc.tokenize(n)) > 1]
    assert len(enc.tokenize("Madonna")) == 1 and len(columns[1]) == 3  # single-token names feed column 1 only
    distinct = cs.name_token_columns(enc, names, "distinct_tokens")
    assert distinct[0] == list(dict.fromkeys(columns[0])) and len(distinct[0]) == 3  # "brad" once
    with pytest.raises(BadInputError, match="row mode"):
        cs.name_token_columns(enc, names, "bogus")


def test_bundled_list_gives_both_columns_enough_rows(host):
    columns = cs.name_token_columns(host.encoders["clip_l"], read_lines(BUNDLED_NAMES))
    assert len(columns[0]) == len(set(read_lines(BUNDLED_NAMES))) > 1000
    assert len(columns[1]) > cs.N_COMPONENTS


# --- §11.2, §11.3 basis -----------------------------------------------------------------------------------------

def test_basis_is_orthonormal_centred_ordered_sign_fixed_and_stable(host):
    enc = host.encoders["clip_l"]
    names = read_lines(BUNDLED_NAMES)
    basis, ranks = cs.build_basis(enc, names)
    assert basis.shape == (2, 513, 768) and basis.dtype == torch.float32 and min(ranks) >= 512
    columns = cs.name_token_columns(enc, names)
    for c in range(2):
        directions = basis[c, 1:]
        gram = directions @ directions.T
        assert (gram - torch.eye(512)).abs().max() < 1e-5
        rows = enc.token_rows(columns[c]).half().float()  # the table as its fp16-rounded digest sees it
        assert torch.allclose(basis[c, 0], rows.double().mean(0).float(), atol=1e-6)
        _, singular, _ = cs.pca_rows(rows, 512)
        assert (singular > 0).all() and (singular[1:] <= singular[:-1]).all()
        biggest = directions.abs().argmax(1)
        assert (directions[torch.arange(512), biggest] > 0).all()  # the sign rule
    assert cs.tensor_digest(cs.build_basis(enc, names)[0]) == cs.tensor_digest(basis)


def test_projection_round_trip_is_exact_and_unit_distance_from_the_mean():
    basis_tensor = torch.stack([cs.pca_rows(torch.randn(700, 768, generator=torch.Generator().manual_seed(c)), 512)[0]
                                for c in range(2)])
    basis = cs.CelebBasis({"clip_l": basis_tensor}, {"clip_l": "x"}, "n", "as_built")
    alpha = F.normalize(torch.randn(5, 2, 512), dim=-1)
    v = basis.vectors({"clip_l": alpha})["clip_l"]
    assert v.shape == (5, 2, 768)
    back = torch.einsum("bjd,jkd->bjk", v - basis_tensor[:, 0], basis_tensor[:, 1:])
    assert torch.allclose(back, alpha, atol=1e-5)
    assert torch.allclose((v - basis_tensor[:, 0]).norm(dim=-1), torch.ones(5, 2), atol=1e-5)


def test_too_few_names_for_the_components_is_a_clear_error(host):
    with pytest.raises(BadInputError, match="Only .* names have a BPE token at position 1"):
        cs.build_basis(host.encoders["clip_l"], read_lines(BUNDLED_NAMES)[:100])
    with pytest.raises(BadInputError, match="same token"):
        cs.pca_rows(torch.ones(20, 8), 5)


def test_names_spanning_fewer_directions_get_a_fixed_orthonormal_completion():
    """The paper's own list spans 408 directions in column 1 (repeated first names) for 512 components: the data
    directions come first, then fixed directions orthogonal to them, the same on every run."""
    distinct = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    rows = distinct.repeat(20, 1)  # 60 rows, 3 distinct: the centred rows span 2 directions
    basis, singular, rank = cs.pca_rows(rows, 5)
    directions = basis[1:].double()
    assert rank == 2 and basis.shape == (6, 8)
    assert (directions @ directions.T - torch.eye(5, dtype=torch.float64)).abs().max() < 1e-6
    centred = rows.double() - rows.double().mean(0)
    assert torch.allclose(centred @ directions[2:].T, torch.zeros(60, 3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose((centred @ directions[:2].T) @ directions[:2], centred, atol=1e-5)  # data span first
    assert torch.equal(cs.pca_rows(rows.clone(), 5)[0], basis)


def test_basis_cache_is_reused_rebuilt_when_damaged_and_keyed_by_the_token_table(tmp_path):
    table = torch.randn(49408, 64, generator=torch.Generator().manual_seed(0))
    names = read_lines(BUNDLED_NAMES)
    logs = []
    first = cs.load_or_build({"clip_l": TableEncoder(table)}, names, tmp_path, components=32, log=logs.append)
    assert len(logs) == 1 and "Built" in logs[0]
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and first.table_digests["clip_l"] in files[0].name
    again = cs.load_or_build({"clip_l": TableEncoder(table.clone())}, names, tmp_path, components=32, log=logs.append)
    assert len(logs) == 1 and torch.equal(again.tensors["clip_l"], first.tensors["clip_l"])
    # an fp16 load of the same checkpoint has the same table digest, so the same cached basis
    assert TableEncoder(table.half().float()).table_digest() == TableEncoder(table).table_digest()
    files[0].write_bytes(files[0].read_bytes()[:-40] + b"\0" * 40)
    cs.load_or_build({"clip_l": TableEncoder(table)}, names, tmp_path, components=32, log=logs.append)
    assert "damaged" in logs[1] and "Built" in logs[2]
    other = table.clone()
    other[5000] += 1.0  # a text encoder fine-tune: another table, another basis file
    cs.load_or_build({"clip_l": TableEncoder(other)}, names, tmp_path, components=32, log=logs.append)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


# --- §11.4 the map ----------------------------------------------------------------------------------------------

def test_heads_have_the_papers_shapes_init_and_unit_output():
    params = cb.new_heads(["clip_l"], 512, torch.Generator().manual_seed(0))
    assert params["clip_l.weight"].shape == (1024, 512) and params["clip_l.bias"].shape == (1024,)
    assert sum(p.numel() for p in params.values()) == 525_312
    assert abs(params["clip_l.weight"].std().item() - 1.0) < 0.01 and not params["clip_l.bias"].any()
    alpha = cb.unit_coefficients(params, "clip_l", F.normalize(torch.randn(3, 512), dim=-1))
    assert alpha.shape == (3, 2, 512)
    assert torch.allclose(alpha.norm(dim=-1), torch.ones(3, 2), atol=1e-6)
    h = F.leaky_relu(F.normalize(torch.ones(1, 512), dim=-1) @ params["clip_l.weight"].T, 0.2)
    assert torch.allclose(cb.unit_coefficients(params, "clip_l", F.normalize(torch.ones(1, 512), dim=-1))[0, 0],
                          h[0, :512] / h[0, :512].norm(), atol=1e-6)  # first 512 outputs -> token 1


def test_ema_update_is_per_sample_in_batch_order_and_exported_bias_corrected():
    ema = cb.new_ema(["clip_l"], 3, 4)
    alpha = {"clip_l": torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)}
    cb.ema_update(ema, torch.tensor([1, 0, 1]), alpha, 0.9)
    expected_1 = 0.9 * (0.1 * alpha["clip_l"][0]) + 0.1 * alpha["clip_l"][2]
    assert torch.allclose(ema["clip_l"][1], expected_1) and torch.allclose(ema["clip_l"][0], 0.1 * alpha["clip_l"][1])
    assert ema[cb.COUNTS].tolist() == [1, 2, 0]
    # exported: the decay-weighted mean of what the person was trained with (weights 0.9 and 1 here)
    assert torch.allclose(cb.ema_coefficients(ema, 1, 0.9, "b")["clip_l"], expected_1 / (1 - 0.9 ** 2))
    assert torch.allclose(cb.ema_coefficients(ema, 0, 0.9, "a")["clip_l"], alpha["clip_l"][1])
    with pytest.raises(BadInputError, match="'c' was never drawn"):
        cb.ema_coefficients(ema, 2, 0.9, "c")


# --- §11.5 insertion --------------------------------------------------------------------------------------------

def _official_insertion(emb: torch.Tensor, ids: list[int], placeholder: int, vectors: list[torch.Tensor]):
    """The official shift rule (spec §5.4), written from the spec: each placeholder at p, left to right, becomes
    the two vectors; later rows move right and the sequence is cut back to 77."""
    out, k, p = emb, 0, 0
    positions = [i for i, t in enumerate(ids) if t == placeholder]
    for shift, pos in enumerate(positions):
        p = pos + shift  # earlier insertions moved it right by (2 - 1) each
        out = torch.cat([out[:p], vectors[k], out[p + 1:]])[:77]
        k += 1
    return out


def _materialise(encoder, rows):
    return torch.stack([r if isinstance(r, torch.Tensor) else encoder.token_rows([r])[0] for r in rows])


def test_two_vector_insertion_matches_the_official_shift_rule_bit_exactly(host):
    enc = host.encoders["clip_l"]
    sks = enc.tokenize("sks")
    assert len(sks) == 1
    g = torch.Generator().manual_seed(0)
    v1, v2 = torch.randn(2, 768, generator=g), torch.randn(2, 768, generator=g)
    for text, words, vecs in (("a photo of sks person", ["<x>"], [v1]),
                              ("a photo of sks and sks at the beach", ["<x>", "<y>"], [v1, v2])):
        ids = [enc.bos, *enc.tokenize(text), enc.eos]
        ids += [enc.pad] * (77 - len(ids))
        reference = _official_insertion(enc.token_rows(ids), ids, sks[0], vecs)
        prompt = text
        for w in words:
            prompt = prompt.replace("sks", w, 1)
        rows = enc.rows(prompt, dict(zip(words, vecs)))
        ours = _materialise(enc, rows)
        assert len(rows) == 77 and torch.equal(ours, reference)
    rows = enc.rows("a photo of <x> person", {"<x>": v1})
    assert rows[4] is not None and torch.equal(rows[4], v1[0]) and torch.equal(rows[5], v1[1])
    assert rows[6] == enc.tokenize("person")[0] and rows[7] == enc.eos


def test_a_prompt_that_fills_77_rows_fits_and_one_more_token_is_a_clear_error(host):
    enc = host.encoders["clip_l"]
    v = torch.zeros(2, 768)
    words = " ".join(["photo"] * 73)
    rows = enc.rows(f"{words} <x>", {"<x>": v})
    assert len(rows) == 77 and rows[-1] == enc.eos and torch.equal(rows[74], v[0])
    with pytest.raises(BadInputError, match="76 tokens long"):
        enc.rows(f"{words} photo <x>", {"<x>": v})


# --- §11.6 the recognizer view ----------------------------------------------------------------------------------

def test_recognizer_view_puts_the_ffhq_landmarks_where_the_spec_says():
    from anybody.face.templates import FFHQ_512

    expected = [(43.0, 53.3), (68.4, 52.5), (56.3, 67.8), (45.5, 79.8), (68.1, 78.9)]
    yy, xx = torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij")
    empty = cb.recognizer_view(-torch.ones(1, 3, 512, 512))[0, 0]  # black, and the warp's zero padding
    for (x, y), (ex, ey) in zip(FFHQ_512, expected):
        blob = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 4.0 ** 2))
        w = (cb.recognizer_view((blob * 2 - 1).expand(1, 3, 512, 512))[0, 0] - empty) ** 4
        cy, cx = (w * torch.arange(112.0)[:, None]).sum() / w.sum(), (w * torch.arange(112.0)).sum() / w.sum()
        assert math.hypot(cx - ex, cy - ey) < 1.0, (x, y, float(cx), float(cy))


# --- augmentation -----------------------------------------------------------------------------------------------

def test_hue_rotation_matches_colorsys_and_jitter_is_seeded():
    rgb = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    shifted = augment._rotate_hue(rgb, 0.07)
    for y in range(4):
        for x in range(4):
            h, s, v = colorsys.rgb_to_hsv(*rgb[:, y, x].tolist())
            assert np.allclose(colorsys.hsv_to_rgb((h + 0.07) % 1, s, v), shifted[:, y, x].tolist(), atol=1e-5)
    a = augment.color_jitter(rgb, torch.Generator().manual_seed(5))
    b = augment.color_jitter(rgb, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, rgb) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(augment.color_jitter(rgb, torch.Generator(), 0, 0, 0, 0), rgb)


def test_paste_on_black_keeps_the_size_and_shrinks_the_face_onto_black():
    image = torch.ones(3, 64, 64)
    for seed in range(20):
        pasted = augment.paste_on_black(image, torch.Generator().manual_seed(seed))
        assert pasted.shape == image.shape
        ys, xs = torch.nonzero(pasted[0] > 0, as_tuple=True)
        height, width = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert 6 <= height <= 64 and width <= 64 and abs(width - height) <= 0.1 * height + 1
        assert int((pasted[0] > 0).sum()) == height * width  # one rectangle, the rest black


# --- §11.7 training in the product's loop ----------------------------------------------------------------------

def test_training_writes_stock_files_for_each_person_and_touches_no_weights(host, people, recognizer):
    before = {n: p.detach().clone() for n, p in host.encoders["clip_l"].model.named_parameters()}
    unet_before = [p.detach().clone() for p in host.unet.parameters()]
    results = cb.train_celeb_basis(host, people, recognizer, FAST)
    assert [r.path.name for r in results] == ["alice.safetensors", "bob.safetensors"]
    for n, p in host.encoders["clip_l"].model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(torch.equal(p, q) for p, q in zip(host.unet.parameters(), unet_before))
    assert host.sink.steps == list(range(1, 7)) and len(host.sink.previews) == 3  # 3 steps per person
    alice, bob = (Identity.load(r.path) for r in results)
    assert alice.vectors["clip_l"].shape == (2, 768) and alice.method == "celeb_basis"
    assert not torch.equal(alice.vectors["clip_l"], bob.vectors["clip_l"])
    basis = cs.load_or_build(host.encoders, read_lines(BUNDLED_NAMES), host.state_dir() / "celeb_basis")
    for ident in (alice, bob):  # exported == mu + c B recomputed from the stored basis and coefficients
        assert cb.stored_vectors_match(ident, basis, atol=1e-6)
        assert ident.metadata["anybody.token_table.clip_l"] == host.encoders["clip_l"].table_digest()
        assert ident.metadata["anybody.celeb_basis.clip_l.basis"] == basis.digests()["clip_l"]
    assert not (host.state_dir() / "celeb_basis.alice+bob.state.safetensors").exists()


def test_saved_coefficients_are_an_average_of_unit_vectors_even_after_a_short_run(host, people, recognizer):
    """The paper's decay with only a few updates: the saved coefficients are an average of unit vectors (norm at
    most 1, near 1 while the map moves little), never a leftover random start (norm ~22.6 in the official code)."""
    (result,) = cb.train_celeb_basis(host, people[:1], recognizer, replace(FAST, steps=3))
    norms = cb.coefficients_from(result.identity.metadata, "clip_l").norm(dim=-1)
    assert (norms <= 1.0 + 1e-5).all() and (norms > 0.9).all(), norms


def test_training_lowers_the_denoising_loss_on_a_fixed_probe(host, people, recognizer):
    """The product's own loop must lower the loss on fixed (t, noise) pairs of the person's training targets."""
    config = replace(FAST, steps=25, lr=0.05, ema_decay=0.0, batch=4)
    (trained,) = cb.train_celeb_basis(host, people[:1], recognizer, config)
    basis = cs.load_or_build(host.encoders, read_lines(BUNDLED_NAMES), host.state_dir() / "celeb_basis")
    faces = [cb._square(f, 64) for f in people[0].faces]
    views = cb.make_views(host, [cb.Person("alice", faces)], recognizer, config)
    gen = torch.Generator().manual_seed(config.seed)
    heads = cb.new_heads(["clip_l"], 512, gen)
    untrained = basis.vectors({"clip_l": cb.unit_coefficients(heads, "clip_l", views.features[:1])[0]})["clip_l"]
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (8,), generator=g)
    eps = torch.randn(8, 4, 8, 8, generator=g)
    a = host.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * views.mean[torch.arange(8) % len(views.mean)] + (1 - a).sqrt() * eps

    def probe(vectors):
        with torch.no_grad():
            cond = host.encode_prompts(["a photo of face of <x> person"] * 8, {"<x>": {"clip_l": vectors}})
            return F.mse_loss(host.predict(x_t, t, cond), eps).item()

    assert probe(trained.identity.vectors["clip_l"]) < probe(untrained) - 1e-4


def test_cancel_then_resume_is_exact_including_the_ema(host, people, recognizer, RecordingSink):
    cfg = replace(FAST, steps=3)
    full = cb.train_celeb_basis(host, [cb.Person("full_a", people[0].faces), cb.Person("full_b", people[1].faces)],
                                recognizer, cfg)
    host.sink = RecordingSink(cancel_after=2)
    with pytest.raises(KeyboardInterrupt):
        cb.train_celeb_basis(host, people, recognizer, cfg)
    assert not (host.embeddings_dir() / "alice.safetensors").exists()
    state = host.state_dir() / "celeb_basis.alice+bob.state.safetensors"
    assert state.is_file()
    host.sink = RecordingSink()
    with pytest.raises(BadInputError, match="saved progress"):
        cb.train_celeb_basis(host, people, recognizer, cfg)
    resumed = cb.train_celeb_basis(host, people, recognizer, cfg, resume=True)
    assert host.sink.steps == [3, 4, 5, 6]
    for a, b in zip(resumed, full):
        assert torch.equal(a.identity.vectors["clip_l"], b.identity.vectors["clip_l"])


def test_requeue_reuses_the_files_and_other_settings_need_overwrite(host, people, recognizer, RecordingSink):
    first = cb.train_celeb_basis(host, people, recognizer, FAST)
    host.sink = RecordingSink()
    again = cb.train_celeb_basis(host, people, recognizer, FAST)
    assert host.sink.steps == [] and all(r.reused for r in again)
    assert all(torch.equal(a.identity.vectors["clip_l"], b.identity.vectors["clip_l"]) for a, b in zip(first, again))
    with pytest.raises(FileExistsAnybodyError, match="overwrite"):
        cb.train_celeb_basis(host, people, recognizer, replace(FAST, seed=1))
    redone = cb.train_celeb_basis(host, people, recognizer, replace(FAST, seed=1), overwrite=True)
    assert not any(r.reused for r in redone)


def test_sdxl_gets_a_basis_and_a_head_per_encoder_marked_experimental(tmp_path, people, recognizer, RecordingSink):
    from anybody.host.tiny import tiny_host

    xl = tiny_host(tmp_path, sink=RecordingSink(), family="sdxl")
    (result,) = cb.train_celeb_basis(xl, people[:1], recognizer, replace(FAST, steps=2, components=64))
    ident = Identity.load(result.path)
    assert ident.family == "sdxl" and ident.vectors["clip_l"].shape == (2, 768) and ident.vectors["clip_g"].shape == (2, 1280)
    assert any("SDXL" in m and "experimental" in m for m in xl.sink.logs)
    basis = cs.load_or_build(xl.encoders, read_lines(BUNDLED_NAMES), xl.state_dir() / "celeb_basis", 64)
    assert basis.tensors["clip_g"].shape == (2, 65, 1280) and cb.stored_vectors_match(ident, basis)


# --- §11.8 stock loaders -----------------------------------------------------------------------------------------

def test_diffusers_load_textual_inversion_reads_the_two_vectors_in_order(tmp_path, people, recognizer):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from anybody.host.diffusers import DiffusersHost, DiffusersTextEncoder
    from anybody.host.tiny import SD_SCHEDULER, tiny_sd1_modules

    unet, vae, text_encoder, tokenizer = tiny_sd1_modules(seed=0)
    host = DiffusersHost(unet, vae, [DiffusersTextEncoder("clip_l", text_encoder, tokenizer)], SD_SCHEDULER, "sd1",
                         out_dir=tmp_path, device="cpu")
    host.sink.log = lambda m: None
    (result,) = cb.train_celeb_basis(host, people[:1], recognizer, replace(FAST, steps=1))
    prompt = "a photo of <alice> person"
    with torch.no_grad():
        ours = host.encode_prompts([prompt], {"<alice>": result.identity.vectors}).context
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(result.path), token="<alice>")
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert torch.allclose(theirs, ours, atol=1e-5)
    ids = tokenizer.convert_tokens_to_ids(["<alice>", "<alice>_1"])
    assert torch.equal(text_encoder.get_input_embeddings().weight[ids].detach(), result.identity.vectors["clip_l"])


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, match", [("", "no names"), ("# only a comment\n", "no names"),
                                            (b"\x00\x01binary", "not a UTF-8 text file")])
def test_empty_or_malformed_name_lists_are_clear_errors(host, people, recognizer, tmp_path, content, match):
    path = tmp_path / "names.txt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(BadInputError, match=match):
        cb.train_celeb_basis(host, people, recognizer, FAST, names_file=path)
    with pytest.raises(BadInputError, match="not found"):
        cb.train_celeb_basis(host, people, recognizer, FAST, names_file=tmp_path / "missing.txt")
    assert not list(host.embeddings_dir().glob("*.safetensors"))


def test_bad_people_and_settings_are_refused_before_anything_runs(host, people, recognizer):
    face = people[0].faces
    cases = [([], FAST, "at least one name"), ([cb.Person("a", face), cb.Person("a", face)], FAST, "repeat"),
             ([cb.Person(f"p{i}", face) for i in range(11)], FAST, "at most 10"),
             ([cb.Person("a", [])], FAST, "No face photos"), ([cb.Person("../x", face)], FAST, "contains a path"),
             ([cb.Person("a", [torch.rand(64, 48, 3)])], FAST, "square"),
             (people, replace(FAST, lr=float("nan")), "learning rate"), (people, replace(FAST, rows="x"), "row mode"),
             (people, replace(FAST, ema_decay=1.0), "ema_decay"), (people, replace(FAST, views=0), "views")]
    for who, config, match in cases:
        with pytest.raises(BadInputError, match=match):
            cb.train_celeb_basis(host, who, recognizer, config)
    assert host.sink.steps == [] and not list(host.embeddings_dir().glob("*"))


def test_recognizer_files_missing_or_of_the_wrong_network_are_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match="not found.*arcface_torch"):
        torch_recognizer(tmp_path / "backbone.pth")
    wrong = IResNet((1, 1, 1, 1)).state_dict()
    wrong["fc.weight"] = torch.zeros(512, 100)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ModelFileError, match=r"wrong.pth is not IResNet.*fc.weight"):
        torch_recognizer(tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="junk.pth could not be read"):
        torch_recognizer(tmp_path / "junk.pth")


def test_an_identity_from_another_token_table_is_warned_about(host, people, recognizer):
    (result,) = cb.train_celeb_basis(host, people[:1], recognizer, replace(FAST, steps=1))
    meta = result.identity.metadata
    assert cs.token_table_warning(meta, host.encoders, "alice") is None
    other = TableEncoder(torch.randn(49408, 768))
    message = cs.token_table_warning(meta, {"clip_l": other}, "alice.safetensors")
    assert "alice.safetensors was trained on a checkpoint whose text encoder token table differs" in message
    assert cs.token_table_warning({}, {"clip_l": other}, "x") is None  # files of other methods: nothing to check


# --- faces in --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    from face_onnx import build_pack

    from anybody.face.models import load_face_models

    root = tmp_path_factory.mktemp("insightface")
    build_pack(root)
    return load_face_models("testpack", [root], "CPU")


def test_photos_are_aligned_to_ffhq_and_faceless_ones_are_named(face_models):
    from face_onnx import paint_face

    from anybody.face.training_photos import ffhq_faces

    one, two, none = (np.random.default_rng(s).integers(0, 200, (640, 640, 3), dtype=np.uint8) for s in range(3))
    for image in (one, two, none):
        image[..., 0] = np.minimum(image[..., 0], 200)  # no accidental pure-red cells
    paint_face(one, 320, 320, blue=128)
    paint_face(two, 160, 160, blue=0)
    paint_face(two, 480, 480, blue=255)
    logs = []
    crops = ffhq_faces(face_models, [one, two], 96, ["a.png", "b.png"], logs.append)
    assert [tuple(c.shape) for c in crops] == [(96, 96, 3)] * 2 and 0 <= float(crops[0].min()) <= float(crops[0].max()) <= 1
    assert logs == ["photo 2 (b.png) shows 2 faces; the largest is used."]
    with pytest.raises(BadInputError, match=r"No face found in photo 2 \(c.png\)"):
        ffhq_faces(face_models, [one, none], 96, ["a.png", "c.png"])


def test_a_face_pack_recognizer_can_stand_in(face_models, host, people):
    from anybody.face.recognizer import pack_recognizer

    rec = pack_recognizer(face_models)
    feats = rec(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert feats.shape == (2, 512) and torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)
    (result,) = cb.train_celeb_basis(host, people[:1], rec, replace(FAST, steps=1))
    assert "rec_test.onnx (onnx)" in result.identity.metadata["anybody.recognizer"]
    with pytest.raises(BadInputError, match="112"):
        rec(torch.rand(1, 3, 64, 64))


def test_training_works_when_called_under_inference_mode_as_comfyui_runs_nodes(host, people, recognizer):
    """Views and the basis are made before training, under the caller's inference mode; the trainer must copy them
    into normal tensors before autograd saves them (a real-ComfyUI failure, reproduced here)."""
    with torch.inference_mode():
        (result,) = cb.train_celeb_basis(host, people[:1], recognizer, replace(FAST, steps=1))
    assert result.path.is_file()


def test_cli_trains_two_people_from_their_folders(face_models, recognizer_file, tmp_path, monkeypatch, capsys):
    from face_onnx import paint_face
    from PIL import Image

    from anybody.cli import main
    from anybody.host import checkpoint
    from anybody.host.tiny import tiny_host

    for name, blue in (("alice", 30), ("bob", 220)):
        (tmp_path / name).mkdir()
        photo = np.full((320, 320, 3), 90, np.uint8)
        paint_face(photo, 160, 160, blue=blue)
        Image.fromarray(photo).save(tmp_path / name / "1.png")
    monkeypatch.setattr(checkpoint, "detect_family", lambda path: "sd1")  # the tiny model stands in for the file
    monkeypatch.setattr(checkpoint, "load_checkpoint_host", lambda path, out_dir, **kw: tiny_host(out_dir))
    pack_root = Path(face_models.folder).parents[1]
    common = ["train", "celeb-basis", "--checkpoint", "x.safetensors", "--face-pack", "testpack", "--models-root",
              str(pack_root), "--provider", "CPU", "--recognizer", str(recognizer_file), "--out", str(tmp_path / "out"),
              "--steps", "1", "--views", "2", "--resolution", "64"]
    rc = main([*common, "--person", f"alice={tmp_path / 'alice'}", "--person", f"bob={tmp_path / 'bob'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (tmp_path / "out" / "embeddings" / "alice.safetensors").is_file() and "bob (celeb_basis, SD1.x, 2 vectors)" in out
    assert main([*common, "--person", "alice"]) == 2
    assert "write NAME=PHOTOS" in capsys.readouterr().err


def test_ten_long_names_keep_the_saved_progress_file_name_short(host, people, recognizer, RecordingSink):
    many = [cb.Person(f"{chr(97 + i)}" * 60, people[0].faces) for i in range(10)]
    host.sink = RecordingSink(cancel_after=1)
    with pytest.raises(KeyboardInterrupt):
        cb.train_celeb_basis(host, many, recognizer, replace(FAST, steps=1))
    (state,) = host.state_dir().glob("celeb_basis.*.state.safetensors")
    assert len(state.name) < 160 and state.name.startswith("celeb_basis." + "a" * 60 + "+9_more.")


def test_a_celeb_basis_identity_from_another_table_seeding_cross_init_is_warned_about(host, people, recognizer):
    from anybody.methods import cross_init as ci

    (result,) = cb.train_celeb_basis(host, people[:1], recognizer, replace(FAST, steps=1))
    foreign = Identity(result.identity.name, "sd1", result.identity.vectors, "celeb_basis",
                       {**result.identity.metadata, "anybody.token_table.clip_l": "0123456789abcdef"})
    ci.train_cross_init(host, torch.rand(1, 64, 64, 3), "seeded", ci.CrossInitConfig(steps=1, batch=1, resolution=64),
                        init_identity=foreign)
    assert any("start identity 'alice' was trained on a checkpoint whose text encoder token table differs" in m
               for m in host.sink.logs), host.sink.logs


def test_a_list_of_repeated_first_names_like_the_papers_builds_and_says_so(tmp_path):
    """The paper's wiki_names_v2.txt repeats first names (646 rows, 409 distinct ids in column 1, rank 408 < 512):
    the product must accept such a list (here 30 first names x 20 surnames) and say the basis was completed."""
    bundled = read_lines(BUNDLED_NAMES)
    firsts = list(dict.fromkeys(n.split()[0] for n in bundled if " " in n))[:30]
    lasts = list(dict.fromkeys(n.split()[-1] for n in bundled if " " in n))[:20]
    names = [f"{f} {s}" for f in firsts for s in lasts]
    logs = []
    table = torch.randn(49408, 64, generator=torch.Generator().manual_seed(1))
    basis = cs.load_or_build({"clip_l": TableEncoder(table)}, names, tmp_path, components=48, log=logs.append)
    directions = basis.tensors["clip_l"][:, 1:]
    assert torch.allclose(directions @ directions.transpose(1, 2), torch.eye(48).expand(2, 48, 48), atol=1e-5)
    assert any("fewer than 48 directions" in m and "fixed orthonormal directions" in m for m in logs), logs

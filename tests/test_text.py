"""Prompt layout, vector injection and embedding files."""
import pytest
import torch

from anybody.errors import BadInputError, ModelFileError, WrongModelFamilyError
from anybody.files import safe_name
from anybody.identity import Identity
from anybody.text.embedding_file import load_embedding, save_embedding


def test_rows_layout_places_vectors_and_pads(host):
    enc = host.encoders["clip_l"]
    vecs = torch.randn(2, 768)
    rows = enc.rows("a photo of <x> person", {"<x>": vecs})
    assert len(rows) == 77 and rows[0] == enc.bos
    assert rows[1:4] == enc.tokenize("a photo of")
    assert torch.equal(rows[4], vecs[0]) and torch.equal(rows[5], vecs[1])
    assert rows[6] == enc.tokenize("person")[0] and rows[7] == enc.eos and rows[-1] == enc.pad


def test_too_long_prompt_is_a_clear_error(host):
    with pytest.raises(BadInputError, match="tokens long"):
        host.encoders["clip_l"].rows("word " * 80, {})


def test_injecting_a_words_own_rows_reproduces_that_word(host):
    enc = host.encoders["clip_l"]
    ids = enc.tokenize("dog")
    with torch.no_grad():
        injected = host.encode_prompts(["a photo of <x> person"], {"<x>": {"clip_l": enc.token_rows(ids)}})
        plain = host.encode_prompts(["a photo of dog person"])
    assert torch.equal(injected.context, plain.context)


def test_injection_is_differentiable(host):
    vecs = torch.randn(2, 768, requires_grad=True)
    cond = host.encode_prompts(["a <x> person"], {"<x>": {"clip_l": vecs}})
    cond.context.sum().backward()
    assert vecs.grad is not None and vecs.grad.abs().sum() > 0


@pytest.mark.parametrize("bad,match", [
    ("../evil", "path"), ("a/b", "path"), ("..", "path"), (".hidden", "path"), ("", "empty"),
    ("x" * 80, "80 characters long"), ("na\x00me", "not allowed"), ("Bob Smith", "'Bob_Smith'"),
    ("tab\tname", "spaces"), ("CON", "device name"), ("nul.v2", "device name"), ("com1", "device name"),
    ("caf\u00e9", "not allowed"), ("-dash", "starting with a letter"),
])
def test_unsafe_names_are_refused_with_the_reason(bad, match):
    with pytest.raises(BadInputError, match=match):
        safe_name(bad)


def test_safe_name_keeps_plain_names():
    assert safe_name("alice") == "alice" and safe_name("Bob_Smith-2") == "Bob_Smith-2"
    assert safe_name("alice.safetensors") == "alice" and safe_name("console") == "console"


def test_atomic_write_gives_normal_permissions_and_keeps_the_old_file_on_a_crash(tmp_path):
    import os

    from anybody.files import atomic_write

    old_umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "e.safetensors", lambda tmp: open(tmp, "wb").write(b"old"))
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o644, "readable by a webui running as another user"

    def crash(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash, overwrite=True)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"], "no temp file left behind"


@pytest.mark.parametrize("family,widths,keys", [
    ("sd1", {"clip_l": 768}, {"emb_params"}),
    ("sd2", {"clip_h": 1024}, {"emb_params"}),
    ("sdxl", {"clip_l": 768, "clip_g": 1280}, {"clip_l", "clip_g"}),
])
def test_embedding_files_use_stock_keys_and_round_trip(tmp_path, family, widths, keys):
    from safetensors import safe_open

    vectors = {k: torch.randn(2, d) for k, d in widths.items()}
    path = save_embedding(tmp_path / "x.safetensors", vectors, family, {"anybody.method": "test"})
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == keys
        assert f.metadata()["anybody.family"] == family
    loaded, fam, meta = load_embedding(path)
    assert fam == family and meta["anybody.method"] == "test"
    for k in widths:
        assert torch.equal(loaded[k], vectors[k])


def test_no_silent_overwrite(tmp_path):
    v = {"clip_l": torch.randn(2, 768)}
    save_embedding(tmp_path / "x.safetensors", v, "sd1")
    with pytest.raises(Exception, match="already exists"):
        save_embedding(tmp_path / "x.safetensors", v, "sd1")
    save_embedding(tmp_path / "x.safetensors", v, "sd1", overwrite=True)


def test_official_cross_init_and_a1111_files_import(tmp_path):
    v0, v1 = torch.randn(1024), torch.randn(1024)
    torch.save({"<28017>_v1": v1, "<28017>_v0": v0}, tmp_path / "learned_embeds.bin")
    vectors, family, _ = load_embedding(tmp_path / "learned_embeds.bin")
    assert family == "sd2" and torch.equal(vectors["clip_h"], torch.stack([v0, v1]))
    m = torch.randn(3, 768)
    torch.save({"string_to_param": {"*": m}, "name": "x"}, tmp_path / "a1111.pt")
    vectors, family, _ = load_embedding(tmp_path / "a1111.pt")
    assert family == "sd1" and torch.equal(vectors["clip_l"], m)


def test_corrupt_and_missing_embedding_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        load_embedding(tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        load_embedding(tmp_path / "missing.safetensors")


def test_sdxl_identity_on_sd15_is_refused(host):
    ident = Identity("x", "sdxl", {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, "test")
    with pytest.raises(WrongModelFamilyError, match="SDXL.*SD1.x"):
        ident.require_family(host.family)


@pytest.mark.parametrize("vectors,match", [
    ({"emb_params": torch.full((2, 768), float("nan"))}, "NaN/inf"),
    ({"emb_params": torch.tensor([[float("inf")] * 768])}, "NaN/inf"),
    ({"emb_params": torch.zeros(0, 768)}, "no vectors"),
])
def test_non_finite_and_empty_embedding_files_are_refused(tmp_path, vectors, match):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file(vectors, str(path))
    with pytest.raises(Exception, match=match):
        load_embedding(path)
    with pytest.raises(Exception, match=match):
        save_embedding(tmp_path / "out.safetensors", {"clip_l": vectors["emb_params"]}, "sd1")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("payload", [
    {"string_to_param": torch.zeros(2, 768)},          # A1111 layout with a tensor where a dict belongs
    {"string_to_param": {"*": "not a tensor"}},
    {"string_to_param": {}},
    [1, 2, 3],
])
def test_malformed_pt_embeddings_are_clear_errors(tmp_path, payload):
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError):
        load_embedding(path)

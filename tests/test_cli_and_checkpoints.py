"""The command line and checkpoint checks a user meets first."""
import pytest
import torch
from safetensors.torch import save_file

from anybody.cli import main
from anybody.errors import ModelFileError
from anybody.host.checkpoint import detect_family


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM-WEIGHT" in out and "--checkpoint" in out
    assert (tmp_path / "embeddings" / "demo.safetensors").is_file()


@pytest.mark.parametrize("keys,match", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1)}, "a LoRA"),
    ({"encoder.conv_in.weight": torch.zeros(1)}, "a VAE"),
    ({"foo": torch.zeros(1)}, "not a Stable Diffusion checkpoint"),
])
def test_files_that_are_not_sd_checkpoints_are_named(tmp_path, keys, match):
    path = tmp_path / "thing.safetensors"
    save_file(keys, str(path))
    with pytest.raises(ModelFileError, match=match):
        detect_family(path)


def test_family_is_read_from_key_names(tmp_path):
    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}
    for marker, family in [("cond_stage_model.transformer.text_model.final_layer_norm.weight", "sd1"),
                           ("cond_stage_model.model.ln_final.weight", "sd2"),
                           ("conditioner.embedders.1.model.ln_final.weight", "sdxl")]:
        save_file({**unet, marker: torch.zeros(1)}, str(tmp_path / f"{family}.safetensors"))
        assert detect_family(tmp_path / f"{family}.safetensors") == family


def test_missing_corrupt_and_pickled_checkpoints(tmp_path, capsys):
    with pytest.raises(ModelFileError, match="not found"):
        detect_family(tmp_path / "nope.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ModelFileError, match="download it again"):
        detect_family(tmp_path / "cut.safetensors")
    (tmp_path / "old.ckpt").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="only .safetensors"):
        detect_family(tmp_path / "old.ckpt")
    # the CLI turns it into one line on stderr and exit code 2, before reading any image
    assert main(["train", "cross-init", "--checkpoint", str(tmp_path / "old.ckpt"), "--images", str(tmp_path),
                 "--name", "x", "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.fixture
def tiny_checkpoint_parts(tmp_path):
    """Tiny SD1.x modules and a shipped-style config folder describing them (the CLI loader's inputs)."""
    import json
    import shutil

    from anybody.assets import asset_path
    from anybody.host.tiny import tiny_sd1_modules

    unet, vae, te, _ = tiny_sd1_modules(seed=3)
    config = tmp_path / "config"
    shutil.copytree(asset_path("configs", "sd15"), config)
    unet.save_config(config / "unet")
    vae.save_config(config / "vae")
    (config / "text_encoder" / "config.json").write_text(json.dumps(te.config.to_dict()))
    return unet, vae, te, config


@pytest.mark.parametrize("layout", ["current", "old text encoder keys"])
def test_single_file_checkpoint_loads_offline_and_matches_its_source(tmp_path, tiny_checkpoint_parts, layout):
    """The CLI's loader: an LDM-layout file + shipped-style configs -> the same model, no network."""
    from ldm_checkpoint import save_sd1_checkpoint
    from safetensors.torch import load_file

    from anybody.host.checkpoint import load_checkpoint_host

    unet, vae, te, config = tiny_checkpoint_parts
    ckpt = tmp_path / "tiny.safetensors"
    save_sd1_checkpoint(ckpt, unet, vae, te, dtype=torch.float32)
    if layout != "current":  # early SD1 files: cond_stage_model.transformer.<...> without text_model.
        sd = load_file(str(ckpt))
        save_file({k.replace("transformer.text_model.", "transformer."): v for k, v in sd.items()}, str(ckpt))
    host = load_checkpoint_host(ckpt, out_dir=tmp_path, config_dir=config, device="cpu")
    assert host.family == "sd1" and host.prediction == "eps"
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        cond = host.encode_prompts(["a photo of a person"])
        ref = te(input_ids=torch.tensor([host.encoders["clip_l"].rows("a photo of a person", {})]))[0]
        assert torch.allclose(cond.context, ref, atol=1e-5)
        assert torch.allclose(host.predict(x, t, cond), unet(x, t, encoder_hidden_states=ref).sample, atol=1e-4)


@pytest.mark.parametrize("file_dtype", [torch.float16, torch.float32])
def test_low_memory_loads_either_file_dtype_into_fp16_frozen_weights(tmp_path, tiny_checkpoint_parts, file_dtype):
    """--low-memory reads the UNet straight into fp16 whatever the file's dtype (no fp32 copy ever), so its peak
    never exceeds the default's."""
    from ldm_checkpoint import save_sd1_checkpoint

    from anybody.host.checkpoint import UNET_KEY, load_checkpoint_host
    from anybody.host.single_file import FileTensors

    unet, vae, te, config = tiny_checkpoint_parts
    ckpt = tmp_path / "tiny.safetensors"
    save_sd1_checkpoint(ckpt, unet, vae, te, dtype=file_dtype)
    assert FileTensors(ckpt).get_tensor(UNET_KEY).dtype == file_dtype
    host = load_checkpoint_host(ckpt, out_dir=tmp_path, config_dir=config, device="cpu", low_memory=True)
    assert host.unet.conv_in.weight.dtype == torch.float16 and host.unet.conv_norm_out.weight.dtype == torch.float32
    assert next(host.encoders["clip_l"].model.parameters()).dtype == torch.float32
    with torch.no_grad():
        cond = host.encode_prompts(["a photo of a person"])
        assert host.predict(torch.randn(1, 4, 8, 8), torch.tensor([500]), cond).dtype == torch.float32


def test_plain_reads_give_what_safetensors_gives_and_truncation_is_named(tmp_path):
    from safetensors.torch import load_file

    from anybody.host.single_file import FileTensors

    tensors = {"f16": torch.randn(3, 5).half(), "f32": torch.randn(7), "bf16": torch.randn(2, 2).bfloat16(),
               "f8": torch.randn(4).to(torch.float8_e4m3fn),
               "i64": torch.arange(4), "b": torch.tensor([True, False]), "empty": torch.zeros(0, 3)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    reader, reference = FileTensors(path), load_file(str(path))
    assert sorted(reader.keys()) == sorted(tensors)
    for key in tensors:
        got = reader.get_tensor(key)
        assert got.dtype == reference[key].dtype and torch.equal(got, reference[key]), key
    path.write_bytes(path.read_bytes()[:-6])
    cut = FileTensors(path)
    with pytest.raises(ModelFileError, match="truncated"):
        for key in tensors:  # the tensor stored last lost its final bytes
            cut.get_tensor(key)


@pytest.mark.parametrize("change,match", [
    ({"--images": "/dev/null"}, "not a photo or a folder"),
    ({"--images": "FIFO"}, "pipe"),
    ({"--resolution": "-64"}, "multiple of 64"),
    ({"--resolution": "100"}, "multiple of 64"),
    ({"--lr": "inf"}, "learning rate"),
    ({"--lr": "nan"}, "learning rate"),
    ({"--lr": "1e309"}, "learning rate"),
    ({"--steps": "0"}, "at least 1"),
    ({"--batch": "100000"}, "at most 64"),
    ({"--save-every": "-1"}, "save_every"),
    ({"--resolution": "65536"}, "from 64 to 4096"),
    ({"--name": "CON"}, "device name"),
    ({"--name": "Bob Smith"}, "Bob_Smith"),
    ({"--name": "x" * 65}, "65 characters long"),
    ({"--out": "FILE"}, "Cannot write into"),
    ({"--names": "BINARY"}, "not a UTF-8 text file"),
    ({"--names": "LATIN1"}, "not a UTF-8 text file"),
    ({"--names": "EMPTY"}, "no names"),
    ({"--checkpoint": "FOLDER"}, "is a folder"),
])
def test_user_mistakes_end_in_one_line_and_exit_code_2(tmp_path, capsys, change, match):
    """No traceback for a user mistake: one clear line on stderr, exit code 2, nothing loaded or written."""
    import os

    ckpt = tmp_path / "sd15.safetensors"  # enough for the family check; the mistakes are caught before loading
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}, str(ckpt))
    photos = tmp_path / "photos"
    photos.mkdir()
    special = {"FIFO": tmp_path / "fifo", "FILE": tmp_path / "a_file", "BINARY": tmp_path / "names.bin",
               "LATIN1": tmp_path / "names.txt", "EMPTY": tmp_path / "empty.txt", "FOLDER": tmp_path}
    os.mkfifo(special["FIFO"])
    special["FILE"].write_text("not a folder")
    special["BINARY"].write_bytes(b"\x00\x01\xffbinary")
    special["LATIN1"].write_bytes("Zo\xeb Salda\xf1a\n".encode("latin-1"))
    special["EMPTY"].write_text("# nothing\n\n")
    args = {"--checkpoint": str(ckpt), "--images": str(photos), "--name": "alice", "--out": str(tmp_path / "out")}
    args.update({k: str(special.get(v, v)) for k, v in change.items()})
    rc = main(["train", "cross-init", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and match in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "embeddings").exists()


def test_an_unexpected_fault_is_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    import anybody.cli as cli

    monkeypatch.setattr(cli, "cmd_demo", lambda args: 1 / 0)
    parser_default = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser_default(), cli.cmd_demo))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "error: ZeroDivisionError: division by zero (run with --debug for details)"
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "demo", "--out", str(tmp_path)])


def _with_func(parser, func):
    parser._subparsers._group_actions[0].choices["demo"].set_defaults(func=func)
    return parser

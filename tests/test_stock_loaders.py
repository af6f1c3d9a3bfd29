"""Round trips through third-party loaders: what we write must reproduce our conditioning there."""
import torch

from anybody.host.diffusers import DiffusersHost, DiffusersTextEncoder
from anybody.host.tiny import SD_SCHEDULER, tiny_sd1_modules
from anybody.methods import cross_init as ci


def test_diffusers_load_textual_inversion_reproduces_our_conditioning(tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    unet, vae, text_encoder, tokenizer = tiny_sd1_modules(seed=0)
    host = DiffusersHost(unet, vae, [DiffusersTextEncoder("clip_l", text_encoder, tokenizer)], SD_SCHEDULER, "sd1",
                         out_dir=tmp_path, device="cpu")
    host.sink.log = lambda m: None
    ident, path, _ = ci.train_cross_init(host, torch.rand(1, 64, 64, 3), "alice",
                                      ci.CrossInitConfig(steps=2, batch=2, resolution=64))
    prompt = "a photo of <alice> person"
    with torch.no_grad():
        ours = host.encode_prompts([prompt], {ident.word: ident.vectors}).context

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(path), token="<alice>")
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert theirs.shape == ours.shape == (1, 77, 768)
    assert torch.allclose(theirs, ours, atol=1e-5)
    # and the vectors it loaded are exactly ours, in v0, v1 order
    ids = tokenizer.convert_tokens_to_ids(["<alice>", "<alice>_1"])
    assert torch.equal(text_encoder.get_input_embeddings().weight[ids].detach(), ident.vectors["clip_l"])


def test_sdxl_identity_has_one_pair_per_encoder_and_round_trips_through_the_diffusers_sdxl_pipeline(tmp_path):
    """SDXL: clip_l [2,768] + clip_g [2,1280] in one file; diffusers loads each key into its own encoder."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from anybody.host.tiny import tiny_host

    host = tiny_host(tmp_path, family="sdxl")
    host.sink.log = lambda m: None
    ident, path, _ = ci.train_cross_init(host, torch.rand(1, 64, 64, 3), "bob",
                                      ci.CrossInitConfig(steps=2, batch=2, resolution=64))
    stored = load_file(str(path))
    assert {k: tuple(v.shape) for k, v in stored.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    prompt = "a photo of <bob> person"
    with torch.no_grad():
        ours = host.encode_prompts([prompt], {ident.word: ident.vectors})

    enc_l, enc_g = host.encoders["clip_l"], host.encoders["clip_g"]
    pipe = StableDiffusionXLPipeline(vae=host.vae, text_encoder=enc_l.model, text_encoder_2=enc_g.model,
                                     tokenizer=enc_l.tokenizer, tokenizer_2=enc_g.tokenizer, unet=host.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(SD_SCHEDULER))
    pipe.load_textual_inversion(stored["clip_l"], token="<bob>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(stored["clip_g"], token="<bob>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    with torch.no_grad():
        context, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                   do_classifier_free_guidance=False)
    assert context.shape == ours.context.shape == (1, 77, 2048)
    torch.testing.assert_close(context, ours.context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ours.pooled, atol=1e-5, rtol=1e-5)
    plain = host.encode_prompts(["a photo of person"]).context
    assert not torch.allclose(plain, ours.context)

"""Round trips through third-party loaders: what we write must reproduce our conditioning there."""
import pytest
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
    ident, path = ci.train_cross_init(host, torch.rand(1, 64, 64, 3), "alice",
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

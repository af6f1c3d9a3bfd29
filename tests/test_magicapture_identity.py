"""MagiCapture's identity term (spec §6.3, acceptance check 15): through the host's UNet, VAE decoder and a
differentiable warp, back to the UNet's LoRA."""
import numpy as np
import pytest
import torch

from anybody.errors import BadInputError
from anybody.face.detect import Face
from anybody.face.recognizer import FaceRecognizer
from anybody.methods.magicapture_identity import central_face, identity_term
from anybody.nets.iresnet import IResNet
from anybody.train import diffusion, lora


def _face(x0, y0, size):
    box = np.array([x0, y0, x0 + size, y0 + size], np.float64)
    marks = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]]) * size + [x0, y0]
    return Face(box, marks, 0.9)


@pytest.fixture(scope="module")
def recognizer():
    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1)).eval().requires_grad_(False)
    return FaceRecognizer("tiny", lambda x: net(x), "torch", net)


def test_the_gradient_reaches_the_unet_lora_through_decoder_warp_and_recognizer(host, recognizer):
    sets = lora.for_host(host, {"unet": lora.UNET_ATTENTION_TARGETS}, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 200])
    references = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    detections = iter([[_face(8, 8, 48)], []])  # a face in the first image, none in the second
    with host.training(adapters=sets):
        a = host.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
        x_t = diffusion.noisy(z0, eps, a)
        pred = host.predict(x_t, t, host.encode_prompts(["a photo of a person"] * 2))
        pixels = host.decode_differentiable(diffusion.x0_from(host.prediction, x_t, pred, a))
        assert pixels.shape == (2, 3, 64, 64) and pixels.requires_grad
        loss, skipped = identity_term(pixels, references, lambda image: next(detections), recognizer)
        loss.backward()
    assert skipped == 1 and 0 < loss.item() < 2
    ups = [adapter.up.grad for _, adapter in sets["unet"].items()]
    assert any(g is not None and g.abs().sum() > 0 for g in ups)


def test_no_face_anywhere_skips_the_term(recognizer):
    loss, skipped = identity_term(torch.rand(3, 3, 64, 64), torch.randn(3, 512), lambda image: [], recognizer)
    assert loss is None and skipped == 3


def test_the_central_face_wins_over_a_slightly_larger_corner_one():
    corner, centre = _face(0, 0, 60), _face(70, 70, 58)
    assert central_face([corner, centre], 200, 200) is centre
    assert central_face([_face(0, 0, 120), centre], 200, 200).area == 120 * 120  # size still counts


def test_an_onnx_recognizer_cannot_carry_the_identity_gradient():
    onnx_like = FaceRecognizer("glintr100.onnx", lambda x: x.flatten(1)[:, :512], "onnx")
    with pytest.raises(BadInputError, match="needs a torch face recognizer"):
        identity_term(torch.rand(1, 3, 64, 64), torch.randn(1, 512), lambda image: [_face(8, 8, 48)], onnx_like)

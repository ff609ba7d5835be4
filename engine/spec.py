"""Descendant architecture specs: what a user asks for, validated and costed without building a model.

A spec is everything needed to rebuild a descendant. Plain descendants are timm ``VisionTransformer``s; a
Learngene Pool descendant is a stitched ViT (a front part at one width, a stitch layer, a back part at another
width), described by the same spec plus its :class:`FrontSpec`. Image size, patch size and input channels
normally come from the learngene; a request names depth, width, heads, MLP ratio and classes.

This module imports neither torch nor timm, so the API can validate and cost a request at import-light cost.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


#: The timm architecture a spec builds when nothing else is said. Every field of the spec is passed as a
#: ``model_args`` override, so an architecture name only picks the constructor (``VisionTransformer`` or DeiT's
#: ``VisionTransformerDistilled``) and what ``model_args`` cannot carry in JSON: the norm layer's eps.
TIMM_ARCHITECTURE = "vit_base_patch16_224"
#: A plain ``VisionTransformer`` architecture for each LayerNorm eps that timm's ViT family uses: the descendant of
#: a distilled ancestry that drops the distillation token (TLEG's) needs a non-distilled constructor with the
#: ancestry's eps.
PLAIN_ARCHITECTURES = {1e-6: TIMM_ARCHITECTURE, 1e-5: "vit_base_patch16_clip_224"}
#: The timm registry name of :class:`engine.stitched.StitchedViT` (registered when ``engine.stitched`` is imported).
STITCHED_ARCHITECTURE = "learngene_stitched_vit"

GLOBAL_POOLS = ("token", "avg")
#: timm ``act_layer`` names of the MLP activations a spec may use.
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")

#: The ViT family features beyond the plain ViT, with the value that means "not used". A method states which it
#: handles (:func:`require_features`); an ancestry using one it does not is refused up front, naming the field.
FAMILY_DEFAULTS: dict[str, Any] = {
    "init_values": None,  # layer scale: blocks.{i}.ls1.gamma / ls2.gamma
    "reg_tokens": 0,  # register tokens: reg_token
    "no_embed_class": False,  # the position embedding covers the patches only
    "qkv_bias": True,
    "pre_norm": False,  # norm_pre after the embeddings, and no patch-embedding bias (CLIP)
    "fc_norm": None,  # timm's: None puts the final norm after pooling with average pooling only
    "act_layer": "gelu",
    "norm_eps": 1e-6,
    "dynamic_img_size": False,
    "distilled": False,  # DeiT's distillation token and second head: dist_token, head_dist
}
#: The family features a stitched descendant (:mod:`engine.stitched`) carries: layer scale in every block.
STITCHED_FEATURES = frozenset({"init_values"})
#: What a request may change where a method makes any size from the weights it holds (weight selection, FRONT;
#: random init, which holds none, also patch size and input channels): size, classes, image size, class token
#: and pooling.
FREE_FIELDS = frozenset({"depth", "embed_dim", "num_heads", "mlp_ratio", "num_classes", "img_size", "class_token",
                         "global_pool"})


class SpecError(ValueError):
    """A spec that cannot be built or does not fit the limits. ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class FrontSpec:
    """The front part of a stitched descendant: its first ``depth`` blocks (and the patch and position
    embeddings) run at this width; a stitch ``Linear(embed_dim -> ViTSpec.embed_dim)`` follows them."""

    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ViTSpec:
    depth: int  # all blocks, the front part's included
    embed_dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    class_token: bool = True
    global_pool: str = "token"  # "token" (class token) or "avg" (mean of patch tokens, with fc_norm)
    front: FrontSpec | None = None  # set only for stitched (Learngene Pool) descendants
    # The ViT family (see FAMILY_DEFAULTS): fixed by the ancestry, carried by every learngene and descendant.
    base_architecture: str = TIMM_ARCHITECTURE  # the ancestry's timm architecture
    init_values: float | None = None
    reg_tokens: int = 0
    no_embed_class: bool = False
    qkv_bias: bool = True
    pre_norm: bool = False
    fc_norm: bool | None = None
    act_layer: str = "gelu"
    norm_eps: float = 1e-6
    dynamic_img_size: bool = False
    distilled: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict, whose recursive deep copy dominated the planner's
        # costing of thousands of candidates; every field is immutable but the front part, converted here.
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.front is not None:
            data["front"] = dataclasses.asdict(self.front)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViTSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SpecError(f"unknown spec fields: {sorted(unknown)}", field=sorted(unknown)[0])
        front = data.get("front")
        if isinstance(front, dict):
            front_names = {f.name for f in dataclasses.fields(FrontSpec)}
            if set(front) - front_names:
                bad = sorted(set(front) - front_names)
                raise SpecError(f"unknown front fields: {bad}", field=f"front.{bad[0]}")
            data = {**data, "front": FrontSpec(**front)}
        return cls(**data)

    def replace(self, **changes: Any) -> "ViTSpec":
        return dataclasses.replace(self, **changes)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class token, distillation token, registers (timm's ``num_prefix_tokens``)."""
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def pos_embed_len(self) -> int:
        """Positions in ``pos_embed``: the patches, plus the prefix tokens unless ``no_embed_class``."""
        return self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)

    @property
    def final_norm(self) -> str:
        """timm's name for the final norm: ``fc_norm`` (after pooling) when ``fc_norm`` says so, or by default with
        average pooling; ``norm`` (before pooling) otherwise."""
        use_fc_norm = self.global_pool == "avg" if self.fc_norm is None else self.fc_norm
        return "fc_norm" if use_fc_norm else "norm"

    @property
    def features(self) -> list[str]:
        """The family features in use (fields of FAMILY_DEFAULTS away from their plain value)."""
        return [name for name, plain in FAMILY_DEFAULTS.items() if getattr(self, name) != plain]

    @property
    def family(self) -> str:
        """A short name of the ancestry's family, for the registry: dinov2, clip, deit, deit-distilled or vit."""
        arch = self.base_architecture
        if "dinov2" in arch:
            return "dinov2"
        if "clip" in arch:
            return "clip"
        if arch.startswith("deit"):
            return "deit-distilled" if self.distilled else "deit"
        return "vit"

    @property
    def architecture(self) -> str:
        """The timm architecture that builds this spec with :meth:`timm_model_args`: the ancestry's own, unless
        the spec left its constructor (a distilled ancestry's descendant without the distillation token)."""
        if self.front is not None:
            return STITCHED_ARCHITECTURE
        if self.distilled == ("distilled" in self.base_architecture):
            return self.base_architecture
        return PLAIN_ARCHITECTURES.get(self.norm_eps, TIMM_ARCHITECTURE)

    def timm_model_args(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model(self.architecture, **args)`` that rebuild this spec."""
        args: dict[str, Any] = {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "class_token": self.class_token,
            "global_pool": self.global_pool,
        }
        if self.front is None:
            # Written out even at their plain value: the architecture named may default otherwise (the gap
            # models' fc_norm); the distillation token and norm eps come with the name. timm drops arguments
            # that are None, so fc_norm is written as the placement itself, and init_values only when set (no
            # method removes an ancestry's layer scale).
            args.update(
                reg_tokens=self.reg_tokens, no_embed_class=self.no_embed_class, qkv_bias=self.qkv_bias,
                pre_norm=self.pre_norm, fc_norm=self.final_norm == "fc_norm", act_layer=self.act_layer,
                dynamic_img_size=self.dynamic_img_size)
            if self.init_values is not None:
                args["init_values"] = self.init_values
        if self.front is not None:
            if self.init_values is not None:
                args["init_values"] = self.init_values
            args.update(
                front_depth=self.front.depth,
                front_embed_dim=self.front.embed_dim,
                front_num_heads=self.front.num_heads,
                front_mlp_ratio=self.front.mlp_ratio,
            )
        return args


@dataclass(frozen=True)
class SpecLimits:
    """What the service accepts; the defaults are generous, the service passes its own settings."""

    max_depth: int = 48
    max_embed_dim: int = 4096
    max_params: int = 2_000_000_000
    max_num_heads: int = 64
    min_head_dim: int = 8
    max_head_dim: int = 256
    max_mlp_ratio: float = 16.0
    max_num_classes: int = 100_000
    max_img_size: int = 1024
    max_in_chans: int = 16
    max_reg_tokens: int = 16


def _require_int(value: Any, field: str, minimum: int) -> None:
    # bool is an int subclass; a JSON `true` must not pass as a depth.
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{field} must be an integer, got {value!r}", field)
    if value < minimum:
        raise SpecError(f"{field} must be at least {minimum}, got {value}", field)


def _check_width(embed_dim: Any, num_heads: Any, mlp_ratio: Any, prefix: str) -> None:
    _require_int(embed_dim, f"{prefix}embed_dim", 1)
    _require_int(num_heads, f"{prefix}num_heads", 1)
    if embed_dim % num_heads:
        raise SpecError(f"{prefix}num_heads ({num_heads}) must divide {prefix}embed_dim ({embed_dim})",
                        f"{prefix}num_heads")
    if not isinstance(mlp_ratio, (int, float)) or isinstance(mlp_ratio, bool) or not math.isfinite(mlp_ratio):
        raise SpecError(f"{prefix}mlp_ratio must be a number, got {mlp_ratio!r}", f"{prefix}mlp_ratio")
    if int(embed_dim * mlp_ratio) < 1:
        raise SpecError(f"{prefix}mlp_ratio {mlp_ratio} gives an empty MLP", f"{prefix}mlp_ratio")


def _require_bool(value: Any, field: str) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{field} must be true or false, got {value!r}", field)


def _require_number(value: Any, field: str, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not low < value <= high:
        raise SpecError(f"{field} must be a number in ({low}, {high}], got {value!r}", field)


def validate_family(spec: ViTSpec) -> None:
    """Check the family fields' types and values (not whether a method handles them)."""
    if not isinstance(spec.base_architecture, str) or not 0 < len(spec.base_architecture) <= 200:
        raise SpecError("base_architecture must be a timm architecture name", "base_architecture")
    if spec.init_values is not None:
        _require_number(spec.init_values, "init_values", 0.0, 1e3)
    _require_int(spec.reg_tokens, "reg_tokens", 0)
    for field in ("no_embed_class", "qkv_bias", "pre_norm", "dynamic_img_size", "distilled"):
        _require_bool(getattr(spec, field), field)
    if spec.fc_norm is not None:
        _require_bool(spec.fc_norm, "fc_norm")
    if spec.act_layer not in ACTIVATIONS:
        raise SpecError(f"act_layer must be one of {list(ACTIVATIONS)}, got {spec.act_layer!r}", "act_layer")
    _require_number(spec.norm_eps, "norm_eps", 0.0, 1e-2)
    if spec.distilled and (not spec.class_token or spec.global_pool != "token" or spec.reg_tokens):
        raise SpecError("the distillation token needs class_token, global_pool 'token' and no registers",
                        "distilled")
    unstitched = [feature for feature in spec.features if feature not in STITCHED_FEATURES]
    if spec.front is not None and unstitched:
        raise SpecError(f"a stitched descendant has no family feature but layer scale (init_values), got "
                        f"{unstitched}", unstitched[0])


def require_features(spec: ViTSpec, supported: frozenset[str] | set[str], method: str) -> None:
    """Refuse a spec using a family feature ``method`` does not handle, naming the feature's field."""
    for feature in spec.features:
        if feature not in supported:
            raise SpecError(f"{method} does not support {feature}={getattr(spec, feature)!r} (handled features: "
                            f"{sorted(supported) or 'none'})", feature)


def validate_structure(spec: ViTSpec) -> None:
    """Check that ``spec`` can be built at all (no size limits). Raises :class:`SpecError` naming the field."""
    _require_int(spec.depth, "depth", 1)
    _check_width(spec.embed_dim, spec.num_heads, spec.mlp_ratio, "")
    _require_int(spec.num_classes, "num_classes", 0)  # 0: no head, the descendant outputs pooled features
    _require_int(spec.in_chans, "in_chans", 1)
    _require_int(spec.patch_size, "patch_size", 1)
    _require_int(spec.img_size, "img_size", 1)
    if spec.img_size % spec.patch_size:
        raise SpecError(f"img_size ({spec.img_size}) must be a multiple of patch_size ({spec.patch_size})",
                        "patch_size")
    if spec.global_pool not in GLOBAL_POOLS:
        raise SpecError(f"global_pool must be one of {list(GLOBAL_POOLS)}, got {spec.global_pool!r}", "global_pool")
    if not isinstance(spec.class_token, bool):
        raise SpecError(f"class_token must be true or false, got {spec.class_token!r}", "class_token")
    if spec.global_pool == "token" and not spec.class_token:
        raise SpecError("global_pool 'token' needs class_token true", "class_token")
    if spec.front is not None:
        if not isinstance(spec.front, FrontSpec):
            raise SpecError("front must be an object with depth, embed_dim, num_heads, mlp_ratio", "front")
        _require_int(spec.front.depth, "front.depth", 1)
        if spec.front.depth >= spec.depth:
            raise SpecError(f"front.depth ({spec.front.depth}) must be less than depth ({spec.depth})",
                            "front.depth")
        _check_width(spec.front.embed_dim, spec.front.num_heads, spec.front.mlp_ratio, "front.")
    validate_family(spec)


def merge_request(base: ViTSpec, partial: dict[str, Any], free: frozenset[str] | set[str], method: str) -> ViTSpec:
    """Fill a partial request from ``base`` and refuse changes to fields the method fixes.

    Fields in ``free`` may change; any other field named in ``partial`` must equal ``base``'s. A new width
    without ``num_heads`` keeps the base head dimension (so 384 from a 768/12 base gets 6 heads).
    """
    merged = {**base.to_dict(), **partial}
    spec = ViTSpec.from_dict(merged)
    for field in partial:
        if field not in free and getattr(spec, field) != getattr(base, field):
            raise SpecError(f"{method} fixes {field} to {getattr(base, field)!r}", field)
    if "embed_dim" in partial and "num_heads" not in partial and spec.embed_dim != base.embed_dim:
        if not isinstance(spec.embed_dim, int) or spec.embed_dim % base.head_dim:
            raise SpecError(
                f"embed_dim {spec.embed_dim!r} is not a multiple of the base head dimension {base.head_dim}; "
                "give num_heads", "num_heads")
        spec = spec.replace(num_heads=spec.embed_dim // base.head_dim)
    validate_structure(spec)
    return spec

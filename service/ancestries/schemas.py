from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from service.ownership import Visibility


class AncestryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    architecture: str
    model_args: dict[str, Any]
    spec: dict[str, Any]
    param_count: int
    sha256: str
    size_bytes: int
    metrics: dict[str, Any]
    owner: str | None = None
    visibility: Visibility
    created_at: dt.datetime
    family: str
    #: Input mean, std, interpolation and crop, written into every descendant's config.json.
    preprocessing: dict[str, Any]
    #: The Hugging Face model_type the upload was converted from (architecture and model_args are what it became).
    converted_from: str | None = None


# --- what an upload says about the model: checked field by field before anything is stored ---------------------

#: One finite number per input channel (1 to 16 channels): a mean.
ChannelValues = Annotated[list[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
                          Field(min_length=1, max_length=16)]
#: The same, each positive: a standard deviation.
ChannelScales = Annotated[list[Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]],
                          Field(min_length=1, max_length=16)]
#: An image side, or [h, w] as timm and transformers write sizes (square only; checked by the engine).
Side = StrictInt | Annotated[list[StrictInt], Field(min_length=2, max_length=2)]


class Normalization(BaseModel):
    """The input normalization an ancestry was trained with: the ``mean``/``std`` form fields of an upload, and
    those of a timm Hub snapshot's ``pretrained_cfg``, checked alike."""

    model_config = ConfigDict(extra="forbid")

    mean: ChannelValues
    std: ChannelScales


class PretrainedCfg(BaseModel):
    """The part of timm's ``pretrained_cfg`` a descendant inherits (written back into its ``config.json``);
    other keys are kept out of the check and out of the ancestry."""

    model_config = ConfigDict(extra="allow")

    mean: ChannelValues | None = None
    std: ChannelScales | None = None
    #: The resampling modes timm's transforms know.
    interpolation: Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"] | None = None
    crop_pct: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1)] | None = None
    crop_mode: Literal["center", "squash", "border"] | None = None


class TimmHubConfig(BaseModel):
    """A timm Hub snapshot's ``config.json`` (as ``timm.models.push_to_hf_hub`` writes it): the architecture
    names the model, ``model_args`` its sizes (each checked by the engine before timm builds anything)."""

    model_config = ConfigDict(extra="allow", strict=True)

    architecture: Annotated[str, Field(max_length=200)]
    num_classes: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    model_args: dict[str, Any] | None = None
    pretrained_cfg: PretrainedCfg | None = None


class HuggingFaceConfig(BaseModel):
    """A transformers ViT, DeiT or DINOv2 ``config.json``: the keys the conversion reads, typed (a JSON bool is
    not a number, ``"no"`` is not a bool); the many others it ignores may be anything."""

    model_config = ConfigDict(extra="allow", strict=True)

    model_type: Annotated[str, Field(max_length=40)]
    hidden_act: Annotated[str, Field(max_length=40)] = "gelu"
    layer_norm_eps: Annotated[float, Field(allow_inf_nan=False, gt=0)] = 1e-12
    hidden_size: Annotated[int, Field(ge=1)] | None = None
    num_attention_heads: Annotated[int, Field(ge=1)] | None = None
    intermediate_size: Annotated[int, Field(ge=1)] | None = None
    num_hidden_layers: Annotated[int, Field(ge=1)] | None = None
    image_size: Side | None = None
    patch_size: Side | None = None
    num_channels: Annotated[int, Field(ge=1)] | None = None
    qkv_bias: bool = True
    use_swiglu_ffn: bool = False
    mlp_ratio: Annotated[float, Field(allow_inf_nan=False, gt=0)] | None = None
    layerscale_value: Annotated[float, Field(allow_inf_nan=False, gt=0)] | None = None
    num_register_tokens: Annotated[int, Field(ge=0)] | None = None

"""Trained condensing of a headless, layer-scale ancestry (the normal form of a self-supervised checkpoint such as
DINOv2): the trainers distil its features, the learngene stores no training-only projection, descendants get the
requested head; and the rules every request is checked by before it runs (:func:`check_request`)."""
from __future__ import annotations

from typing import Any

import pytest
import timm
import torch

import engine.stitched  # noqa: F401  (registers the stitched architecture with timm)
from engine.ancestry import inspect_architecture
from engine.data import DIGITS_URI
from engine.methods import get_entry, get_method
from engine.methods.base import Learngene, StateDict
from engine.methods.params import ParamError
from engine.spec import ViTSpec
from engine.train import condense, refine
from engine.train.condense import RequestError, check_request
from engine.train.distill import Distillation, FeatureStudent, load_teacher, path_outputs, resolve_objective
from engine.vit import build_model, seeded
from tests.engine_train.conftest import QUICK

#: A tiny DINOv2: layer scale, class token, no head; 28 px digits (gray, repeated to 3 channels) in 7x7 patches.
DINO_ARGS = {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0,
             "num_classes": 0}
FEATURE_QUICK: dict[str, dict[str, Any]] = {
    "tleg": QUICK["tleg"],
    "wave": QUICK["wave"],
    "pool": QUICK["pool"],
}
Ancestry = tuple[StateDict, ViTSpec]


def headless(architecture: str = "vit_small_patch14_dinov2", **extra: Any) -> Ancestry:
    """Seeded random weights, moved off timm's init: layer-scale gammas of 1e-5 would make every block a no-op
    and the distillation trivial."""
    args = {**DINO_ARGS, **extra}
    spec, _, _ = inspect_architecture(architecture, args)
    with seeded(0):
        model = timm.create_model(architecture, pretrained=False, **args)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name.endswith("gamma"):
                    tensor.uniform_(0.2, 1.0)
                else:
                    tensor.add_(torch.randn_like(tensor) * 0.05)
    return {k: v.clone() for k, v in model.state_dict().items()}, spec


@pytest.fixture(scope="module")
def dino() -> Ancestry:
    state, spec = headless()
    assert spec.num_classes == 0 and spec.init_values is not None and spec.class_token
    return state, spec


@pytest.fixture(scope="module")
def condensed(dino: Ancestry) -> dict[str, tuple[Learngene, dict[str, Any], list]]:
    state, spec = dino
    return {method: condense(method, "train", state, spec, DIGITS_URI, params)
            for method, params in FEATURE_QUICK.items()}


def _load(learngene: Learngene, spec: ViTSpec) -> torch.nn.Module:
    descendant = get_method(learngene.method).expand(learngene, spec, seed=0)
    model = timm.create_model(descendant.architecture, pretrained=False, **descendant.model_args)
    model.load_state_dict(descendant.state_dict, strict=True)
    return model.eval()


@pytest.mark.parametrize("method", sorted(FEATURE_QUICK))
def test_a_headless_layer_scale_ancestry_condenses_by_its_features(condensed: dict, method: str) -> None:
    learngene, metrics, history = condensed[method]
    assert "val_kl_after" not in metrics  # no class predictions to compare
    assert metrics["val_feature_loss_after"] < 0.8 * metrics["val_feature_loss_before"]
    assert metrics["val_pooled_cosine"] > metrics["val_pooled_cosine_before"]
    first, last = history[0][1], sum(v for _, v in history[-3:]) / 3
    assert last < first and history[-1][0] == FEATURE_QUICK[method]["steps"]
    assert learngene.base_spec.num_classes == 0
    assert not any("projection" in key or key.startswith("net.") for key in learngene.tensors)
    assert any(key.endswith("ls1.gamma") for key in learngene.tensors)  # layer scale carried


@pytest.mark.parametrize("method", sorted(FEATURE_QUICK))
def test_descendants_of_a_headless_learngene_get_the_requested_head(condensed: dict, method: str) -> None:
    learngene = condensed[method][0]
    module = get_method(method)
    specs = list(module.candidate_specs(learngene))
    for spec in specs[:: max(1, len(specs) // 4)] + specs[-1:]:
        model = _load(learngene, module.resolve_spec(learngene, {**spec.to_dict(), "num_classes": 5}))
        with torch.no_grad():
            assert model(torch.randn(2, 3, 28, 28)).shape == (2, 5)
    with torch.no_grad():  # and without classes: the pooled features, as the ancestry gives them
        assert _load(learngene, specs[-1])(torch.randn(2, 3, 28, 28)).shape == (2, specs[-1].embed_dim)


def test_pool_students_narrower_than_the_ancestry_train_through_a_projection(dino: Ancestry) -> None:
    """The half-width student's tokens reach the teacher's width through a Linear that trains with it but is
    left out of the learngene: the feature loss needs it, expansion must never see it."""
    from engine.train.distill import distillation, feature_student

    state, spec = dino
    loss = distillation(state, spec, {**get_entry("pool").validate_params({}, "train")})
    assert (loss.logits, loss.features) == (False, True)
    net = torch.nn.Linear(1, 1)
    wrapped = feature_student(net, loss, [16, 32])
    assert isinstance(wrapped, FeatureStudent) and list(wrapped.projections) == ["16"]
    assert wrapped.project(torch.ones(2, 16)).shape == (2, 32)


def test_wave_refine_distils_features_for_new_widths(condensed: dict, dino: Ancestry) -> None:
    state, spec = dino
    learngene = condensed["wave"][0]
    params = {**{k: v for k, v in QUICK["wave"].items() if k not in ("tile", "counts")},
              "sizes": [{"embed_dim": 16, "num_heads": 1, "depth": 3}]}
    refined, metrics, history = refine("wave", learngene, state, spec, DIGITS_URI, params)
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"]
    assert history[-1][1] < history[0][1]
    assert any(key.startswith("refined.") for key in refined.tensors)
    assert not any("projection" in key for key in refined.tensors)
    model = _load(refined, get_method("wave").resolve_spec(refined, {"embed_dim": 16, "num_heads": 1, "depth": 3,
                                                                      "num_classes": 4}))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 4)


def test_layers_scores_a_headless_ancestry_by_its_features(dino: Ancestry) -> None:
    state, spec = dino
    learngene, metrics, _ = condense("layers", "train", state, spec, DIGITS_URI, QUICK["layers"])
    assert metrics["criterion"] == "ablation-cosine" and len(metrics["scores"]) == spec.depth
    assert all(score > 0 for score in metrics["scores"])
    assert len(learngene.meta["indices"]) == QUICK["layers"]["count"]


def test_tleg_condenses_a_wide_ancestry_through_a_narrow_auxiliary_network(dino: Ancestry) -> None:
    """aux_embed_dim: the auxiliary network starts from the ancestry cut to that width by weight selection and is
    distilled from the whole ancestry through the training-only projection; descendants have that width."""
    state, spec = dino
    learngene, metrics, history = condense("tleg", "train", state, spec, DIGITS_URI,
                                           {**QUICK["tleg"], "aux_embed_dim": 16})
    base = learngene.base_spec
    assert (base.embed_dim, base.num_heads, base.init_values) == (16, 1, spec.init_values)  # head dim kept
    assert "weight selection" in learngene.meta["narrowed"]
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"] and history[-1][1] < history[0][1]
    assert not any("projection" in key for key in learngene.tensors)
    model = _load(learngene, get_method("tleg").resolve_spec(learngene, {"depth": 6, "num_classes": 3}))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 3)
    for params, field in (({"aux_embed_dim": 64}, "params.aux_embed_dim"),
                          ({"aux_embed_dim": 16, "aux_num_heads": 3}, "params.aux_num_heads")):
        assert _check("tleg", "train", spec, params).startswith(field), params


def test_register_tokens_are_left_out_of_the_comparison() -> None:
    state, spec = headless("vit_small_patch14_reg4_dinov2", reg_tokens=2)
    assert spec.reg_tokens == 2
    learngene, metrics, _ = condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK["tleg"], "steps": 10})
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"]
    assert learngene.base_spec.reg_tokens == 2


def test_patch_weight_scales_the_patch_term_alone(dino: Ancestry) -> None:
    state, spec = dino
    teacher = load_teacher(state, spec)
    with seeded(1):
        student = build_model(spec)
    images, labels = torch.randn(4, 3, 28, 28), torch.zeros(4, dtype=torch.long)
    shipped = Distillation(teacher, features=True, logits=False)
    pooled, patches = shipped.feature_loss(path_outputs(student, images), shipped.teacher_outputs(images))
    assert pooled.item() > 1e-3 and patches.item() > 1e-3  # both terms are live
    for feature_weight, patch_weight in ((1.0, 1.0), (1.0, 0.0), (2.0, 0.25)):
        loss = Distillation(teacher, feature_weight=feature_weight, logits=False, features=True,
                            patch_weight=patch_weight)
        assert loss(student, images, labels).item() == pytest.approx(
            feature_weight * (pooled.item() + patch_weight * patches.item()), rel=1e-5)
    with pytest.raises(ParamError) as caught:
        get_entry("pool").validate_params({"patch_weight": -1}, "train")
    assert "patch_weight" in str(caught.value)


def test_pooled_token_only_condensing_reports_its_own_loss(dino: Ancestry) -> None:
    """``patch_weight`` 0 through a whole run: the recorded validation loss is the pooled term alone, and the
    pooled token still learns the ancestry's."""
    state, spec = dino
    _, metrics, _ = condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK["tleg"], "patch_weight": 0.0})
    assert metrics["val_feature_loss_after"] == pytest.approx(1.0 - metrics["val_pooled_cosine"], abs=1e-5)
    assert metrics["val_pooled_cosine"] > metrics["val_pooled_cosine_before"]


def test_both_objectives_on_an_ancestry_with_a_head(trained_ancestry: tuple) -> None:
    state, spec, _ = trained_ancestry
    _, metrics, _ = condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK["tleg"], "objective": "both"})
    assert metrics["val_kl_after"] < metrics["val_kl_before"]
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"]
    quick = {**QUICK["tleg"], "steps": 2, "warmup_steps": 1}
    _, logits_only, _ = condense("tleg", "train", state, spec, DIGITS_URI, quick)
    assert "val_feature_loss_after" not in logits_only  # auto on a headed ancestry: today's logit KL


def test_objective_resolves_against_the_head() -> None:
    assert resolve_objective("auto", 0) == (False, True)
    assert resolve_objective("auto", 10) == (True, False)
    assert resolve_objective("both", 10) == (True, True)
    for objective in ("logits", "both"):
        with pytest.raises(ParamError) as caught:
            resolve_objective(objective, 0)
        assert caught.value.field == "params.objective"


def _check(method: str, mode: str, spec: ViTSpec, params: dict[str, Any], learngene: Learngene | None = None) -> str:
    with pytest.raises(ValueError) as caught:
        check_request(method, mode, spec, get_entry(method).validate_params(params, mode), learngene)
    return f"{caught.value.field}: {caught.value}"  # type: ignore[attr-defined]


def test_requests_that_cannot_run_are_refused_naming_the_field(dino: Ancestry) -> None:
    _, spec = dino
    assert _check("tleg", "train", spec, {"objective": "logits"}).startswith("params.objective")
    assert _check("wave", "refine", spec, {"sizes": [{"depth": 2}], "objective": "both"}).startswith(
        "params.objective")
    message = _check("layers", "fit", spec, {"count": 9})
    assert message.startswith("params.count") and "[1, 4]" in message
    assert _check("layers", "fit", spec, {"indices": [1, 7]}).startswith("params.indices")
    message = _check("pool", "train", spec, {"students": [{"embed_dim": 64, "num_heads": 2, "depth": 2}]})
    assert message.startswith("params.students") and "student 0" in message
    assert _check("wave", "train", spec, {"tile": [5, 5]}).startswith("params.tile")
    clip, _, _ = inspect_architecture("vit_base_patch16_clip_quickgelu_224", {**DINO_ARGS, "patch_size": 7})
    assert _check("pool", "fit", clip, {}).startswith("ancestry.pre_norm")
    with pytest.raises(RequestError) as caught:
        check_request("weight-selection", "train", spec, {})
    assert caught.value.field == "mode"
    # What runs today runs: the defaults on the headless DINOv2, every method and mode.
    for method in ("tleg", "wave", "pool", "layers", "front"):
        for mode in get_entry(method).modes:
            if mode != "refine":
                check_request(method, mode, spec, get_entry(method).validate_params({}, mode))


def test_cross_entropy_needs_the_datasets_classes_within_the_head(dino: Ancestry, trained_ancestry: tuple) -> None:
    _, headed, _ = trained_ancestry
    params = get_entry("wave").validate_params({}, "train")
    with pytest.raises(ParamError) as caught:
        check_request("wave", "train", headed, params, dataset_classes=headed.num_classes + 1)
    assert caught.value.field == "params.ce_weight"
    check_request("wave", "train", headed, params, dataset_classes=headed.num_classes)
    check_request("wave", "train", dino[1], params, dataset_classes=20)  # features: no cross-entropy to feed


def test_refine_sizes_and_classes_are_checked_before_running(condensed: dict, dino: Ancestry) -> None:
    _, spec = dino
    learngene = condensed["wave"][0]
    assert _check("wave", "refine", spec, {"sizes": [{"embed_dim": 20, "num_heads": 2}]}, learngene).startswith(
        "params.sizes")
    assert _check("wave", "refine", spec.replace(num_classes=10), {"sizes": [{"depth": 2}]}, learngene).startswith(
        "ancestry")


def test_layers_names_the_count_that_would_make_a_size(dino: Ancestry) -> None:
    state, spec = dino
    module = get_method("layers")
    learngene = module.fit(state, spec, {"count": 3})
    with pytest.raises(ValueError) as caught:
        module.resolve_spec(learngene, {"depth": 2})
    assert "count in [1, 2]" in str(caught.value) and caught.value.field == "depth"  # type: ignore[attr-defined]
    with pytest.raises(ValueError) as caught:
        module.resolve_spec(learngene, {"embed_dim": 16, "num_heads": 1})
    assert "width 32" in str(caught.value) and "weight-selection" in str(caught.value)

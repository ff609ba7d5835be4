"""Distillation from a frozen ancestry, shared by every condensing trainer.

The soft-distillation term is the KL divergence between the teacher's and the student's softened class
distributions, times tau^2 (so its gradient scale does not shrink with the temperature), averaged over the
batch ("batchmean": the true KL per image). DeiT's reference divides the summed KL by batch x classes instead,
a constant factor 1/classes that only rescales the loss; we keep the per-image KL so the recorded loss reads as
nats. TLEG's reference setting is temperature 1 and weight 1 on the KL term; WAVE adds cross-entropy.

**Feature distillation** (``objective``, :func:`resolve_objective`): an ancestry without a head (``num_classes``
0, the normal form of a self-supervised checkpoint such as DINOv2) has no class predictions to distil, so the
student matches its **tokens**: the pooled token (the final-normed class token, or the average-pooled token
after ``fc_norm``, as the spec's ``global_pool`` says) and the patch tokens, each by ``1 - cosine``, the patch
tokens layer-normalized first (no affine) so that a student whose final norm sits after pooling (TLEG's ``fc_norm``)
compares on the same scale. Prefix tokens other than the class token (registers, distillation token) are never
compared: student and teacher need not have the same ones. Where the student's width differs from the teacher's (a
pool student, a refined WAVE width) a learnable ``Linear(student width -> teacher width)`` maps the student's
tokens first; it lives in :class:`FeatureStudent`, a training-only wrapper, so it is optimized and checkpointed
with the student but never stored in a learngene. ``docs/methods.md`` records why this objective.

**Hidden tokens** (``hidden_weight``, the pool's trained mode; :class:`HiddenTerm`): each student block but the
last also matches the ancestry's tokens after the block at the same relative depth (:func:`hidden_blocks`), through
a training-only projection of its own, both sides standardized channel by channel with the ancestry's mean and
spread at that block (measured once, before training, on fixed images), by ``1 - cosine`` per token.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.data import Dataset, Split
from engine.methods.base import StateDict
from engine.methods.params import ParamError
from engine.spec import ViTSpec
from engine.train.loop import (Cancelled, Hooks, LossHistory, TrainConfig, autocast, pick_device, predict_logits,
                               predict_many, train)
from engine.vit import build_model


def stem(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A timm ViT's tokens before its first block, as ``forward_features`` makes them."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))


def load_teacher(state: StateDict, spec: ViTSpec) -> nn.Module:
    """The ancestry as a frozen timm model (loaded strictly): read, never trained."""
    model = build_model(spec)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def distillation(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Distillation:
    """The loss a trainer distils with, from the method's validated params (``objective`` resolved against the
    ancestry's head)."""
    logits, features = resolve_objective(params.get("objective", "auto"), ancestry_spec.num_classes)
    return Distillation(load_teacher(ancestry, ancestry_spec), params["temperature"], params["kl_weight"],
                        params["ce_weight"], params.get("feature_weight", 1.0), logits=logits, features=features,
                        patch_weight=params.get("patch_weight", 1.0),
                        hidden_weight=params.get("hidden_weight", 0.0))


def feature_student(model: nn.Module, loss: Distillation, widths: list[int],
                    hidden: list[tuple[int, int]] = ()) -> nn.Module:
    """What the loop trains: ``model`` itself for the logits objective, else ``model`` in a
    :class:`FeatureStudent` whose projections map ``widths`` (the widths of its output paths) to the teacher's;
    ``hidden`` (width, depth) per student where the loss matches hidden tokens (:class:`HiddenTerm`)."""
    if not loss.features:
        return model
    return FeatureStudent(model, widths, loss.teacher.embed_dim, hidden if loss.hidden_weight else ())


def per_path(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A network with several output paths (the pool: logits (batch, paths, classes)) is scored path by path
    against the same teacher and labels, each path with equal weight: flatten the paths into the batch."""
    if student_logits.ndim == 2:
        return student_logits, teacher_logits, labels
    paths = student_logits.shape[1]
    return (student_logits.flatten(0, 1), teacher_logits.repeat_interleave(paths, dim=0),
            labels.repeat_interleave(paths, dim=0))


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # In fp32 even under autocast: log-softmax differences of bf16 logits lose the small probabilities.
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature ** 2


#: What ``objective`` may be (a method param): "auto" is features for a headless ancestry, logits otherwise.
OBJECTIVES = ("auto", "logits", "features", "both")


def resolve_objective(objective: str, teacher_classes: int) -> tuple[bool, bool]:
    """(use logits, use features) for ``objective`` against a teacher of ``teacher_classes`` classes; a
    :class:`ParamError` on ``objective`` when the logits are asked of a teacher without a head."""
    if objective not in OBJECTIVES:
        raise ParamError("objective", f"must be one of {list(OBJECTIVES)}, got {objective!r}")
    if objective == "auto":
        return (True, False) if teacher_classes else (False, True)
    if objective in ("logits", "both") and not teacher_classes:
        raise ParamError("objective", f"{objective!r} distils class predictions, and the ancestry has no head "
                                      "(num_classes 0): use 'features' (or 'auto')")
    return objective in ("logits", "both"), objective in ("features", "both")


#: One output path of a network, in what the feature objective compares: the pooled token (batch, width), the
#: patch tokens (batch, patches, width) and the logits (batch, classes; None without a head).
PathOutputs = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def vit_outputs(vit: nn.Module, tokens: torch.Tensor) -> PathOutputs:
    """A timm ``VisionTransformer``'s outputs from its final-normed tokens (``forward_features``)."""
    pooled = vit.forward_head(tokens, pre_logits=True)
    logits = vit.head(pooled) if vit.num_classes else None
    return pooled, tokens[:, vit.num_prefix_tokens:], logits


def path_outputs(model: nn.Module, images: torch.Tensor) -> list[PathOutputs]:
    """Every output path of ``model``: a timm ViT has one; a network with several (the pool's paths, WAVE's
    refined sizes) says so with a ``path_outputs(images)`` method of its own."""
    own = getattr(model, "path_outputs", None)
    if own is not None:
        return own(images)
    return [vit_outputs(model, model.forward_features(images))]


def copy_projection(width: int, teacher_width: int) -> nn.Linear:
    """A ``Linear(width -> teacher_width)`` that starts as a plain copy of the shared coordinates (zeros
    elsewhere): a narrower student's tokens reach the teacher's first coordinates unchanged, so the loss starts from
    what the student already computes."""
    projection = nn.Linear(width, teacher_width)
    nn.init.zeros_(projection.bias)
    with torch.no_grad():
        projection.weight.copy_(torch.eye(teacher_width, width))
    return projection


class FeatureStudent(nn.Module):
    """The student plus the training-only projections of its token widths to the teacher's (one ``Linear`` per
    width that differs; none when all match) and, for the hidden term, one per student block but the last
    (``hidden``: (width, depth) per student; :class:`HiddenTerm`). ``forward`` is the student's own (logits), so
    logit metrics read it as they would the student; the trainers store ``student.net``'s tensors, never the
    projections."""

    def __init__(self, net: nn.Module, widths: list[int], teacher_width: int,
                 hidden: list[tuple[int, int]] = ()) -> None:
        super().__init__()
        self.net = net
        self.teacher_width = teacher_width
        self.projections = nn.ModuleDict({str(w): copy_projection(w, teacher_width) for w in sorted(set(widths))
                                          if w != teacher_width})
        #: hidden[s][i] maps student s's tokens after its block i (every block but its last).
        self.hidden = nn.ModuleList(nn.ModuleList(copy_projection(width, teacher_width) for _ in range(depth - 1))
                                    for width, depth in hidden)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        width = tokens.shape[-1]
        return tokens if width == self.teacher_width else self.projections[str(width)](tokens)

    def path_outputs(self, images: torch.Tensor) -> list[PathOutputs]:
        return self._projected(path_outputs(self.net, images))

    def _projected(self, paths: list[PathOutputs]) -> list[PathOutputs]:
        return [(self.project(pooled), self.project(patches), logits) for pooled, patches, logits in paths]

    def hidden_outputs(self, images: torch.Tensor) -> tuple[list[PathOutputs], list[list[torch.Tensor]]]:
        """The output paths (as :meth:`path_outputs`) and each student's projected tokens after every block but
        its last, from one forward of the net (which says so with a ``hidden_outputs(images)`` of its own)."""
        paths, hidden = self.net.hidden_outputs(images)
        return self._projected(paths), [[projection(tokens) for projection, tokens in zip(projections, states)]
                                        for projections, states in zip(self.hidden, hidden)]


def hidden_blocks(student_depth: int, teacher_depth: int) -> list[int]:
    """The teacher block each student block but the last is matched with: the same relative depth, block
    ``round((i + 1) * teacher_depth / student_depth) - 1`` (halves up) for student block ``i`` (a 4-deep student
    of a 12-deep teacher: 2, 5, 8; its last block's tokens are the final features' business)."""
    return [max(0, ((i + 1) * teacher_depth * 2 + student_depth) // (2 * student_depth) - 1)
            for i in range(student_depth - 1)]


def teacher_tokens(vit: nn.Module, images: torch.Tensor, blocks: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A timm ViT's final-normed tokens (``forward_features``) and its tokens after each of ``blocks``."""
    x, kept, wanted = stem(vit, images), [], set(blocks)
    for i, block in enumerate(vit.blocks):
        x = block(x)
        if i in wanted:
            kept.append(x)
    return vit.norm(x), kept


class HiddenTerm(nn.Module):
    """``1 - cosine`` between each student block's projected tokens and the teacher's at :func:`hidden_blocks`,
    token by token, both standardized per channel with the teacher's mean and spread at that block (fixed: measured
    by :meth:`fit` before training, so a step's loss does not depend on how it is split into micro-batches); the
    mean over tokens, images, blocks and students. Standardizing keeps a few channels of large magnitude (DINOv2's
    residual stream has them) from deciding the cosine alone."""

    def __init__(self, maps: list[list[int]], mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.maps = maps
        #: The teacher blocks any student is matched with, in order; ``mean`` and ``std`` have one row each.
        self.blocks = sorted({b for blocks in maps for b in blocks})
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @classmethod
    @torch.no_grad()
    def fit(cls, teacher: nn.Module, depths: list[int], batches: Iterable[torch.Tensor], precision: str = "auto",
            hooks: Hooks | None = None) -> "HiddenTerm":
        """Statistics of ``teacher``'s tokens (every token of every image in ``batches``, on the teacher's device
        and autocast as training runs it) at the blocks students of ``depths`` are matched with; raises
        :class:`Cancelled` between batches when ``hooks`` ask to stop."""
        maps = [hidden_blocks(depth, len(teacher.blocks)) for depth in depths]
        blocks = sorted({b for blocks in maps for b in blocks})
        width = teacher.embed_dim
        sums = torch.zeros(len(blocks), width, dtype=torch.float64)
        squares = torch.zeros_like(sums)
        count = 0
        device = next(teacher.parameters()).device
        teacher.eval()
        for images in batches:
            if hooks is not None and hooks.should_stop():
                raise Cancelled(0)
            with autocast(device, precision):
                _, hidden = teacher_tokens(teacher, images.to(device), blocks)
            for k, tokens in enumerate(hidden):
                flat = tokens.reshape(-1, width).double().cpu()
                sums[k] += flat.sum(0)
                squares[k] += flat.square().sum(0)
            count += hidden[0].shape[0] * hidden[0].shape[1] if hidden else 0
        mean = sums / max(count, 1)
        std = (squares / max(count, 1) - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
        return cls(maps, mean.float(), std.float())

    def forward(self, student: list[list[torch.Tensor]], teacher: list[torch.Tensor]) -> torch.Tensor:
        terms = []
        for blocks, states in zip(self.maps, student):
            for block, tokens in zip(blocks, states):
                k = self.blocks.index(block)
                target = teacher[k]
                if tokens.shape != target.shape:
                    raise ValueError(f"hidden tokens of shape {tuple(tokens.shape)} against the teacher's "
                                     f"{tuple(target.shape)}: the hidden term needs the same tokens on both sides")
                mean, std = self.mean[k], self.std[k]
                terms.append(1.0 - F.cosine_similarity((tokens.float() - mean) / std, (target.float() - mean) / std,
                                                       dim=-1).mean())
        if not terms:  # students of one block: nothing between the stem and the final features
            return self.mean.new_zeros(())
        return torch.stack(terms).mean()


def feature_terms(student: PathOutputs, teacher: PathOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - cosine of the pooled tokens, 1 - mean cosine of the layer-normalized patch tokens), batch means, in
    fp32. The patch grids must match: same image size and patch size on both sides."""
    s_pooled, s_patches, _ = student
    t_pooled, t_patches, _ = teacher
    if s_patches.shape[1] != t_patches.shape[1]:
        raise ValueError(f"the student has {s_patches.shape[1]} patch tokens, the teacher {t_patches.shape[1]}: "
                         "feature distillation needs the same image and patch size")
    pooled = 1.0 - F.cosine_similarity(s_pooled.float(), t_pooled.float(), dim=-1).mean()
    width = t_patches.shape[-1]
    patches = 1.0 - F.cosine_similarity(F.layer_norm(s_patches.float(), (width,)),
                                        F.layer_norm(t_patches.float(), (width,)), dim=-1).mean()
    return pooled, patches


class Distillation(nn.Module):
    """loss = kl_weight * KL(teacher || student) at ``temperature`` + ce_weight * CE(student, labels) (the
    logits objective) + feature_weight * (pooled + patch_weight * patch feature terms) (the features objective)
    + hidden_weight * the hidden term (:class:`HiddenTerm`, where a trainer set :attr:`hidden`);
    ``logits`` and ``features`` say which objectives are on (:func:`resolve_objective`; by default the logits
    only).

    Holds the teacher as a submodule so the loop moves it to the training device with the student; the
    teacher runs without gradients and in eval mode."""

    def __init__(self, teacher: nn.Module, temperature: float = 1.0, kl_weight: float = 1.0,
                 ce_weight: float = 0.0, feature_weight: float = 1.0, logits: bool = True,
                 features: bool = False, patch_weight: float = 1.0, hidden_weight: float = 0.0) -> None:
        super().__init__()
        if not (logits or features):
            raise ValueError("distillation needs the logits or the features objective")
        self.teacher = teacher
        self.temperature = temperature
        self.kl_weight = kl_weight
        self.ce_weight = ce_weight
        self.feature_weight = feature_weight
        self.patch_weight = patch_weight
        self.hidden_weight = hidden_weight
        #: The hidden term, set by the trainer that offers it (:meth:`HiddenTerm.fit`) when ``hidden_weight`` > 0.
        self.hidden: HiddenTerm | None = None
        self.logits = logits
        self.features = features

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(images)

    def teacher_outputs(self, images: torch.Tensor) -> PathOutputs:
        self.teacher.eval()
        with torch.no_grad():
            return vit_outputs(self.teacher, self.teacher.forward_features(images))

    def teacher_hidden(self, images: torch.Tensor) -> tuple[PathOutputs, list[torch.Tensor]]:
        """:meth:`teacher_outputs` and the teacher's tokens at the hidden term's blocks, from one forward."""
        assert self.hidden is not None
        self.teacher.eval()
        with torch.no_grad():
            tokens, hidden = teacher_tokens(self.teacher, images, self.hidden.blocks)
            return vit_outputs(self.teacher, tokens), hidden

    def logit_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
        student_logits, teacher_logits, labels = per_path(student_logits, teacher_logits, labels)
        loss = self.kl_weight * soft_kl(student_logits, teacher_logits, self.temperature)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(student_logits.float(), labels)
        return loss

    def feature_loss(self, student: list[PathOutputs], teacher: PathOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The (pooled, patch) feature terms averaged over the student's paths, each path with equal weight."""
        terms = [feature_terms(path, teacher) for path in student]
        return (torch.stack([p for p, _ in terms]).mean(), torch.stack([q for _, q in terms]).mean())

    def feature_term(self, pooled: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """The pooled and patch terms combined as training weighs them (before ``feature_weight``): the one place
        the balance lives, so the recorded validation loss is the trained one."""
        return pooled + self.patch_weight * patches

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.features:
            return self.logit_loss(model(images), self.teacher_logits(images), labels)
        hidden_loss = None
        if self.hidden is not None and self.hidden_weight:
            teacher, teacher_hidden = self.teacher_hidden(images)
            student, student_hidden = model.hidden_outputs(images)
            hidden_loss = self.hidden(student_hidden, teacher_hidden)
        else:
            teacher = self.teacher_outputs(images)
            student = path_outputs(model, images)
        pooled, patches = self.feature_loss(student, teacher)
        loss = self.feature_weight * self.feature_term(pooled, patches)
        if hidden_loss is not None:
            loss = loss + self.hidden_weight * hidden_loss
        if self.logits:
            student_logits = torch.stack([logits for _, _, logits in student], dim=1)
            loss = loss + self.logit_loss(student_logits.squeeze(1) if student_logits.shape[1] == 1
                                          else student_logits, teacher[2], labels)
        return loss


@torch.no_grad()
def feature_metrics(student: nn.Module, loss: Distillation, data: Split, hooks: Hooks | None = None,
                    precision: str = "auto", batch_size: int = 64) -> dict[str, float]:
    """On held-out images: the feature loss of the student against the loss's teacher (its projections
    included, the patch term weighted as in training) and the plain cosines of the pooled and patch tokens, each a
    mean over images (and paths). Batch by batch, each batch preprocessed once; raises :class:`Cancelled` between
    batches when ``hooks`` ask to stop."""
    device = next(loss.teacher.parameters()).device
    was_training = student.training
    student.eval()
    sums = {"feature_loss": 0.0, "pooled_cosine": 0.0, "patch_cosine": 0.0}
    try:
        with torch.no_grad():
            for batch, _ in data.batches(batch_size):
                if hooks is not None and hooks.should_stop():
                    raise Cancelled(0)
                batch = batch.to(device)
                with autocast(device, precision):
                    pooled, patches = loss.feature_loss(path_outputs(student, batch), loss.teacher_outputs(batch))
                sums["feature_loss"] += loss.feature_term(pooled, patches).item() * len(batch)
                sums["pooled_cosine"] += (1.0 - pooled).item() * len(batch)
                sums["patch_cosine"] += (1.0 - patches).item() * len(batch)
    finally:
        student.train(was_training)
    return {key: value / max(len(data), 1) for key, value in sums.items()}


def distillation_metrics(student: nn.Module, teacher: nn.Module, data: Split, temperature: float,
                         hooks: Hooks | None = None, precision: str = "auto") -> dict[str, float]:
    """On held-out images: the KL to the teacher, the student's accuracy, how often it agrees with the teacher's
    top class, and the teacher's own accuracy. Batch by batch (each batch preprocessed once for both models);
    raises :class:`Cancelled` between batches when ``hooks`` ask to stop."""
    return _compare(student, teacher, data, temperature, hooks, precision)[0]


def _compare(student: nn.Module, teacher: nn.Module, data: Split, temperature: float, hooks: Hooks | None,
             precision: str, teacher_logits: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`distillation_metrics` and the teacher's logits; given ``teacher_logits`` (of an earlier call on the
    same images), the frozen teacher is not run again."""
    if teacher_logits is None:
        student_out, teacher_logits = predict_many([student, teacher], data, hooks=hooks, precision=precision)
    else:
        student_out = predict_logits(student, data, hooks=hooks, precision=precision)
    student_flat, teacher_flat, labels = per_path(student_out, teacher_logits, data.labels)
    return {
        "kl": soft_kl(student_flat, teacher_flat, temperature).item(),
        "accuracy": (student_flat.argmax(-1) == labels).float().mean().item(),
        "agreement": (student_flat.argmax(-1) == teacher_flat.argmax(-1)).float().mean().item(),
        "teacher_accuracy": (teacher_logits.argmax(-1) == data.labels).float().mean().item(),
    }, teacher_logits


def evaluation_split(dataset: Dataset, config: TrainConfig) -> Split | None:
    """The validation images a run's before/after metrics use: none with ``evaluate: false``, else the fixed
    stratified ``eval_images`` subset of the fixed validation split (the same images in every job)."""
    if not config.evaluate:
        return None
    return dataset.val.fixed_subset(config.eval_images)


def distil(student: nn.Module, loss: Distillation, dataset: Dataset, config: TrainConfig,
           hooks: Hooks | None) -> tuple[LossHistory, dict[str, Any]]:
    """Train ``student`` against ``loss`` on the training split; metrics compare it with the teacher before and
    after on the validation subset of :func:`evaluation_split` (``config.evaluate``, ``config.eval_images``): the
    logits' KL and accuracy, the features' loss and cosines, whichever objectives the loss uses. With
    ``evaluate: false`` no metrics pass runs at all, not even the teacher's accuracy."""
    device = pick_device(config.device)
    loss.to(device)
    student.to(device)
    val = evaluation_split(dataset, config)
    if val is None:
        return train(student, loss, dataset.train, config, hooks), {"evaluated": False}
    if not loss.logits:  # a headless teacher: there are no class predictions to compare
        before_features = feature_metrics(student, loss, val, hooks, config.precision)
        history = train(student, loss, dataset.train, config, hooks)
        after_features = feature_metrics(student, loss, val, hooks, config.precision)
        return history, {**_feature_report(before_features, after_features), "val_images": len(val)}
    before, teacher_logits = _compare(student, loss.teacher, val, loss.temperature, hooks, config.precision)
    before_features = feature_metrics(student, loss, val, hooks, config.precision) if loss.features else None
    history = train(student, loss, dataset.train, config, hooks)
    after, _ = _compare(student, loss.teacher, val, loss.temperature, hooks, config.precision, teacher_logits)
    features = {} if before_features is None else _feature_report(
        before_features, feature_metrics(student, loss, val, hooks, config.precision))
    return history, {
        "val_kl_before": before["kl"], "val_kl_after": after["kl"],
        "val_accuracy_before": before["accuracy"], "val_accuracy": after["accuracy"],
        "teacher_val_accuracy": after["teacher_accuracy"], "teacher_agreement": after["agreement"],
        "val_images": len(val), **features,
    }


def _feature_report(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {"val_feature_loss_before": before["feature_loss"], "val_feature_loss_after": after["feature_loss"],
            "val_pooled_cosine_before": before["pooled_cosine"], "val_pooled_cosine": after["pooled_cosine"],
            "val_patch_cosine_before": before["patch_cosine"], "val_patch_cosine": after["patch_cosine"]}

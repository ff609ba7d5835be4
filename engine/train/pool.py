"""Condensing a Learngene Pool on data (METHODS.md section 3): students of different widths distilled from the
ancestry together with the stitch layers between them.

1. Students start as the data-free pool makes them (weight selection from the ancestry,
   :func:`engine.methods.pool.fit`) **[our choice]**: their features already mean something, so the stitches
   can be fitted before any training.
2. Stitches: least squares between front and back features on ``stitch_images`` real training images
   (:func:`engine.methods.pool.fit_stitches`, the same positions as the pool's catalogue).
3. Everything trains together: every step distils every student *and* every stitched path of the catalogue
   (front student f up to block j, stitch, back student b from block k) from the ancestry, each path with equal
   weight, so the descendants users will ask for are exactly what was trained. With ``hidden_weight`` each
   student's blocks also match the ancestry's tokens at the same relative depth (:class:`HiddenTerm`), whose
   statistics are measured on the stitch images.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from engine.data import Dataset
from engine.methods import pool
from engine.methods.base import Learngene, StateDict
from engine.spec import ViTSpec
from engine.train.auxiliary import parameter_tree
from engine.train.distill import (HiddenTerm, PathOutputs, distil, distillation, feature_student, stem,
                                  vit_outputs)
from engine.train.loop import Hooks, LossHistory, TrainConfig, pick_device
from engine.vit import build_model


class PoolNet(nn.Module):
    """Students and stitches; ``state_dict()`` has the pool learngene's names (``students.{s}.*``,
    ``stitches.{f}.{b}.*``). ``forward`` returns logits of shape (batch, paths, classes): every student, then
    every stitched path in :attr:`paths` order."""

    def __init__(self, students: list[tuple[StateDict, ViTSpec]],
                 stitches: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]], stitched: bool = True) -> None:
        super().__init__()
        self.specs = [spec for _, spec in students]
        self.students = nn.ModuleList()
        for state, spec in students:
            model = build_model(spec)
            model.load_state_dict(state, strict=True)
            self.students.append(model)
        self.stitches = parameter_tree({f"{f}.{b}.{part}": tensor for (f, b), pair in stitches.items()
                                        for part, tensor in zip(("weight", "bias"), pair)})
        #: (front student, last front block j, back student, first back block k) of every stitched path.
        self.paths = [(f, j, b, k) for f, front in enumerate(self.specs) for b, back in enumerate(self.specs)
                      if f != b for j, k in pool.stitch_positions(front.depth, back.depth)] if stitched else []

    def _stitch(self, f: int, b: int, x: torch.Tensor) -> torch.Tensor:
        if self.specs[f].embed_dim == self.specs[b].embed_dim:
            return x  # equal widths: the pool's stitch is the identity
        stitch = self.stitches.get_submodule(f"{f}.{b}")
        return nn.functional.linear(x, stitch.weight, stitch.bias)

    def _final_tokens(self, images: torch.Tensor
                      ) -> tuple[list[tuple[VisionTransformer, torch.Tensor]], list[list[torch.Tensor]]]:
        """Every path's final-normed tokens, with the student whose pooling and head end that path; and every
        student's tokens after each of its blocks."""
        hidden = []  # hidden[s][j]: tokens after block j of student s, reused by every path leaving it
        ends = []
        for student in self.students:
            x, states = stem(student, images), []
            for block in student.blocks:
                x = block(x)
                states.append(x)
            hidden.append(states)
            ends.append((student, student.norm(x)))
        for f, j, b, k in self.paths:
            back = self.students[b]
            x = self._stitch(f, b, hidden[f][j])
            for block in back.blocks[k:]:
                x = block(x)
            ends.append((back, back.norm(x)))
        return ends, hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([vit.forward_head(tokens) for vit, tokens in self._final_tokens(images)[0]], dim=1)

    def path_outputs(self, images: torch.Tensor) -> list[PathOutputs]:
        return [vit_outputs(vit, tokens) for vit, tokens in self._final_tokens(images)[0]]

    def hidden_outputs(self, images: torch.Tensor) -> tuple[list[PathOutputs], list[list[torch.Tensor]]]:
        """:meth:`path_outputs` and each student's tokens after every block but its last (the hidden term's)."""
        ends, hidden = self._final_tokens(images)
        return [vit_outputs(vit, tokens) for vit, tokens in ends], [states[:-1] for states in hidden]

    def path_names(self) -> list[str]:
        return ([f"student {s}" for s in range(len(self.specs))]
                + [f"{f}[..{j}] -> {b}[{k}..]" for f, j, b, k in self.paths])


#: Images the hidden term's statistics are measured on (every token of each): enough for a per-channel mean and
#: spread at any image size, few enough to cost seconds before training.
HIDDEN_STATS_IMAGES = 64


def _split_students(tensors: StateDict, specs: list[ViTSpec]) -> list[tuple[StateDict, ViTSpec]]:
    """Each student's own timm state dict out of pool-named tensors (``students.{s}.<timm key>``)."""
    return [({k.removeprefix(f"students.{s}."): v for k, v in tensors.items() if k.startswith(f"students.{s}.")},
             spec) for s, spec in enumerate(specs)]


def keep_start(trained: StateDict, start: StateDict, share: float) -> StateDict:
    """``share * start + (1 - share) * trained``, tensor by tensor (weight-space ensembling, Wortsman et al.,
    CVPR 2022, between the weight-selected start and what distilling made of it); integer buffers stay trained."""
    return {k: torch.lerp(v.float(), start[k].float(), share).to(v.dtype) if v.is_floating_point() else v
            for k, v in trained.items()}


def train_pool(ancestry: StateDict, ancestry_spec: ViTSpec, dataset: Dataset, params: dict[str, Any],
               hooks: Hooks | None) -> tuple[Learngene, dict[str, Any], LossHistory]:
    chosen = {"student_blocks": params["student_blocks"]}
    if params["students"] is not None:
        chosen["students"] = params["students"]
    start = pool.fit(ancestry, ancestry_spec, chosen)
    specs = pool.student_specs(start)
    students = _split_students(start.tensors, specs)
    sample = dataset.train.sample(params["stitch_images"])  # loaded a batch at a time, never whole
    stitches = pool.fit_stitches(students, (images for images, _ in sample.batches(pool.STITCH_BATCH)))
    model = PoolNet(students, stitches, stitched=params.get("paths", "all") == "all")
    share = params.get("keep_start", 0.0)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if share else None
    loss = distillation(ancestry, ancestry_spec, params)
    config = TrainConfig.from_params(params)
    if params.get("hidden_weight", 0.0) and loss.features:
        # The ancestry's token statistics at the matched blocks, on (up to HIDDEN_STATS_IMAGES of) the same images,
        # on the training device.
        loss.to(pick_device(config.device))
        stats = sample.subset(torch.arange(min(len(sample), HIDDEN_STATS_IMAGES)))
        loss.hidden = HiddenTerm.fit(loss.teacher, [spec.depth for spec in specs],
                                     (images for images, _ in stats.batches(pool.STITCH_BATCH)), config.precision,
                                     hooks)
    student = feature_student(model, loss, [spec.embed_dim for spec in specs],
                              [(spec.embed_dim, spec.depth) for spec in specs])
    history, metrics = distil(student, loss, dataset, config, hooks)
    metrics["paths"] = model.path_names()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if start_state is not None:
        state = keep_start(state, start_state, share)
    trained_students = _split_students(state, specs)
    trained_stitches = {(f, b): (state[f"stitches.{f}.{b}.weight"], state[f"stitches.{f}.{b}.bias"])
                        for f, b in stitches}
    learngene = pool.build_pool(trained_students, trained_stitches, {
        "spec": ancestry_spec.to_dict(),
        "init": {"students": start.meta["fit"]["students"],
                 "stitches": f"least squares on {len(sample)} training images",
                 **({"keep_start": share} if share else {})},
    })
    return learngene, metrics, history

"""The pool's hidden term (``hidden_weight``): each student block but the last matches the ancestry's tokens at
the same relative depth, standardized with fixed statistics of the ancestry's, through training-only projections."""
from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from engine.data import DIGITS_URI
from engine.methods import get_entry
from engine.methods.pool import student_states
from engine.train import condense
from engine.train.condense import check_request
from engine.train.distill import Distillation, FeatureStudent, HiddenTerm, feature_student, hidden_blocks
from engine.train.loop import Cancelled, NoHooks
from engine.train.pool import PoolNet
from engine.vit import seeded
from tests.engine_train.conftest import QUICK
from tests.engine_train.test_train_headless import Ancestry, headless

#: Two students of the 4-deep headless ancestry: half width and 2 deep, full width and 3 deep.
STUDENTS = [{"embed_dim": 16, "num_heads": 1, "depth": 2}, {"embed_dim": 32, "num_heads": 2, "depth": 3}]
HIDDEN = {**QUICK["pool"], "students": STUDENTS, "paths": "students", "hidden_weight": 1.0}


@pytest.fixture(scope="module")
def dino() -> Ancestry:
    return headless()


def test_hidden_blocks_are_at_the_same_relative_depth() -> None:
    assert hidden_blocks(4, 12) == [2, 5, 8]
    assert hidden_blocks(6, 12) == [1, 3, 5, 7, 9]
    assert hidden_blocks(12, 12) == list(range(11))
    assert hidden_blocks(3, 4) == [0, 2]  # 4/3 and 8/3 rounded
    assert hidden_blocks(1, 12) == []  # one block: the final features are all there is
    deeper = hidden_blocks(24, 12)
    assert deeper == sorted(deeper) and deeper[0] == 0 and deeper[-1] == 11  # 23/24 of 12 rounds to the last


def _pool_net(state: dict, spec: Any, students: list[dict[str, Any]]) -> PoolNet:
    from engine.methods import pool

    learngene = pool.fit(state, spec, {"students": students})
    return PoolNet(student_states(learngene), {}, stitched=False)


def test_a_student_that_is_the_ancestry_has_no_hidden_loss_and_a_changed_one_has(dino: Ancestry) -> None:
    """The full-size student is the ancestry itself (weight selection at its own size): its identity-started
    projections give hidden tokens equal to the ancestry's, so the term is 0; perturbed, it is not."""
    state, spec = dino
    net = _pool_net(state, spec, [{"embed_dim": 32, "num_heads": 2, "depth": 4}])
    loss = Distillation(_teacher(state, spec), logits=False, features=True, hidden_weight=1.0)
    images = torch.randn(6, 3, 28, 28)
    loss.hidden = HiddenTerm.fit(loss.teacher, [4], [images[:3], images[3:]])
    assert loss.hidden.blocks == [0, 1, 2] and loss.hidden.mean.shape == (3, 32)
    student = feature_student(net, loss, [32], [(32, 4)])
    assert isinstance(student, FeatureStudent) and len(student.hidden[0]) == 3
    _, hidden = student.hidden_outputs(images)
    _, teacher_hidden = loss.teacher_hidden(images)
    assert loss.hidden(hidden, teacher_hidden).item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        net.students[0].blocks[0].mlp.fc1.weight.add_(0.5)
    _, hidden = student.hidden_outputs(images)
    assert loss.hidden(hidden, loss.teacher_hidden(images)[1]).item() > 1e-3


def _teacher(state: dict, spec: Any) -> torch.nn.Module:
    from engine.train.distill import load_teacher

    return load_teacher(state, spec)


def test_the_hidden_term_adds_its_weight_times_itself_and_does_not_depend_on_the_split(dino: Ancestry) -> None:
    """The loss is the final features' plus hidden_weight x the hidden term; with fixed statistics a batch's loss
    is the size-weighted mean of its parts' (micro-batches accumulate to the whole batch's step)."""
    state, spec = dino
    with seeded(1):
        net = _pool_net(state, spec, STUDENTS)
        torch.nn.init.normal_(net.students[0].blocks[0].mlp.fc1.weight, std=0.2)
    images, labels = torch.randn(8, 3, 28, 28), torch.zeros(8, dtype=torch.long)
    plain = Distillation(_teacher(state, spec), logits=False, features=True)
    hidden = Distillation(_teacher(state, spec), logits=False, features=True, hidden_weight=2.5)
    hidden.hidden = HiddenTerm.fit(hidden.teacher, [2, 3], [images])
    assert hidden.hidden.maps == [[1], [0, 2]]
    student = feature_student(net, hidden, [16, 32], [(16, 2), (32, 3)])
    paths, student_hidden = student.hidden_outputs(images)
    term = hidden.hidden(student_hidden, hidden.teacher_hidden(images)[1]).item()
    assert term > 1e-3
    assert hidden(student, images, labels).item() == pytest.approx(plain(student, images, labels).item() + 2.5 * term,
                                                                     rel=1e-5)
    halves = 0.5 * hidden(student, images[:4], labels[:4]) + 0.5 * hidden(student, images[4:], labels[4:])
    assert halves.item() == pytest.approx(hidden(student, images, labels).item(), rel=1e-5)


def test_a_pool_condensed_with_the_hidden_term_learns_and_stores_no_projection(dino: Ancestry) -> None:
    state, spec = dino
    learngene, metrics, history = condense("pool", "train", state, spec, DIGITS_URI, HIDDEN)
    plain, _, _ = condense("pool", "train", state, spec, DIGITS_URI, {**HIDDEN, "hidden_weight": 0.0})
    assert set(learngene.tensors) == set(plain.tensors)  # the hidden projections are training-only
    assert any(not torch.equal(learngene.tensors[k], plain.tensors[k]) for k in plain.tensors)
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"]
    assert history[-1][1] < history[0][1]
    off, _, _ = condense("pool", "train", state, spec, DIGITS_URI,
                         {k: v for k, v in HIDDEN.items() if k != "hidden_weight"})
    assert all(torch.equal(off.tensors[k], plain.tensors[k]) for k in plain.tensors)  # off by default


class _StopAtOnce(NoHooks):
    def should_stop(self) -> bool:
        return True


def test_measuring_the_statistics_honours_a_cancel(dino: Ancestry) -> None:
    state, spec = dino
    with pytest.raises(Cancelled):
        HiddenTerm.fit(_teacher(state, spec), [2], [torch.randn(2, 3, 28, 28)] * 3, hooks=_StopAtOnce())


def test_the_hidden_term_is_refused_without_the_features_objective(dino: Ancestry, trained_ancestry: tuple) -> None:
    _, headed, _ = trained_ancestry
    entry = get_entry("pool")
    with pytest.raises(ValueError) as caught:
        check_request("pool", "train", headed, entry.validate_params({"hidden_weight": 1.0}, "train"))
    assert caught.value.field == "params.hidden_weight"  # type: ignore[attr-defined]
    check_request("pool", "train", headed, entry.validate_params({"hidden_weight": 1.0, "objective": "both"},
                                                                  "train"))
    check_request("pool", "train", dino[1], entry.validate_params({"hidden_weight": 1.0}, "train"))
    with pytest.raises(ValueError) as caught:
        entry.validate_params({"hidden_weight": -0.5}, "train")
    assert caught.value.field == "params.hidden_weight"  # type: ignore[attr-defined]


def test_a_run_with_the_hidden_term_resumes_exactly(dino: Ancestry) -> None:
    """The hidden projections train with the student, so they are checkpointed with it; the statistics are
    measured again, identically, by the run that resumes."""
    from tests.engine_train.test_train_loop import Recorder

    state, spec = dino
    params = {**HIDDEN, "steps": 12, "warmup_steps": 2, "evaluate": False}
    counted = Recorder()
    whole, _, _ = condense("pool", "train", state, spec, DIGITS_URI, params, counted)
    stopped = Recorder(stop_after_calls=counted.calls - 5)  # a stop five calls before the end: within training
    with pytest.raises(Cancelled):
        condense("pool", "train", state, spec, DIGITS_URI, params, stopped)
    step = torch.load(io.BytesIO(stopped.checkpoints[-1]), weights_only=True)["step"]
    assert 0 < step < 12
    resumed, _, _ = condense("pool", "train", state, spec, DIGITS_URI, params,
                             Recorder(checkpoint=stopped.checkpoints[-1]))
    assert all(torch.equal(resumed.tensors[k], whole.tensors[k]) for k in whole.tensors)

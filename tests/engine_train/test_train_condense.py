"""Condensing on data: every trainer lowers its distillation loss and yields a learngene whose expansions load
into timm strictly and compute what the trained network computed."""
from __future__ import annotations

from typing import Any

import pytest
import timm
import torch

import engine.stitched  # noqa: F401  (registers the stitched architecture with timm)
from engine.data import DIGITS_URI, Dataset
from engine.methods import get_method, tleg, wave
from engine.methods.base import Descendant, Learngene, StateDict
from engine.spec import ViTSpec
from engine.train import Cancelled, NoHooks, condense
from engine.train.layers import block_scores
from engine.train.pool import PoolNet, _split_students
from engine.train.tleg import LinearExpansionViT
from engine.train.wave import TemplateViT
from tests.engine_train.conftest import QUICK

Ancestry = tuple[StateDict, ViTSpec, dict[str, Any]]


def _load(descendant: Descendant) -> torch.nn.Module:
    model = timm.create_model(descendant.architecture, pretrained=False, **descendant.model_args)
    model.load_state_dict(descendant.state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def condensed(trained_ancestry: Ancestry) -> dict[str, tuple[Learngene, dict[str, Any], list]]:
    state, spec, _ = trained_ancestry
    return {method: condense(method, "train", state, spec, DIGITS_URI, QUICK[method]) for method in QUICK}


@pytest.mark.parametrize("method", ["tleg", "wave", "pool"])
def test_distillation_lowers_the_loss(condensed: dict, method: str) -> None:
    learngene, metrics, history = condensed[method]
    assert learngene.method == method
    assert metrics["val_kl_after"] < 0.7 * metrics["val_kl_before"]
    first, last = history[0][1], sum(v for _, v in history[-3:]) / 3
    assert last < first
    assert history[-1][0] == QUICK[method]["steps"]


@pytest.mark.parametrize("method", ["tleg", "wave", "pool", "layers"])
def test_every_offered_size_expands_and_loads_into_timm_strictly(condensed: dict, method: str) -> None:
    learngene = condensed[method][0]
    module = get_method(method)
    specs = list(module.candidate_specs(learngene))
    for spec in specs[:: max(1, len(specs) // 6)] + specs[-1:]:
        _load(module.expand(learngene, spec.replace(num_classes=7), seed=0))  # a fresh head
        _load(module.expand(learngene, spec, seed=0))  # the inherited head


def _logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


def test_tleg_expansion_at_the_auxiliary_depth_is_the_trained_network(condensed: dict, digits: Dataset) -> None:
    learngene = condensed["tleg"][0]
    assert learngene.meta["aux_depth"] == 4 and learngene.meta["init"] == "fit"
    aux = LinearExpansionViT(learngene.base_spec)
    aux.load_state_dict(learngene.tensors, strict=True)
    descendant = _load(tleg.expand(learngene, learngene.base_spec, seed=0))
    images = digits.val.images[:32]
    torch.testing.assert_close(_logits(descendant, images), _logits(aux, images), rtol=1e-4, atol=1e-4)


def test_tleg_random_init_follows_methods_md() -> None:
    spec = ViTSpec(depth=12, embed_dim=32, num_heads=2, num_classes=10, img_size=8, patch_size=4, in_chans=1,
                   class_token=False, global_pool="avg")
    torch.manual_seed(0)
    aux = LinearExpansionViT(spec)
    a, b = aux.blocks["A"], aux.blocks["B"]
    assert torch.all(a.norm1.weight == 1) and torch.all(a.norm1.bias == 0)
    assert torch.all(b.norm1.weight == 0) and torch.all(b.norm2.bias == 0)
    assert torch.all(b.attn.qkv.bias == 0) and torch.all(a.mlp.fc1.bias == 0)
    assert b.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not torch.equal(a.mlp.fc1.weight, b.mlp.fc1.weight)  # A and B drawn independently
    assert torch.equal(aux.coefficients, tleg.coefficients(12))
    assert set(aux.state_dict()) == set(tleg.layout(spec))


def test_wave_auxiliary_network_is_its_expansion(condensed: dict, digits: Dataset) -> None:
    learngene = condensed["wave"][0]
    assert learngene.meta["tile"] == [8, 8] and learngene.meta["counts"] == {k: 4 for k in ("qkv", "proj", "fc1", "fc2")}
    descendant = _load(get_method("wave").expand(learngene, learngene.base_spec, seed=0))
    images = digits.val.images[:32]
    torch.testing.assert_close(_logits(descendant, images), _logits(TemplateViT(learngene), images),
                               rtol=1e-4, atol=1e-4)


def test_wave_training_sizes_left_out_tile_and_counts_to_the_ancestry(trained_ancestry: Ancestry) -> None:
    """Regression (issue 15): with tile and counts left out, a trained WAVE learngene of a small ancestry kept
    the fit's 32x32 tiles and up to 64 templates per kind, i.e. most of the ancestry's block weights."""
    state, spec, _ = trained_ancestry
    params = {k: v for k, v in QUICK["wave"].items() if k not in ("tile", "counts")} | {"steps": 2, "warmup_steps": 1}
    learngene, _, _ = condense("wave", "train", state, spec, DIGITS_URI, params)
    assert learngene.meta["tile"] == [8, 8]
    assert learngene.meta["counts"] == {k: wave.TRAIN_COUNT for k in wave.KINDS}
    blocks = sum(v.numel() for k, v in state.items() if k.startswith("blocks.") and k.endswith("weight")
                 and v.dim() == 2)
    condensed = sum(v.numel() for k, v in learngene.tensors.items() if k.startswith(("templates.", "scalers.")))
    assert condensed <= wave.CONDENSED_SHARE * blocks


def test_pool_trained_paths_are_the_descendants_users_get(condensed: dict, digits: Dataset) -> None:
    learngene, metrics, _ = condensed["pool"]
    module = get_method("pool")
    specs = [ViTSpec.from_dict(s) for s in learngene.meta["students"]]
    net = PoolNet(_split_students(learngene.tensors, specs),
                  {(f, b): (learngene.tensors[f"stitches.{f}.{b}.weight"], learngene.tensors[f"stitches.{f}.{b}.bias"])
                   for f, b in learngene.meta["stitches"]})
    assert len(metrics["paths"]) == 2 + len(net.paths) and len(net.paths) == 2
    images = digits.val.images[:32]
    outputs = _logits(net, images)
    for path, (f, j, b, k) in enumerate(net.paths, start=2):
        entry = next(e for e in module.catalogue(learngene) if e.choice == [f, j, b, k])
        descendant = _load(module.expand(learngene, entry.spec, seed=0))
        torch.testing.assert_close(_logits(descendant, images), outputs[:, path], rtol=1e-4, atol=1e-4)


def test_layers_scores_every_block_and_keeps_the_top_ones(condensed: dict) -> None:
    learngene, metrics, history = condensed["layers"]
    scores = learngene.meta["scores"]
    assert len(scores) == 4 and all(s > 0 for s in scores) and history == []
    top = sorted(sorted(range(4), key=lambda i: -scores[i])[:2])
    assert learngene.meta["indices"] == metrics["indices"] == top
    assert learngene.meta["criterion"].startswith("ablation-kl")


def test_layers_criterion_gives_a_block_that_does_nothing_no_score(trained_ancestry: Ancestry, digits: Dataset) -> None:
    state, spec, _ = trained_ancestry
    hollow = dict(state)
    for name in ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
        hollow[f"blocks.1.{name}"] = torch.zeros_like(state[f"blocks.1.{name}"])  # block 1 adds nothing
    scores = block_scores(hollow, spec, digits.train.images[:64], batch_size=32)
    assert scores[1] == pytest.approx(0.0, abs=1e-6)
    assert min(scores[0], scores[2], scores[3]) > 1e-3
    learngene, _, _ = condense("layers", "train", hollow, spec, DIGITS_URI,
                               {"count": 3, "sample_size": 64, "selection": "score"})
    assert learngene.meta["indices"] == [0, 2, 3]
    # The default keeps the contiguous run with the largest total of the recorded scores.
    from engine.train.layers import best_window

    run2, _, _ = condense("layers", "train", hollow, spec, DIGITS_URI, {"count": 2, "sample_size": 64})
    start = best_window(run2.meta["scores"], 2)
    assert run2.meta["indices"] == [start, start + 1] and "contiguous" in run2.meta["criterion"]
    by_end, _, _ = condense("layers", "train", hollow, spec, DIGITS_URI,
                            {"count": 2, "sample_size": 64, "selection": "end", "position": "last"})
    assert by_end.meta["indices"] == [2, 3] and by_end.meta["scores"] == learngene.meta["scores"]


def test_best_window_is_the_contiguous_run_with_the_largest_total() -> None:
    from engine.train.layers import best_window

    # The report's case: the top four single scores are blocks 0, 1, 2 and 5; the best run of four is 0-3.
    scores = [0.30, 0.20, 0.10, 0.004, 0.001, 0.007, 0.002, 0.000]
    assert best_window(scores, 4) == 0
    assert best_window([0.0, 0.1, 0.5, 0.4, 0.0], 2) == 2
    assert best_window([0.2, 0.2, 0.2], 2) == 0  # ties: the earliest
    assert best_window([0.1, 0.2], 2) == 0


def test_fit_mode_is_the_methods_data_free_fit(trained_ancestry: Ancestry) -> None:
    state, spec, _ = trained_ancestry
    learngene, metrics, history = condense("tleg", "fit", state, spec, None, {"steps": 5})  # train knobs ignored
    direct = tleg.fit(state, spec, {})
    assert history == [] and metrics["fit"] == direct.meta["fit"]
    assert all(torch.equal(learngene.tensors[k], v) for k, v in direct.tensors.items())
    layers, _, _ = condense("layers", "fit", state, spec, None, {"count": 1, "position": "last"})
    assert layers.meta["indices"] == [3]


def test_condense_refuses_what_cannot_run(trained_ancestry: Ancestry) -> None:
    state, spec, _ = trained_ancestry
    with pytest.raises(ValueError, match="needs a dataset"):
        condense("tleg", "train", state, spec, None, {})
    with pytest.raises(ValueError, match="no train mode"):
        condense("weight-selection", "train", state, spec, DIGITS_URI, {})
    with pytest.raises(ValueError, match="mode"):
        condense("tleg", "distil", state, spec, DIGITS_URI, {})
    with pytest.raises(ValueError, match="params.aux_depth"):
        condense("tleg", "train", state, spec, DIGITS_URI, {"aux_depth": 0})


class StopAt(NoHooks):
    """Asks to stop once ``steps`` steps (or scoring batches) have reported progress: loading the data and the
    validation metrics consult ``should_stop`` too, so counting its calls would not count steps."""

    def __init__(self, steps: int) -> None:
        self.reported, self.limit = 0, steps

    def on_progress(self, progress: dict) -> None:
        self.reported += 1

    def should_stop(self) -> bool:
        return self.reported >= self.limit


@pytest.mark.parametrize("method", ["tleg", "layers"])
def test_cancelling_a_condensing_job_stops_it(trained_ancestry: Ancestry, method: str) -> None:
    state, spec, _ = trained_ancestry
    params = {**QUICK[method], "batch_size": 32}  # layers: 4 scoring batches, tleg: 40 steps
    with pytest.raises(Cancelled) as raised:
        condense(method, "train", state, spec, DIGITS_URI, params, StopAt(1))
    assert raised.value.step == 1


class Interrupted(StopAt):
    """A job killed after some steps, keeping the checkpoints it took (one after every step here)."""

    def __init__(self, steps: int, checkpoint: bytes | None = None) -> None:
        super().__init__(steps)
        self.saved, self.checkpoint = [], checkpoint

    def save_checkpoint(self, blob: bytes) -> None:
        self.saved.append(blob)

    def load_checkpoint(self) -> bytes | None:
        return self.checkpoint


def test_a_restarted_condensing_job_continues_to_the_same_learngene(trained_ancestry: Ancestry,
                                                                    condensed: dict) -> None:
    state, spec, _ = trained_ancestry
    params = {**QUICK["tleg"], "checkpoint_every_s": 1e-9}
    first = Interrupted(25)
    with pytest.raises(Cancelled):
        condense("tleg", "train", state, spec, DIGITS_URI, params, first)
    assert len(first.saved) == 26  # one after each of 25 steps, and one where the stop found it
    restarted = Interrupted(10_000, checkpoint=first.saved[-1])
    learngene, _, history = condense("tleg", "train", state, spec, DIGITS_URI, params, restarted)
    uninterrupted, _, full_history = condensed["tleg"]
    assert history == full_history
    assert all(torch.equal(learngene.tensors[k], v) for k, v in uninterrupted.tensors.items())


def test_wave_refinement_trains_only_the_scalers_of_the_asked_widths(condensed: dict, trained_ancestry: Ancestry,
                                                                     digits: Dataset) -> None:
    from engine.methods import wave
    from engine.train import refine

    state, spec, _ = trained_ancestry
    learngene = condensed["wave"][0]
    params = {"steps": 30, "warmup_steps": 3, "lr": 5e-3, "checkpoint_every_s": 0,
              "sizes": [{"embed_dim": 16, "num_heads": 1}, {"embed_dim": 48, "num_heads": 3, "depth": 6}]}
    refined, metrics, history = refine("wave", learngene, state, spec, DIGITS_URI, params)

    assert metrics["mode"] == "refine" and set(metrics["sizes"]) == {"16x32", "48x96"}
    assert metrics["val_kl_after"] < metrics["val_kl_before"] and history[-1][0] == 30
    assert refined.meta["refined"]["48x96"] == {"depth": 6, "embed_dim": 48, "num_heads": 3, "mlp_ratio": 2.0}
    # Nothing but the new scalers changed: templates, auxiliary scalers, norms, biases, head are the learngene's.
    for key, tensor in learngene.tensors.items():
        assert torch.equal(refined.tensors[key], tensor), key
    assert set(refined.tensors) - set(learngene.tensors) == {
        f"refined.{w}.scalers.{k}" for w in ("16x32", "48x96") for k in wave.KINDS}

    module = get_method("wave")
    images = digits.val.images[:32]
    for width, heads, depth in [(48, 3, 6), (48, 3, 3), (16, 1, 4)]:
        asked = module.resolve_spec(refined, {"embed_dim": width, "num_heads": heads, "depth": depth})
        key = wave.width_key(asked)
        trained = refined.tensors[f"refined.{key}.scalers.qkv"]
        descendant = module.expand(refined, asked, seed=0)
        # Every weight is still the stated Kronecker sum, now with the refined scalers resampled along depth.
        from engine.vit import resample_depth
        expected = wave.compose(resample_depth(trained, depth), refined.tensors["templates.qkv"])
        for i in range(depth):
            torch.testing.assert_close(descendant.state_dict[f"blocks.{i}.attn.qkv.weight"], expected[i])
        _load(descendant)
        assert not torch.equal(descendant.state_dict["blocks.0.attn.qkv.weight"],
                               module.expand(learngene, asked, seed=0).state_dict["blocks.0.attn.qkv.weight"])
    # At the refined size itself the descendant computes what the refinement trained.
    asked = module.resolve_spec(refined, {"embed_dim": 48, "num_heads": 3, "depth": 6})
    from engine.train.wave import ScalerRefinement
    trained_net = ScalerRefinement(refined, [asked]).members[0]
    torch.testing.assert_close(_logits(_load(module.expand(refined, asked, seed=0)), images),
                               _logits(trained_net, images), rtol=1e-4, atol=1e-4)
    # A width that was not refined expands exactly as before.
    plain = module.resolve_spec(refined, {"embed_dim": 64, "num_heads": 4})
    assert all(torch.equal(a, b) for a, b in zip(module.expand(refined, plain, 0).state_dict.values(),
                                                  module.expand(learngene, plain, 0).state_dict.values()))
    # Refining again keeps earlier widths and adds (or replaces) the new ones.
    again, _, _ = refine("wave", refined, state, spec, DIGITS_URI, {**params, "steps": 2, "warmup_steps": 0,
                                                                      "sizes": [{"embed_dim": 24, "num_heads": 3}]})
    assert set(again.meta["refined"]) == {"16x32", "48x96", "24x48"}


@pytest.mark.parametrize("sizes, message", [
    ([{"embed_dim": 20, "num_heads": 2}], "multiple of the WAVE tile"),
    ([{"embed_dim": 16, "num_heads": 1}, {"embed_dim": 16, "num_heads": 2}], "one size per width"),
    ([{"embed_dim": 16, "num_heads": 3}], "heads"),
])
def test_wave_refinement_refuses_sizes_it_cannot_make(condensed: dict, trained_ancestry: Ancestry,
                                                      sizes: list, message: str) -> None:
    from engine.methods.params import ParamError
    from engine.train import refine

    state, spec, _ = trained_ancestry
    with pytest.raises(ParamError, match=message):
        refine("wave", condensed["wave"][0], state, spec, DIGITS_URI, {"steps": 1, "sizes": sizes})


class TeacherCounter:
    """Counts the batches the (real, frozen) teacher is run on, through a forward hook on the model the trainers'
    distillation loss loads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import engine.train.distill as trainer

        self.batches = 0
        load = trainer.load_teacher

        def counted(*args: Any) -> torch.nn.Module:
            teacher = load(*args)
            teacher.register_forward_hook(lambda *_: self.count())
            return teacher
        monkeypatch.setattr(trainer, "load_teacher", counted)

    def count(self) -> None:
        self.batches += 1


QUICK_TLEG = {**QUICK["tleg"], "steps": 4, "warmup_steps": 1}


def test_evaluate_false_runs_no_metrics_pass(trained_ancestry: Ancestry, monkeypatch: pytest.MonkeyPatch) -> None:
    state, spec, _ = trained_ancestry
    counter = TeacherCounter(monkeypatch)
    _, metrics, history = condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK_TLEG, "evaluate": False})
    assert counter.batches == 4 and history[-1][0] == 4  # one teacher batch per training step, nothing else
    assert metrics == {"mode": "train", "evaluated": False}


def test_eval_images_bounds_the_fixed_validation_subset(trained_ancestry: Ancestry, digits: Dataset,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    state, spec, _ = trained_ancestry
    counter = TeacherCounter(monkeypatch)
    _, metrics, _ = condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK_TLEG, "eval_images": 40})
    # One evaluation batch of 40 images before training (the frozen teacher's logits serve the after pass too).
    assert counter.batches == 4 + 1 and metrics["val_images"] == 40
    again = condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK_TLEG, "eval_images": 40})[1]
    assert again["val_kl_before"] == metrics["val_kl_before"]  # the same images every time
    default = condense("tleg", "train", state, spec, DIGITS_URI, QUICK_TLEG)[1]
    assert default["val_images"] == len(digits.val)  # 359 validation images: under the default 1,000


def test_a_cancel_during_evaluation_stops_at_the_next_batch(trained_ancestry: Ancestry,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    state, spec, _ = trained_ancestry
    counter = TeacherCounter(monkeypatch)
    hooks = StopAt(10**9)
    hooks.should_stop = lambda: counter.batches >= 1  # type: ignore[method-assign]
    with pytest.raises(Cancelled) as raised:  # 359 validation images: two batches of 256
        condense("tleg", "train", state, spec, DIGITS_URI, QUICK_TLEG, hooks)
    assert counter.batches == 1 and raised.value.step == 0 and hooks.reported == 0


def test_the_run_trains_at_the_image_size_it_asks_for(trained_ancestry: Ancestry, digits: Dataset) -> None:
    from engine.data import load_dataset
    from engine.methods.params import ParamError

    state, spec, _ = trained_ancestry  # 8 px, 4 px patches; the teacher loads strictly only once resampled
    learngene, _, _ = condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK_TLEG, "img_size": 16})
    assert learngene.base_spec.img_size == 16 and learngene.tensors["pos_embed"].shape[1] == 16  # a 4x4 grid
    module = get_method("tleg")
    at_16 = _load(module.expand(learngene, learngene.base_spec.replace(depth=3), seed=0))
    at_8 = _load(module.expand(learngene, learngene.base_spec.replace(depth=3, img_size=8), seed=0))
    assert at_16(load_dataset(DIGITS_URI, 16, 1).val.images[:4]).shape == (4, 10)
    assert at_8(digits.val.images[:4]).shape == (4, 10)  # descendants keep the size they ask for
    for bad in (10, 2, 4096, "16"):
        with pytest.raises(ParamError) as raised:
            condense("tleg", "train", state, spec, DIGITS_URI, {**QUICK_TLEG, "img_size": bad})
        assert raised.value.field == "params.img_size"


def test_wave_refines_at_the_size_its_learngene_was_condensed_at(trained_ancestry: Ancestry) -> None:
    from engine.methods.params import ParamError
    from engine.train import refine

    state, spec, _ = trained_ancestry  # 8 px
    learngene, _, _ = condense("wave", "train", state, spec, DIGITS_URI,
                               {**QUICK["wave"], "steps": 2, "warmup_steps": 1, "img_size": 16, "evaluate": False})
    assert learngene.base_spec.img_size == 16
    params = {"steps": 3, "warmup_steps": 1, "checkpoint_every_s": 0, "eval_images": 16,
              "sizes": [{"embed_dim": 16, "num_heads": 1}]}
    # The ancestry (8 px) is resampled to the learngene's 16 px; the scalers train on its grid.
    refined, metrics, history = refine("wave", learngene, state, spec, DIGITS_URI, params)
    assert history[-1][0] == 3 and metrics["val_images"] == 16 and set(metrics["sizes"]) == {"16x32"}
    assert refined.base_spec.img_size == 16
    _, metrics, _ = refine("wave", learngene, state, spec, DIGITS_URI, {**params, "evaluate": False})
    assert "sizes" not in metrics and metrics["evaluated"] is False
    with pytest.raises(ParamError) as raised:
        refine("wave", learngene, state, spec, DIGITS_URI, {**params, "img_size": 8})
    assert raised.value.field == "params.img_size"


@pytest.mark.parametrize("method", ["layers", "pool"])
def test_layers_and_pool_never_hold_their_sample_whole(trained_ancestry: Ancestry, method: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19 item 2: the layers' scoring sample (up to 1,000,000 images) and the pool's stitch images (up to
    65,536) were materialized at the run's image size (``Split.images``), and the pool's stitches held every
    image's features at every block; both now load a batch at a time."""
    from engine.data import Split

    def whole(split: Split) -> torch.Tensor:
        raise AssertionError(f"{len(split)} images materialized at once")

    monkeypatch.setattr(Split, "images", property(whole))
    state, spec, _ = trained_ancestry
    params = {"count": 2, "sample_size": 96} if method == "layers" else {**QUICK["pool"], "steps": 2, "warmup_steps": 1,
                                                                         "evaluate": False}
    learngene, _, _ = condense(method, "train", state, spec, DIGITS_URI, params)
    assert learngene.method == method
    if method == "pool":
        assert learngene.meta["stitches"]


def test_a_pool_can_distil_its_students_alone(trained_ancestry: Ancestry) -> None:
    """Students of one width (a student per depth) gain nothing from training the stitched paths between them
    (their stitches are identities) and pay for each: ``paths: students`` trains the students only, and the
    stitches keep their least-squares fit."""
    state, spec, _ = trained_ancestry
    students = [{"embed_dim": 16, "num_heads": 1, "depth": 2}, {"embed_dim": 16, "num_heads": 1, "depth": 3},
                {"embed_dim": 32, "num_heads": 2, "depth": 2}]
    params = {**QUICK["pool"], "students": students, "steps": 3, "warmup_steps": 1, "evaluate": False}
    learngene, metrics, _ = condense("pool", "train", state, spec, DIGITS_URI, {**params, "paths": "students"})
    assert metrics["paths"] == ["student 0", "student 1", "student 2"]
    assert learngene.meta["stitches"]  # still fitted: the catalogue's stitched entries expand
    _, every, _ = condense("pool", "train", state, spec, DIGITS_URI, params)
    assert len(every["paths"]) > 3
    with pytest.raises(Exception, match="paths"):
        condense("pool", "train", state, spec, DIGITS_URI, {**params, "paths": "some"})


def test_a_pool_keeps_the_share_of_its_start_it_is_asked_to(trained_ancestry: Ancestry) -> None:
    """``keep_start`` blends each trained weight with its start (the students' weight selection, the stitches'
    least-squares fit): 1 gives the start back exactly, 0 (the default) the trained weights, 0.5 the midpoint."""
    from engine.methods import pool
    from engine.methods.params import ParamError

    state, spec, _ = trained_ancestry
    params = {**QUICK["pool"], "steps": 4, "warmup_steps": 1, "lr": 5e-3, "evaluate": False}
    trained, _, _ = condense("pool", "train", state, spec, DIGITS_URI, params)
    start, _, _ = condense("pool", "train", state, spec, DIGITS_URI, {**params, "keep_start": 1.0})
    half, _, _ = condense("pool", "train", state, spec, DIGITS_URI, {**params, "keep_start": 0.5})
    fitted = pool.fit(state, spec, {"students": params["students"]} if params.get("students") else {})
    students = [k for k in trained.tensors if k.startswith("students.")]
    assert students and any(k.startswith("stitches.") for k in trained.tensors)
    for key in students:  # keep_start 1: exactly the weight-selected students, whatever training did
        assert torch.equal(start.tensors[key], fitted.tensors[key]), key
    moved = [k for k in trained.tensors if not torch.equal(trained.tensors[k], start.tensors[k])]
    assert moved  # training changed the weights, so the blend has two ends to choose between
    for key in trained.tensors:
        assert torch.allclose(half.tensors[key], (trained.tensors[key] + start.tensors[key]) / 2, atol=1e-6), key
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ParamError) as raised:
            condense("pool", "train", state, spec, DIGITS_URI, {**params, "keep_start": bad})
        assert raised.value.field == "params.keep_start"


def test_pool_students_distil_from_the_blocks_student_blocks_names(trained_ancestry: Ancestry) -> None:
    """``student_blocks: spread`` starts each student from evenly spaced ancestry blocks (0 and 3 of 4 for a 2-deep
    student) instead of the first ones. With ``keep_start: 1`` the learngene keeps that start exactly, so its
    students are weight selection's cut of those blocks; the learngene records the choice."""
    from engine.methods import weight_selection

    state, spec, _ = trained_ancestry
    params = {**QUICK["pool"], "steps": 2, "warmup_steps": 1, "evaluate": False, "keep_start": 1.0}
    for blocks, taken in (("first", [0, 1]), ("spread", [0, 3])):
        learngene, _, _ = condense("pool", "train", state, spec, DIGITS_URI, {**params, "student_blocks": blocks})
        note = "weight selection" if blocks == "first" else f"weight selection, spread blocks {[taken, taken]}"
        assert learngene.meta["init"]["students"] == note
        for student, student_spec in _split_students(learngene.tensors, get_method("pool").student_specs(learngene)):
            cut = weight_selection.select(state, spec, student_spec, blocks)
            assert cut.keys() <= student.keys()
            for key, tensor in cut.items():
                assert torch.allclose(student[key], tensor.float(), atol=1e-6), (blocks, key)
            # and, independently of the block choice's code: the ancestry with block taken[1] moved to block 1,
            # cut by the paper's rule (the first blocks), gives the same second block.
            moved = {k.replace(f"blocks.{taken[1]}.", "blocks.1.", 1): v for k, v in state.items()
                     if k.startswith(f"blocks.{taken[1]}.")}
            first_rule = weight_selection.select({**state, **moved}, spec, student_spec)
            assert torch.equal(cut["blocks.1.attn.qkv.weight"], first_rule["blocks.1.attn.qkv.weight"])
    with pytest.raises(Exception, match="student_blocks"):
        condense("pool", "train", state, spec, DIGITS_URI, {**params, "student_blocks": "last"})

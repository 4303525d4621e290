"""Channel groups and structural pruning across the detection families Ultralytics ships."""


import numpy as np
import pytest
import torch
from prune_helpers import FAMILIES, build, first_output, size_for

from yoloprune.structure.groups import analyse
from yoloprune.structure.pruner import prune, removed_units, zeroed

MUST_EXPOSE = {"yolov5n.yaml": 0.85, "yolov8n.yaml": 0.85, "yolo11n.yaml": 0.75}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model = build(request.param)
    return request.param, model, analyse(model, imgsz=size_for(model))


def test_exactness_zeroing_equals_pruning(family):
    """Zeroing a group's chosen channels and removing them give the same outputs."""
    name, model, space = family
    assert space.groups, f"{name}: no prunable group"
    rng = np.random.default_rng(0)
    for trial in range(2):
        rates = {g.name: float(rng.uniform(0, 0.7)) for g in space.groups}
        removed = removed_units(space, rates, criterion=("l1", "fpgm")[trial])
        assert removed, "random rates removed nothing"
        pruned = prune(model, space, rates, removed=removed).eval()
        x = torch.rand(1, 3, space.imgsz, space.imgsz)
        with torch.no_grad():
            before = first_output(model(x))
            with zeroed(model, space, removed):
                ref = first_output(model(x))
            out = first_output(pruned(x))
            torch.testing.assert_close(first_output(model(x)), before)  # restored
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3 * float(ref.abs().max()))
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_pruned_runs_at_two_sizes_and_flops_match_counter(family):
    from torch.utils.flop_counter import FlopCounterMode

    name, model, space = family
    rng = np.random.default_rng(1)
    rates = {g.name: float(rng.uniform(0, 0.7)) for g in space.groups}
    pruned = prune(model, space, rates).eval()
    with torch.no_grad():
        for size in (size_for(model, 64), size_for(model, 160)):
            first_output(pruned(torch.rand(1, 3, size, size)))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        pruned(torch.zeros(1, 3, space.imgsz, space.imgsz))
    assert space.flops(space.rates_vector(rates)[None])[0] == pytest.approx(counter.get_total_flops(), rel=1e-3)


@pytest.mark.parametrize("yaml", ["yolo11n.yaml", "yolo12n.yaml", "yolo26n.yaml"])
def test_attention_flops_at_640_match_the_counter(yaml):
    """Attention grows with its token count squared: FLOPs analysed small must still hold at 640 px."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(yaml)
    space = analyse(model, imgsz=640)
    assert space.other_flops > 0, "these families carry attention outside the traced convs"
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 640, 640))
    assert space.flops()[0] == pytest.approx(counter.get_total_flops(), rel=1e-3)


def test_rate_zero_is_identity(family):
    _, model, space = family
    pruned = prune(model, space, {g.name: 0.0 for g in space.groups})
    a, b = model.state_dict(), pruned.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("yaml", sorted(MUST_EXPOSE))
def test_backbone_and_neck_are_exposed(yaml):
    model = build(yaml)
    space = analyse(model, imgsz=96)
    everything = np.ones((1, len(space.groups)))
    prunable = 1 - space.flops(everything, rounded=False)[0] / space.flops()[0]
    assert prunable >= MUST_EXPOSE[yaml]
    layers = {int(g.name.split(".")[1]) for g in space.groups}
    head = len(model.model) - 1
    assert set(range(0, 9)) <= layers, "backbone convs missing"
    assert any(head - 10 < i < head for i in layers), "neck convs missing"


def test_c2f_halves_stay_equal_and_forward_split_works():
    model = build("yolov8n.yaml")
    space = analyse(model, imgsz=96)
    group = space.group("model.2.cv1")
    assert len(group.parts) == 2
    pruned = prune(model, space, {"model.2.cv1": 0.5}).eval()
    block = pruned.model[2]
    assert block.cv1.conv.out_channels == 2 * block.c
    x = torch.rand(1, block.cv1.conv.in_channels, 16, 16)
    torch.testing.assert_close(block.forward_split(x), block(x))


def test_detect_outputs_are_fixed():
    model = build("yolov8n.yaml")
    space = analyse(model, imgsz=96)
    fixed = {f["module"] for f in space.fixed}
    assert {"model.22.cv2.0.2", "model.22.cv3.0.2", "model.22.dfl"} <= fixed
    grouped = {c for g in space.groups for c in g.convs}
    assert "model.22.cv2.0.0.conv" in grouped  # Detect stems are prunable


def test_round_to_and_min_keep():
    model = build("yolov8n.yaml")
    space = analyse(model, imgsz=96, round_to=8)
    for g in space.groups:
        for rate in (0.0, 0.33, 0.9):
            k = space.kept_count(g, rate)
            assert g.min_keep <= k <= g.part_size
            assert k % 8 == 0 or g.part_size < 8 or k == g.part_size


def test_rate_zero_keeps_widths_that_are_not_multiples_of_round_to():
    model = build("yolov8n.yaml")
    space = analyse(model, imgsz=96, round_to=16)
    for g in space.groups:
        assert space.kept_count(g, 0.0) == g.part_size


def test_bn_criterion_on_a_model_without_batchnorm_falls_back_to_l1():
    from yoloprune.structure.importance import effective_criterion, unit_scores
    from yoloprune.structure.pruner import prune_by_rates

    model = build("yolov8n.yaml").fuse(verbose=False)  # Conv+BN folded: no BatchNorm left
    space = analyse(model, imgsz=96)
    assert effective_criterion(space, "bn") == "l1"
    assert unit_scores(space, "bn") == unit_scores(space, "l1"), "not the lowest-index channels"
    result = prune_by_rates(model, space, {n: 0.5 for n in space.names}, "bn")
    assert result.criterion == "l1", "the saved provenance names the criterion that ranked the channels"


@pytest.mark.parametrize("mode", ["train", "fused"])
def test_probe_holds_a_group_whose_training_or_fused_forward_breaks(mode):
    """A block that reads its width only in training mode (recoveries) or once fused (evaluation, export) breaks
    there alone: the probe runs those forwards too and holds the group fixed."""
    import types

    model = build("yolov8n.yaml")
    block = model.model[2]  # C2f
    full = block.cv2.conv.out_channels

    def forward(self, x, stock=type(block).forward):
        breaks = self.training if mode == "train" else not hasattr(self.cv2, "bn")
        if breaks and self.cv2.conv.out_channels != full:
            raise RuntimeError("this forward needs its full width")
        return stock(self, x)

    block.forward = types.MethodType(forward, block)  # deep copies rebind it to the copied block
    space = analyse(model, imgsz=96)
    assert "model.2.cv2" not in space.names
    assert {"module": "model.2.cv2", "reason": "its forward reads the channel count (held fixed)"} in space.fixed
    assert "model.4.cv2" in space.names, "only the breaking group is held"

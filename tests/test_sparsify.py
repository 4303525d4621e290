"""Network slimming (`yoloprune sparsify`) and the recipe that starts with it (`search --sparsify-epochs`)."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from prune_helpers import cli_here
from ultralytics.nn.tasks import DetectionModel

from yoloprune import api
from yoloprune.checkpoint import save_checkpoint
from yoloprune.structure.groups import analyse
from yoloprune.training.sparsify import bn_scales, prunable_bn_masks, shrink_bn_scales


def run(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "yoloprune", *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result, fragment):
    assert result.returncode == 2, result.stderr[-2000:]
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_l1_pull_reaches_the_prunable_bn_scales_only():
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval()
    masks = prunable_bn_masks(analyse(model, 96))
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    held = [n for n in bns if n not in masks]
    assert held, "yolov8n has a BatchNorm whose channels are all held fixed"
    for bn in bns.values():
        bn.weight.data.uniform_(-1, 1)
    before = {n: bn.weight.detach().clone() for n, bn in bns.items()}
    shrink_bn_scales(model, masks, 2.0, {id(bn.weight): 0.1 for bn in bns.values()})  # step 0.2 towards zero
    for name, bn in bns.items():
        mask = masks.get(name, torch.zeros(bn.num_features, dtype=torch.bool))
        w, w0 = bn.weight.detach(), before[name]
        expected = torch.sign(w0) * (w0.abs() - 0.2).clamp_min(0)
        torch.testing.assert_close(w[mask], expected[mask])
        assert torch.all(w[mask][w0[mask].abs() <= 0.2] == 0), "small scales reach exactly zero and stop there"
        assert torch.equal(w[~mask], w0[~mask]), f"{name}: a fixed channel was shrunk"


@pytest.mark.slow
def test_sparsify_lowers_prunable_bn_scales_and_keeps_the_architecture(tmp_path, tiny_weights, tiny_data):
    from ultralytics import YOLO

    s = api.sparsify(tiny_weights, tiny_data.yaml_path, 2, l1=20.0, val_images=6, calib_images=8, batch=4, nbs=4,
                     warmup_epochs=0, workers=0, project=str(tmp_path / "runs"), name="exp", verbose=False)
    before, after = api.load(tiny_weights).model, YOLO(s["weights"]).model  # a stock checkpoint
    assert [p.shape for p in after.parameters()] == [p.shape for p in before.parameters()]
    masks = prunable_bn_masks(analyse(before, 96))
    assert bn_scales(after, masks).mean() < 0.8 * bn_scales(before, masks).mean()
    assert s["bn_scales"]["after"]["median"] < s["bn_scales"]["before"]["median"]
    assert set(s["prunability"]["after"]) >= {"target_flops", "unpruned_map50_95", "uniform_map50_95"}
    run_dir = tmp_path / "runs" / "exp"
    assert (run_dir / "bn_scales.png").exists() and json.loads((run_dir / "sparsify.json").read_text())["l1"] == 20.0


def test_sparsify_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_weights, tiny_data, default_problem):
    project = tmp_path / "runs"
    base = ["sparsify", "--data", str(tiny_data.yaml_path), "--epochs", "1", "--project", str(project)]
    assert_clean_error(cli_here(*base, "--weights", str(tiny_weights), "--l1", "-0.1"), "--l1")
    assert_clean_error(cli_here(*base, "--weights", str(tiny_weights), "--l1", "lots"), "--l1")
    fused = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval().fuse(verbose=False)
    save_checkpoint(fused, tmp_path / "fused.pt", {"imgsz": 96}, {})
    assert_clean_error(cli_here(*base, "--weights", str(tmp_path / "fused.pt")), "no BatchNorm")
    weights, _ = default_problem
    other = yaml.safe_load(tiny_data.yaml_path.read_text())
    other["names"] = {i: f"thing{i}" for i in other["names"]}
    other["path"] = str(tiny_data.yaml_path.parent)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    base[base.index("--data") + 1] = str(tmp_path / "other.yaml")
    assert_clean_error(cli_here(*base, "--weights", str(weights), "--imgsz", "96"), "class mismatch")
    assert not project.exists()


def recipe_cmd(weights, data, project, *extra):
    return ["search", "--weights", str(weights), "--data", str(data), "--target-flops", "0.6", "--trials", "3",
            "--val-images", "6", "--calib-images", "8", "--project", str(project), "--finetune-fraction", "0.5", *extra]


def test_recipe_bad_input_exits_2(tmp_path, tiny_weights, tiny_data):
    project = tmp_path / "runs"
    assert_clean_error(cli_here(*recipe_cmd(tiny_weights, tiny_data.yaml_path, project, "--sparsify-epochs", "0",
                                       "--finetune-epochs", "1")), "--sparsify-epochs")
    assert_clean_error(cli_here(*recipe_cmd(tiny_weights, tiny_data.yaml_path, project, "--sparsify-epochs", "1")),
                       "--finetune-epochs")
    assert_clean_error(cli_here(*recipe_cmd(tiny_weights, tiny_data.yaml_path, project, "--sparsify-epochs", "1",
                                       "--finetune-epochs", "1", "--l1", "-1")), "--l1")
    assert_clean_error(cli_here(*recipe_cmd(tiny_weights, tiny_data.yaml_path, project, "--sparsify-epochs", "1",
                                       "--finetune-epochs", "1", "--stages", "2")), "--stages")
    fused = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval().fuse(verbose=False)
    save_checkpoint(fused, tmp_path / "fused.pt", {"imgsz": 96}, {})
    no_bn = cli_here(*recipe_cmd(tmp_path / "fused.pt", tiny_data.yaml_path, project, "--sparsify-epochs", "1",
                                 "--finetune-epochs", "1"))
    assert_clean_error(no_bn, "no BatchNorm")
    assert not project.exists()


@pytest.mark.slow
def test_recipe_runs_its_stages_reports_drops_and_resumes(tmp_path, tiny_weights, tiny_data):
    from ultralytics import YOLO

    project = tmp_path / "runs"
    out = run(*recipe_cmd(tiny_weights, tiny_data.yaml_path, project, "--sparsify-epochs", "1", "--finetune-epochs",
                          "1", "--distill", "--json"))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    recipe = summary["recipe"]
    assert summary["run_dir"] == str(project / "exp") and recipe["distilled"] and recipe["sparsify_epochs"] == 1
    assert recipe["drop_after_finetune"] == pytest.approx(
        recipe["original_final_check_map50_95"] - summary["finetuned_final_check_map50_95"])
    YOLO(summary["finetuned"])  # the shipped model loads with plain Ultralytics
    stages = [project / "exp" / "sparsify" / "weights" / "last.pt", project / "exp" / "search" / "summary.json"]
    stamps = [p.stat().st_mtime_ns for p in stages]
    (project / "exp" / "summary.json").unlink()  # as if killed after the fine-tune
    again = run(*recipe_cmd(tiny_weights, tiny_data.yaml_path, project, "--sparsify-epochs", "1", "--finetune-epochs",
                            "1", "--distill", "--resume", "--json"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in stages] == stamps, "finished stages are not run again"
    assert json.loads(again.stdout)["recipe"] == recipe

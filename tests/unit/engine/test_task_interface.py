"""The task interface (``vit_adapter_ds.tasks.base.Task``): a task that leaves out a required method is refused when
it is made, naming the method; the optional hooks have defaults, and the trainer uses them (a minimal task that
overrides nothing optional trains with the recipe's layer-decay groups and loads ``--load-from`` unchanged)."""
import pytest
import torch
from torch import nn

from vit_adapter_ds.tasks import TASKS, ObjectDetection, SemanticSegmentation, task_class
from vit_adapter_ds.tasks.base import Task

REQUIRED = {"validate", "build_model", "build_train_loader", "build_val_loader", "forward_loss", "evaluate"}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 1)
        self.decode_head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.decode_head(self.backbone(x))


class MinimalTask(Task):
    """Only the required methods: no optional hook is overridden."""
    name = "minimal"
    best_metric = "acc"

    def validate(self):
        return Tiny()

    def build_model(self, load_pretrained=True):
        return Tiny()

    def build_train_loader(self, rank, world_size, seed):
        return iter(())

    def build_val_loader(self, rank, world_size):
        return None

    def forward_loss(self, model, batch, device, dtype):
        return {"loss": model(batch).mean()}

    def evaluate(self, model, val_loader, dtype, num_vis):
        return {"acc": 1.0}, []


def test_the_required_methods_are_abstract():
    assert Task.__abstractmethods__ == REQUIRED


@pytest.mark.parametrize("left_out", sorted(REQUIRED))
def test_a_task_missing_a_required_method_is_refused_naming_it(left_out):
    body = {k: v for k, v in vars(MinimalTask).items() if not k.startswith("__") and k != left_out}
    Incomplete = type("Incomplete", (Task,), body)
    with pytest.raises(TypeError, match=rf"Can't instantiate abstract class Incomplete.*{left_out}"):
        Incomplete(cfg=None)


def test_a_task_without_name_or_best_metric_is_refused_when_defined():
    body = {k: v for k, v in vars(MinimalTask).items() if not k.startswith("__") and k != "best_metric"}
    with pytest.raises(TypeError, match="Nameless must set the class attribute.*best_metric"):
        type("Nameless", (Task,), body)


def test_every_task_is_a_task():
    assert all(issubclass(t, Task) and not t.__abstractmethods__ for t in TASKS.values())
    assert task_class("MaskRCNN") is ObjectDetection and task_class("EncoderDecoder") is SemanticSegmentation


def test_hook_defaults():
    task = MinimalTask(cfg={"x": 1})
    assert task.cfg == {"x": 1}
    model = Tiny()
    sd = model.state_dict()
    assert task.param_groups(model) is None  # the engine's groups for the recipe
    assert task.checkpoint_filter(sd, model, None) is sd
    assert task.cli_options == () and task.foreign_options_hint("val") == ""
    assert MinimalTask.key_layout("Anything") is None and MinimalTask.official_state_dict(sd, "Anything") is sd
    with pytest.raises(NotImplementedError, match="minimal task has no checkpoint evaluation"):
        task.evaluate_checkpoint("x.pth")
    with pytest.raises(NotImplementedError, match="minimal task has no image prediction"):
        next(iter(task.predict_images("x.pth", [], "out")))


def test_default_build_eval_model_loads_strictly(tmp_path):
    from vit_adapter_ds.checkpoint.reader import CheckpointError

    src = Tiny()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = MinimalTask(cfg=None).build_eval_model(tmp_path / "w.pth")
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    torch.save({"backbone.weight": src.backbone.weight}, tmp_path / "part.pth")
    with pytest.raises(CheckpointError):
        MinimalTask(cfg=None).build_eval_model(tmp_path / "part.pth")


def _trainer(tmp_path, monkeypatch):
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.engine import trainer as trainer_mod

    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    cfg = load_recipe("synthetic_quickstart", [])
    ds = {"gradient_accumulation_steps": 1, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1}
    return trainer_mod, trainer_mod.Trainer(MinimalTask(cfg), ds, tmp_path / "work")


def test_trainer_uses_the_recipe_groups_when_the_task_has_none(tmp_path, monkeypatch):
    trainer_mod, trainer = _trainer(tmp_path, monkeypatch)
    calls = []

    def recipe_groups(model, cfg):
        calls.append((type(model).__name__, cfg is trainer.cfg))
        return [{"params": list(model.parameters()), "group_name": "recipe"}]

    class Built(Exception):
        pass

    def initialize(model, model_parameters, config, lr_scheduler):
        raise Built(model_parameters)

    import deepspeed

    monkeypatch.setattr(trainer_mod, "param_groups_for_recipe", recipe_groups)
    monkeypatch.setattr(deepspeed, "initialize", initialize)
    with pytest.raises(Built) as e:
        trainer.build()
    assert calls == [("Tiny", True)]
    assert [g["group_name"] for g in e.value.args[0]] == ["recipe"] and trainer.group_names == ["recipe"]


def test_trainer_loads_load_from_through_the_default_filter(tmp_path, monkeypatch):
    _, trainer = _trainer(tmp_path, monkeypatch)
    src = Tiny()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    trainer.load_from = str(tmp_path / "w.pth")
    trainer.work_dir.mkdir(parents=True)
    model = Tiny()
    trainer._load_from(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    assert (trainer.work_dir / "load_from_report.json").is_file()

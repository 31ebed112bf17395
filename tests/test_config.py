from dataclasses import dataclass

import pytest

from selfdistill.config import ConfigError, RunConfig, from_dict, parse_overrides
from selfdistill.run import resolve_config


def test_defaults_resolve():
    cfg = resolve_config({})
    assert isinstance(cfg, RunConfig)
    assert cfg.method == {"name": "ce"}
    assert cfg.data.augment.crop_padding == 4


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.batchsize'.*Did you mean 'batch_size'"):
        resolve_config({"data": {"batchsize": 64}})
    with pytest.raises(ConfigError, match=r"'optim\.learning_rate'"):
        resolve_config({"optim": {"learning_rate": 0.1}})


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected int, got str 'big'"):
        resolve_config({"data": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"train\.amp: expected one of 'none', 'bf16', 'fp16'"):
        resolve_config({"train": {"amp": "fp8"}})
    with pytest.raises(ConfigError, match=r"model\.compile: expected bool"):
        resolve_config({"model": {"compile": 1}})
    with pytest.raises(ConfigError, match=r"sched\.milestones\[1\]: expected int"):
        resolve_config({"sched": {"milestones": [1, "x"]}})


def test_values_outside_a_keys_limits_name_the_key_and_the_range():
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer >= 1, got -1"):
        resolve_config({"train": {"epochs": -1}})
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number > 0, got 0\.0"):
        resolve_config({"optim": {"lr": 0}})
    with pytest.raises(ConfigError, match=r"data\.val_fraction: expected a number in \[0, 1\), got 1\.0"):
        resolve_config({"data": {"val_fraction": 1}})
    with pytest.raises(ConfigError, match=r"optim\.betas\[1\]: expected a number in \[0, 1\), got 1\.5"):
        resolve_config({"optim": {"betas": [0.9, 1.5]}})
    with pytest.raises(ConfigError, match=r"optim\.betas: expected a list of 2 values"):
        resolve_config({"optim": {"betas": [0.9]}})
    with pytest.raises(ConfigError, match=r"optim\.momentum: expected a number in \[0, 1\), got nan"):
        resolve_config({}, ["optim.momentum=.nan"])
    with pytest.raises(ConfigError, match=r"out: expected a non-empty string"):
        resolve_config({"out": ""})
    with pytest.raises(ConfigError, match=r"segmentation\.size: expected a list of 2 values"):
        resolve_config({"task": "segmentation", "data": {"name": "camvid"},
                        "model": {"name": "lraspp_mobilenet_v3_large"}, "segmentation": {"size": [64]}})
    edge = resolve_config({"data": {"val_fraction": 0, "num_workers": 0, "image_size": None}, "train": {"epochs": 1}})
    assert edge.data.val_fraction == 0.0 and edge.train.epochs == 1


def test_unknown_names_and_devices_are_refused_when_the_config_is_resolved():
    with pytest.raises(KeyError, match=r"task: unknown task 'clasification'.*Did you mean 'classification'"):
        resolve_config({"task": "clasification"})
    with pytest.raises(ConfigError, match=r"data\.name: unknown classification dataset 'cifar1O'.*Did you mean"):
        resolve_config({"data": {"name": "cifar1O"}})
    with pytest.raises(ConfigError, match=r"model\.name: unknown classification model 'timm:no_such_net'"):
        resolve_config({"model": {"name": "timm:no_such_net"}})
    with pytest.raises(ConfigError, match=r"model\.name: unknown classification model 'torchvision:resnet"):
        resolve_config({"model": {"name": "torchvision:resnet1"}})
    with pytest.raises(ConfigError, match=r"model\.name: unknown segmentation model 'resnet20'"):
        resolve_config({"task": "segmentation", "data": {"name": "camvid"}})
    with pytest.raises(ConfigError, match=r"method\.name: expected str"):
        resolve_config({"method": {"name": ["ce"]}})
    with pytest.raises(ConfigError, match=r"train\.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        resolve_config({"train": {"device": "gpu"}})
    for name in ("timm:resnet18", "timm:resnet18.a1_in1k", "torchvision:resnet18", "resnet8"):
        assert resolve_config({"model": {"name": name}}).model.name == name
    assert resolve_config({"train": {"device": "cuda:1"}}).train.device == "cuda:1"  # a GPU run checks on a laptop


def test_a_device_this_machine_lacks_is_a_config_error(monkeypatch):
    import torch

    from selfdistill.run import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train\.device: this machine has 0 cuda device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_ints_are_accepted_for_floats():
    assert resolve_config({"optim": {"lr": 1}}).optim.lr == 1.0


def test_overrides_use_yaml_values_and_dotted_paths():
    cfg = resolve_config({}, ["optim.lr=1e-3", "sched.milestones=[5, 10]", "data.augment.hflip=false",
                              "method.name=label_smoothing", "method.epsilon=0.2"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.sched.milestones == [5, 10]
    assert cfg.data.augment.hflip is False
    assert cfg.method == {"name": "label_smoothing", "epsilon": 0.2, "ls_form": "uniform_all"}
    assert parse_overrides(["a.b=x y"]) == [("a.b", "x y")]
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_method_options_are_validated():
    with pytest.raises(ConfigError, match=r"unknown config key 'method\.epsilo'.*Did you mean 'epsilon'"):
        resolve_config({"method": {"name": "label_smoothing", "epsilo": 0.1}})
    with pytest.raises(ConfigError, match=r"method\.ls_form: expected one of"):
        resolve_config({"method": {"name": "label_smoothing", "ls_form": "other"}})
    with pytest.raises(KeyError, match=r"unknown method 'lable_smoothing'.*Did you mean 'label_smoothing'"):
        resolve_config({"method": {"name": "lable_smoothing"}})
    with pytest.raises(ConfigError, match="has presets"):
        resolve_config({"method": {"name": "ce", "preset": "official"}})


@dataclass
class _Span:
    low: float = 0.0
    high: float = 1.0
    lowest: float = 0.0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got {self.low} > {self.high}")
        if self.lowest < 0:
            raise ValueError("a negative floor")


def test_a_classs_own_check_names_its_keys_in_full():
    with pytest.raises(ConfigError, match=r"^method\.low must be <= method\.high, got 0\.8 > 0\.2$"):
        from_dict(_Span, {"low": 0.8, "high": 0.2}, "method")
    with pytest.raises(ConfigError, match=r"^method: a negative floor$"):  # names no key: the section is named
        from_dict(_Span, {"lowest": -1}, "method")


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {name: synthetic\nmodel: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line 2, column 6: expected ',' or '}'"):
        resolve_config(broken)
    with pytest.raises(ConfigError, match=r"--set sched\.milestones: invalid YAML"):
        resolve_config({}, ["sched.milestones=[1, 2"])
    ok = tmp_path / "ok.yaml"
    ok.write_text("seed: 3\nmodel: {name: resnet8}\n")
    cfg = resolve_config(ok, ["seed=4"])
    assert cfg.seed == 4 and cfg.model.name == "resnet8"


def test_run_name():
    cfg = resolve_config({"model": {"name": "timm:resnet18"}, "seed": 2})
    assert cfg.run_name() == "cifar10_timm-resnet18_ce_s2"


def test_docs_config_reference_is_up_to_date():
    from pathlib import Path

    from selfdistill.cli import full_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text().strip() == full_reference().strip(), "regenerate: selfdistill list config > docs/config.md"
    assert "|  |" not in full_reference()  # every key is described, method options included
    assert "| `method.teacher_rule` |" in full_reference()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_its_kernels_warns_and_still_trains_in_bf16(monkeypatch, native):
    import warnings

    import torch

    from selfdistill.run import resolve

    assert isinstance(resolve.cpu_bf16_supported(), bool)  # the real probe answers on any build
    monkeypatch.setattr(resolve, "cpu_bf16_supported", lambda: native)
    cpu = torch.device("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve.resolve_amp("bf16", cpu) is torch.bfloat16
        assert resolve.resolve_amp("none", cpu) is None
        assert resolve.resolve_amp("fp16", cpu) is torch.bfloat16  # no fp16 autocast off CUDA: bf16
    messages = [str(w.message) for w in caught]
    assert sum("train.amp=none" in m for m in messages) == (0 if native else 2)  # bf16, and fp16's fallback
    assert sum("fp16 needs CUDA" in m for m in messages) == 1

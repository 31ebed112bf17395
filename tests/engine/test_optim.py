
import pytest
import torch
from torch import nn

from selfdistill.config import OptimConfig, SchedConfig
from selfdistill.engine.optim import ModelEMA, build_optimizer, build_scheduler, lr_factor, param_groups
from tests.helpers import small_bn_net


def test_multistep_decays_after_the_milestone_epochs():
    cfg = SchedConfig(name="multistep", milestones=[2, 3], gamma=0.1)
    spe = 5  # steps per epoch; epochs 1-2 at full LR, epoch 3 at 0.1, epoch 4 at 0.01
    got = [lr_factor(s, cfg, spe, 4) for s in range(20)]
    assert got[:10] == [1.0] * 10
    assert got[10:15] == pytest.approx([0.1] * 5) and got[15:] == pytest.approx([0.01] * 5)


def test_linear_warmup_and_cosine():
    cfg = SchedConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.0)
    assert lr_factor(0, cfg, 10, 10) == 0.0
    assert lr_factor(5, cfg, 10, 10) == pytest.approx(0.5 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.05))))
    assert lr_factor(50, cfg, 10, 10) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(100, cfg, 10, 10) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_steps_per_iteration_with_min_lr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, SchedConfig(name="cosine", min_lr=0.1), 1.0, steps_per_epoch=2, epochs=2)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1.0) and lrs[2] == pytest.approx(0.55) and lrs[4] == pytest.approx(0.1)


def test_weight_decay_exclusion():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    groups = param_groups([model], 5e-4, exclude_norm_bias=True)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim <= 1 for p in groups[1]["params"])
    assert len(param_groups([model], 5e-4, exclude_norm_bias=False)) == 1
    opt = build_optimizer([model], OptimConfig(name="adamw", lr=1e-3, betas=[0.8, 0.9]))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_ema_update_golden():
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 1.0)
    ema = ModelEMA(model, decay=0.9)
    nn.init.constant_(model.weight, 3.0)
    ema.update(model)
    assert float(ema.module.weight) == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert not ema.module.weight.requires_grad


def test_ema_extremes_and_copied_bn_buffers():
    model = small_bn_net()
    model(torch.randn(4, 3, 6, 6))
    for decay, same_as_student in ((0.0, True), (1.0, False)):
        ema = ModelEMA(model, decay, buffers="copy")
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.train()(torch.randn(4, 3, 6, 6) * 3)  # moves the BN running statistics
        ema.update(model)
        for k, v in ema.module.state_dict().items():
            if "running" in k or "num_batches" in k:
                assert torch.equal(v, model.state_dict()[k]), k  # buffers are copied, whatever the decay
            elif same_as_student:
                assert torch.equal(v, model.state_dict()[k]), k
            else:
                assert torch.equal(v, before[k]), k


def test_averaged_and_own_bn_buffers():
    model = small_bn_net()
    model(torch.randn(4, 3, 6, 6))
    avg, own = ModelEMA(model, 0.75, buffers="average"), ModelEMA(model, 0.75, buffers="own")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()(torch.randn(4, 3, 6, 6) * 3)  # moves the BN running statistics
    avg.update(model)
    own.update(model)
    bn = "1.running_var"
    torch.testing.assert_close(avg.module.state_dict()[bn], 0.75 * start[bn] + 0.25 * model.state_dict()[bn])
    assert torch.equal(own.module.state_dict()[bn], start[bn])  # left to the EMA model's own forwards
    assert torch.equal(own.module.state_dict()["1.num_batches_tracked"], start["1.num_batches_tracked"])


def test_term_gradient_norm_golden():
    from selfdistill.engine.optim import term_grad_norms

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    out = model(torch.tensor([[3.0, 4.0]])).sum()  # d/dw = x → norm 5; 2·out → 10
    norms = term_grad_norms({"a": out, "b": 2 * out, "c": torch.tensor(1.0)}, list(model.parameters()))
    assert norms["a"].item() == pytest.approx(5.0) and norms["b"].item() == pytest.approx(10.0) and "c" not in norms

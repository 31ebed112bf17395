"""IPS: the loss (golden values, gradients, invariants), the training step through a network, end-to-end training.

The swap itself is tested in ``tests/test_patch_swap.py``."""

import math
import typing

import pytest
import torch

from selfdistill import evaluate, train
from selfdistill.config import ConfigError
from selfdistill.data import Batch
from selfdistill.methods import MethodContext, build_method
from selfdistill.methods.base import validate_method_options
from selfdistill.methods.ips import TEACHER_RULES, IPSOptions, confidence, inbatch_pairs, ips_kd
from selfdistill.methods.ips import IntraClassPatchSwap as IPS
from selfdistill.models import build_model
from selfdistill.patch_swap import swap_with_mask
from selfdistill.run import resolve_config
from tests.helpers import synthetic_config


def spec(**kw) -> IPSOptions:
    """The specification's reading (``preset: spec``) with ``kw`` on top: the loss tests' baseline, whose teacher
    is the more confident view."""
    return IPSOptions(**{**IPS.PRESETS["spec"], **kw})


# ------------------------------------------------------------------------------------------- the loss
def test_every_teacher_rule_has_its_function():
    rules = typing.get_args(typing.get_type_hints(IPSOptions)["teacher_rule"])
    assert sorted(TEACHER_RULES) == sorted(rules)


def test_kd_golden_values_and_teacher_choice():  # golden + invariant 7
    za = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    zb = torch.zeros(2, 2)  # p = [1/2, 1/2]
    y = torch.tensor([1, 0])  # pair 0: c_a = 3/4 > 1/2 → a teaches; pair 1: c_a = 1/4 < 1/2 → b teaches
    kd, stats = ips_kd(za, zb, y, spec(T=1.0))
    kl_a_to_b = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl_b_to_a = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kd.item() == pytest.approx((kl_a_to_b + kl_b_to_a) / 2, rel=1e-5)
    assert stats["a_teaches"].item() == 0.5 and stats["conf_gap"].item() == pytest.approx(0.25)
    # T² scaling at T = 4 is checked against the direct formula
    kd4, _ = ips_kd(za, zb, y, spec(T=4.0))
    p = torch.softmax(za / 4, 1)
    q = torch.softmax(zb / 4, 1)
    direct = 16 * ((p[0] * (p[0] / q[0]).log()).sum() + (q[1] * (q[1] / p[1]).log()).sum()) / 2
    assert kd4.item() == pytest.approx(direct.item(), rel=1e-5)
    # always_a: a teaches both; min_conf_gap drops pairs but the mean still divides by all pairs
    kd_a, _ = ips_kd(za, zb, y, spec(T=1.0, teacher_rule="always_a"))
    assert kd_a.item() == pytest.approx(kl_a_to_b, rel=1e-5)
    kd_gap, st = ips_kd(za, zb, y, spec(T=1.0, min_conf_gap=0.3))
    assert kd_gap.item() == 0.0 and st["kd_pairs"].item() == 0.0
    kd_w, _ = ips_kd(za, zb, y, spec(T=1.0), weight=torch.tensor([1.0, 0.0]))
    assert kd_w.item() == pytest.approx(kl_a_to_b / 2, rel=1e-5)


def test_confidence_measures():
    z = torch.tensor([[2.0, 1.0, 0.0]])
    p = torch.softmax(z, 1)[0]
    y = torch.tensor([1])
    assert confidence(z, y, "gt_prob").item() == pytest.approx(p[1].item())
    assert confidence(z, y, "max_prob").item() == pytest.approx(p[0].item())
    assert confidence(z, y, "margin").item() == pytest.approx(-1.0)
    assert confidence(z, y, "neg_entropy").item() == pytest.approx((p * p.log()).sum().item())


def test_kd_nonnegative_zero_iff_equal_and_order_invariant():  # invariants 7 and 9
    g = torch.Generator().manual_seed(3)
    za, zb = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    kd, _ = ips_kd(za, zb, y, spec())
    assert kd.item() > 0
    assert ips_kd(za, za.clone(), y, spec())[0].item() == pytest.approx(0.0, abs=1e-6)
    assert ips_kd(zb, za, y, spec())[0].item() == pytest.approx(kd.item(), rel=1e-6)
    sym = spec(teacher_rule="symmetric")
    assert ips_kd(za, zb, y, sym)[0].item() == pytest.approx(ips_kd(zb, za, y, sym)[0].item(), rel=1e-6)
    s_sum = ips_kd(za, zb, y, spec(teacher_rule="symmetric", symmetric_reduce="sum"))[0]
    assert s_sum.item() == pytest.approx(2 * ips_kd(za, zb, y, sym)[0].item(), rel=1e-6)


def test_teacher_rows_get_no_kd_gradient():  # invariant 8
    g = torch.Generator().manual_seed(4)
    za = torch.randn(8, 5, generator=g, requires_grad=True)
    zb = torch.randn(8, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (8,), generator=g)
    kd, _ = ips_kd(za, zb, y, spec())
    kd.backward()
    a_teaches = confidence(za, y, "gt_prob") >= confidence(zb, y, "gt_prob")
    assert a_teaches.any() and (~a_teaches).any()
    assert torch.count_nonzero(za.grad[a_teaches]) == 0 and torch.count_nonzero(zb.grad[~a_teaches]) == 0
    assert (za.grad[~a_teaches].abs().sum(1) > 0).all() and (zb.grad[a_teaches].abs().sum(1) > 0).all()
    za.grad = zb.grad = None
    ips_kd(za, zb, y, spec(detach_teacher=False))[0].backward()
    assert torch.count_nonzero(za.grad[a_teaches]) > 0  # the ablation lets gradient through the teacher


def test_logit_standardisation_golden_and_scale_invariance():
    za = torch.tensor([[0.0, math.log(3.0)]])  # z-scores (std with n − 1): [−1/√2, 1/√2]
    zb = torch.tensor([[1.0, 3.0]])  # z-scores: [−1/√2, 1/√2] as well → KD 0
    y = torch.tensor([1])
    opt = spec(T=1.0, logit_standardize=True)
    assert ips_kd(za, zb, y, opt)[0].item() == pytest.approx(0.0, abs=1e-6)
    zc = torch.tensor([[2.0, 0.0]])  # z-scores [1/√2, −1/√2]
    h = 1 / math.sqrt(2)
    p = [1 / (1 + math.exp(2 * h)), 1 / (1 + math.exp(-2 * h))]  # teacher a: softmax([−h, h])
    expected = p[0] * math.log(p[0] / p[1]) + p[1] * math.log(p[1] / p[0])
    assert ips_kd(za, zc, y, opt)[0].item() == pytest.approx(expected, rel=1e-5)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    for rule in ("confidence", "symmetric"):
        o = spec(logit_standardize=True, teacher_rule=rule, conf_measure="margin")
        # a positive scale and a shift of either view's logits change nothing (margins keep their order)
        assert ips_kd(3 * a + 1, 3 * b - 2, labels, o)[0].item() == pytest.approx(ips_kd(a, b, labels, o)[0].item(),
                                                                                rel=1e-4)


def test_teacher_temperature_golden():
    za = torch.tensor([[0.0, math.log(3.0)]])  # a teaches (y = 1)
    zb = torch.zeros(1, 2)
    y = torch.tensor([1])
    kd, _ = ips_kd(za, zb, y, spec(T=1.0, T_teacher=2.0))
    p1 = 1 / (1 + math.sqrt(3))  # softmax([0, ln 3 / 2])
    expected = p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5)  # student q = ½, ½ at T = 1
    assert kd.item() == pytest.approx(expected, rel=1e-5)
    # T_teacher = T is the ordinary term
    assert ips_kd(za, zb, y, spec(T_teacher=4.0))[0].item() == pytest.approx(
        ips_kd(za, zb, y, spec())[0].item(), rel=1e-6)


def test_kd_gate_drops_pairs_whose_teacher_is_wrong():
    za = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    zb = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([1, 1])  # pair 0: p_b(1) > p_a(1) → b teaches, argmax 1 = y; pair 1: a teaches, right
    gated = spec(T=1.0, kd_gate="teacher_correct")
    both, stats = ips_kd(za, zb, y, gated)
    assert both.item() == pytest.approx(ips_kd(za, zb, y, spec(T=1.0))[0].item(), rel=1e-6)
    assert stats["teacher_wrong"].item() == 0.0
    y2 = torch.tensor([2, 1])  # pair 0: b teaches, its argmax 1 ≠ 2 → dropped; the mean still divides by 2
    kd2, stats2 = ips_kd(za, zb, y2, gated)
    one = ips_kd(za[1:], zb[1:], y2[1:], spec(T=1.0))[0]
    assert kd2.item() == pytest.approx(one.item() / 2, rel=1e-6) and stats2["teacher_wrong"].item() == 0.5


def test_originals_teach_their_swapped_views_golden():
    oa = torch.tensor([[0.0, math.log(3.0)]])  # σ = [¼, ¾]
    ob = torch.zeros(1, 2)  # σ = [½, ½]
    za, zb = torch.zeros(1, 2, requires_grad=True), torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    y = torch.tensor([1])
    r = 0.25  # a quarter of each view comes from the partner
    opt = spec(T=1.0, teacher_rule="originals")
    kd, stats = ips_kd(za, zb, y, opt, originals=(oa, ob), area=torch.tensor([r]))
    ta = [0.75 * 0.25 + 0.25 * 0.5, 0.75 * 0.75 + 0.25 * 0.5]  # target of view a
    tb = [0.75 * 0.5 + 0.25 * 0.25, 0.75 * 0.5 + 0.25 * 0.75]
    qa, qb = [0.5, 0.5], [0.75, 0.25]

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    assert kd.item() == pytest.approx((kl(ta, qa) + kl(tb, qb)) / 2, rel=1e-5)
    assert stats["teacher_wrong"].item() == 0.0  # both targets rank the label first
    assert stats["logit_norm_t"].item() == pytest.approx(math.log(3.0) / 2, rel=1e-6)  # mean of ‖oa‖, ‖ob‖
    kd.backward()
    assert za.grad.abs().sum() > 0 and zb.grad.abs().sum() > 0
    # an unswapped view taught by its own clean logits has nothing to learn
    same = ips_kd(oa, ob, y, opt, originals=(oa, ob), area=torch.zeros(1))[0]
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="originals"):
        ips_kd(za, zb, y, opt)


def test_view_diagnostics_golden():
    za = torch.tensor([[3.0, 4.0]])  # norm 5, a teaches (y = 1)
    zb = torch.tensor([[0.0, 0.0]])
    _, stats = ips_kd(za, zb, torch.tensor([1]), spec(T=1.0))
    p = 1 / (1 + math.e)
    assert stats["logit_norm_t"].item() == pytest.approx(5.0) and stats["logit_norm_s"].item() == 0.0
    assert stats["entropy_t"].item() == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), rel=1e-5)
    assert stats["entropy_s"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert stats["teacher_wrong"].item() == 0.0
    _, wrong = ips_kd(za, zb, torch.tensor([0]), spec(T=1.0))  # y = 0: b teaches ([½, ½] → argmax 0)
    assert wrong["teacher_wrong"].item() == 0.0 and wrong["logit_norm_t"].item() == 0.0


# ------------------------------------------------------------------------------------------ the method
def _method(**opts):
    spec = resolve_config({"method": {"name": "ips", **opts}}).method
    return build_method(spec, MethodContext(4, 64, 10, 4, torch.device("cpu")))


def _batch(x, y, partner_x=None, seed=7):
    b = Batch(x, y, torch.arange(len(y)), [x], seed=seed, global_size=len(y))
    if partner_x is not None:
        b.partner = Batch(partner_x, y, torch.arange(len(y)), [partner_x])
    return b


def test_loss_is_invariant_to_complementing_the_mask():  # invariant 9 through the network
    torch.manual_seed(0)
    model = build_model("resnet8", 4).eval()
    xa, xb = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    method = _method()
    batch = _batch(xa, y, xb)
    mask, _ = method.opt.masks(batch.generator(), 6, slice(None), 16, 16, torch.device("cpu"))
    losses = []
    for m in (mask, ~mask):
        sa, sb = swap_with_mask(xa, xb, m)
        za, zb = model(torch.cat([sa, sb])).split(6)
        kd, _ = ips_kd(za, zb, y, method.opt)
        ce = (torch.nn.functional.cross_entropy(za, y) + torch.nn.functional.cross_entropy(zb, y)) / 2
        losses.append((ce.item(), kd.item()))
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-5)


def test_identical_partner_in_eval_mode_gives_zero_kd():  # invariant 6, second half
    torch.manual_seed(0)
    model = build_model("resnet8", 4).eval()
    x = torch.randn(4, 3, 16, 16)
    out = _method().training_step(model, _batch(x, torch.tensor([0, 1, 2, 3]), x.clone()), epoch=1)
    assert out.losses["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out.logits.shape == (8, 4)


@pytest.mark.parametrize("preset", [None, "robust"])
def test_default_step_is_ce_on_the_swapped_pair_plus_a_tenth_of_the_symmetric_kd(preset):
    """The defaults: ½[CE(z_a) + CE(z_b)] + 0.1·T²·½[KL(a‖b) + KL(b‖a)]; ``robust`` also puts the two clean images
    under CE (the mean over four groups), with the same term."""
    torch.manual_seed(0)
    model = build_model("resnet8", 4).eval()
    xa, xb = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    y = torch.tensor([0, 1, 2])
    method = _method(**({"preset": preset} if preset else {}))
    batch = _batch(xa, y, xb)
    out = method.training_step(model, batch, epoch=1)
    mask, _ = method.opt.masks(batch.generator(), 3, slice(None), 16, 16, torch.device("cpu"))
    sa, sb = swap_with_mask(xa, xb, mask)
    with torch.no_grad():
        za, zb, zca, zcb = (model(x) for x in (sa, sb, xa, xb))
    groups = (za, zb, zca, zcb) if preset else (za, zb)
    ce = sum(torch.nn.functional.cross_entropy(z, y) for z in groups) / len(groups)
    kd = sum(torch.nn.functional.kl_div(torch.log_softmax(s / 4, 1), torch.softmax(t / 4, 1), reduction="batchmean")
             for t, s in ((za, zb), (zb, za))) * 16 / 2
    assert out.losses["ce"].item() == pytest.approx(ce.item(), rel=1e-4)
    assert out.losses["kd"].item() == pytest.approx(0.1 * kd.item(), rel=1e-4)
    assert out.logits.shape == (6, 4)  # the training accuracy reads the swapped views


def test_masks_do_not_depend_on_the_rank_split():
    method = _method()
    batch = _batch(torch.zeros(16, 3, 8, 8), torch.zeros(16, dtype=torch.long), seed=11)
    cpu = torch.device("cpu")
    whole, flags = method.opt.masks(batch.generator(), 16, slice(None), 8, 8, cpu)
    part, part_flags = method.opt.masks(batch.generator(), 16, slice(8, 16), 8, 8, cpu)
    assert torch.equal(whole[8:], part) and torch.equal(flags[8:], part_flags)


def test_inbatch_pairs_are_same_class_and_disjoint():  # invariant 11
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 3])
    a, b, lone = inbatch_pairs(y, torch.Generator().manual_seed(0))
    assert torch.equal(y[a], y[b])
    used = torch.cat([a, b, lone]).tolist()
    assert sorted(used) == list(range(len(y)))  # every row once: in one pair or alone
    assert sorted(y[lone].tolist()) == [0, 2, 3]  # odd-sized classes leave one row each


def test_inbatch_lone_rows_do_not_enter_kd():  # invariant 11
    torch.manual_seed(0)
    model = build_model("resnet8", 4).eval()
    y = torch.tensor([0, 0, 1, 1, 2])  # row 4 has no partner
    x = torch.randn(5, 3, 16, 16)
    method = _method(partner_source="inbatch")
    kd1 = method.training_step(model, _batch(x, y), 1).losses["kd"]
    x2 = x.clone()
    x2[4] = 10.0
    out2 = method.training_step(model, _batch(x2, y), 1)
    assert out2.losses["kd"].item() == pytest.approx(kd1.item(), rel=1e-6)
    assert out2.logits.shape[0] == 5  # the lone row still gets its CE


def test_options_cost_and_requirements():
    assert IPS.cost(spec()) == 2.0 and IPS.cost(spec(partner_source="inbatch")) == 1.0
    assert IPS.cost(IPSOptions()) == 2.0  # the defaults forward the swapped pair only
    assert IPS.cost(IPSOptions(ce_inputs="swapped+original")) == 4.0  # the clean images too
    assert IPS.cost(spec(teacher_rule="originals")) == 2.0  # the clean forward has no backward
    assert IPS.cost(spec(teacher_rule="originals", teacher_forward="joint")) == 4.0
    assert IPS.data_requirements(IPSOptions(batch_counts="images")).batch_scale == 0.5
    assert IPS.data_requirements(IPSOptions(partner_source="inbatch")).sampler == "shuffle"
    with pytest.raises(ConfigError, match="p_swap"):
        resolve_config({"method": {"name": "ips", "p_swap": 1.5}})
    method = _method(kd_warmup_epochs=4, lambda_kd=2.0)
    assert [method.kd_weight(e) for e in (1, 3, 5, 9)] == [0.0, 1.0, 2.0, 2.0]


def test_preset_robust_is_the_four_image_reading():
    """``robust``: each swapped view teaching the other at λ = 0.1, with CE on the two clean images too (four
    images forwarded per anchor); the spec preset is the two-image reading with the confident view teaching."""
    robust = validate_method_options({"name": "ips", "preset": "robust"})
    assert (robust["teacher_rule"], robust["lambda_kd"], robust["T"], robust["ce_inputs"]) == (
        "symmetric", 0.1, 4.0, "swapped+original")
    assert IPS.cost(IPSOptions(**IPS.PRESETS["robust"])) == 4.0 and IPS.cost(spec()) == 2.0
    defaults = validate_method_options({"name": "ips"})
    assert {k for k in defaults if k != "preset" and defaults[k] != robust[k]} == {"ce_inputs"}  # + clean images' CE
    assert validate_method_options({"name": "ips", "preset": "robust", "lambda_kd": 0.3})["lambda_kd"] == 0.3


@pytest.mark.parametrize("opts", [{}, {"partner_source": "inbatch", "inbatch_fallback": "self"},
                                  {"layout": "box", "teacher_rule": "symmetric", "ce_inputs": "swapped+original",
                                   "forward": "separate", "mask_per": "batch", "ratio_dist": "beta",
                                   "kd_on_unswapped": False, "p_swap": 0.5, "batch_counts": "images"},
                                  {"teacher_rule": "originals", "logit_standardize": True, "T": 2.0},
                                  {"teacher_rule": "originals", "teacher_forward": "joint",
                                   "kd_gate": "teacher_correct", "T_teacher": 8.0}])
def test_ips_trains_end_to_end(tmp_path, opts):
    s = train(synthetic_config(tmp_path, method={"name": "ips", **opts}, train={"epochs": 2}))
    assert s.last["test_top1"] > 30
    # the evaluation forward is the plain backbone on clean images (invariant 10)
    assert evaluate(f"{s.run}/last.pt")["top1"] == pytest.approx(s.last["test_top1"])


@pytest.mark.slow
def test_ips_on_a_cifar10_subset(tmp_path, cifar10_root, cifar10_cache):
    cfg = {"out": str(tmp_path), "data": {"name": "imagefolder", "root": str(cifar10_root), "train_subset": 1000,
                                          "batch_size": 50, "cache_dir": str(cifar10_cache)},
           "model": {"name": "resnet8"}, "method": {"name": "ips"}, "optim": {"lr": 0.05}, "sched": {"name": "cosine"},
           "train": {"epochs": 2, "device": "cpu", "progress": False}}
    s = train(cfg)
    assert s.passes_per_step == 2.0 and s.last["test_top1"] > 15
    import csv

    with open(f"{s.run}/metrics.csv") as fh:
        row = list(csv.DictReader(fh))[-1]
    assert float(row["train_a_teaches"]) == 0.5 and 0.3 < float(row["train_swap_frac"]) < 0.7  # each view teaches
    assert float(row["train_loss_kd"]) > 0

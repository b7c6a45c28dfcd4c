"""distribution=nm (N:M): every group of m input weights keeps exactly n, at init, after every mask update, on
resume; the methods that do not keep groups are refused in one line before any work."""

import pytest
import torch
from conftest import compose_cfg, needs_data
from omegaconf import OmegaConf
from torch import nn

from sparse_exp.config.errors import ConfigError
from sparse_exp.config.preflight import preflight
from sparse_exp.config.validate import validate
from sparse_exp.engine.context import RunState
from sparse_exp.sparse.masking import Masking
from sparse_exp.sparse.nm import from_groups, is_nm, random_n_per_group, regrow_per_group, to_groups, topk_per_group
from sparse_exp.sparse.sparsifiers import build_sparsifier
from sparse_exp.sparse.topology import drop_and_grow

NM = ["distribution=nm", "distribution.n=2", "distribution.m=4", "sparsity=0.5"]


# ------------------------------------------------------------------ group operations
def test_conv_groups_run_along_input_channels_at_each_kernel_position():
    w = torch.arange(2 * 8 * 3 * 3).reshape(2, 8, 3, 3)
    g = to_groups(w, 4)
    assert g.shape == (2 * 3 * 3 * 2, 4)
    assert g[0].tolist() == [w[0, c, 0, 0].item() for c in range(4)]  # out 0, kernel (0, 0), channels 0..3
    assert torch.equal(from_groups(g, w.shape), w)
    with pytest.raises(ValueError, match="m=4"):
        to_groups(torch.zeros(3, 6), 4)


def test_topk_random_and_regrow_keep_n_per_group():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 8, 3, 3, generator=gen)
    keep = topk_per_group(scores, 2, 4)
    assert is_nm(keep, 2, 4) and not is_nm(keep, 1, 4)
    g, gs = to_groups(keep, 4), to_groups(scores, 4)
    assert torch.all(gs.masked_fill(~g, float("inf")).min(1).values >= gs.masked_fill(g, float("-inf")).max(1).values)
    assert is_nm(random_n_per_group((10, 12), 3, 4, gen), 3, 4)
    dropped = keep.clone()
    dropped.view(-1)[torch.nonzero(dropped.view(-1))[:7, 0]] = False
    assert is_nm(regrow_per_group(dropped, scores, 2, 4), 2, 4)


# ------------------------------------------------------------------ sparsifiers on a tiny MLP (no data set)
def _make(name, sparsity=0.5, n=2, m=4, **over):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 5))
    masking = Masking(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dist = {"name": "nm", "n": n, "m": m, "erk_power_scale": 1.0, "dense_first_layer": False,
            "dense_last_layer": True}
    gen = torch.Generator().manual_seed(1)

    def batches(k):
        return iter([(torch.randn(16, 20, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(k)])

    ctx = RunState.for_model(model, masking, opt, sparsity=sparsity, distribution=dist, total_steps=60,
                             steps_per_epoch=20, seed=0, batches=batches)
    cfg = OmegaConf.load(f"sparse_exp/conf/sparsifier/{name}.yaml")
    cfg.pop("defaults")
    cfg.update(over)
    sp = build_sparsifier(cfg, ctx)
    sp.init_masks()
    return model, masking, opt, sp


def _assert_nm(masking, n, m):
    assert set(masking.groups) == set(masking.names[:-1])  # the last layer is kept dense
    for name in masking.groups:
        assert is_nm(masking.masks[name], n, m), name
    assert bool(masking.masks[masking.names[-1]].all())
    masking.check_invariants()


@pytest.mark.parametrize("name", ["static", "random", "snip", "grasp", "synflow"])
def test_init_keeps_n_per_group(name):
    _, masking, _, _ = _make(name)
    _assert_nm(masking, 2, 4)


@pytest.mark.parametrize("name", ["set", "rigl"])
def test_dst_keeps_n_per_group_after_every_update(name):
    model, masking, opt, sp = _make(name, n=1, m=4, sparsity=0.75, delta_t=3)
    gen = torch.Generator().manual_seed(2)
    updates = 0
    for step in range(1, 31):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 20, generator=gen)),
                                    torch.randint(0, 5, (16,), generator=gen)).backward()
        before = {k: v.clone() for k, v in masking.masks.items()}
        opt.step()
        masking.apply_(opt)
        if sp.after_step(step):
            updates += 1
            assert any(not torch.equal(before[k], masking.masks[k]) for k in masking.groups)
            _assert_nm(masking, 1, 4)
            masking.check_invariants(opt)
    assert updates == 10


@pytest.mark.parametrize("name, start", [("gmp", 4), ("granet", 2)])
def test_gradual_pruning_lowers_n_per_group_by_magnitude(name, start):
    """GMP from dense (n = m = 4), GraNet from init_density 0.5 (n = 2), to 1:4 over the pruning window; every
    update leaves every group of every N:M layer with the same n_t, n_t never rises, and the pruned weights are each
    group's smallest active magnitudes."""
    model, masking, opt, sp = _make(name, n=1, m=4, sparsity=0.75, delta_t=3, prune_end_fraction=0.6)
    _assert_nm(masking, start, 4)
    gen = torch.Generator().manual_seed(2)
    seen = [start]
    for step in range(1, 61):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 20, generator=gen)),
                                    torch.randint(0, 5, (16,), generator=gen)).backward()
        opt.step()
        masking.apply_(opt)
        before = {k: (masking.masks[k].bool().clone(), masking.params[k].detach().abs().clone())
                  for k in masking.groups}
        if sp.after_step(step):
            n_t = masking.groups[masking.names[0]][0]
            _assert_nm(masking, n_t, 4)
            masking.check_invariants(opt)
            if n_t < seen[-1] and name == "gmp":  # a pruning update: the kept weights are each group's largest
                for k, (old, mag) in before.items():
                    g_old, g_new, g_mag = to_groups(old, 4), to_groups(masking.masks[k].bool(), 4), to_groups(mag, 4)
                    kept_min = g_mag.masked_fill(~g_new, float("inf")).min(1).values
                    dropped_max = g_mag.masked_fill(~(g_old & ~g_new), float("-inf")).max(1).values
                    assert torch.all(kept_min >= dropped_max), k
            seen.append(n_t)
    assert seen == sorted(seen, reverse=True) and seen[-1] == 1
    assert sorted(set(seen), reverse=True) == list(range(start, 0, -1))  # every n from the start down to the target
    assert set(masking.groups.values()) == {(1, 4)}


def test_rigl_regrows_a_groups_best_gradient_candidate():
    model, masking, opt, _ = _make("rigl")
    name = masking.names[1]
    w = masking.params[name]
    with torch.no_grad():
        w.copy_(torch.randn(w.shape) * masking.masks[name])
    w.grad = torch.randn(w.shape)
    old = masking.masks[name].bool().clone()
    drop_and_grow(masking, opt, 0.3, "gradient", layers=[name])
    new = masking.masks[name].bool()
    assert is_nm(new, 2, 4)
    g_old, g_new, g_grad = to_groups(old, 4), to_groups(new, 4), to_groups(w.grad.abs(), 4)
    for i in torch.nonzero((g_old != g_new).any(1))[:, 0].tolist():
        grown, unchosen = g_new[i] & ~g_old[i], ~g_new[i]  # every unchosen position was a candidate
        if grown.any() and unchosen.any():  # a grown weight beats every unchosen candidate by |grad|
            assert g_grad[i][grown].min() >= g_grad[i][unchosen].max()


# ------------------------------------------------------------------ refusals and the run plan
@pytest.mark.parametrize("overrides, words", [
    (["distribution=nm", "sparsity=0.9"], ["sparsity=0.9", "1 - n/m = 0.5"]),
    (["distribution=nm", "distribution.n=4", "sparsity=0.5"], ["distribution.n=4", "[1, m=4)"]),
    (NM + ["sparsifier=lth"], ["distribution.name='nm'", "sparsifier=lth", "no whole n of m", "'gmp'", "'rigl'"]),
    (NM + ["sparsifier=mask_file", "sparsifier.path=x.pt"], ["sparsifier=mask_file", "the file's"]),
    (NM + ["sparsifier=granet", "sparsifier.init_density=0.6"], ["sparsifier.init_density=0.6", "1/4", "e.g. 0.5"]),
    (NM + ["sparsifier=rigl", "superposer=sup_tickets", "superposer.reprune=global"],
     ["superposer.reprune='global'", "must be nm", "['nm']"]),
    (["sparsifier=rigl", "superposer=sup_tickets", "superposer.reprune=nm"], ["superposer.reprune='nm'"]),
    (NM + ["sparsifier=rigl", "superposer=sup_tickets", "superposer.reprune=nm", "superposer.save_tickets=true",
           "superposer.offline=[{averaging: caa}]"], ["superposer.offline", "N:M"]),
    (NM + ["distribution.misfit=bogus"], ["distribution.misfit='bogus'", "['dense', 'refuse']"]),
])
def test_refused_in_one_line_at_validate(overrides, words):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_layer_whose_input_is_not_a_multiple_of_m_is_refused_at_preflight():
    cfg = compose_cfg(NM + ["model=lenet5", "sparsifier=static"])  # conv1 has one input channel
    validate(cfg)
    with pytest.raises(ConfigError, match=r"distribution.m=4 .*features.0.weight.*input 1") as err:
        preflight(cfg, local=False)
    assert "\n" not in str(err.value)
    ok = ["distribution=nm", "distribution.n=1", "distribution.m=2", "sparsity=0.5", "model=lenet5",
          "sparsifier=static", "distribution.dense_first_layer=true"]  # conv2 has 6 input channels: m=2 fits
    preflight(compose_cfg(ok), local=False)


def test_misfit_dense_keeps_the_misfits_dense_in_the_plan_and_the_flops_and_refuses_when_nothing_fits():
    from sparse_exp.flops import compute

    cfg = compose_cfg(NM + ["model=lenet5", "sparsifier=rigl", "superposer=none", "distribution.misfit=dense"])
    validate(cfg)
    assert preflight(cfg, local=False).dense_layers == ("features.0.weight", "features.3.weight")  # inputs 1 and 6
    assert compute(cfg)["layers"] == {"features.0.weight": 1.0, "features.3.weight": 1.0, "classifier.0.weight": 0.5,
                                      "classifier.2.weight": 0.5, "classifier.4.weight": 0.5}
    none_fit = ["distribution=nm", "distribution.n=16", "distribution.m=32", "sparsity=0.5", "model=lenet5",
                "sparsifier=static", "distribution.misfit=dense"]  # 32 divides none of 1, 6, 400, 120, 84
    with pytest.raises(ConfigError, match=r"^distribution.misfit='dense' .*nothing would be N:M") as err:
        preflight(compose_cfg(none_fit), local=False)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ end to end
@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("n, method", [
    (2, ["sparsifier=rigl", "sparsifier.delta_t=5"]),
    # GMP to 1:4: n goes 4 -> 3 -> 2 before the stop at step 10 and -> 1 after it (the groups are checkpointed)
    (1, ["sparsifier=gmp", "sparsifier.delta_t=2", "sparsifier.prune_start_fraction=0.2",
         "sparsifier.prune_end_fraction=1.0", "batch_size=32"]),
], ids=["rigl", "gmp"])
def test_nm_run_resumes_bitwise_and_keeps_groups(tmp_path, n, method):
    from test_resume import assert_same_run

    from sparse_exp.run.run_dir import RunDir
    from sparse_exp.train import run

    ov = ["distribution=nm", f"distribution.n={n}", "distribution.m=4", f"sparsity={1 - n / 4}",
          "model=lenet_300_100", *method, "epochs=2", "dataset.subset_train=320", "distribution.dense_last_layer=true"]
    full, part = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    run(compose_cfg(ov), full.path)
    assert run(compose_cfg(ov + ["stop_after_epochs=1"]), part.path)["status"] == "stopped"
    if n == 1:  # stopped mid-schedule: the checkpoint holds 2:4 groups
        assert set(part.load_checkpoint()["masking"]["groups"].values()) == {(2, 4)}
    assert run(compose_cfg(ov), part.path)["status"] == "completed"
    assert_same_run(full, part)
    masks = full.load_checkpoint()["masking"]["masks"]
    names = list(masks)
    assert all(is_nm(masks[k], n, 4) for k in names[:-1]) and bool(masks[names[-1]].all())
    sparse = sum(masks[k].numel() for k in names[:-1])  # the dense last layer counts: global sparsity < 1 - n/m
    assert full.summary()["sparsity/global"] == pytest.approx((1 - n / 4) * sparse / sum(masks[k].numel()
                                                                                         for k in names))


@needs_data
@pytest.mark.slow
def test_lenet5_misfit_dense_run_keeps_its_convs_dense_and_says_so(tmp_path):
    from sparse_exp.flops import compute
    from sparse_exp.registry import SPARSIFIERS
    from sparse_exp.run.run_dir import RunDir
    from sparse_exp.train import run

    ov = NM + ["model=lenet5", "sparsifier=rigl", "sparsifier.delta_t=2", "superposer=none", "epochs=1",
               "dataset.subset_train=256", "distribution.misfit=dense"]
    rigl, seen = SPARSIFIERS["rigl"], []
    init = rigl.init_masks

    def watched(self):
        init(self)
        seen.append({n: m.bool().clone() for n, m in self.ctx.masking.masks.items()})

    rd = RunDir(tmp_path / "r")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rigl, "init_masks", watched, raising=False)
        summary = run(compose_cfg(ov), rd.path)
    final = torch.load(rd.masks_path, weights_only=True)["masks"]
    convs = ["features.0.weight", "features.3.weight"]
    for masks in (seen[0], final):
        assert all(bool(masks[n].all()) for n in convs)
        assert all(is_nm(masks[n], 2, 4) for n in masks if n not in convs)
    assert summary["nm/dense_misfits"] == convs and rd.summary()["nm/dense_misfits"] == convs
    assert summary["sparsity/global"] == 1 - sum(int(m.sum()) for m in final.values()) / sum(m.numel()
                                                                                            for m in final.values())
    assert summary["flops/test"] == pytest.approx(compute(compose_cfg(ov))["flops/test"])


def test_flops_count_the_nm_densities():
    from sparse_exp.sparse.flop_counts import density_allocator

    shapes = {"a": (48, 20), "b": (40, 48), "c": (5, 40)}
    assert density_allocator(shapes, "nm", dense_layers=["c"])(0.25) == {"a": 0.25, "b": 0.25, "c": 1.0}


@pytest.mark.parametrize("name", ["gmp", "granet"])
def test_gradual_nm_flop_estimate_runs_from_its_start_to_n_over_m(name):
    from sparse_exp.flops import compute

    cfg = compose_cfg(["distribution=nm", "distribution.n=1", "sparsity=0.75", f"sparsifier={name}",
                       "model=lenet_300_100", "superposer=none"])
    validate(cfg)
    report = compute(cfg)
    assert report["flops/test"] == 0.25 and set(report["layers"].values()) == {0.25}
    assert 0.25 < report["flops/train"] < (1.0 if name == "gmp" else 0.5)  # GraNet starts at 2:4, GMP dense


@needs_data
@pytest.mark.slow
def test_sup_tickets_nm_ultimate_ticket_keeps_groups(tmp_path):
    import sparse_exp.superposers.sup_tickets as sup
    from sparse_exp.run.run_dir import RunDir
    from sparse_exp.train import run

    seen = []
    explore = sup.SupTickets.explore

    def watched(self):  # every cycle start: exploration keeps n per group
        explore(self)
        seen.append(all(is_nm(self.state.masking.masks[n], 2, 4) for n in self.state.masking.groups))

    ov = NM + ["model=lenet_300_100", "sparsifier=rigl", "sparsifier.delta_t=5", "epochs=4",
               "dataset.subset_train=320", "superposer=sup_tickets", "superposer.phase_fraction=0.5",
               "superposer.cycle_epochs=1", "superposer.ticket_eval=none"]  # reprune=nm: N:M's default
    rd = RunDir(tmp_path / "r")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sup.SupTickets, "explore", watched)
        assert run(compose_cfg(ov), rd.path)["status"] == "completed"
    assert seen and all(seen)
    payload = torch.load(rd.masks_path, weights_only=True)
    assert all(is_nm(mask, 2, 4) for mask in payload["masks"].values())

"""The callback protocol's own promises: every hook is declared once (``Callback``, ``BaseCallback``, the
documented tables), ``CallbackList`` calls callbacks in their declared ``priority`` order whatever the import
or config order, and a group's registry queries answer for every option (issue 23, item 4)."""

import inspect
import random
import re

import pytest
import torch
from conftest import ROOT, compose_cfg, needs_data

from sparse_exp.callbacks.flop_meter import FlopMeter
from sparse_exp.callbacks.protocol import BaseCallback, Callback, CallbackList
from sparse_exp.config.errors import ConfigError
from sparse_exp.engine.build import build_callbacks
from sparse_exp.registry import SUPERPOSERS, TWEAKS, Registry

#: the declared call order of every built-in callback (tweaks, superposer, report=best_val, FLOP meter)
INTENDED = ["ghost_skip", "soft_neurons", "lrsi", "label_smoothing", "sup_tickets", "report", "flops"]
TWEAK_ORDER = INTENDED[:4]
#: every built-in callback at once, the tweaks listed against their declared order
ALL = ["model=resnet32", "tweaks=[label_smoothing,lrsi,soft_neurons,ghost_skip]", "superposer=sup_tickets",
       "report=best_val"]


def hooks():
    """The hooks the ``Callback`` protocol declares (its methods)."""
    return sorted(n for n, v in vars(Callback).items() if callable(v) and not n.startswith("_"))


def test_every_hook_is_declared_in_the_protocol_and_the_base_class():
    names = hooks()
    assert len(names) >= 18 and "lr_schedule" in names and "plot_marks" in names
    base = sorted(n for n, v in vars(BaseCallback).items() if callable(v) and not n.startswith("_"))
    assert base == names
    for name in names:  # same parameters in both
        assert (list(inspect.signature(getattr(Callback, name)).parameters)
                == list(inspect.signature(getattr(BaseCallback, name)).parameters)), name
    assert "priority" in Callback.__annotations__ and isinstance(BaseCallback.priority, int)


def test_the_callback_list_uses_the_hook_names():
    """``CallbackList`` combines each hook under the hook's own name; ``lr_multiplier`` is folded into
    ``lr_schedule`` (the main phase's multiplier)."""
    own = {n for n, v in vars(CallbackList).items() if callable(v) and not n.startswith("_")}
    assert own <= set(hooks()), own - set(hooks())
    assert set(hooks()) - own == {"lr_multiplier"}


def documented_hooks(path):
    """The names in the first column of the hook table of ``path`` (the protocol's reST table, the
    architecture page's Markdown table)."""
    lines = (ROOT / path).read_text().splitlines()
    if path.endswith(".md"):
        start = lines.index(next(line for line in lines if line.startswith("| hook")))
        rows = lines[start + 2:]
        cells = [line.split("|")[1]
                 for line in rows[:next(i for i, line in enumerate(rows) if not line.startswith("|"))]]
    else:
        rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
        width = len(lines[rules[0]].split()[0])  # the first column's rule
        cells = [line[:width] for line in lines[rules[1] + 1:rules[2]]]
    return {m for cell in cells for m in re.findall(r"`+(\w+)", cell)}


@pytest.mark.parametrize("path", ["sparse_exp/callbacks/protocol.py", "docs/architecture.md"])
def test_every_hook_is_in_the_documented_tables(path):
    listed = documented_hooks(path)
    assert "priority" in (ROOT / path).read_text()
    assert sorted(listed & set(hooks())) == hooks(), f"{path}: no row for {sorted(set(hooks()) - listed)}"
    assert listed <= set(hooks()), f"{path} lists hooks the protocol lacks: {sorted(listed - set(hooks()))}"


# --------------------------------------------------------------------------- order
def test_the_built_callbacks_run_in_the_declared_order():
    callbacks = build_callbacks(compose_cfg(ALL)) + [FlopMeter({"fc": 1})]
    assert [cb.name for cb in CallbackList(callbacks)] == INTENDED
    for seed in range(5):  # whatever order they are given in
        random.Random(seed).shuffle(callbacks)
        assert [cb.name for cb in CallbackList(callbacks)] == INTENDED
    assert [cb.priority for cb in CallbackList(callbacks)] == sorted(cb.priority for cb in callbacks)


@pytest.mark.parametrize("order", [TWEAK_ORDER, TWEAK_ORDER[::-1], ["lrsi", "ghost_skip", "label_smoothing",
                                                                     "soft_neurons"]])
def test_the_config_list_order_does_not_matter(order):
    cfg = compose_cfg(["model=resnet32", f"tweaks=[{','.join(order)}]"])
    assert list(cfg.tweaks) == order
    assert [cb.name for cb in CallbackList(build_callbacks(cfg))] == TWEAK_ORDER
    from sparse_exp.tweaks import build_tweaks

    assert [cb.name for cb in build_tweaks(cfg)] == TWEAK_ORDER


def test_ties_keep_the_given_order():
    class A(BaseCallback):
        name = "a"

    class B(BaseCallback):
        name = "b"

    class First(BaseCallback):
        name = "first"
        priority = -1

    assert [cb.name for cb in CallbackList([B(), A(), First()])] == ["first", "b", "a"]
    assert [cb.name for cb in CallbackList([A(), B(), First()])] == ["first", "a", "b"]


def test_the_import_order_does_not_matter(monkeypatch):
    """With the registry listing the tweaks backwards (as if their modules were imported backwards), the
    built order is still the declared one."""
    from sparse_exp.tweaks import build_tweaks

    others = {n: e for n, e in TWEAKS._entries.items() if n not in TWEAK_ORDER}
    backwards = {**{n: TWEAKS._entries[n] for n in TWEAK_ORDER[::-1]}, **others}
    monkeypatch.setattr(TWEAKS, "_entries", backwards)
    cfg = compose_cfg(["model=resnet32", "tweaks=[lrsi,label_smoothing,ghost_skip,soft_neurons]"])
    assert [n for n in TWEAKS if n in cfg.tweaks] == TWEAK_ORDER[::-1]
    assert [cb.name for cb in CallbackList(build_callbacks(cfg))] == TWEAK_ORDER
    assert [cb.name for cb in build_tweaks(cfg)] == TWEAK_ORDER


@needs_data
def test_a_run_calls_the_tweaks_in_the_declared_order(monkeypatch):
    """``build_run`` with three tweaks listed backwards: their model transforms, loss wrappers and setup run
    in the declared order (ghost paths inserted before the activations are swapped, labels smoothed last)."""
    from sparse_exp.engine.build import build_run

    calls = []

    def recording(cls, hook):
        original = getattr(cls, hook)

        def wrapper(self, *args, **kwargs):
            calls.append((hook, self.name))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, hook, wrapper)

    chosen = ["label_smoothing", "soft_neurons", "ghost_skip"]
    for name in chosen:
        for hook in ("transform_model", "wrap_loss", "setup"):
            recording(TWEAKS[name], hook)
    run = build_run(compose_cfg(["model=resnet32", f"tweaks=[{','.join(chosen)}]", "epochs=1"]))
    declared = [n for n in TWEAK_ORDER if n in chosen]
    assert [cb.name for cb in run.callbacks] == declared + ["flops", "topology"]
    for hook in ("transform_model", "wrap_loss", "setup"):
        assert [n for h, n in calls if h == hook] == declared, (hook, calls)
    assert run.state.step == 0 and isinstance(run.model, torch.nn.Module)


# --------------------------------------------------------------------------- registry queries
def test_every_superposer_answers_when_tickets_start():
    cfg = compose_cfg(["superposer=sup_tickets", "epochs=10", "superposer.cycle_epochs=1"])
    for name in SUPERPOSERS:
        answer = SUPERPOSERS.query(name, "ticket_collection_start")(cfg.superposer, 10, 7)
        assert answer is None or isinstance(answer, int), (name, answer)
    assert SUPERPOSERS.query("none", "ticket_collection_start")(cfg.superposer, 10, 7) is None
    assert SUPERPOSERS.query("sup_tickets", "ticket_collection_start")(cfg.superposer, 10, 7) == 9 * 7


def test_a_query_the_group_does_not_declare_is_refused():
    reg = Registry("test_queries_group", queries={"answer": lambda: 0})
    try:
        reg.add("mine", object, queries={"answer": lambda: 42})
        reg.add("plain", object)
        assert reg.query("mine", "answer")() == 42 and reg.query("plain", "answer")() == 0
        with pytest.raises(ValueError, match="does not declare"):
            reg.add("odd", object, queries={"question": lambda: 1})
        with pytest.raises(KeyError, match="no query 'question'"):
            reg.query("mine", "question")
        with pytest.raises(ConfigError):
            reg.query("unknown", "answer")
    finally:
        from sparse_exp.registry import REGISTRIES

        REGISTRIES.pop("test_queries_group")


def test_no_tweak_names_a_booster():
    """The tweaks ask the ``superposer`` group's query; none tests a superposer's name or imports one."""
    for path in (ROOT / "sparse_exp" / "tweaks").glob("*.py"):
        text = path.read_text()
        assert "sparse_exp.superposers" not in text, path
        assert not re.search(r"""["']sup_tickets["']""", text), path

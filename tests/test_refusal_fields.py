"""Refusals read Hydra's and OmegaConf's exception fields (issue 24): real exceptions from composing bad configs
through the project's compose path, each explained in one line naming the override and what is allowed, with the
message-parsing fallback disabled; and the fallback still explains an exception that carries only a message."""

import pytest
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ValidationError

from sparse_exp import CONF_DIR
from sparse_exp.config import refusal
from sparse_exp.config.compose import compose
from sparse_exp.config.errors import UserError
from sparse_exp.config.refusal import check_overrides, explain, explain_message

PARSE_ALLOWED = "allowed: key=value, group=option, key=[a,b] for a list, 'quoted' strings"


def _raised(overrides):
    with pytest.raises(Exception) as info:
        compose(overrides)
    return info.value


@pytest.fixture
def fields_only(monkeypatch):
    """``explain`` with its message-parsing fallback made to fail: what it returns came from the fields."""
    def no_fallback(exc, overrides):
        raise AssertionError(f"fell back to parsing the message of {type(exc).__name__}: {exc}")
    monkeypatch.setattr(refusal, "explain_message", no_fallback)


def _options(group):
    return ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


def test_unknown_group_option_lists_hydras_options(fields_only):
    exc = _raised(["sparsifier=foo"])
    assert isinstance(exc, MissingConfigException) and exc.missing_cfg_file == "sparsifier/foo"
    assert explain(exc, ["sparsifier=foo"]) == f"sparsifier=foo is not allowed: no such option; allowed: " \
                                              f"{', '.join(sorted(exc.options))}"
    assert ", ".join(sorted(exc.options)) == _options("sparsifier")


def test_unknown_option_of_a_list_group_lists_the_group(fields_only):
    exc = _raised(["tweaks=[ghost_skip,nope]"])
    assert isinstance(exc, MissingConfigException) and exc.options is None  # Hydra gives no options here
    assert explain(exc, ["tweaks=[ghost_skip,nope]"]) == \
        f"tweaks=nope is not allowed: no such option; allowed: {_options('tweaks')}"


@pytest.mark.parametrize("override,node,label", [
    ("sparsifier.nonexistent=1", "sparsifier", "sparsifier=rigl"),
    ("optimizer.lrr=0.1", "optimizer", "optimizer=sgd"),
])
def test_unknown_key_names_the_node_and_its_keys(fields_only, override, node, label):
    exc = _raised([override])
    cause = exc.__cause__
    assert isinstance(cause, ConfigAttributeError) and cause.full_key == override.split("=")[0]
    keys = ", ".join(sorted(str(k) for k in compose([])[node].keys()))
    leaf = override.split("=")[0].split(".")[-1]
    assert explain(exc, [override]) == f"{override} is not allowed: {label} has no key {leaf!r}; allowed: {keys}"


def test_unknown_top_level_key(fields_only):
    keys = ", ".join(sorted(str(k) for k in compose([]).keys()))
    assert explain(_raised(["foo=1"]), ["foo=1"]) == f"foo=1 is not allowed: there is no top-level key 'foo'; " \
                                                     f"allowed: {keys}"


def test_a_moved_key_names_its_new_place(fields_only):
    exc = _raised(["dataset.sup_cycle_epochs=2"])
    assert "moved to superposer.dataset_defaults.cycle_epochs" in explain(exc, ["dataset.sup_cycle_epochs=2"])


@pytest.mark.parametrize("override,why", [
    ("sparsity=abc", "must be a number"),
    ("epochs=2.5", "must be an integer"),
    ("progress=maybe", "must be true or false"),
    ("sparsity=null", "must not be null"),
    ("dataset.subset_train=x", "must be an integer"),
])
def test_wrong_type_names_the_override_and_the_type_allowed(fields_only, override, why):
    exc = _raised(["superposer=none", override])
    assert isinstance(exc.__cause__, ValidationError) and exc.__cause__.full_key == override.split("=")[0]
    assert explain(exc, ["superposer=none", override]) == f"{override} is not allowed: {why}"


def test_bad_override_syntax(fields_only):
    exc = _raised(["optimizer.lr=[1"])
    assert isinstance(exc, OverrideParseException) and exc.override == "optimizer.lr=[1"
    line = explain(exc, ["optimizer.lr=[1"])
    assert line == f"optimizer.lr=[1 is not allowed: it does not parse (no viable alternative at input '[1'); " \
                   f"{PARSE_ALLOWED}"
    with pytest.raises(UserError) as info:
        check_overrides(["optimizer.lr=[1"])
    assert str(info.value) == line


def test_fields_are_found_through_cause_and_context_chains(fields_only):
    exc = _raised(["sparsity=abc"])
    try:
        raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert explain(wrapped, ["sparsity=abc"]) == "sparsity=abc is not allowed: must be a number"
    try:
        try:
            raise exc
        except Exception:
            raise RuntimeError("while handling")  # noqa: B904 (an implicit __context__ is what is tested)
    except RuntimeError as implicit:
        assert explain(implicit, ["sparsity=abc"]) == "sparsity=abc is not allowed: must be a number"


def test_every_refusal_is_one_line(fields_only):
    for ov in (["sparsifier=foo"], ["foo=1"], ["sparsity=abc"], ["optimizer.lr=[1"]):
        assert "\n" not in explain(_raised(ov), ov)


# ---------------------------------------------------------------------------- the fallback: a bare message
def test_fallback_explains_bare_messages():
    assert explain(HydraException("Could not override 'sparsifier.nonexistent'.\nTo append to your config use "
                                  "+sparsifier.nonexistent=1"), ["sparsifier.nonexistent=1"]) == \
        explain(_raised(["sparsifier.nonexistent=1"]), ["sparsifier.nonexistent=1"])
    found = MissingConfigException("In 'config': Could not find 'sparsifier/foo'\n\nAvailable options in "
                                   "'sparsifier':\n\tdense\n\trigl\n", missing_cfg_file=None)
    assert explain(found, ["sparsifier=foo"]) == "sparsifier=foo is not allowed: no such option; allowed: dense, rigl"
    merging = ConfigCompositionException("Error merging override sparsity=abc")
    merging.__cause__ = ValueError("Value 'abc' of type 'str' could not be converted to Float")
    assert explain(merging, ["sparsity=abc"]) == "sparsity=abc is not allowed: must be a number"
    assert explain_message(HydraException("Ambiguous value for argument 'sparsity=0.9,0.95'\n1. To use it as a list"),
                           ["sparsity=0.9,0.95"]).startswith("sparsity=0.9,0.95 is not allowed without -m")
    assert explain(HydraException("something new\nin two lines"), []) == "something new in two lines"

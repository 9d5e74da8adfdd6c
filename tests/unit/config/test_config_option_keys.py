"""``--cfg-options`` keys and values cannot put code into (or break) the run's ``config.py``: mmengine's
``Config.dump`` writes dict keys verbatim (``'{k}'``, no escaping), so every key is a dotted path of identifiers
(list indices after the first part), ``_``-prefixed ones included, and dict keys inside a value are plain printable
strings; values are literals, never evaluated, so code in a value stays a string. The dumped file is checked with
``ast`` (independently of the loader) and loaded back in a scratch folder to show nothing ran."""
from __future__ import annotations

import ast

import pytest

from vit_adapter_ds.config import ConfigError, load_recipe, parse_options

CK = "optimizer.paramwise_cfg.custom_keys."  # a dict whose sub-keys the schema does not restrict


@pytest.mark.parametrize("key", [
    CK + "a'b.lr_mult",                                           # quote
    CK + "a\"b.lr_mult",                                          # double quote
    CK + "a\nb.lr_mult",                                          # newline
    CK + "x': 1, 'y.lr_mult",                                     # would close the string in config.py
    CK + "a'+__import__('os').system('touch X')+'.lr_mult",      # code
    "_x'+__import__('os').system('touch X')+'",
    "_a b",                                                       # space
    "optimizer..lr",                                              # empty part
    "optimizer.lr.",
    ".optimizer",
    "_x.2x",
    "1abc",
    CK + "1abc.lr_mult",                                          # not an index, not an identifier
    "_x-y",                                                       # _-prefixed keys are checked too
    "_x.class",                                                   # keyword
    "_x.None",
    "None",
    "_x.-1",                                                      # negative index
    "_caf\u00e9",                                                 # non-ASCII (NFKC would rename it in config.py)
])
def test_bad_keys_are_refused_naming_the_option(key):
    option = f"{key}=1.0"
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [option])
    msg = str(e.value)
    assert repr(option) in msg and "bad key" in msg, msg
    with pytest.raises(ConfigError, match="bad key"):  # the dict form of options is checked the same way
        load_recipe(None, {key: 1.0})


@pytest.mark.parametrize("value", [
    "{\"a'+__import__('os').system('touch X')+'\": {'lr_mult': 1.0}}",  # key with quotes inside a dict value
    "{'a\\\\b': {'lr_mult': 1.0}}",                                      # backslash
    "{'a\\nb': {'lr_mult': 1.0}}",                                       # newline
    "{1: {'lr_mult': 1.0}}",                                             # not a string
])
def test_dict_keys_inside_values_are_plain_strings(value):
    option = CK[:-1] + "=" + value
    with pytest.raises(ConfigError, match="dict key") as e:
        load_recipe(None, [option])
    assert repr(option) in str(e.value)


@pytest.mark.parametrize("value", ["1e999", "-1e999", "[1, 1e999]"])
def test_non_finite_values_are_refused(value):
    with pytest.raises(ConfigError, match="not allowed"):
        load_recipe(None, [f"_x={value}"])


def test_valid_dotted_keys_and_indices_still_work():
    opts = parse_options(["runner.max_iters=7", "_my_helper=3", "optimizer.paramwise_cfg.num_layers=4",
                          "model.backbone.interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]"])
    assert opts == {"runner.max_iters": 7, "_my_helper": 3, "optimizer.paramwise_cfg.num_layers": 4,
                    "model.backbone.interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]]}
    cfg = load_recipe("synthetic_mask_rcnn", [
        "data.train.pipeline.2.flip_ratio=0.25",                   # list index into the official pipeline
        "optimizer.paramwise_cfg.custom_keys.level_embed.decay_mult=0.5",
        "optimizer.paramwise_cfg.custom_keys={'backbone.cls_token': {'decay_mult': 0.0}}",
        "_x=[1, 2]", "_x_y.z_1=2"], validate=False)
    assert cfg.data.train.pipeline[2] == {"type": "RandomFlip", "flip_ratio": 0.25}
    keys = cfg.optimizer.paramwise_cfg.custom_keys
    assert keys["level_embed"] == {"decay_mult": 0.5} and keys["backbone.cls_token"] == {"decay_mult": 0.0}
    assert cfg._x == [1, 2] and cfg._x_y == {"z_1": 2}


def _calls(tree) -> list[str]:
    return [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_code_in_a_value_stays_a_string_and_the_dump_runs_nothing(tmp_path, monkeypatch):
    from mmengine import Config

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "X"
    code = f"__import__('os').system('touch {marker}')"
    cfg = load_recipe(None, [f"_note={code}", f"_list=[1, {code}]", f"runner.type={code}"], validate=False)
    assert cfg._note == code and cfg._list == f"[1, {code}]" and cfg.runner.type == code  # strings, as typed
    assert not marker.exists()
    out = tmp_path / "config.py"
    cfg.dump(str(out))
    tree = ast.parse(out.read_text())
    assert "__import__" not in " ".join(_calls(tree)), _calls(tree)
    # every call in the dumped file is one of the dict(...) constructors mmengine writes
    assert set(_calls(tree)) <= {"dict"}, set(_calls(tree))
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert code in strings and f"[1, {code}]" in strings
    assert Config.fromfile(str(out))._note == code  # our own file, loaded back: still a string, nothing ran
    assert not marker.exists()


def test_keys_that_used_to_inject_code_cannot_reach_the_dump(tmp_path, monkeypatch):
    """The key of a custom_keys dict given as a value once closed its quote in config.py and ran on reload."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "Y"
    bad = f"a'+__import__('os').system('touch {marker}')+'"
    with pytest.raises(ConfigError):
        load_recipe(None, [CK[:-1] + "=" + repr({bad: {"lr_mult": 1.0}})])
    with pytest.raises(ConfigError):
        load_recipe("synthetic_mask_rcnn", [CK + bad + ".lr_mult=1.0"])
    assert not marker.exists()

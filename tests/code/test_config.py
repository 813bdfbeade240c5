"""The typed settings: params.yaml is the one source of the pipeline's values, and every key of it is typed.

An unknown section, an unknown nested key and a missing key are each a DataError naming the file and the
dotted key; every leaf of params.yaml is a field of the typed tree; no section model has a default.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipelines.core import params as params_module
from pipelines.core.config import Settings, load_settings
from pipelines.core.errors import DataError
from tests.conftest import REPO, merged

RAW = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def without(raw: dict, dotted: str) -> dict:
    *parents, leaf = dotted.split(".")
    copy = merged(raw, {})
    node = copy
    for part in parents:
        node[part] = dict(node[part])
        node = node[part]
    del node[leaf]
    return copy


def test_params_yaml_loads():
    settings = load_settings(REPO / "params.yaml")
    assert isinstance(settings, Settings)
    assert settings.validate_.max_bad_fraction == RAW["validate"]["max_bad_fraction"]
    assert settings.text.bm25.k1 == RAW["text"]["bm25"]["k1"]


@pytest.mark.parametrize(("change", "dotted"), [
    ({"txet": {"bm25": {"k1": 1.0}}}, "txet"),                          # a misspelled section
    ({"text": {"bm25": {"k3": 1.0}}}, "text.bm25.k3"),                  # an unknown nested key
    ({"serving": {"cache": {"sise": 10}}}, "serving.cache.sise"),
])
def test_an_unknown_key_is_an_error_naming_it_and_the_file(tmp_path, change, dotted):
    path = write(tmp_path, merged(RAW, change))
    with pytest.raises(DataError) as error:
        load_settings(path)
    assert str(path) in str(error.value) and f"field {dotted}:" in str(error.value)
    assert "unknown key" in str(error.value)


@pytest.mark.parametrize("dotted", ["distill.steps", "text.cross_encoder.model_path", "promotion", "fusion.relevance.n_jobs"])
def test_a_missing_key_is_an_error_naming_it_and_the_file(tmp_path, dotted):
    path = write(tmp_path, without(RAW, dotted))
    with pytest.raises(DataError) as error:
        load_settings(path)
    assert str(path) in str(error.value) and f"field {dotted}:" in str(error.value) and "missing" in str(error.value)


def test_a_wrong_value_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, merged(RAW, {"sasrec": {"loss": "hinge"}}))
    with pytest.raises(DataError, match=r"params\.yaml: field sasrec\.loss:"):
        load_settings(path)


def test_a_missing_params_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="absent.yaml"):
        load_settings(tmp_path / "absent.yaml")


def _model(annotation) -> type[BaseModel] | None:
    """The section model a field holds, when it holds one (None for a leaf: a value, list or mapping)."""
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if inspect.isclass(c) and issubclass(c, BaseModel)), None)


def _leaves_not_typed(node: dict, model: type[BaseModel], prefix: str = "") -> list[str]:
    fields = {(field.alias or name): field for name, field in model.model_fields.items()}
    wrong = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            wrong.append(dotted)
            continue
        annotation = fields[key].annotation
        if typing.get_origin(annotation) is dict:  # a mapping of names to values, or to models (monitor.drift)
            inner = _model(typing.get_args(annotation)[1])
            for name, item in value.items() if inner is not None else ():
                wrong += _leaves_not_typed(item, inner, f"{dotted}.{name}.")
            continue
        inner = _model(annotation)
        if inner is not None and isinstance(value, dict):
            wrong += _leaves_not_typed(value, inner, dotted + ".")
    return wrong


def test_every_leaf_of_params_yaml_is_a_field_of_the_typed_tree():
    assert _leaves_not_typed(RAW, Settings) == []


def _section_models() -> list[type[BaseModel]]:
    return [Settings] + [model for model in vars(params_module).values()
                         if inspect.isclass(model) and issubclass(model, params_module.Section)
                         and model is not params_module.Section]


def test_no_section_model_field_has_a_default():
    with_default = [f"{model.__name__}.{name}" for model in _section_models()
                    for name, field in model.model_fields.items() if not field.is_required()]
    assert with_default == [], "params.yaml is the one source of values: these fields have a default in code"
    assert len(_section_models()) > 30


def test_every_section_model_forbids_unknown_keys():
    assert all(model.model_config.get("extra") == "forbid" for model in _section_models())

"""Recall components, one module each, all behind the interface of base.py.

`make(name, settings)` builds one from params.yaml; `load(name, folder)` restores a saved one.
Modules are imported on demand so that using one component does not import torch for all.
"""

from __future__ import annotations

import importlib
from pathlib import Path

COMPONENTS = {  # name -> (module, class)
    "popularity": ("pipelines.rankers.popularity", "Popularity"),
    "itemcf": ("pipelines.rankers.itemcf", "ItemCF"),
    "relations": ("pipelines.rankers.relations", "Relations"),
    "bm25": ("pipelines.rankers.bm25", "BM25"),
    "dense": ("pipelines.rankers.dense", "DenseRetriever"),
    "sasrec": ("pipelines.rankers.sasrec", "SASRec"),
    "cross_encoder": ("pipelines.rankers.cross_encoder", "CrossEncoderRanker"),
}


def component_class(name: str):
    if name not in COMPONENTS:
        raise KeyError(f"unknown component {name!r}: one of {', '.join(COMPONENTS)}")
    module, cls = COMPONENTS[name]
    return getattr(importlib.import_module(module), cls)


def make(name: str, settings):
    return component_class(name).from_settings(settings)


def load(name: str, folder: Path):
    return component_class(name).load(Path(folder))

"""Recall components, one module each, all behind the interface of base.py.

`make(name, settings)` builds one from params.yaml; `load(name, folder)` restores a saved one.
Each module is imported when its component is first asked for, so that using one component does
not import torch for all; the imports are written out (not module-name strings) so that the
import graph, and with it the bento's file list, sees every component.
"""

from __future__ import annotations

from pathlib import Path


def _popularity():
    from pipelines.models.rankers.popularity import Popularity
    return Popularity


def _itemcf():
    from pipelines.models.rankers.itemcf import ItemCF
    return ItemCF


def _relations():
    from pipelines.models.rankers.relations import Relations
    return Relations


def _bm25():
    from pipelines.models.rankers.bm25 import BM25
    return BM25


def _dense():
    from pipelines.models.rankers.dense import DenseRetriever
    return DenseRetriever


def _sasrec():
    from pipelines.models.rankers.sasrec import SASRec
    return SASRec


def _cross_encoder():
    from pipelines.models.rankers.cross_encoder import CrossEncoderRanker
    return CrossEncoderRanker


COMPONENTS = {"popularity": _popularity, "itemcf": _itemcf, "relations": _relations, "bm25": _bm25,
              "dense": _dense, "sasrec": _sasrec, "cross_encoder": _cross_encoder}


def component_class(name: str):
    if name not in COMPONENTS:
        raise KeyError(f"unknown component {name!r}: one of {', '.join(COMPONENTS)}")
    return COMPONENTS[name]()


def make(name: str, settings):
    return component_class(name).from_settings(settings)


def load(name: str, folder: Path):
    return component_class(name).load(Path(folder))

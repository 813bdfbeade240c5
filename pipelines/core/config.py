"""params.yaml loaded once into typed settings: the one config object of the pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from pipelines.core.errors import DataError
from pipelines.core.params import (
    CleanParams,
    DistillParams,
    FeaturesParams,
    FeedbackParams,
    FinetuneParams,
    FusionParams,
    IngestParams,
    MonitorParams,
    OrchestrationParams,
    PrivacyParams,
    PromotionParams,
    RankingParams,
    RecallParams,
    RelationsParams,
    SampleParams,
    SASRecParams,
    Section,
    ServingParams,
    StreamParams,
    TextParams,
    ValidateParams,
)

PARAMS_ENV = "SHOPFUSION_PARAMS"
DEFAULT_PARAMS = Path("params.yaml")


class Settings(Section):
    """All of params.yaml, typed: every section a required field, every key of every section too."""

    ingest: IngestParams
    sample: SampleParams
    validate_: ValidateParams = Field(alias="validate")
    clean: CleanParams
    privacy: PrivacyParams
    fusion: FusionParams
    features: FeaturesParams
    relations: RelationsParams
    recall: RecallParams
    sasrec: SASRecParams
    text: TextParams
    finetune: FinetuneParams
    feedback: FeedbackParams
    stream: StreamParams
    ranking: RankingParams
    orchestration: OrchestrationParams
    promotion: PromotionParams
    monitor: MonitorParams
    distill: DistillParams
    serving: ServingParams


def params_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read params.yaml (or the file named by SHOPFUSION_PARAMS): the only way to make Settings.

    A missing file, a missing or unknown key, or a value of the wrong type is a DataError naming the
    file and the dotted key."""
    file = params_path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such params file")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        return Settings.model_validate(raw)
    except yaml.YAMLError as exc:
        raise DataError(f"{file}: not valid YAML ({exc.__class__.__name__})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = {"extra_forbidden": "unknown key (not a field of the typed settings: misspelled?)",
                   "missing": "missing (every key of the typed settings must be set)"}.get(first["type"], first["msg"])
        raise DataError(f"{file}: field {field}: {message}") from None

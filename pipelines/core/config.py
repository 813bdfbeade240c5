"""params.yaml loaded once into typed settings: the one config object of the pipeline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.core.errors import DataError

PARAMS_ENV = "SHOPFUSION_PARAMS"
DEFAULT_PARAMS = Path("params.yaml")

Source = Literal["sample", "home-depot", "rechorus", "sequences"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestParams(_Section):
    source: Source = "sample"
    path: str | None = None


class SampleParams(_Section):
    seed: int = 42
    n_items: int = Field(2000, ge=20)
    n_users: int = Field(1000, ge=10)
    n_queries: int = Field(600, ge=10)
    days: int = Field(90, ge=1)
    start_date: str = "2026-06-01"
    defect_rate: float = Field(0.03, ge=0.0, le=0.5)


class ValidateParams(_Section):
    max_bad_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_price: float = Field(100000.0, gt=0)


class CleanParams(_Section):
    session_gap_minutes: int = Field(30, ge=1)
    near_duplicates: bool = True


class PrivacyParams(_Section):
    key_env: str = "SHOPFUSION_PII_KEY"
    key_file: str = ".secrets/pii.key"


class FeaturesParams(_Section):
    event_weights: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}
    valid_days: int = Field(7, ge=1)  # interactions of the last test_days are held out for evaluation,
    test_days: int = Field(14, ge=1)  # the valid_days before them for fitting the fusion
    query_valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    query_test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # how interactions are held out: time (the last test_days, the valid_days before them), leave_one_out
    # (each user's last interaction is test, the one before valid; users with fewer than 3 stay train), or
    # given (the source's holdout table names the held-out events and their candidates)
    interaction_split: Literal["time", "leave_one_out", "given"] = "time"
    seed: int = 0


class Settings(BaseModel):
    """All of params.yaml. Sections that later stages add are kept as plain dicts until typed."""

    model_config = ConfigDict(extra="allow")

    ingest: IngestParams = IngestParams()
    sample: SampleParams = SampleParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    clean: CleanParams = CleanParams()
    privacy: PrivacyParams = PrivacyParams()
    features: FeaturesParams = FeaturesParams()


def section(settings: Settings, name: str, model: type[BaseModel]) -> BaseModel:
    """A section that a later stage added to params.yaml, validated by that stage's own model.

    `name` may be dotted ("text.bm25") to reach a subsection; a missing one means defaults.
    """
    raw = settings.model_extra or {}
    for part in name.split("."):
        raw = (raw or {}).get(part, {}) if isinstance(raw, dict) else {}
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in (name, *first["loc"]))
        raise DataError(f"params.yaml: field {field}: {first['msg']}") from None


def params_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read params.yaml (or the file named by SHOPFUSION_PARAMS); a missing file means defaults."""
    file = params_path(path)
    if not file.exists():
        return Settings()
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        return Settings.model_validate(raw)
    except yaml.YAMLError as exc:
        raise DataError(f"{file}: not valid YAML ({exc.__class__.__name__})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise DataError(f"{file}: field {field}: {first['msg']}") from None

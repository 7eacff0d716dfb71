"""The instance YAML file: its pydantic model, JSON Schema, reference table and starting file.

`foresight instance create -f FILE` validates a file with :class:`InstanceFile`
(types, ranges, unknown keys), then with the domain's own rules
(`foresight.instance.from_dict`: condition text is parsed, names checked).
The README's reference table and `foresight instance schema` are generated
from this model, so they cannot drift from what is accepted.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from foresight import instance as inst
from foresight.errors import InvalidArgument

Conditions = str | dict[str, Any]
_CONDITIONS_HELP = (
    'condition text such as `event_type = "commerce.purchases" and value > 100`, '
    "or the structured form {mode: ALL_OF|ANY_OF, items: [{field, op, value}]}"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GoalFile(_Strict):
    """What the prediction is about."""

    conditions: Conditions = Field(
        description=f"Events the goal is about: {_CONDITIONS_HELP}. Empty only for CHURN (= any event)."
    )
    occurrence: Literal["WILL_OCCUR", "WILL_NOT_OCCUR"] | None = Field(
        None, description="Whether they will (not) occur; follows the type when omitted."
    )
    window_days: int = Field(
        30, ge=1, le=inst.MAX_WINDOW_DAYS, description="Outcome window after a cutoff, in days."
    )


class PopulationFile(_Strict):
    """Who is scored and trained on."""

    conditions: Conditions | None = Field(
        None, description=f"Eligible profiles have an event matching: {_CONDITIONS_HELP}."
    )
    lookback_days: int = Field(
        45,
        ge=1,
        le=inst.MAX_LOOKBACK_DAYS,
        description="Activity look-back before a cutoff, in days.",
    )


class CustomEventFile(_Strict):
    """Named conditions that become features (days since, counts in windows)."""

    name: str = Field(description="Feature name: a letter, then letters, digits, _ or -.")
    conditions: Conditions = Field(description=f"Which events count: {_CONDITIONS_HELP}.")


class InstanceFile(_Strict):
    """One prediction instance, as written in YAML for `foresight instance create -f`."""

    name: str = Field(min_length=1, max_length=128, description="Unique instance name.")
    dataset: str = Field(description="Dataset whose events train and score it.")
    description: str = Field("", max_length=4096, description="Free text.")
    type: Literal["CHURN", "CONVERSION", "CUSTOM"] = Field(
        "CUSTOM", description="CHURN: goal will not occur; CONVERSION: will occur; CUSTOM: say."
    )
    goal: GoalFile = Field(description="The goal and its outcome window.")
    population: PopulationFile = Field(
        default_factory=PopulationFile, description="The eligible population."
    )
    custom_events: list[CustomEventFile] = Field(
        default_factory=list, description="Extra features from named conditions."
    )
    profile_attributes: list[str] = Field(
        default_factory=list, description="Imported profile attributes used as features."
    )
    exclusions: Conditions | None = Field(
        None, description="Events never used as features (leakage guard)."
    )
    scoring_schedule: str | None = Field(
        None, description="hourly, daily, weekly, monthly or 5 cron fields ('0 3 * * *')."
    )
    min_positives: int = Field(
        500, ge=1, description="Training needs at least this many positive labels."
    )
    min_negatives: int = Field(
        500, ge=1, description="Training needs at least this many negative labels."
    )


#: The starting file `foresight instance init` writes: every key, annotated.
EXAMPLE = """\
# A Foresight prediction instance. Create it with: foresight instance create -f FILE
# Reference: README "Instance YAML reference" (or `foresight instance schema`).
name: churn                      # unique instance name
dataset: shop                    # dataset whose events train and score it
description: Customers with no activity at all in the next 30 days
type: CHURN                      # CHURN | CONVERSION | CUSTOM
goal:
  conditions: ""                 # empty = any event (churn: no activity at all), or condition
                                 # text such as: event_type = "commerce.purchases"
  window_days: 30                # outcome window after a cutoff (1-365 days)
  # occurrence: WILL_NOT_OCCUR   # follows the type; required for CUSTOM
population:
  lookback_days: 45              # eligible = any event in the 45 days before a cutoff
  # conditions: channel = "web"  # ... or only events matching these
custom_events:                   # extra features: days since / counts of matching events
  - name: big_purchase
    conditions: event_type = "commerce.purchases" and value > 100
profile_attributes: []           # e.g. [loyalty_tier, region] after `foresight import-profiles`
# exclusions: event_type = "message.opened" and campaign_id starts with "order-"
# scoring_schedule: daily        # hourly | daily | weekly | monthly | 5 cron fields
min_positives: 500               # training refuses fewer positive labels ...
min_negatives: 500               # ... or fewer negative ones
"""


def load(text: str) -> tuple[inst.InstanceConfig, str]:
    """Validate an instance YAML document; returns (config, dataset).

    Raises InvalidArgument naming the first bad key path.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument("yaml", " ".join(str(exc).split())) from None
    try:
        parsed = InstanceFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "instance"
        raise InvalidArgument(path, first["msg"]) from None
    raw = parsed.model_dump(exclude_none=True, exclude={"dataset"})
    return inst.from_dict(raw), parsed.dataset


def json_schema() -> str:
    """The JSON Schema of the instance file."""
    return json.dumps(InstanceFile.model_json_schema(), indent=2)


def reference_markdown() -> str:
    """A Markdown table of every key (path, type, default, meaning), for the README."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for path, model_field, annotation in _walk(InstanceFile, ""):
        default = "required" if model_field.is_required() else _default(model_field)
        meaning = str(model_field.description).replace("|", "\\|")
        lines.append(f"| `{path}` | {annotation} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def _walk(model: type[BaseModel], prefix: str) -> list[tuple[str, Any, str]]:
    out: list[tuple[str, Any, str]] = []
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _nested_model(f.annotation)
        if nested is not None:
            is_list = getattr(f.annotation, "__origin__", None) is list
            out.append((path, f, "list of mappings" if is_list else "mapping"))
            out.extend(_walk(nested, f"{path}[]." if is_list else f"{path}."))
        else:
            out.append((path, f, _type_text(f.annotation)))
    return out


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type_text(annotation: Any) -> str:
    if annotation in (Conditions, Conditions | None):
        return "conditions"
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    origin = getattr(annotation, "__origin__", None)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if len(args) == 1 and origin is not Literal:  # Optional[X]
        return _type_text(args[0])
    return {str: "text", int: "integer", float: "number", bool: "boolean"}.get(
        annotation, str(annotation)
    )


def _default(model_field: Any) -> str:
    if model_field.default_factory is not None:
        value = model_field.default_factory()
        return "[]" if value == [] else "its keys' defaults"
    if model_field.default is None:
        return "–"
    return f"`{model_field.default}`" if model_field.default != "" else "empty"

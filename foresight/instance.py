"""Prediction instances: the configuration of one Customer AI prediction.

An instance states a goal in business terms (conditions on events that will
or will not occur within an outcome window), who is eligible, which custom
events and profile attributes become features, which events must never become
features (the leakage guard) and when to score. The trainer stores it as the
JSON-able dict of `to_dict`; the CLI reads it from YAML where conditions may be
written as text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import yaml

from foresight.conditions.model import (
    ConditionGroup,
    group_from_dict,
    group_to_dict,
    validate_group,
)
from foresight.conditions.parser import parse
from foresight.errors import InvalidArgument
from foresight.storage.paths import slug

__all__ = [
    "CustomEvent",
    "Goal",
    "InstanceConfig",
    "InstanceType",
    "Occurrence",
    "Population",
    "from_dict",
    "load_instance_yaml",
    "to_dict",
    "validate_config",
    "validate_schedule",
    "with_defaults_for_type",
]

MAX_WINDOW_DAYS = 365
MAX_LOOKBACK_DAYS = 3 * 365
MAX_CUTOFFS = 24
_CUSTOM_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}\Z")
_CRON_FIELD = re.compile(r"[0-9A-Za-z*,/\-?]+\Z")
NAMED_SCHEDULES = frozenset({"hourly", "daily", "weekly", "monthly"})


class InstanceType(Enum):
    """What the instance predicts; CHURN and CONVERSION fix the occurrence."""

    CHURN = "CHURN"
    CONVERSION = "CONVERSION"
    CUSTOM = "CUSTOM"


class Occurrence(Enum):
    """Whether the goal's events will, or will not, occur within the window."""

    WILL_OCCUR = "WILL_OCCUR"
    WILL_NOT_OCCUR = "WILL_NOT_OCCUR"


@dataclass(frozen=True)
class Goal:
    """Conditions on events that will (not) occur within `window_days` after a cutoff.

    An empty condition group means "any event": churn as "no activity at all".
    """

    conditions: ConditionGroup
    occurrence: Occurrence = Occurrence.WILL_OCCUR
    window_days: int = 30


@dataclass(frozen=True)
class Population:
    """Eligible profiles: ≥1 event matching `conditions` (or any event) before the cutoff.

    `lookback_days` (None = no look-back) narrows that to the last N days
    before the cutoff; training and ValidateGoal report what each rule excludes.
    """

    conditions: ConditionGroup | None = None
    lookback_days: int | None = None


@dataclass(frozen=True)
class CustomEvent:
    """Named conditions that become features (days since, counts in windows)."""

    name: str
    conditions: ConditionGroup


@dataclass(frozen=True, kw_only=True)
class InstanceConfig:
    """Everything needed to train and score one prediction."""

    name: str
    description: str = ""
    type: InstanceType = InstanceType.CUSTOM
    goal: Goal
    population: Population = field(default_factory=Population)
    custom_events: tuple[CustomEvent, ...] = ()
    profile_attributes: tuple[str, ...] = ()
    # Events matching these never become features: e.g. the confirmation email
    # sent after a purchase would otherwise leak the label.
    exclusions: ConditionGroup | None = None
    scoring_schedule: str | None = None
    min_positives: int = 500
    min_negatives: int = 500
    # Rolling training cutoffs: at most this many (None = the default, 8), this
    # many days apart (None = adapt to the history; see labels.choose_cutoffs).
    max_cutoffs: int | None = None
    cutoff_step_days: int | None = None

    def __post_init__(self) -> None:
        # Lists arrive from JSON/YAML; tuples keep the config hashable.
        if not isinstance(self.custom_events, tuple):
            object.__setattr__(self, "custom_events", tuple(self.custom_events))
        if not isinstance(self.profile_attributes, tuple):
            object.__setattr__(self, "profile_attributes", tuple(self.profile_attributes))


def _check_int(value: object, path: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(path, f"must be between {low} and {high}, got {value!r}")


def validate_schedule(schedule: str | None, path: str = "scoring_schedule") -> None:
    """Accept None, a named schedule (hourly, daily, weekly, monthly) or 5-field cron text."""
    if schedule is None:
        return
    text = schedule.strip()
    if text.lower() in NAMED_SCHEDULES:
        return
    parts = text.split()
    if len(parts) != 5 or not all(_CRON_FIELD.match(p) for p in parts):
        raise InvalidArgument(
            path,
            f"expected hourly, daily, weekly, monthly or 5 cron fields like '0 3 * * *', got {schedule!r}",
        )


def _check_goal(kind: InstanceType, goal: Goal) -> None:
    """The goal's conditions, occurrence (as the instance type requires) and window."""
    if not isinstance(goal, Goal):
        raise InvalidArgument("goal", "is required")
    validate_group(goal.conditions, "goal.conditions")
    if goal.conditions.is_empty and kind is not InstanceType.CHURN:
        # Only churn has a meaningful "any event" goal (no activity at all).
        raise InvalidArgument(
            "goal.conditions", "must not be empty: state which events the goal is about"
        )
    if not isinstance(goal.occurrence, Occurrence):
        raise InvalidArgument(
            "goal.occurrence", f"expected WILL_OCCUR or WILL_NOT_OCCUR, got {goal.occurrence!r}"
        )
    if kind is InstanceType.CHURN and goal.occurrence is not Occurrence.WILL_NOT_OCCUR:
        raise InvalidArgument(
            "goal.occurrence", "a CHURN instance predicts that the goal will NOT occur"
        )
    if kind is InstanceType.CONVERSION and goal.occurrence is not Occurrence.WILL_OCCUR:
        raise InvalidArgument(
            "goal.occurrence", "a CONVERSION instance predicts that the goal WILL occur"
        )
    _check_int(goal.window_days, "goal.window_days", 1, MAX_WINDOW_DAYS)


def _check_custom_events(custom_events: Sequence[CustomEvent]) -> None:
    """Names that are unique identifiers; conditions that are valid and not empty."""
    seen: set[str] = set()
    for i, event in enumerate(custom_events):
        path = f"custom_events[{i}]"
        if not _CUSTOM_EVENT_NAME.match(event.name):
            raise InvalidArgument(
                f"{path}.name",
                "must start with a letter and use letters, digits, '_' or '-' (at most 64)",
            )
        if event.name in seen:
            raise InvalidArgument(f"{path}.name", f"duplicate custom event name '{event.name}'")
        seen.add(event.name)
        validate_group(event.conditions, f"{path}.conditions")
        if event.conditions.is_empty:
            raise InvalidArgument(f"{path}.conditions", "must not be empty")


def _check_profile_attributes(profile_attributes: Sequence[str]) -> None:
    """Non-empty, unique attribute names; never the profile key."""
    attributes: set[str] = set()
    for i, attr in enumerate(profile_attributes):
        path = f"profile_attributes[{i}]"
        if not isinstance(attr, str) or not attr.strip():
            raise InvalidArgument(path, "must not be empty")
        if attr == "profile_id":
            raise InvalidArgument(path, "profile_id is the key, not a feature")
        if attr in attributes:
            raise InvalidArgument(path, f"duplicate profile attribute '{attr}'")
        attributes.add(attr)


def validate_config(cfg: InstanceConfig) -> None:
    """Raise InvalidArgument naming the field path of the first problem."""
    # The name becomes folder names (model bundles, score files): a slug.
    slug("name", cfg.name)
    if len(cfg.description) > 4096:
        raise InvalidArgument("description", "must be at most 4096 characters")
    if not isinstance(cfg.type, InstanceType):
        raise InvalidArgument("type", f"expected CHURN, CONVERSION or CUSTOM, got {cfg.type!r}")
    _check_goal(cfg.type, cfg.goal)
    population = cfg.population
    if population.conditions is not None:
        validate_group(population.conditions, "population.conditions")
    if population.lookback_days is not None:
        _check_int(population.lookback_days, "population.lookback_days", 1, MAX_LOOKBACK_DAYS)
    _check_custom_events(cfg.custom_events)
    _check_profile_attributes(cfg.profile_attributes)
    if cfg.exclusions is not None:
        validate_group(cfg.exclusions, "exclusions")
    validate_schedule(cfg.scoring_schedule)
    _check_int(cfg.min_positives, "min_positives", 1, 10**9)
    _check_int(cfg.min_negatives, "min_negatives", 1, 10**9)
    if cfg.max_cutoffs is not None:
        _check_int(cfg.max_cutoffs, "max_cutoffs", 2, MAX_CUTOFFS)
    if cfg.cutoff_step_days is not None:
        _check_int(cfg.cutoff_step_days, "cutoff_step_days", 1, MAX_WINDOW_DAYS)


# --- dict / YAML ------------------------------------------------------------


def _group_out(group: ConditionGroup | None) -> dict[str, Any] | None:
    return None if group is None else group_to_dict(group)


def to_dict(cfg: InstanceConfig) -> dict[str, Any]:
    """JSON-able dict (conditions in structured form); inverse of `from_dict`."""
    return {
        "name": cfg.name,
        "description": cfg.description,
        "type": cfg.type.value,
        "goal": {
            "conditions": group_to_dict(cfg.goal.conditions),
            "occurrence": cfg.goal.occurrence.value,
            "window_days": cfg.goal.window_days,
        },
        "population": {
            "conditions": _group_out(cfg.population.conditions),
            "lookback_days": cfg.population.lookback_days,
        },
        "custom_events": [
            {"name": e.name, "conditions": group_to_dict(e.conditions)} for e in cfg.custom_events
        ],
        "profile_attributes": list(cfg.profile_attributes),
        "exclusions": _group_out(cfg.exclusions),
        "scoring_schedule": cfg.scoring_schedule,
        "min_positives": cfg.min_positives,
        "min_negatives": cfg.min_negatives,
        "max_cutoffs": cfg.max_cutoffs,
        "cutoff_step_days": cfg.cutoff_step_days,
    }


def _group_in(raw: Any, path: str) -> ConditionGroup | None:
    """Structured dict, condition text (parsed) or None."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return parse(raw, path)
    return group_from_dict(raw, path)


def _required_group(raw: Any, path: str) -> ConditionGroup:
    group = _group_in(raw, path)
    return ConditionGroup() if group is None else group


def _enum(enum: type[Any], raw: Any, path: str, default: Any) -> Any:
    if raw is None:
        return default
    try:
        return enum(str(raw).upper())
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidArgument(path, f"expected one of {allowed}, got {raw!r}") from None


def _mapping(raw: Any, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(path, "expected a mapping")
    return raw


def _int(raw: Any, path: str, default: int) -> int:
    value = _optional_int(raw, path)
    return default if value is None else value


def _optional_int(raw: Any, path: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidArgument(path, f"expected a whole number, got {raw!r}")
    return raw


_KNOWN_KEYS = frozenset(
    {
        "name",
        "description",
        "type",
        "goal",
        "population",
        "custom_events",
        "profile_attributes",
        "exclusions",
        "scoring_schedule",
        "min_positives",
        "min_negatives",
        "max_cutoffs",
        "cutoff_step_days",
    }
)


def from_dict(data: Any) -> InstanceConfig:
    """Build and validate a config from `to_dict` output or hand-written YAML.

    Conditions may be structured dicts or condition text. When the occurrence
    is omitted it follows the type (CHURN → WILL_NOT_OCCUR).
    """
    root = _mapping(data, "instance")
    unknown = sorted(set(root) - _KNOWN_KEYS)
    if unknown:
        raise InvalidArgument(unknown[0], "unknown key")
    kind = _enum(InstanceType, root.get("type"), "type", InstanceType.CUSTOM)
    goal_raw = _mapping(root.get("goal"), "goal")
    if not goal_raw:
        raise InvalidArgument("goal", "is required")
    default_occurrence = (
        Occurrence.WILL_NOT_OCCUR if kind is InstanceType.CHURN else Occurrence.WILL_OCCUR
    )
    goal = Goal(
        conditions=_required_group(goal_raw.get("conditions"), "goal.conditions"),
        occurrence=_enum(
            Occurrence, goal_raw.get("occurrence"), "goal.occurrence", default_occurrence
        ),
        window_days=_int(goal_raw.get("window_days"), "goal.window_days", 30),
    )
    population_raw = _mapping(root.get("population"), "population")
    population = Population(
        conditions=_group_in(population_raw.get("conditions"), "population.conditions"),
        lookback_days=_optional_int(
            population_raw.get("lookback_days"), "population.lookback_days"
        ),
    )
    events_raw = root.get("custom_events") or []
    if not isinstance(events_raw, list):
        raise InvalidArgument("custom_events", "expected a list")
    custom_events: list[CustomEvent] = []
    for i, raw in enumerate(events_raw):
        item = _mapping(raw, f"custom_events[{i}]")
        custom_events.append(
            CustomEvent(
                name=str(item.get("name", "")),
                conditions=_required_group(
                    item.get("conditions"), f"custom_events[{i}].conditions"
                ),
            )
        )
    attributes_raw = root.get("profile_attributes") or []
    if not isinstance(attributes_raw, list):
        raise InvalidArgument("profile_attributes", "expected a list of attribute names")
    schedule = root.get("scoring_schedule")
    cfg = InstanceConfig(
        name=str(root.get("name") or ""),
        description=str(root.get("description") or ""),
        type=kind,
        goal=goal,
        population=population,
        custom_events=tuple(custom_events),
        profile_attributes=tuple(str(a) for a in attributes_raw),
        exclusions=_group_in(root.get("exclusions"), "exclusions"),
        scoring_schedule=None if schedule is None else str(schedule),
        min_positives=_int(root.get("min_positives"), "min_positives", 500),
        min_negatives=_int(root.get("min_negatives"), "min_negatives", 500),
        max_cutoffs=_optional_int(root.get("max_cutoffs"), "max_cutoffs"),
        cutoff_step_days=_optional_int(root.get("cutoff_step_days"), "cutoff_step_days"),
    )
    validate_config(cfg)
    return cfg


def load_instance_yaml(text: str) -> InstanceConfig:
    """Parse an instance YAML document (conditions may be text) and validate it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument("yaml", str(exc)) from None
    return from_dict(data)


def with_defaults_for_type(cfg: InstanceConfig) -> InstanceConfig:
    """Set the occurrence implied by the type (CHURN → WILL_NOT_OCCUR, CONVERSION → WILL_OCCUR)."""
    if cfg.type is InstanceType.CHURN:
        return replace(cfg, goal=replace(cfg.goal, occurrence=Occurrence.WILL_NOT_OCCUR))
    if cfg.type is InstanceType.CONVERSION:
        return replace(cfg, goal=replace(cfg.goal, occurrence=Occurrence.WILL_OCCUR))
    return cfg

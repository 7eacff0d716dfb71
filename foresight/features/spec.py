"""The feature spec: what the automatic features are, fitted once at training.

Training fits the vocabularies (event types, channels and categories kept,
rarer ones pooled into "other") and the profile-attribute encodings
(`foresight.features.spec_fit`), which imply the ordered feature list; the spec is stored with the model and scoring reuses it,
so both build the identical vector. Every feature has a stable code (used by
models, reason codes and segments) and a human description.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from foresight.conditions.model import ConditionGroup, group_from_dict, group_to_dict
from foresight.errors import FailedPrecondition
from foresight.instance import CustomEvent

__all__ = [
    "OTHER",
    "SCHEMA_VERSION",
    "WHOLE_NUMBER_UNITS",
    "AttributeEncoding",
    "AttributeKind",
    "FeatureDef",
    "FeatureSpec",
    "Unit",
    "build_feature_defs",
    "event_type_noun",
    "format_factor_value",
    "format_factor_values",
]

SCHEMA_VERSION = 1
OTHER = "other"
COUNT_WINDOWS: tuple[int, ...] = (7, 30, 90, 365)
VALUE_WINDOWS: tuple[int, ...] = (30, 90, 365)
ACTIVE_DAY_WINDOWS: tuple[int, ...] = (30, 90)
CUSTOM_WINDOWS: tuple[int, ...] = (30, 90)
MIX_WINDOW = 90
TREND_WINDOW = 30
PURCHASE_EVENT_TYPE = "commerce.purchases"


class Unit(Enum):
    """How a feature's value reads to a person (drives `format_factor_value`)."""

    DAYS = "days"
    COUNT = "count"
    MONEY = "money"
    COUNT_CHANGE = "count_change"
    MONEY_CHANGE = "money_change"
    SHARE = "share"
    NUMBER = "number"
    FLAG = "flag"
    RANK = "rank"


class AttributeKind(Enum):
    """How a profile attribute becomes numbers; never a categorical split (ONNX mishandles those)."""

    NUMERIC = "numeric"  # passthrough (booleans as 0/1)
    DATE = "date"  # days since the date, at the as-of time
    ONEHOT = "onehot"  # one flag per kept level plus "other"
    RANK = "rank"  # frequency rank of the level (1 = most common); unseen = len(levels) + 1


@dataclass(frozen=True)
class FeatureDef:
    """One column of the feature matrix."""

    code: str
    description: str
    unit: Unit


@dataclass(frozen=True)
class AttributeEncoding:
    """The fitted encoding of one profile attribute."""

    name: str
    kind: AttributeKind
    levels: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    """Fitted vocabularies and the ordered feature list; JSON-serialisable."""

    event_types: tuple[str, ...]
    channels: tuple[str, ...]
    categories: tuple[str, ...]
    monetary_event_type: str | None
    custom_events: tuple[CustomEvent, ...] = ()
    attributes: tuple[AttributeEncoding, ...] = ()
    exclusions: ConditionGroup | None = None
    features: tuple[FeatureDef, ...] = field(default=())
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.features:
            object.__setattr__(self, "features", build_feature_defs(self))

    @property
    def codes(self) -> list[str]:
        """Feature codes in column order."""
        return [f.code for f in self.features]

    def column_index(self) -> dict[str, int]:
        """Feature code → column of the matrix."""
        return {f.code: i for i, f in enumerate(self.features)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored next to the model."""
        return {
            "schema_version": self.schema_version,
            "event_types": list(self.event_types),
            "channels": list(self.channels),
            "categories": list(self.categories),
            "monetary_event_type": self.monetary_event_type,
            "custom_events": [
                {"name": e.name, "conditions": group_to_dict(e.conditions)}
                for e in self.custom_events
            ],
            "attributes": [
                {"name": a.name, "kind": a.kind.value, "levels": list(a.levels)}
                for a in self.attributes
            ],
            "exclusions": None if self.exclusions is None else group_to_dict(self.exclusions),
            "features": [
                {"code": f.code, "description": f.description, "unit": f.unit.value}
                for f in self.features
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of `to_dict`; refuses a spec this code would featurize differently."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FailedPrecondition(
                f"feature spec schema version {version} is not supported (this build uses {SCHEMA_VERSION}); "
                "retrain the model"
            )
        exclusions = data.get("exclusions")
        spec = cls(
            event_types=tuple(data["event_types"]),
            channels=tuple(data["channels"]),
            categories=tuple(data["categories"]),
            monetary_event_type=data.get("monetary_event_type"),
            custom_events=tuple(
                CustomEvent(e["name"], group_from_dict(e["conditions"], "custom_events"))
                for e in data.get("custom_events", [])
            ),
            attributes=tuple(
                AttributeEncoding(a["name"], AttributeKind(a["kind"]), tuple(a.get("levels", [])))
                for a in data.get("attributes", [])
            ),
            exclusions=None if exclusions is None else group_from_dict(exclusions, "exclusions"),
        )
        stored = [f["code"] for f in data.get("features", [])]
        if stored and stored != spec.codes:
            raise FailedPrecondition(
                "stored feature list differs from what this build computes; retrain the model"
            )
        return spec

    def to_json(self) -> str:
        """Compact JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


# --- human names --------------------------------------------------------------

# (singular, plural) for the XDM event types people see most.
_EVENT_NOUNS: dict[str, tuple[str, str]] = {
    "commerce.purchases": ("purchase", "purchases"),
    "commerce.productViews": ("product view", "product views"),
    "commerce.productListAdds": ("cart add", "cart adds"),
    "commerce.productListRemovals": ("cart removal", "cart removals"),
    "commerce.checkouts": ("checkout", "checkouts"),
    "web.webpagedetails.pageViews": ("page view", "page views"),
    "web.webinteraction.linkClicks": ("link click", "link clicks"),
    "application.launch": ("app launch", "app launches"),
    "application.close": ("app close", "app closes"),
    "message.opened": ("message open", "message opens"),
    "message.clicked": ("message click", "message clicks"),
    "message.sent": ("message sent", "messages sent"),
}


def event_type_noun(event_type: str, plural: bool = True) -> str:
    """'commerce.purchases' → 'purchases' (or 'purchase'); unknown types from their last part."""
    known = _EVENT_NOUNS.get(event_type)
    if known is not None:
        return known[1] if plural else known[0]
    last = event_type.rsplit(".", 1)[-1] or event_type
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", last).replace("_", " ").lower()
    if plural:
        return words if words.endswith("s") else f"{words} events"
    return words[:-1] if words.endswith("s") and not words.endswith("ss") else words


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _activity_defs(spec: FeatureSpec) -> list[FeatureDef]:
    """Recency, event counts per window and type, active days."""
    d = Unit
    out: list[FeatureDef] = [
        FeatureDef("days_since_last_event", "Days since last event", d.DAYS),
        FeatureDef("tenure_days", "Days since first event (tenure)", d.DAYS),
    ]
    for et in spec.event_types:
        out.append(
            FeatureDef(
                f"days_since_last__{et}", f"Days since last {event_type_noun(et, False)}", d.DAYS
            )
        )
    for w in COUNT_WINDOWS:
        out.append(FeatureDef(f"count_{w}d", f"Events in the last {w} days", d.COUNT))
        for et in (*spec.event_types, OTHER):
            noun = "other events" if et == OTHER else event_type_noun(et)
            out.append(
                FeatureDef(f"count_{w}d__{et}", f"{_capital(noun)} in the last {w} days", d.COUNT)
            )
    for w in ACTIVE_DAY_WINDOWS:
        out.append(FeatureDef(f"active_days_{w}d", f"Active days in the last {w} days", d.COUNT))
    return out


def _value_defs(spec: FeatureSpec) -> list[FeatureDef]:
    """Money per window, all time, and the trend of events, purchases and value."""
    d = Unit
    out: list[FeatureDef] = []
    money_noun = (
        event_type_noun(spec.monetary_event_type, False) if spec.monetary_event_type else "event"
    )
    money_nouns = (
        event_type_noun(spec.monetary_event_type)
        if spec.monetary_event_type
        else "events with a value"
    )
    for w in VALUE_WINDOWS:
        out.append(
            FeatureDef(f"sum_value_{w}d", f"Total {money_noun} value in the last {w} days", d.MONEY)
        )
        out.append(
            FeatureDef(
                f"mean_value_{w}d", f"Average {money_noun} value in the last {w} days", d.MONEY
            )
        )
        out.append(
            FeatureDef(
                f"max_value_{w}d", f"Largest {money_noun} value in the last {w} days", d.MONEY
            )
        )
    out.append(FeatureDef("lifetime_value", f"Total {money_noun} value, all time", d.MONEY))
    out.append(FeatureDef("lifetime_purchases", f"{_capital(money_nouns)}, all time", d.COUNT))
    t = TREND_WINDOW
    out.append(
        FeatureDef(
            f"trend_{t}d_count",
            f"Change in events, last {t} days vs the {t} before",
            d.COUNT_CHANGE,
        )
    )
    out.append(
        FeatureDef(
            f"trend_{t}d_purchases",
            f"Change in {money_nouns}, last {t} days vs the {t} before",
            d.COUNT_CHANGE,
        )
    )
    out.append(
        FeatureDef(
            f"trend_{t}d_value",
            f"Change in {money_noun} value, last {t} days vs the {t} before",
            d.MONEY_CHANGE,
        )
    )
    return out


def _mix_defs(spec: FeatureSpec) -> list[FeatureDef]:
    """Shares of channels and product categories in the mix window."""
    d = Unit
    out: list[FeatureDef] = []
    for ch in (*spec.channels, OTHER):
        label = "events on other channels" if ch == OTHER else f"{ch} events"
        out.append(
            FeatureDef(
                f"share_channel__{ch}", f"Share of {label} in the last {MIX_WINDOW} days", d.SHARE
            )
        )
    for cat in (*spec.categories, OTHER):
        label = "product events in other categories" if cat == OTHER else f"'{cat}' product events"
        out.append(
            FeatureDef(
                f"share_category__{cat}", f"Share of {label} in the last {MIX_WINDOW} days", d.SHARE
            )
        )
    return out


def _custom_event_defs(spec: FeatureSpec) -> list[FeatureDef]:
    """Recency and counts of the instance's custom events."""
    d = Unit
    out: list[FeatureDef] = []
    for ce in spec.custom_events:
        out.append(
            FeatureDef(
                f"days_since_last__custom.{ce.name}", f"Days since last '{ce.name}' event", d.DAYS
            )
        )
        for w in CUSTOM_WINDOWS:
            out.append(
                FeatureDef(
                    f"count_{w}d__custom.{ce.name}",
                    f"'{ce.name}' events in the last {w} days",
                    d.COUNT,
                )
            )
    return out


def _attribute_defs(spec: FeatureSpec) -> list[FeatureDef]:
    """Profile attributes: numbers, days since dates, one-hot levels, frequency ranks."""
    d = Unit
    out: list[FeatureDef] = []
    for attr in spec.attributes:
        if attr.kind is AttributeKind.NUMERIC:
            out.append(FeatureDef(f"attr__{attr.name}", attr.name, d.NUMBER))
        elif attr.kind is AttributeKind.DATE:
            out.append(
                FeatureDef(f"attr_days_since__{attr.name}", f"Days since {attr.name}", d.DAYS)
            )
        elif attr.kind is AttributeKind.ONEHOT:
            for level in (*attr.levels, OTHER):
                text = (
                    f"{attr.name} is another value" if level == OTHER else f"{attr.name} is {level}"
                )
                out.append(FeatureDef(f"attr__{attr.name}=={level}", text, d.FLAG))
        else:
            out.append(
                FeatureDef(f"attr_rank__{attr.name}", f"{attr.name} (frequency rank)", d.RANK)
            )
    return out


def build_feature_defs(spec: FeatureSpec) -> tuple[FeatureDef, ...]:
    """The ordered feature list a spec's vocabularies imply (the matrix columns)."""
    return (
        *_activity_defs(spec),
        *_value_defs(spec),
        *_mix_defs(spec),
        *_custom_event_defs(spec),
        *_attribute_defs(spec),
    )


_SHOWN: dict[Unit, Callable[[float], str]] = {
    Unit.DAYS: "{:,.0f}".format,
    Unit.COUNT: "{:,.0f}".format,
    Unit.RANK: "{:,.0f}".format,
    Unit.MONEY: "{:,.2f}".format,
    Unit.COUNT_CHANGE: "{:+,.0f}".format,
    Unit.MONEY_CHANGE: "{:+,.2f}".format,
    Unit.SHARE: lambda value: f"{value * 100:.0f}%",
    Unit.FLAG: lambda value: "yes" if value >= 0.5 else "no",
    Unit.NUMBER: "{:.4g}".format,
}


# Units shown as a whole number ("{:,.0f}", "{:+,.0f}"): a value's text is that of the
# value rounded half to even (as the format rounds), so np.rint(values) share texts.
WHOLE_NUMBER_UNITS = frozenset({Unit.DAYS, Unit.COUNT, Unit.RANK, Unit.COUNT_CHANGE})


def _missing_text(feature: FeatureDef) -> str:
    never = feature.unit is Unit.DAYS and feature.code.startswith("days_since")
    return f"{feature.description}: {'never' if never else 'unknown'}"


def format_factor_value(feature: FeatureDef, value: float | None) -> str:
    """Reason-code text with the profile's value, e.g. 'Days since last purchase: 3'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _missing_text(feature)
    return f"{feature.description}: {_SHOWN[feature.unit](value)}"


def format_factor_values(feature: FeatureDef, values: list[float]) -> list[str]:
    """`format_factor_value` of many values of one feature (batch scoring's reason JSON)."""
    head, shown, missing = f"{feature.description}: ", _SHOWN[feature.unit], _missing_text(feature)
    return [missing if value != value else head + shown(value) for value in values]

"""The condition language (text, structure, Polars) and the instance config built on it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

from foresight.conditions import (
    Condition,
    ConditionGroup,
    GroupMode,
    Operator,
    group_from_dict,
    group_to_dict,
    parse,
    to_polars,
    to_text,
    validate_group,
)
from foresight.errors import InvalidArgument
from foresight.instance import (
    CustomEvent,
    Goal,
    InstanceConfig,
    InstanceType,
    Occurrence,
    Population,
    from_dict,
    load_instance_yaml,
    to_dict,
    validate_config,
)

pytestmark = pytest.mark.unit

ALL, ANY = GroupMode.ALL_OF, GroupMode.ANY_OF
PURCHASE = Condition("event_type", Operator.EQ, "commerce.purchases")


def c(field: str, op: Operator, value: Any = None) -> Condition:
    return Condition(field, op, value)


# --- parsing ------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, ConditionGroup]] = [
    ("", ConditionGroup()),
    ('event_type = "commerce.purchases"', ConditionGroup(ALL, (PURCHASE,))),
    (
        'event_type = "commerce.purchases" and value > 100',
        ConditionGroup(ALL, (PURCHASE, c("value", Operator.GT, 100))),
    ),
    (
        "value >= 1.5 or quantity <= -2 OR value != 1e-05",
        ConditionGroup(
            ANY,
            (
                c("value", Operator.GE, 1.5),
                c("quantity", Operator.LE, -2),
                c("value", Operator.NE, 1e-05),
            ),
        ),
    ),
    (
        'channel in ("web", "mobile")',
        ConditionGroup(ALL, (c("channel", Operator.IN, ("web", "mobile")),)),
    ),
    (
        'page_name starts with "checkout"',
        ConditionGroup(ALL, (c("page_name", Operator.STARTS_WITH, "checkout"),)),
    ),
    ("attributes.device exists", ConditionGroup(ALL, (c("attributes.device", Operator.EXISTS),))),
    ("attributes.is_vip = true", ConditionGroup(ALL, (c("attributes.is_vip", Operator.EQ, True),))),
    (
        'campaign_id = "say \\"hi\\"\\n\\u00e9"',
        ConditionGroup(ALL, (c("campaign_id", Operator.EQ, 'say "hi"\né'),)),
    ),
    # and binds tighter than or
    (
        'channel = "web" or event_type = "commerce.purchases" and value > 5',
        ConditionGroup(
            ANY,
            (
                c("channel", Operator.EQ, "web"),
                ConditionGroup(ALL, (PURCHASE, c("value", Operator.GT, 5))),
            ),
        ),
    ),
    # parentheses make a nested group
    (
        '(channel = "web" or channel = "mobile") and event_type = "commerce.purchases"',
        ConditionGroup(
            ALL,
            (
                ConditionGroup(
                    ANY, (c("channel", Operator.EQ, "web"), c("channel", Operator.EQ, "mobile"))
                ),
                PURCHASE,
            ),
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_builds_the_structure(text: str, expected: ConditionGroup) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_text_round_trips(text: str, expected: ConditionGroup) -> None:
    assert parse(to_text(expected)) == expected


def test_keywords_are_case_insensitive_and_whitespace_free() -> None:
    assert parse('value>1  AND\n channel  IN("web")') == ConditionGroup(
        ALL, (c("value", Operator.GT, 1), c("channel", Operator.IN, ("web",)))
    )


def test_canonical_text() -> None:
    group = parse('( value>1 and channel="web" )or attributes.tier exists')
    assert to_text(group) == '(value > 1 and channel = "web") or attributes.tier exists'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'event_type = "commerce.purchases" and value > ',
            "line 1, column 47: expected a value after '>'",
        ),
        ('event_type = "commerce.purchases" and value >', "column 46: expected a value after '>'"),
        ('event_type = "abc', "line 1, column 14: unterminated string"),
        ('event_type "x"', "line 1, column 12: expected an operator"),
        ("value > 1 and", "column 14: expected a field name after 'and'"),
        ("(value > 1", "column 11: expected 'and', 'or' or ')'"),
        ("value > 1)", "column 10: expected 'and', 'or' or the end"),
        ("value in ()", "column 11: expected a value after '('"),
        ("value > 1 &", "column 11: unexpected character '&'"),
        ('value = 1\nand channel = "x" or', "line 2, column 21: expected a field name"),
        ('__import__("os").system("true")', "line 1"),
    ],
)
def test_syntax_errors_point_at_the_position(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse(text)
    assert err.value.field == "conditions"
    assert expected in err.value.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('colour = "red"', "line 1, column 1: unknown field 'colour'"),
        ("timestamp > 5", "unknown field 'timestamp'"),
        ('value = "x"', "'value' is numeric"),
        ("channel > 3", "'>' needs a numeric field"),
        ("channel = 3", "'channel' is text"),
        ('quantity starts with "1"', "'starts with' needs a text field"),
        ("page_name starts with 1", "needs a quoted string"),
        ('attributes.age > "x"', "'>' needs a number"),
        ('channel in ("web", 1)', "all strings or all numbers"),
        ("value = 1 and colour exists", "line 1, column 15: unknown field 'colour'"),
    ],
)
def test_type_errors_name_the_problem(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse(text, field="goal.conditions")
    assert err.value.field == "goal.conditions"
    assert expected in err.value.reason


def test_single_item_groups_normalise_to_all_of() -> None:
    # One item means the same under either mode; normalising keeps round trips exact.
    assert ConditionGroup(ANY, (PURCHASE,)) == ConditionGroup(ALL, (PURCHASE,))
    assert ConditionGroup(ANY, [PURCHASE]).items == (PURCHASE,)  # type: ignore[arg-type]  # lists come from JSON


def test_validate_group_names_the_path() -> None:
    bad = ConditionGroup(
        ALL, (PURCHASE, ConditionGroup(ANY, (PURCHASE, c("colour", Operator.EQ, "red"))))
    )
    with pytest.raises(InvalidArgument) as err:
        validate_group(bad, "goal.conditions")
    assert err.value.field == "goal.conditions.items[1].items[1]"
    assert "colour" in err.value.reason
    with pytest.raises(InvalidArgument, match="nested group"):
        validate_group(ConditionGroup(ALL, (ConditionGroup(),)))
    with pytest.raises(InvalidArgument, match="takes no value"):
        validate_group(ConditionGroup(ALL, (c("channel", Operator.EXISTS, "x"),)))
    with pytest.raises(InvalidArgument, match="finite"):
        validate_group(ConditionGroup(ALL, (c("value", Operator.GT, float("inf")),)))


def test_dict_form_round_trips() -> None:
    for _, group in PARSE_CASES:
        assert group_from_dict(group_to_dict(group)) == group
    with pytest.raises(InvalidArgument) as err:
        group_from_dict({"mode": "SOME_OF", "items": []}, "exclusions")
    assert err.value.field == "exclusions.mode"


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - hypothesis is a dev extra
    HAVE_HYPOTHESIS = False

if HAVE_HYPOTHESIS:
    _texts = st.text(max_size=12)
    _numbers = st.one_of(
        st.integers(min_value=-(10**12), max_value=10**12),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
    )
    _string_fields = st.sampled_from(
        ["event_type", "channel", "product_category", "page_name", "campaign_id"]
    )
    _attribute_fields = st.from_regex(r"attributes\.[A-Za-z_][A-Za-z0-9_\-]{0,8}", fullmatch=True)
    _conditions = st.one_of(
        st.builds(
            Condition,
            _string_fields,
            st.sampled_from([Operator.EQ, Operator.NE, Operator.STARTS_WITH]),
            _texts,
        ),
        st.builds(
            Condition,
            st.sampled_from(["value", "quantity"]),
            st.sampled_from(
                [Operator.EQ, Operator.NE, Operator.LT, Operator.LE, Operator.GT, Operator.GE]
            ),
            _numbers,
        ),
        st.builds(
            Condition,
            _string_fields,
            st.just(Operator.IN),
            st.lists(_texts, min_size=1, max_size=3).map(tuple),
        ),
        st.builds(Condition, _attribute_fields, st.just(Operator.EXISTS), st.none()),
        st.builds(
            Condition,
            _attribute_fields,
            st.just(Operator.EQ),
            st.one_of(st.booleans(), _numbers, _texts),
        ),
    )
    _groups = st.recursive(
        st.builds(
            ConditionGroup,
            st.sampled_from([ALL, ANY]),
            st.lists(_conditions, min_size=1, max_size=3).map(tuple),
        ),
        lambda inner: st.builds(
            ConditionGroup,
            st.sampled_from([ALL, ANY]),
            st.lists(st.one_of(_conditions, inner), min_size=1, max_size=3).map(tuple),
        ),
        max_leaves=10,
    )

    @settings(max_examples=300, deadline=None)
    @given(_groups)
    def test_round_trip_property(group: ConditionGroup) -> None:
        validate_group(group)
        assert parse(to_text(group)) == group


# --- compiling to Polars ------------------------------------------------------------


def _events() -> pl.DataFrame:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "profile_id": ["p1", "p2", "p3", "p4"],
            "timestamp": [t, t, t, t],
            "event_type": [
                "commerce.purchases",
                "commerce.purchases",
                "web.webpagedetails.pageViews",
                "message.opened",
            ],
            "channel": ["web", None, "mobile", "email"],
            "value": [150.0, 50.0, None, None],
            "quantity": [1, 3, None, None],
            "page_name": [None, None, "checkout/step-1", "home"],
            "attributes": [
                '{"device": "ios", "age": "41", "vip": true}',
                None,
                '{"age": 19, "my-key": "x"}',
                "{}",
            ],
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["p1", "p2", "p3", "p4"]),
        ('event_type = "commerce.purchases" and value > 100', ["p1"]),
        (
            'event_type = "commerce.purchases" or page_name starts with "checkout"',
            ["p1", "p2", "p3"],
        ),
        ('channel = "web"', ["p1"]),
        ('channel != "web"', ["p2", "p3", "p4"]),  # a missing channel is "not web"
        ('channel in ("web", "mobile")', ["p1", "p3"]),
        ("channel exists", ["p1", "p3", "p4"]),
        ("quantity in (3, 4)", ["p2"]),
        ("quantity >= 1.5", ["p2"]),
        ("value < 100", ["p2"]),  # null values satisfy no comparison
        ("attributes.device exists", ["p1"]),
        ('attributes.device = "ios"', ["p1"]),
        ("attributes.age > 20", ["p1"]),  # "41" as text compares as the number 41
        ("attributes.age in (19, 41.0)", ["p1", "p3"]),
        ("attributes.vip = true", ["p1"]),
        ('attributes.my-key = "x"', ["p3"]),
        (
            '(channel = "web" or channel = "email") and (value > 100 or page_name = "home")',
            ["p1", "p4"],
        ),
    ],
)
def test_to_polars_filters_events(text: str, expected: list[str]) -> None:
    events = _events()
    matched = events.filter(to_polars(parse(text))).get_column("profile_id").to_list()
    assert matched == expected


def test_to_polars_never_yields_null() -> None:
    result = (
        _events().select(to_polars(parse('value > 1 or channel = "x"')).alias("m")).get_column("m")
    )
    assert result.null_count() == 0
    assert to_polars(None) is not None


# --- instance config -------------------------------------------------------------------

YAML = """
name: churn-30
description: Who stops buying
type: CHURN
goal:
  conditions: 'event_type = "commerce.purchases"'
  window_days: 30
population:
  conditions: 'event_type in ("commerce.purchases", "commerce.productViews")'
  lookback_days: 60
custom_events:
  - name: big_purchase
    conditions: 'event_type = "commerce.purchases" and value > 200'
profile_attributes: [loyalty_tier, signup_date]
exclusions: 'event_type = "message.opened" and campaign_id starts with "post-purchase"'
scoring_schedule: daily
min_positives: 100
"""


def test_yaml_loads_text_conditions_and_defaults_occurrence() -> None:
    cfg = load_instance_yaml(YAML)
    assert cfg.type is InstanceType.CHURN
    assert cfg.goal.occurrence is Occurrence.WILL_NOT_OCCUR  # churn: the goal will NOT occur
    assert cfg.goal.conditions == ConditionGroup(ALL, (PURCHASE,))
    assert cfg.population.lookback_days == 60
    assert cfg.custom_events[0].name == "big_purchase"
    assert cfg.profile_attributes == ("loyalty_tier", "signup_date")
    assert cfg.exclusions is not None and len(cfg.exclusions.items) == 2
    assert cfg.min_positives == 100 and cfg.min_negatives == 500


def test_dict_round_trip_is_json_able() -> None:
    import json

    cfg = load_instance_yaml(YAML)
    data = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(data) == cfg


def _config(**changes: Any) -> InstanceConfig:
    base: dict[str, Any] = {
        "name": "conv",
        "type": InstanceType.CONVERSION,
        "goal": Goal(ConditionGroup(ALL, (PURCHASE,)), Occurrence.WILL_OCCUR, 14),
    }
    base.update(changes)
    return InstanceConfig(**base)


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"name": " "}, "name", "a-z, 0-9"),
        (
            {"goal": Goal(ConditionGroup(ALL, (PURCHASE,)), window_days=0)},
            "goal.window_days",
            "between 1 and 365",
        ),
        (
            {"goal": Goal(ConditionGroup(ALL, (PURCHASE,)), window_days=400)},
            "goal.window_days",
            "between 1 and 365",
        ),
        ({"goal": Goal(ConditionGroup())}, "goal.conditions", "must not be empty"),
        (
            {"goal": Goal(ConditionGroup(ALL, (c("colour", Operator.EQ, "red"),)))},
            "goal.conditions.items[0]",
            "unknown field 'colour'",
        ),
        (
            {"goal": Goal(ConditionGroup(ALL, (PURCHASE,)), Occurrence.WILL_NOT_OCCUR)},
            "goal.occurrence",
            "CONVERSION",
        ),
        ({"population": Population(lookback_days=0)}, "population.lookback_days", "between"),
        (
            {"custom_events": (CustomEvent("a b", ConditionGroup(ALL, (PURCHASE,))),)},
            "custom_events[0].name",
            "letter",
        ),
        (
            {
                "custom_events": (
                    CustomEvent("x", ConditionGroup(ALL, (PURCHASE,))),
                    CustomEvent("x", ConditionGroup(ALL, (PURCHASE,))),
                )
            },
            "custom_events[1].name",
            "duplicate",
        ),
        ({"profile_attributes": ("profile_id",)}, "profile_attributes[0]", "key"),
        ({"scoring_schedule": "every tuesday"}, "scoring_schedule", "cron"),
        ({"min_negatives": 0}, "min_negatives", "between"),
    ],
)
def test_validate_config_names_the_field(changes: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_config(_config(**changes))
    assert err.value.field == field
    assert reason in err.value.reason


def test_valid_configs_pass() -> None:
    validate_config(_config(scoring_schedule="0 3 * * 1"))
    churn_on_any_activity = InstanceConfig(
        name="churn",
        type=InstanceType.CHURN,
        goal=Goal(ConditionGroup(), Occurrence.WILL_NOT_OCCUR, 30),
    )
    validate_config(churn_on_any_activity)


def test_yaml_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        load_instance_yaml("name: x\ngoal:\n  conditions: 'value >'\n")
    assert err.value.field == "goal.conditions"
    assert "line 1, column 8: expected a value after '>'" in err.value.reason
    with pytest.raises(InvalidArgument) as err:
        load_instance_yaml("name: x\ngoal: {conditions: 'value > 1'}\ncolour: red\n")
    assert err.value.field == "colour"
    with pytest.raises(InvalidArgument) as err:
        load_instance_yaml("name: x\ntype: CHRUN\ngoal: {conditions: 'value > 1'}\n")
    assert err.value.field == "type"

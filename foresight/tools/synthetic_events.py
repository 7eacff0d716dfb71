"""Sessions → events: one row per step of a journey, as an Arrow table.

Per-event work is kept to gathers from small tables and cheap uniforms;
anything only some events need (prices, quantities, pages) is drawn for those
events alone. The steps below draw from one generator in a fixed order, so one
seed always gives the same events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from foresight.events.validation import hex_strings
from foresight.tools import synthetic_world as world
from foresight.tools.synthetic_people import Categorical, People, Sessions, truncated_poisson
from foresight.tools.synthetic_world import FloatArray, IntArray

Int32Array = npt.NDArray[np.int32]
Codes = tuple[IntArray, list[str]]  # dictionary codes per event (-1 = null) and their names


@dataclass(frozen=True, slots=True)
class Steps:
    """Every event's session, position in it, and what happens there."""

    session: Int32Array
    first_event: IntArray  # per session: the index of its first event
    position: Int32Array
    kind: Int32Array
    event_type: IntArray
    profile: Int32Array
    persona: IntArray
    category: Int32Array
    channel: IntArray

    def __len__(self) -> int:
        return len(self.session)


def _steps(rng: np.random.Generator, people: People, sessions: Sessions) -> Steps:
    """How long each session is and the event type of each of its steps."""
    count = len(sessions.kind)
    persona_s = people.persona[sessions.profile]
    extra_views = Categorical(truncated_poisson(np.array([1.6]), 10)).draw(rng, 0, size=count)
    buys = rng.random(count) < world.PERSONA_BUY[persona_s]
    clicked = rng.random(count) < np.where(persona_s == 3, 0.75, 0.35)
    app_add = rng.random(count) < 0.2
    length = np.select(
        [
            sessions.kind == world.BROWSE,
            sessions.kind == world.CART,
            sessions.kind == world.MAIL,
            sessions.kind == world.APP,
        ],
        [2 + extra_views, 4 + buys, 1 + 3 * clicked, 2 + extra_views + app_add],
        default=1,
    ).astype(np.int64)
    # int32 keeps the per-event arrays small: page faults on fresh memory
    # cost more than the arithmetic at 20M rows.
    session = np.repeat(np.arange(count, dtype=np.int32), length)
    first_event = np.cumsum(length) - length
    position = np.arange(len(session), dtype=np.int32) - first_event.astype(np.int32)[session]
    kind = sessions.kind[session]
    event_type = world.STEP_TYPES[
        kind * world.MAX_STEPS + np.minimum(position, world.MAX_STEPS - 1)
    ]
    # An app session may end with a cart add.
    app_last = first_event + length - 1
    event_type[app_last[(sessions.kind == world.APP) & app_add]] = world.CART_ADD
    profile = sessions.profile[session]
    # Email click-throughs land on the website.
    channel = np.where((kind == world.MAIL) & (position >= 2), world.WEB, sessions.channel[session])
    return Steps(
        session=session,
        first_event=first_event,
        position=position,
        kind=kind,
        event_type=event_type,
        profile=profile,
        persona=people.persona[profile],
        category=sessions.category[session],
        channel=channel,
    )


def _timestamps(rng: np.random.Generator, sessions: Sessions, steps: Steps, days: int) -> IntArray:
    """Microseconds since the start: a minute or two between steps of a journey."""
    gaps = rng.random(len(steps)) * 150_000_000  # uniform: cheap and enough
    gaps[steps.first_event] = 0.0
    offset = np.cumsum(gaps)
    offset -= offset[steps.first_event][steps.session]
    # A journey that starts late on the last day must not run past the end.
    return np.minimum(
        sessions.start_us[steps.session] + offset.astype(np.int64), days * world.DAY_US - 1
    )


def _products(rng: np.random.Generator, steps: Steps) -> IntArray:
    """SKUs: Zipf-like popularity within the category (inverse CDF of a log-uniform
    rank); a cart add or purchase is the product viewed before."""
    count = len(steps)
    sku_rank = (np.exp(rng.random(count) * np.log(world.SKUS_PER_CATEGORY + 1)) - 1).astype(
        np.int64
    )
    sku = steps.category * world.SKUS_PER_CATEGORY + np.minimum(
        sku_rank, world.SKUS_PER_CATEGORY - 1
    )
    follows = np.flatnonzero(world.IS_ORDER[steps.event_type] & (steps.position > 0))
    sku[follows] = sku[follows - 1]
    purchases_in_cart = follows[(steps.event_type[follows] == world.PURCHASE)]
    sku[purchases_in_cart] = sku[purchases_in_cart - 1]
    return np.asarray(sku, dtype=np.int64)


def _orders(
    rng: np.random.Generator, steps: Steps, sku: IntArray, seed: int
) -> tuple[FloatArray, IntArray]:
    """Values and quantities, only where an order happens (NaN and 0 elsewhere)."""
    orders = np.flatnonzero(world.IS_ORDER[steps.event_type])
    order_persona = steps.persona[orders]
    quantity_rows = steps.category[orders] * len(world.PERSONAS) + order_persona
    quantity_means = (
        world.CATEGORY_EXTRA_QUANTITY[:, None] + world.PERSONA_EXTRA_QUANTITY[None, :]
    ).ravel()
    quantity = 1 + Categorical(truncated_poisson(np.maximum(quantity_means, 1e-6), 48)).draw(
        rng, quantity_rows
    )
    sku_price = world.CATEGORY_PRICE[
        np.arange(len(world.CATEGORIES) * world.SKUS_PER_CATEGORY) // world.SKUS_PER_CATEGORY
    ]
    sku_price = sku_price * np.exp(
        np.random.default_rng(seed ^ 0x5EED).normal(0.0, 0.35, size=len(sku_price))
    )
    value = np.full(len(steps), np.nan)
    value[orders] = np.round(
        sku_price[sku[orders]]
        * quantity
        * world.PERSONA_SPEND[order_persona]
        * (0.9 + 0.2 * rng.random(len(orders))),
        2,
    )
    quantities = np.zeros(len(steps), dtype=np.int64)
    quantities[orders] = quantity
    return value, quantities


def _pages(rng: np.random.Generator, steps: Steps) -> Codes:
    """Persona-flavoured landing pages; product views on detail pages."""
    categories = len(world.CATEGORIES)
    page_code = np.full(len(steps), -1, dtype=np.int64)
    page_code[steps.event_type == world.PRODUCT_VIEW] = categories + 3
    pages = np.flatnonzero(steps.event_type == world.PAGE_VIEW)
    page_persona = steps.persona[pages]
    page_draw = rng.random(len(pages))
    deals = world.PERSONA_DEALS_PAGE[page_persona]
    page_code[pages] = np.select(
        [
            page_draw < deals,
            page_draw < deals + world.PERSONA_REWARDS_PAGE[page_persona],
            page_draw > 0.7,
        ],
        [categories, categories + 1, categories + 2],
        default=steps.category[pages],
    )
    names = [f"category/{name}" for name in world.CATEGORIES]
    return page_code, [*names, "deals", "account/rewards", "home", "product-detail"]


def _campaigns(
    rng: np.random.Generator, steps: Steps, timestamp_us: IntArray, sessions: int, days: int
) -> Codes:
    """A weekly newsletter per category theme for email journeys; some browse
    sessions arrive from paid search."""
    categories = len(world.CATEGORIES)
    weeks = days // 7 + 2
    campaign_code = np.full(len(steps), -1, dtype=np.int64)
    mail = np.flatnonzero(steps.kind == world.MAIL)
    campaign_code[mail] = (timestamp_us[mail] // (7 * world.DAY_US)) * categories + steps.category[
        mail
    ]
    from_search = (rng.random(sessions) < 0.12)[steps.session]
    paid_search = np.flatnonzero((steps.kind == world.BROWSE) & from_search)
    campaign_code[paid_search] = weeks * categories + steps.category[paid_search]
    names = [f"nl-w{week:03d}-{name}" for week in range(weeks) for name in world.CATEGORIES]
    return campaign_code, names + [f"sem-{name}" for name in world.CATEGORIES]


def _attributes(rng: np.random.Generator, people: People, steps: Steps) -> Codes:
    """Attributes on a share of events, from the profile's device, browser, email
    client or home store: all combinations are in one small table."""
    names = (
        [f'{{"browser":"{name}"}}' for name in world.BROWSERS]
        + [f'{{"device":"{name}","app_version":5.2}}' for name in world.DEVICES]
        + [f'{{"email_client":"{name}"}}' for name in world.EMAIL_CLIENTS]
        + [
            f'{{"store_id":"S{store:03d}","register":{register}}}'
            for store in range(60)
            for register in range(1, 9)
        ]
    )
    browsers, devices = len(world.BROWSERS), len(world.DEVICES)
    base = np.array([0, browsers, browsers + devices, browsers + devices + 3])
    personal = np.stack(
        [
            people.browser,
            people.device,
            people.email_client,
            (np.arange(len(people.persona)) * 7919 % 60) * 8,
        ]
    )
    code = base[steps.channel] + personal[steps.channel, steps.profile]
    code += np.where(steps.channel == world.STORE, np.arange(len(steps)) % 8, 0)
    code[rng.random(len(steps)) >= world.ATTRIBUTE_SHARE] = -1
    return code, names


def expand_sessions(
    rng: np.random.Generator,
    people: People,
    sessions: Sessions,
    start_dt: datetime,
    days: int,
    seed: int,
) -> pa.Table:
    """Turn sessions into events (one row per step of the journey)."""
    steps = _steps(rng, people, sessions)
    timestamp_us = _timestamps(rng, sessions, steps, days)
    sku = _products(rng, steps)
    value, quantities = _orders(rng, steps, sku, seed)
    page_code, page_names = _pages(rng, steps)
    campaign_code, campaign_names = _campaigns(rng, steps, timestamp_us, len(sessions.kind), days)
    attribute_code, attribute_names = _attributes(rng, people, steps)

    has_product = world.HAS_PRODUCT[steps.event_type]
    sku_names = [
        f"{name[:3].upper()}-{index:04d}"
        for index, name in enumerate(np.repeat(world.CATEGORIES, world.SKUS_PER_CATEGORY))
    ]
    category_code = np.where(has_product | (page_code == steps.category), steps.category, -1)
    epoch_us = int(start_dt.timestamp()) * 1_000_000
    columns: dict[str, pa.Array] = {
        "event_id": event_ids(seed, len(steps)),
        "profile_id": dictionary(steps.profile, people.profile_id.to_list()),
        "timestamp": pa.array(timestamp_us + epoch_us, type=pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ),
        "event_type": dictionary(steps.event_type, list(world.EVENT_TYPES)),
        "channel": dictionary(steps.channel, list(world.CHANNELS)),
        "value": pa.array(value, mask=np.isnan(value)),
        "quantity": pa.array(quantities, mask=~world.IS_ORDER[steps.event_type]),
        "product_sku": dictionary(np.where(has_product, sku, -1), sku_names),
        "product_category": dictionary(category_code, list(world.CATEGORIES)),
        "page_name": dictionary(page_code, page_names),
        "campaign_id": dictionary(campaign_code, campaign_names),
        "attributes": dictionary(attribute_code, attribute_names),
    }
    return pa.table(columns)


def dictionary(codes: npt.NDArray[np.integer], names: list[str]) -> pa.Array:
    """A dictionary-encoded string column (code -1 = null).

    Building text for 20M rows is the slow part of generation; Parquet stores
    these columns dictionary-encoded anyway, and the file is written without
    the Arrow schema so every reader sees plain strings.
    """
    indices = pa.array(np.asarray(codes, dtype=np.int32), mask=np.asarray(codes) < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(names, type=pa.string()))


def event_ids(seed: int, count: int) -> pa.Array:
    """Unique, seed-specific event ids (16 hex digits of a bijective mix of
    seed and index), built from byte buffers: formatting 20M integers as text
    is too slow."""
    index = np.arange(count, dtype=np.uint64) + np.uint64(
        (seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    )
    return hex_strings(splitmix64(index), name="event_id").to_arrow()


def splitmix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The splitmix64 finalizer: a bijection on 64-bit integers."""
    mixed = values.copy()
    mixed ^= mixed >> np.uint64(30)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(27)
    mixed *= np.uint64(0x94D049BB133111EB)
    mixed ^= mixed >> np.uint64(31)
    return mixed

"""The synthetic shop's parameters: personas, categories, channels, timing, pages.

Tables are indexed by persona (rows follow PERSONAS) unless named otherwise;
the generator's draws (synthetic_people, synthetic_events) read them.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

PERSONAS: Final[tuple[str, ...]] = (
    "appliance_shopper",
    "tools_shopper",
    "flooring_shopper",
    "bargain_hunter",
    "loyal_big_spender",
    "lapsing_customer",
    "mobile_app_browser",
)
PERSONA_SHARE: Final = np.array([0.14, 0.14, 0.12, 0.16, 0.10, 0.16, 0.18])

CATEGORIES: Final[tuple[str, ...]] = (
    "appliances",
    "tools",
    "flooring",
    "paint",
    "garden",
    "lighting",
    "bath",
    "outdoor_living",
)
# Typical unit price per category; SKUs vary around it.
CATEGORY_PRICE: Final = np.array([650.0, 110.0, 45.0, 40.0, 35.0, 70.0, 220.0, 380.0])
# Flooring sells by the box: many units per order.
CATEGORY_EXTRA_QUANTITY: Final = np.array([0.05, 0.6, 12.0, 1.5, 2.0, 1.0, 0.3, 0.2])
# Which category each persona shops: the strongest persona signal.
PERSONA_CATEGORY: Final = np.array(
    [
        [0.78, 0.02, 0.02, 0.02, 0.02, 0.06, 0.05, 0.03],  # appliance
        [0.02, 0.76, 0.02, 0.04, 0.10, 0.02, 0.02, 0.02],  # tools
        [0.02, 0.03, 0.74, 0.13, 0.02, 0.02, 0.03, 0.01],  # flooring
        [0.03, 0.03, 0.02, 0.06, 0.42, 0.36, 0.03, 0.05],  # bargain
        [0.14, 0.06, 0.05, 0.02, 0.04, 0.04, 0.10, 0.55],  # loyal
        [0.03, 0.03, 0.03, 0.46, 0.05, 0.04, 0.34, 0.02],  # lapsing
        [0.03, 0.03, 0.02, 0.03, 0.22, 0.33, 0.04, 0.30],  # mobile app
    ]
)
SKUS_PER_CATEGORY: Final[int] = 40

CHANNELS: Final[tuple[str, ...]] = ("web", "mobile", "email", "store")
WEB, MOBILE, EMAIL, STORE = range(4)

# Session kinds: browse (page view then product views), cart (views, cart
# add, maybe purchase), email (open, maybe click through), app (launch,
# product views, maybe cart add), store (an in-store purchase).
BROWSE, CART, MAIL, APP, INSTORE = range(5)
PERSONA_SESSION: Final = np.array(
    [
        [0.50, 0.35, 0.03, 0.03, 0.09],
        [0.36, 0.30, 0.03, 0.03, 0.28],
        [0.58, 0.27, 0.03, 0.03, 0.09],
        [0.12, 0.20, 0.60, 0.04, 0.04],
        [0.15, 0.42, 0.06, 0.03, 0.34],
        [0.50, 0.27, 0.12, 0.03, 0.08],
        [0.07, 0.09, 0.04, 0.78, 0.02],
    ]
)
PERSONA_BUY: Final = np.array([0.35, 0.45, 0.35, 0.50, 0.75, 0.30, 0.20])
# Share of browse/cart sessions on the mobile site rather than the web.
PERSONA_MOBILE_WEB: Final = np.array([0.25, 0.20, 0.25, 0.35, 0.20, 0.25, 0.80])
# Basket multiplier: bargain hunters buy cheap, loyal big spenders premium.
PERSONA_SPEND: Final = np.array([1.0, 1.0, 1.0, 0.45, 1.8, 0.9, 0.8])
PERSONA_EXTRA_QUANTITY: Final = np.array([0.0, 0.3, 0.2, 0.0, 1.2, 0.0, 0.0])
# Sessions per year at average activity.
PERSONA_SESSIONS_PER_YEAR: Final = np.array([5.0, 5.5, 5.0, 6.8, 9.0, 8.2, 6.4])
PERSONA_DEALS_PAGE: Final = np.array([0.05, 0.05, 0.05, 0.60, 0.03, 0.10, 0.10])
PERSONA_REWARDS_PAGE: Final = np.array([0.03, 0.05, 0.03, 0.02, 0.35, 0.02, 0.03])

# Activity trends: flat, growing, and three speeds of fading (days).
FLAT, GROWING, FADE_FAST, FADE_MID, FADE_SLOW = range(5)
FADE_DAYS: Final = {FADE_FAST: 40.0, FADE_MID: 80.0, FADE_SLOW: 140.0}
PERSONA_TREND: Final = np.array(
    [
        [0.82, 0.18, 0.0, 0.0, 0.0],
        [0.82, 0.18, 0.0, 0.0, 0.0],
        [0.82, 0.18, 0.0, 0.0, 0.0],
        [0.80, 0.20, 0.0, 0.0, 0.0],
        [0.90, 0.10, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.35, 0.40, 0.25],
        [0.80, 0.20, 0.0, 0.0, 0.0],
    ]
)
# Share of (non-lapsing) profiles that simply stop at some point in the year.
STOP_SHARE: Final[float] = 0.10
# Share of profiles who first appear during the year (new customers).
NEW_SHARE: Final[float] = 0.30

# Annual peaks per persona: (day of year, width in days, strength).
PERSONA_PEAKS: Final[tuple[tuple[tuple[float, float, float], ...], ...]] = (
    ((330.0, 25.0, 0.8), (148.0, 12.0, 0.4)),  # holidays, Memorial Day sales
    ((115.0, 40.0, 0.8), (350.0, 12.0, 0.5)),  # spring projects, gifts
    ((90.0, 45.0, 0.6), (270.0, 35.0, 0.4)),  # spring and autumn remodels
    ((330.0, 10.0, 1.6), (186.0, 6.0, 0.8)),  # Black Friday, July 4th
    ((335.0, 30.0, 0.35),),
    ((20.0, 60.0, 0.2),),
    ((352.0, 18.0, 0.5),),
)
WEEKDAY_FACTOR: Final = np.array([0.90, 0.90, 0.95, 1.00, 1.10, 1.35, 1.30])  # Mon..Sun

# Hour-of-day profiles per channel (relative weights, local = UTC here).
HOURS: Final = np.arange(24)
CHANNEL_HOURS: Final = np.stack(
    [
        0.2
        + np.exp(-0.5 * ((HOURS - 20.5) / 2.5) ** 2)
        + 0.5 * np.exp(-0.5 * ((HOURS - 12.5) / 1.5) ** 2),
        0.2
        + np.exp(-0.5 * ((HOURS - 21.5) / 2.0) ** 2)
        + 0.6 * np.exp(-0.5 * ((HOURS - 8.0) / 1.5) ** 2),
        0.1
        + np.exp(-0.5 * ((HOURS - 7.5) / 1.5) ** 2)
        + 0.6 * np.exp(-0.5 * ((HOURS - 18.0) / 2.0) ** 2),
        np.where(
            (HOURS >= 7) & (HOURS <= 20), 1.0 + np.exp(-0.5 * ((HOURS - 11.0) / 3.0) ** 2), 0.0
        ),
    ]
)

LOYALTY_TIERS: Final[tuple[str, ...]] = ("none", "silver", "gold", "platinum")
PERSONA_LOYALTY: Final = np.array(
    [
        [0.55, 0.30, 0.12, 0.03],
        [0.45, 0.35, 0.15, 0.05],
        [0.55, 0.30, 0.12, 0.03],
        [0.40, 0.45, 0.13, 0.02],
        [0.05, 0.20, 0.40, 0.35],
        [0.50, 0.35, 0.13, 0.02],
        [0.60, 0.30, 0.08, 0.02],
    ]
)
REGIONS: Final[tuple[str, ...]] = ("northeast", "southeast", "midwest", "southwest", "west")
AGE_BANDS: Final[tuple[str, ...]] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
PERSONA_AGE: Final = np.array(
    [
        [0.04, 0.22, 0.28, 0.22, 0.15, 0.09],
        [0.08, 0.25, 0.27, 0.22, 0.12, 0.06],
        [0.03, 0.20, 0.30, 0.24, 0.15, 0.08],
        [0.18, 0.30, 0.22, 0.14, 0.10, 0.06],
        [0.02, 0.12, 0.25, 0.28, 0.20, 0.13],
        [0.06, 0.18, 0.22, 0.22, 0.18, 0.14],
        [0.30, 0.38, 0.18, 0.08, 0.04, 0.02],
    ]
)
PERSONA_EMAIL_OPT_IN: Final = np.array([0.45, 0.45, 0.45, 0.95, 0.70, 0.50, 0.30])
BROWSERS: Final[tuple[str, ...]] = ("chrome", "safari", "edge", "firefox")
DEVICES: Final[tuple[str, ...]] = ("ios", "android")
EMAIL_CLIENTS: Final[tuple[str, ...]] = ("gmail", "outlook", "apple_mail")
ATTRIBUTE_SHARE: Final[float] = 0.35

EVENT_TYPES: Final[tuple[str, ...]] = (
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.purchases",
    "application.launch",
    "message.opened",
    "message.clicked",
)
PAGE_VIEW, PRODUCT_VIEW, CART_ADD, PURCHASE, LAUNCH, OPENED, CLICKED = range(7)

DAY_US: Final[int] = 86_400 * 1_000_000

# Event type of each step of a session, by session kind and position; the
# last row entry repeats for longer sessions (more product views).
MAX_STEPS: Final[int] = 16
STEP_TYPES: Final = np.array(
    [
        [PAGE_VIEW] + [PRODUCT_VIEW] * (MAX_STEPS - 1),
        [PAGE_VIEW, PRODUCT_VIEW, PRODUCT_VIEW, CART_ADD] + [PURCHASE] * (MAX_STEPS - 4),
        [OPENED, CLICKED, PAGE_VIEW] + [PRODUCT_VIEW] * (MAX_STEPS - 3),
        [LAUNCH] + [PRODUCT_VIEW] * (MAX_STEPS - 1),
        [PURCHASE] * MAX_STEPS,
    ],
    dtype=np.int64,
).ravel()
HAS_PRODUCT: Final = np.array([False, True, True, True, False, False, False])
IS_ORDER: Final = np.array([False, False, True, True, False, False, False])

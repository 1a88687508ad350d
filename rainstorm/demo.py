"""`rainstorm demo`: a synthetic traffic-sign inventory and the two classic jobs.

The data set is SYNTHETIC: seeded, and every row says so in its last column (``source``). It only
has the shape of a city's sign inventory, so the demo needs no download.
"""

from __future__ import annotations

import random

HEADER = "id,sign_type,post_type,category,street,condition,installed,source"

SIGN_TYPES = ["Stop", "Yield", "Speed Limit 25", "Speed Limit 35", "No Parking", "One Way", "School Zone",
              "Do Not Enter", "Pedestrian Crossing", "Street Name"]
POST_TYPES = ["Punched Telespar", "U-Channel", "Round Pipe", "Wood", "Mast Arm", "Streetlight"]
CATEGORIES = {"Stop": "Regulatory", "Yield": "Regulatory", "Speed Limit 25": "Regulatory",
              "Speed Limit 35": "Regulatory", "No Parking": "Parking", "One Way": "Regulatory",
              "School Zone": "Warning", "Do Not Enter": "Regulatory", "Pedestrian Crossing": "Warning",
              "Street Name": "Guide"}
STREETS = ["Main St", "Green St", "Lincoln Ave", "University Ave", "Springfield Ave", "Neil St", "Race St",
           "Oak St", "Elm St", "Prospect Ave", "Mattis Ave", "Kirby Ave"]
CONDITIONS = ["Good", "Good", "Good", "Fair", "Poor"]


def sign_rows(n: int = 30_000, seed: int = 2024) -> list[str]:
    """``n`` synthetic rows (the header is not a row: jobs see data lines only)."""
    r = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        sign = r.choices(SIGN_TYPES, weights=[18, 6, 8, 6, 12, 8, 5, 4, 6, 27])[0]
        rows.append(",".join([str(i), sign, r.choice(POST_TYPES), CATEGORIES[sign], r.choice(STREETS),
                              r.choice(CONDITIONS), str(r.randint(1985, 2024)), "synthetic"]))
    return rows


FILTER_JOB = '''"""Demo job 1: lines matching a pattern, projected to two columns (post type, category)."""
from rainstorm import FilteredTransform, args


def matches(key, value):
    return args.get("pattern", "Stop") in value


def post_and_category(key, value):
    f = value.split(",")
    return key, f"{f[2]},{f[3]}"


stages = [FilteredTransform(matches, post_and_category)]
'''

COUNT_JOB = '''"""Demo job 2: among lines matching a pattern, count signs per category."""
from rainstorm import AggregateByKey, FilteredTransform, args


def matches(key, value):
    return args.get("pattern", "Punched Telespar") in value


def post_and_category(key, value):
    f = value.split(",")
    return key, f"{f[2]},{f[3]}"


stages = [
    FilteredTransform(matches, post_and_category),
    AggregateByKey(lambda key, value: value.split(",")[1], "count"),
]
'''

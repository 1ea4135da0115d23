"""Writes tauschring-freiburg-ads.csv: the offers and wants of a made-up exchange ring in
Freiburg im Breisgau, the example input of `directory-sync` (README, tests).

    python clients/python/examples/make_tauschring_ads.py

Only run to change the example: the CSV is kept in the repository. Seeded, so the same
file comes out every time. Categories are codes of GET /v1/categories, currencies are
HOUR, GIFT, BARTER and EUR, which every directory knows."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from directory_client.sync_input import CSV_COLUMNS, LIST_SEPARATOR

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "tauschring-freiburg-ads.csv"
ADS = 320

# Districts of Freiburg with a point in each.
DISTRICTS = [
    ("Altstadt", 47.9959, 7.8522),
    ("Wiehre", 47.9856, 7.8602),
    ("Stühlinger", 47.9990, 7.8365),
    ("Herdern", 48.0080, 7.8570),
    ("Vauban", 47.9785, 7.8305),
    ("Haslach", 47.9830, 7.8140),
    ("Zähringen", 48.0255, 7.8600),
    ("Littenweiler", 47.9880, 7.9000),
    ("Rieselfeld", 47.9950, 7.7900),
    ("Günterstal", 47.9650, 7.8680),
]
# (kind, category, title, body, tags, price)
TEMPLATES = [
    ("offer", "home.repairs", "Fahrradreparatur", "Platten, Bremsen, Schaltung: ich repariere "
     "dein Rad in meiner Werkstatt im Hinterhof.", ["fahrrad", "werkstatt"], ("1", "HOUR", "hour")),
    ("offer", "education.languages", "Französisch-Nachhilfe", "Muttersprachlerin, Schüler "
     "und Erwachsene, auch Konversation.", ["französisch", "nachhilfe"], ("1", "HOUR", "hour")),
    ("offer", "food.baked", "Sauerteigbrot", "Jeden Freitag frisch gebackenes Roggenbrot.",
     ["brot", "bio"], ("4.50", "EUR", "item")),
    ("want", "transport.rides", "Mitfahrt nach Basel", "Suche regelmäßig eine Mitfahrgelegenheit "
     "am Samstagmorgen.", ["basel", "pendeln"], None),
    ("offer", "garden.plants", "Tomatensetzlinge", "Alte Sorten aus eigener Anzucht, ab Mai.",
     ["tomaten", "saatgut"], None),
    ("offer", "care.childcare", "Kinderbetreuung am Nachmittag", "Erfahrene Mutter betreut "
     "Kinder von 3 bis 8 Jahren.", ["kinder"], ("1", "HOUR", "hour")),
    ("want", "household.furniture", "Regal gesucht", "Für die neue Wohnung: ein stabiles "
     "Bücherregal.", ["möbel"], None),
    ("offer", "tech.it-support", "Hilfe am Computer", "Linux, Drucker, WLAN, Datensicherung.",
     ["computer", "linux"], ("1", "HOUR", "hour")),
    ("offer", "media.books", "Bücher zu verschenken", "Romane und Sachbücher, abzuholen.",
     ["bücher"], None),
    ("want", "home.gardening", "Hilfe beim Heckenschneiden", "Zwei Stunden im Herbst.",
     ["garten"], None),
    ("offer", "food.preserves", "Honig aus dem Dreisamtal", "Blütenhonig vom eigenen Stand.",
     ["honig", "regional"], ("6", "EUR", "item")),
    ("offer", "lending.tool-lending", "Bohrmaschine zu verleihen", "Mit Schlagbohrfunktion, "
     "für ein Wochenende.", ["werkzeug"], ("1", "BARTER", "day")),
]  # fmt: skip
PRIVACY = ["approximate"] * 6 + ["area"] * 2 + ["exact", "hidden"]
CURRENCIES = [["HOUR"], ["HOUR", "EUR"], ["GIFT"], ["BARTER", "HOUR"]]


def ad(rng: random.Random, index: int) -> dict[str, str]:
    kind, category, title, body, tags, price = rng.choice(TEMPLATES)
    district, lat, lon = rng.choice(DISTRICTS)
    privacy = rng.choice(PRIVACY)
    currencies = rng.choice(CURRENCIES)
    row = dict.fromkeys(CSV_COLUMNS, "")
    row |= {
        "external_id": f"tr-{index:04d}",
        "kind": kind,
        "title": f"{title} ({district})",
        "body": body,
        "category": category,
        "tags": LIST_SEPARATOR.join(tags),
        "privacy": privacy,
        "currencies": LIST_SEPARATOR.join(currencies),
        "language": "de",
        "member": f"m-{rng.randrange(1, 400)}",
    }
    if privacy != "hidden":
        row["location.lat"] = f"{lat + rng.gauss(0, 0.004):.5f}"
        row["location.lon"] = f"{lon + rng.gauss(0, 0.006):.5f}"
    if price is not None and price[1] in currencies:
        row["price.amount"], row["price.currency"], row["price.unit"] = price
    if rng.random() < 0.1:
        row["accepts_contact"] = "false"
    return row


def main() -> None:
    rng = random.Random(2026)
    with OUTPUT.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for index in range(1, ADS + 1):
            writer.writerow(ad(rng, index))
    print(f"wrote {ADS} ads to {OUTPUT}")


if __name__ == "__main__":
    main()

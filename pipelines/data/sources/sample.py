"""The sample shop: a synthetic but realistic store with known, injected defects.

`generate(params, out_dir)` writes the three canonical raw tables (catalog.csv, events.csv,
queries.csv) and a manifest of every defect it injected (defects.csv). Everything follows from
`params.seed`: the same parameters give byte-identical files.

The shop
--------
* catalog: 8 departments with 3-5 leaf categories each ("Office > Paper"), 6-7 invented brands per
  department, titles of brand + adjective + noun + attribute + a model code that is unique within
  the brand (so no two items of a brand share `title_key`), descriptions of 1-3 sentences,
  per-category lognormal prices ("12.99"). About 5 % of titles hold non-ASCII characters
  (Bürotex, Lumière, Rétro, –, ™).
* events: users with latent tastes (1-3 departments, a few leaf categories, a price sensitivity)
  browse in sessions over `days` days; views are drawn by softmax(user . item + popularity), and a
  funnel view -> click -> add_to_cart -> purchase favours items that match the taste and the price
  sensitivity. Sessions of one user are at least 45 minutes apart and events within a session at
  most about ten minutes apart, so sessionizing on a 30-minute gap recovers the generated sessions.
  Event ids follow time order; timestamps are "2026-06-03T14:05:09Z".
* queries: each query targets an item its user likes; its text is a lowercase subset of the
  target's title words (sometimes a synonym or a typo). Each query judges 6-12 items with the mean
  of three rater grades in [0, 3]: target ~3, same leaf sharing terms ~2, same department ~1,
  others ~0.

Injected defects
----------------
`params.defect_rate` (0.03 by default) of the rows of every table carry exactly one defect, the
kinds of a table in roughly equal numbers (rounding up, so at least one of each when the rate is
above 0). `defects.csv` lists them: table, row (0-based data row of the written CSV, the index of
`rawio.read_table`), kind, field and, for repairs of text, timestamps and ids, the expected value.

======== ==================== ========== =====================================================
table    kind                 outcome    what the row holds
======== ==================== ========== =====================================================
catalog  exact_duplicate      repair     appended exact copy of a clean row
catalog  near_duplicate       repair     appended row, new item_id, same brand and category,
                                         title differing in case/punctuation/spacing only;
                                         later events use the new id; expected = original id
catalog  missing_title        quarantine appended item with an empty title
catalog  negative_price       quarantine appended item with a price like "-12.50"
catalog  nan_price            repair     appended item with the price "NaN": a missing price (rawio's one
                                         rule for missing values), allowed since price is optional;
                                         expected = "" (null after clean)
catalog  invalid_utf8         repair     title bytes in Windows-1252; expected = the title
catalog  mojibake             repair     title double-encoded ("CafÃ©"); expected = the title
events   exact_duplicate      repair     exact copy inserted 1-4 rows after its original
events   unknown_item         quarantine item_id that is not in the catalog
events   broken_timestamp     quarantine "2026-02-30T10:00:00Z", hour 25, "yesterday", "31/13/2026"
events   offset_timestamp     repair     ISO-8601 with a non-UTC offset; expected = "...Z" (UTC)
events   invalid_event_type   quarantine "wishlist", "hover", "share", "compare" or "scroll"
events   missing_user         quarantine empty user_id
queries  exact_duplicate      repair     exact copy inserted 1-4 rows after its original
queries  pii_email            repair     an email in the query text; expected has "[EMAIL]"
queries  pii_phone            repair     a phone number in the text; expected has "[PHONE]"
queries  pii_card             repair     a Luhn-valid card number; expected has "[CARD]"
queries  unknown_item         quarantine item_id that is not in the catalog
queries  bad_relevance        quarantine "4.5", "-1", "high", "7", "-0.5" or "relevant"
queries  invalid_utf8         repair     query bytes in Windows-1252; expected = the text
======== ==================== ========== =====================================================

Quarantined catalog items are never referenced by events or queries, so they do not cascade.
PII and invalid_utf8 query defects damage every row of the chosen queries (a query's text is the
same on all its rows); each damaged row is one manifest entry. Whole queries (6-12 rows) make the
queries rate overshoot on small shops (about 7 % at 80 queries, 3.3 % at the default 600).
A PII value is typed at the start or the end of the text, never next to a digit; formats:
"jane.doe42@example.com", "jdoe@example.org", "jane_doe@mail.example.com"; "+1 415-555-0134",
"(415) 555-0134", "415-555-0134"; 16 Luhn-valid digits in groups of 4 joined by " " or "-".
Offsets are +02:00, +01:00, -05:00, -07:00, +05:30, +09:00 or -03:00.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import contract
from pipelines.core.config import SampleParams
from pipelines.core.logs import get_logger

log = get_logger(__name__)

MANIFEST = "defects.csv"
MANIFEST_COLUMNS = ("table", "row", "kind", "field", "expected")

DEFECT_KINDS: dict[str, dict[str, str]] = {
    "catalog": {
        "exact_duplicate": "repair",
        "near_duplicate": "repair",
        "missing_title": "quarantine",
        "negative_price": "quarantine",
        "nan_price": "repair",
        "invalid_utf8": "repair",
        "mojibake": "repair",
    },
    "events": {
        "exact_duplicate": "repair",
        "unknown_item": "quarantine",
        "broken_timestamp": "quarantine",
        "offset_timestamp": "repair",
        "invalid_event_type": "quarantine",
        "missing_user": "quarantine",
    },
    "queries": {
        "exact_duplicate": "repair",
        "pii_email": "repair",
        "pii_phone": "repair",
        "pii_card": "repair",
        "unknown_item": "quarantine",
        "bad_relevance": "quarantine",
        "invalid_utf8": "repair",
    },
}

# The column each kind damages (the manifest's `field`).
DEFECT_FIELDS: dict[str, dict[str, str]] = {
    "catalog": {"exact_duplicate": "item_id", "near_duplicate": "item_id", "missing_title": "title",
                "negative_price": "price", "nan_price": "price", "invalid_utf8": "title", "mojibake": "title"},
    "events": {"exact_duplicate": "event_id", "unknown_item": "item_id", "broken_timestamp": "timestamp",
               "offset_timestamp": "timestamp", "invalid_event_type": "event_type", "missing_user": "user_id"},
    "queries": {"exact_duplicate": "query_id", "pii_email": "query", "pii_phone": "query", "pii_card": "query",
                "unknown_item": "item_id", "bad_relevance": "relevance", "invalid_utf8": "query"},
}

PII_TOKENS = {"pii_email": "[EMAIL]", "pii_phone": "[PHONE]", "pii_card": "[CARD]"}
INVALID_EVENT_TYPES = ("wishlist", "hover", "share", "compare", "scroll")
BAD_RELEVANCE = ("4.5", "-1", "high", "7", "-0.5", "relevant")
UTC_OFFSETS_MINUTES = (120, 60, -300, -420, 330, 540, -180)

_KEY_WORDS = re.compile(r"[0-9a-z]+")


def title_key(title: str) -> str:
    """The near-duplicate key: titles equal up to case, punctuation and spacing share it."""
    return " ".join(_KEY_WORDS.findall(unicodedata.normalize("NFKC", title).casefold()))


# --------------------------------------------------------------------------------------------
# The shop's vocabulary
# --------------------------------------------------------------------------------------------

# department -> brands, uses, leaves {leaf: (median price, nouns, features, adjectives, attributes)}
TAXONOMY: dict[str, dict] = {
    "Office": {
        "brands": ["Nordwell", "Papyra", "Inkwise", "DeskPilot", "Stapleton", "Ledgerline", "Bürotex"],
        "uses": ["the home office", "school and work", "busy desks", "everyday note taking", "small businesses"],
        "leaves": {
            "Paper": (12.0, ["Copy Paper", "Printer Paper", "Cardstock", "Sticky Notes", "Index Cards"],
                      ["a bright white finish", "jam-free printing", "acid-free sheets", "a smudge-resistant surface"],
                      ["Premium", "Recycled", "Everyday", "Bright White", "Heavyweight"],
                      ["500 Sheets", "Letter Size", "A4", "Pack of 100", "Assorted Colors", "3 Pack"]),
            "Writing Instruments": (9.0, ["Ballpoint Pens", "Gel Pens", "Highlighters", "Mechanical Pencils",
                                          "Fineliners"],
                                    ["quick-drying ink", "a comfortable grip", "smooth writing", "a refillable design"],
                                    ["Retractable", "Fine Point", "Professional", "Smooth", "Classic"],
                                    ["12 Pack", "Pack of 24", "Black", "Blue", "Assorted Colors", "0.7 mm"]),
            "Desk Accessories": (19.0, ["Stapler", "Desk Organizer", "Tape Dispenser", "Letter Tray", "Pen Holder"],
                                 ["a non-slip base", "steel construction", "a compact footprint",
                                  "a jam-resistant mechanism"],
                                 ["Heavy-Duty", "Compact", "Ergonomic", "Mesh", "Classic"],
                                 ["Black", "Silver", "White", "Walnut", "Set of 3"]),
            "Notebooks": (8.0, ["Spiral Notebook", "Composition Book", "Weekly Planner", "Legal Pad",
                                "Bullet Journal"],
                          ["lay-flat binding", "perforated pages", "thick paper that resists bleed-through",
                           "a durable cover"],
                          ["College Ruled", "Dotted", "Hardcover", "Softcover", "Undated"],
                          ["A5", "Letter Size", "3 Pack", "120 Pages", "Navy", "Black"]),
            "Filing": (16.0, ["File Folders", "Ring Binder", "Storage Box", "Hanging Files", "Document Wallet"],
                       ["reinforced tabs", "a stackable design", "label windows", "heavy-duty board"],
                       ["Heavy-Duty", "Expanding", "Recycled", "Stackable", "Classic"],
                       ["Letter Size", "Legal Size", "Pack of 25", "2 Inch", "Assorted Colors"]),
        },
    },
    "Electronics": {
        "brands": ["Voltix", "Auralis", "Pixelcraft", "Lumora", "Sonique", "Kibo Labs", "Wattson"],
        "uses": ["work and travel", "the living room", "gaming setups", "daily commutes", "streaming and calls"],
        "leaves": {
            "Headphones": (60.0, ["Wireless Earbuds", "Over-Ear Headphones", "Noise Cancelling Headphones",
                                  "Sports Earphones"],
                           ["up to 30 hours of battery life", "deep bass", "active noise cancellation",
                            "a sweat-resistant fit"],
                           ["Bluetooth", "Foldable", "Pro", "Lightweight", "Studio"],
                           ["Black", "White", "Midnight Blue", "Graphite", "Bluetooth 5.3"]),
            "Chargers & Cables": (15.0, ["USB-C Cable", "Wall Charger", "Power Bank", "Charging Stand",
                                         "Car Charger"],
                                  ["fast charging", "a braided nylon jacket", "overheat protection",
                                   "universal compatibility"],
                                  ["Fast", "Braided", "Compact", "Dual Port", "Magnetic"],
                                  ["6 ft", "65W", "20W", "10000mAh", "2 Pack", "White"]),
            "Smart Home": (45.0, ["Smart Plug", "Smart Bulb", "Video Doorbell", "Indoor Camera", "Motion Sensor"],
                           ["app control", "voice assistant support", "an easy setup", "energy monitoring"],
                           ["Wi-Fi", "Smart", "Compact", "Outdoor", "Dimmable"],
                           ["2 Pack", "4 Pack", "1080p", "2K", "White"]),
            "Computer Accessories": (30.0, ["Wireless Mouse", "Mechanical Keyboard", "Laptop Stand", "USB Hub",
                                            "Webcam"],
                                     ["plug and play setup", "an ergonomic shape", "a low-latency connection",
                                      "an aluminium body"],
                                     ["Ergonomic", "Slim", "Adjustable", "Portable", "Silent"],
                                     ["Black", "Silver", "Space Gray", "7-Port", "1080p"]),
            "Speakers": (55.0, ["Bluetooth Speaker", "Soundbar", "Portable Speaker", "Smart Speaker"],
                         ["360-degree sound", "a waterproof housing", "rich stereo sound", "long range Bluetooth"],
                         ["Waterproof", "Portable", "Compact", "Rugged", "Pro"],
                         ["Black", "Ocean Blue", "Red", "20W", "Bluetooth 5.3"]),
        },
    },
    "Home & Kitchen": {
        "brands": ["Hearthly", "Casa Verde", "Kitchara", "Brightnest", "Ovenbird", "Potterly"],
        "uses": ["family dinners", "small kitchens", "everyday cooking", "guest rooms", "weekend baking"],
        "leaves": {
            "Cookware": (40.0, ["Frying Pan", "Saucepan", "Dutch Oven", "Stock Pot", "Wok"],
                         ["even heat distribution", "a non-stick coating", "an oven-safe body", "stay-cool handles"],
                         ["Non-Stick", "Cast Iron", "Stainless Steel", "Ceramic", "Induction"],
                         ["10 Inch", "12 Inch", "3 Quart", "6 Quart", "Black", "Red"]),
            "Kitchen Utensils": (12.0, ["Spatula Set", "Chef Knife", "Cutting Board", "Measuring Cups", "Whisk"],
                                 ["dishwasher-safe parts", "a balanced grip", "food-grade materials",
                                  "a hanging loop"],
                                 ["Silicone", "Bamboo", "Stainless Steel", "Professional", "Everyday"],
                                 ["Set of 4", "Set of 6", "8 Inch", "Large", "Gray"]),
            "Bedding": (45.0, ["Sheet Set", "Duvet Cover", "Pillow", "Weighted Blanket", "Mattress Topper"],
                        ["breathable cotton", "a soft brushed finish", "deep pockets", "hypoallergenic fill"],
                        ["Cozy", "Cooling", "Organic Cotton", "Microfiber", "Luxury"],
                        ["Queen", "King", "Twin", "White", "Sage Green", "Navy"]),
            "Storage & Organization": (22.0, ["Storage Bins", "Food Containers", "Drawer Organizer", "Spice Rack",
                                              "Shelf Baskets"],
                                       ["stackable lids", "clear sides", "a space-saving shape", "BPA-free plastic"],
                                       ["Stackable", "Clear", "Airtight", "Foldable", "Modern"],
                                       ["Set of 4", "Set of 10", "Large", "Small", "White"]),
            "Small Appliances": (60.0, ["Coffee Maker", "Electric Kettle", "Toaster", "Blender", "Air Fryer"],
                                 ["a programmable timer", "auto shut-off", "a removable basket", "quick heat-up"],
                                 ["Compact", "Programmable", "Stainless Steel", "Digital", "Retro Style"],
                                 ["1.7 L", "5 Quart", "2 Slice", "12 Cup", "Black", "Cream"]),
        },
    },
    "Sports": {
        "brands": ["Stridex", "Peakform", "Trailmark", "Aquabound", "Ironleaf", "Kinetica"],
        "uses": ["home workouts", "weekend trips", "training sessions", "long rides", "team practice"],
        "leaves": {
            "Fitness Equipment": (35.0, ["Yoga Mat", "Resistance Bands", "Dumbbell Set", "Kettlebell", "Jump Rope"],
                                  ["a cushioned surface", "a textured grip", "a carry strap", "a sturdy build"],
                                  ["Non-Slip", "Adjustable", "Extra Thick", "Lightweight", "Pro"],
                                  ["6 mm", "20 lb", "Set of 5", "Purple", "Black"]),
            "Cycling": (40.0, ["Bike Helmet", "Bike Light", "Cycling Gloves", "Bike Lock", "Water Bottle Cage"],
                        ["high visibility", "a secure fit", "weather resistance", "quick-release mounting"],
                        ["Lightweight", "Rechargeable", "Breathable", "Heavy-Duty", "Aero"],
                        ["Size M", "Size L", "Black", "Lime", "USB Rechargeable"]),
            "Camping & Hiking": (45.0, ["Hiking Backpack", "Camping Tent", "Sleeping Bag", "Trekking Poles",
                                        "Headlamp"],
                                 ["a waterproof shell", "a packable design", "padded straps", "a rip-stop fabric"],
                                 ["Ultralight", "Waterproof", "Outdoor", "Rugged", "Compact"],
                                 ["40 L", "2 Person", "4 Person", "Olive", "Orange"]),
            "Team Sports": (25.0, ["Soccer Ball", "Basketball", "Shin Guards", "Training Cones", "Volleyball"],
                            ["match-grade materials", "a durable cover", "consistent bounce", "a secure fit"],
                            ["Official Size", "Indoor", "Outdoor", "Training", "Pro"],
                            ["Size 5", "Size 4", "Set of 12", "White", "Orange"]),
        },
    },
    "Beauty": {
        "brands": ["Glowry", "Purelle", "Velvetine", "Bloomwell", "Dermaly", "Lumière"],
        "uses": ["daily routines", "sensitive skin", "evenings out", "travel bags", "all skin types"],
        "leaves": {
            "Skin Care": (25.0, ["Face Moisturizer", "Vitamin C Serum", "Gentle Cleanser", "Sunscreen",
                                 "Night Cream"],
                          ["hyaluronic acid", "a non-greasy texture", "soothing aloe", "antioxidant vitamins"],
                          ["Hydrating", "Fragrance-Free", "Organic", "Brightening", "Gentle"],
                          ["50 ml", "100 ml", "1.7 fl oz", "Travel Size", "SPF 30"]),
            "Hair Care": (14.0, ["Shampoo", "Conditioner", "Hair Oil", "Dry Shampoo", "Hair Mask"],
                          ["argan oil", "a sulfate-free formula", "frizz control", "a fresh scent"],
                          ["Nourishing", "Volumizing", "Sulfate-Free", "Repairing", "Moisturizing"],
                          ["250 ml", "12 fl oz", "2 Pack", "Travel Size", "Coconut"]),
            "Makeup": (16.0, ["Matte Lipstick", "Mascara", "Foundation", "Eyeliner", "Blush Palette"],
                       ["buildable coverage", "a smudge-proof finish", "rich pigments", "a creamy texture"],
                       ["Long-Lasting", "Waterproof", "Matte", "Radiant", "Vegan"],
                       ["Rose", "Nude", "Classic Red", "Ivory", "Jet Black"]),
            "Fragrance": (45.0, ["Eau de Parfum", "Body Mist", "Cologne", "Perfume Oil"],
                          ["notes of citrus and cedar", "a long-lasting scent", "a floral heart", "a warm amber base"],
                          ["Floral", "Fresh", "Woody", "Citrus", "Vanilla"],
                          ["50 ml", "100 ml", "3.4 fl oz", "Travel Size", "Gift Set"]),
        },
    },
    "Toys": {
        "brands": ["Tinkertot", "Blockbuddy", "Wonderkin", "Puzzlo", "Zoomie", "Cubbly"],
        "uses": ["rainy afternoons", "family game nights", "curious minds", "birthday gifts", "backyard fun"],
        "leaves": {
            "Building Sets": (35.0, ["Building Blocks", "Construction Set", "Magnetic Tiles", "Marble Run"],
                              ["snap-together pieces", "a storage tub", "endless combinations", "bright colors"],
                              ["Creative", "Classic", "Deluxe", "Colorful", "Starter"],
                              ["100 Pieces", "250 Pieces", "500 Pieces", "Ages 3+", "Ages 6+"]),
            "Puzzles & Games": (18.0, ["Jigsaw Puzzle", "Board Game", "Card Game", "Brain Teaser"],
                                ["easy rules", "sturdy pieces", "hours of play", "a strategy twist"],
                                ["Family", "Classic", "Strategy", "Cooperative", "Travel"],
                                ["500 Pieces", "1000 Pieces", "Ages 8+", "2-6 Players", "Ages 12+"]),
            "Dolls & Figures": (22.0, ["Fashion Doll", "Action Figure", "Plush Bear", "Dollhouse"],
                                ["posable joints", "soft fabrics", "detailed accessories", "a gift box"],
                                ["Posable", "Soft", "Collectible", "Deluxe", "Mini"],
                                ["12 Inch", "6 Inch", "Ages 3+", "Pink", "Brown"]),
            "Outdoor Play": (40.0, ["Water Blaster", "Kids Scooter", "Kite", "Sandbox Set"],
                             ["weatherproof plastic", "a lightweight frame", "easy assembly", "safety tested parts"],
                             ["Giant", "Foldable", "Lightweight", "Colorful", "Sturdy"],
                             ["Ages 5+", "Ages 3+", "Blue", "Rainbow", "2 Pack"]),
            "Educational Toys": (28.0, ["STEM Kit", "Coding Robot", "Science Kit", "Counting Blocks"],
                                 ["step-by-step guides", "hands-on experiments", "screen-free learning",
                                  "reusable parts"],
                                 ["Interactive", "Educational", "Beginner", "Rechargeable", "Creative"],
                                 ["Ages 8+", "Ages 5+", "Ages 10+", "30 Experiments", "Set of 50"]),
        },
    },
    "Garden": {
        "brands": ["Grünhaus", "Greenthumb", "Terrafirm", "Sproutly", "Rainleaf", "Hedgerow"],
        "uses": ["raised beds", "balcony gardens", "spring planting", "backyard patios", "lawn care"],
        "leaves": {
            "Plants & Seeds": (8.0, ["Tomato Seeds", "Herb Garden Kit", "Flower Bulbs", "Wildflower Seed Mix"],
                               ["high germination rates", "non-GMO seeds", "easy growing", "planting instructions"],
                               ["Organic", "Heirloom", "Perennial", "Easy-Grow", "Indoor"],
                               ["50 Seeds", "20 Bulbs", "8 Varieties", "1 oz", "Starter Kit"]),
            "Garden Tools": (25.0, ["Pruning Shears", "Garden Trowel", "Hand Rake", "Garden Hose", "Watering Can"],
                             ["a cushioned handle", "rust-resistant steel", "a sharp blade", "kink-free tubing"],
                             ["Heavy-Duty", "Ergonomic", "Rustproof", "Expandable", "Lightweight"],
                             ["50 ft", "100 ft", "2 Gallon", "8 Inch", "Green"]),
            "Outdoor Decor": (35.0, ["Solar Lights", "Bird Feeder", "Planter Pot", "Wind Chime", "Garden Statue"],
                              ["automatic dusk-to-dawn lighting", "weather-resistant paint", "drainage holes",
                               "a hand-finished look"],
                              ["Solar", "Weatherproof", "Hanging", "Rustic", "Decorative"],
                              ["8 Pack", "Large", "Small", "Terracotta", "Copper"]),
            "Lawn Care": (30.0, ["Lawn Fertilizer", "Grass Seed", "Lawn Sprinkler", "Leaf Rake"],
                          ["slow-release nutrients", "even coverage", "drought tolerance", "adjustable spray"],
                          ["Slow-Release", "Drought-Tolerant", "Adjustable", "Heavy-Duty", "All-Season"],
                          ["5 lb", "15 lb", "5000 sq ft", "24 Inch", "Green"]),
        },
    },
    "Pet Supplies": {
        "brands": ["Pawsome", "Furlo", "Kibblewise", "Tailwag", "Whiskerly", "Barkside"],
        "uses": ["puppies and adult dogs", "indoor cats", "daily walks", "small apartments", "picky eaters"],
        "leaves": {
            "Dog Supplies": (30.0, ["Dog Leash", "Dog Bed", "Chew Toy", "Dog Harness", "Dog Collar"],
                             ["reflective stitching", "a machine-washable cover", "tough rubber", "padded straps"],
                             ["Durable", "Reflective", "Orthopedic", "No-Pull", "Washable"],
                             ["Small", "Medium", "Large", "6 ft", "Red"]),
            "Cat Supplies": (25.0, ["Cat Tree", "Scratching Post", "Cat Litter", "Cat Toy Set", "Litter Box"],
                             ["sisal rope", "odor control", "a stable base", "catnip-filled toys"],
                             ["Clumping", "Multi-Level", "Unscented", "Covered", "Interactive"],
                             ["20 lb", "32 Inch", "Large", "Gray", "Beige"]),
            "Pet Food": (35.0, ["Dry Dog Food", "Wet Cat Food", "Dog Treats", "Cat Treats"],
                         ["real chicken as the first ingredient", "added vitamins", "no artificial colors",
                          "high protein"],
                         ["Grain-Free", "Natural", "High-Protein", "Senior", "Puppy"],
                         ["5 lb Bag", "15 lb Bag", "12 Pack", "24 Cans", "Chicken", "Salmon"]),
            "Aquarium": (40.0, ["Aquarium Filter", "Fish Tank", "Aquarium Heater", "Fish Food"],
                         ["quiet operation", "adjustable flow", "LED lighting", "easy cleaning"],
                         ["Quiet", "Submersible", "Adjustable", "Glass", "Tropical"],
                         ["10 Gallon", "20 Gallon", "100W", "Flakes", "Starter Kit"]),
        },
    },
}

ACCENT_ADJECTIVES = ["Rétro", "Crème", "Élite", "Über"]

SYNONYMS: dict[str, list[str]] = {
    "copy paper": ["printing paper"], "sticky notes": ["post it notes", "memo notes"],
    "ballpoint pens": ["ball pens", "biros"], "highlighters": ["text markers"], "stapler": ["paper stapler"],
    "spiral notebook": ["notepad"], "ring binder": ["binder folder"], "wireless earbuds": ["bluetooth earphones"],
    "over-ear headphones": ["headset"], "power bank": ["portable charger", "battery pack"],
    "usb-c cable": ["type c cord"], "wall charger": ["power adapter"], "smart plug": ["wifi outlet"],
    "wireless mouse": ["cordless mouse"], "bluetooth speaker": ["wireless speaker"], "frying pan": ["skillet"],
    "electric kettle": ["water boiler"], "coffee maker": ["coffee machine"], "sheet set": ["bed sheets"],
    "duvet cover": ["comforter cover"], "food containers": ["meal prep boxes"], "yoga mat": ["exercise mat"],
    "dumbbell set": ["hand weights"], "bike helmet": ["bicycle helmet"], "hiking backpack": ["rucksack", "daypack"],
    "soccer ball": ["football"], "face moisturizer": ["face cream"], "sunscreen": ["sunblock"],
    "eau de parfum": ["perfume"], "building blocks": ["bricks"], "jigsaw puzzle": ["puzzle"],
    "plush bear": ["teddy bear"], "kids scooter": ["kick scooter"], "garden hose": ["water hose"],
    "pruning shears": ["secateurs"], "solar lights": ["garden lights"], "dog leash": ["dog lead"],
    "cat litter": ["kitty litter"], "dry dog food": ["dog kibble"], "fish tank": ["aquarium tank"],
}

EMAIL_NAMES = ["jane", "john", "maria", "li", "omar", "sofia", "lucas", "emma", "noah", "aisha", "ken", "lena"]
EMAIL_SURNAMES = ["doe", "smith", "garcia", "chen", "khan", "muller", "rossi", "nguyen", "brown", "novak"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com"]
AREA_CODES = ["212", "312", "415", "503", "617", "702", "808", "919"]
BROKEN_WORDS = ["yesterday", "last tuesday", "unknown", "tomorrow 10am", "n/a"]

_SAFE_MOJIBAKE = set("éèÉüÜöñç–")  # non-ASCII letters whose double encoding ftfy-style fixers undo reliably


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _ids(prefix: str, numbers, width: int) -> np.ndarray:
    return np.array([f"{prefix}{int(n):0{width}d}" for n in numbers], dtype=object)


def _width(minimum: int, largest: int) -> int:
    return max(minimum, len(str(int(largest))))


def _per_kind(rows: int, kinds: int, appended: int, rate: float) -> int:
    """Defects per kind so that (kinds * m) / (rows + appended * m) >= rate."""
    if rate <= 0 or rows <= 0:
        return 0
    return max(1, math.ceil(rate * rows / (kinds - rate * appended)))


def _ascii_fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _is_cp1252_invalid_utf8(text: str) -> bool:
    """True when the text's Windows-1252 bytes exist and are not valid UTF-8."""
    try:
        data = text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252: "Café" -> "CafÃ©"."""
    return text.encode("utf-8").decode("cp1252")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _start_epoch(start_date: str) -> datetime:
    start = datetime.fromisoformat(start_date)
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    return start.astimezone(timezone.utc)


def _iso(start: datetime, seconds: np.ndarray) -> np.ndarray:
    base = np.datetime64(start.replace(tzinfo=None), "s")
    stamps = base + np.asarray(seconds, dtype="int64").astype("timedelta64[s]")
    return np.char.add(np.datetime_as_string(stamps, unit="s"), "Z").astype(object)


def _luhn_check_digit(digits: str) -> str:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 0:  # doubled once the check digit is appended
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str((10 - total % 10) % 10)


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


class _World:
    """The taxonomy flattened into arrays."""

    def __init__(self) -> None:
        self.departments = list(TAXONOMY)
        self.leaf_dept: list[int] = []
        self.leaf_name: list[str] = []
        self.leaf_price: list[float] = []
        self.leaf_nouns: list[list[str]] = []
        self.leaf_features: list[list[str]] = []
        self.leaf_adjectives: list[list[str]] = []
        self.leaf_attributes: list[list[str]] = []
        self.brand_dept: list[int] = []
        self.brand_name: list[str] = []
        for d, name in enumerate(self.departments):
            spec = TAXONOMY[name]
            for leaf, (price, nouns, features, adjectives, attributes) in spec["leaves"].items():
                self.leaf_dept.append(d)
                self.leaf_name.append(leaf)
                self.leaf_price.append(price)
                self.leaf_nouns.append(nouns)
                self.leaf_features.append(features)
                self.leaf_adjectives.append(adjectives)
                self.leaf_attributes.append(attributes)
            for brand in spec["brands"]:
                self.brand_dept.append(d)
                self.brand_name.append(brand)
        self.leaf_dept_arr = np.array(self.leaf_dept)
        self.brand_dept_arr = np.array(self.brand_dept)
        self.brand_code = [_ascii_fold(b).replace(" ", "")[:2].upper() for b in self.brand_name]

    def category(self, leaf: int) -> str:
        return f"{self.departments[self.leaf_dept[leaf]]}{contract.CATEGORY_SEPARATOR}{self.leaf_name[leaf]}"


def _make_items(rng: np.random.Generator, world: _World, n_base: int, n_extra: int, min_non_ascii: int) -> pd.DataFrame:
    """n_base shop items followed by n_extra spare items (for quarantined rows); model codes unique per brand."""
    n = n_base + n_extra
    n_dept, n_leaf = len(world.departments), len(world.leaf_name)
    dept_share = rng.dirichlet(np.full(n_dept, 20.0))
    leaf_p = np.zeros(n_leaf)
    brand_p = np.zeros(len(world.brand_name))
    for d in range(n_dept):
        leaves = np.flatnonzero(world.leaf_dept_arr == d)
        leaf_p[leaves] = dept_share[d] * (0.5 / len(leaves) + 0.5 * rng.dirichlet(np.full(len(leaves), 6.0)))
        brands = np.flatnonzero(world.brand_dept_arr == d)
        share = rng.dirichlet(np.full(len(brands), 3.0))
        share[[not world.brand_name[b].isascii() for b in brands]] *= 0.35  # accented brands are small
        brand_p[brands] = share / share.sum()
    leaf = rng.choice(n_leaf, size=n, p=leaf_p)
    dept = world.leaf_dept_arr[leaf]
    brand = np.empty(n, dtype=int)
    for d in range(n_dept):
        rows = np.flatnonzero(dept == d)
        brands = np.flatnonzero(world.brand_dept_arr == d)
        brand[rows] = rng.choice(brands, size=len(rows), p=brand_p[brands] / brand_p[brands].sum())
    brand_non_ascii = np.array([not b.isascii() for b in world.brand_name])[brand]

    # Accents beyond the accented brands: a few items with an accented adjective, an en dash or a trademark.
    accent = rng.random(n) < 0.015
    style = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])  # 0 accented adjective, 1 en dash, 2 trademark sign
    non_ascii = brand_non_ascii | accent
    short = min_non_ascii - int(non_ascii[:n_base].sum())
    if short > 0:
        pool = np.flatnonzero(~non_ascii[:n_base])
        forced = rng.choice(pool, size=min(short, len(pool)), replace=False)
        accent[forced] = True
        style[forced] = 0

    noun_pick = rng.integers(0, 1000, size=n)
    adj_pick = rng.integers(0, 1000, size=n)
    attr_pick = rng.integers(0, 1000, size=n)
    has_adj = rng.random(n) < 0.75
    paren_code = rng.random(n) < 0.6
    n_sentences = rng.integers(1, 4, size=n)
    feature_picks = rng.integers(0, 1000, size=(n, 3))
    use_pick = rng.integers(0, 1000, size=n)
    price_noise = rng.normal(0.0, 0.45, size=n)
    brand_mult = np.exp(rng.normal(0.0, 0.25, size=len(world.brand_name)))
    ending = rng.choice(3, size=n, p=[0.7, 0.15, 0.15])

    codes = np.zeros(n, dtype=int)
    for b in range(len(world.brand_name)):
        rows = np.flatnonzero(brand == b)
        if len(rows):
            codes[rows] = rng.choice(np.arange(100, max(10000, 10 * len(rows))), size=len(rows), replace=False)

    records = []
    for i in range(n):
        d, lf, b = int(dept[i]), int(leaf[i]), int(brand[i])
        spec = TAXONOMY[world.departments[d]]
        brand_name = world.brand_name[b]
        nouns = world.leaf_nouns[lf]
        noun = nouns[noun_pick[i] % len(nouns)]
        adjectives = [a for a in world.leaf_adjectives[lf] if a.casefold() not in noun.casefold()]
        adj = adjectives[adj_pick[i] % len(adjectives)] if has_adj[i] else ""
        if accent[i] and style[i] == 0:
            adj = ACCENT_ADJECTIVES[adj_pick[i] % len(ACCENT_ADJECTIVES)]
        attrs = world.leaf_attributes[lf]
        attr = attrs[attr_pick[i] % len(attrs)]
        code = f"{world.brand_code[b]}-{codes[i]}"
        head = f"{brand_name}™" if accent[i] and style[i] == 2 else brand_name
        words = " ".join(part for part in (head, adj, noun) if part)
        separator = " – " if accent[i] and style[i] == 1 else ", "
        tail = f" ({code})" if paren_code[i] else f" {code}"
        title = f"{words}{separator}{attr}{tail}"

        features = world.leaf_features[lf]
        f1, f2, f3 = (features[k % len(features)] for k in feature_picks[i])
        sentences = [f"{noun} from {brand_name} with {f1}."]
        if n_sentences[i] >= 2:
            sentences.append(f"Made for {spec['uses'][use_pick[i] % len(spec['uses'])]}.")
        if n_sentences[i] >= 3 and f3 != f1:
            sentences.append(f"Features {f3}{' and ' + f2 if f2 not in (f1, f3) else ''}.")
        raw_price = world.leaf_price[lf] * brand_mult[b] * math.exp(price_noise[i])
        if ending[i] == 0:
            price = math.floor(raw_price) + 0.99
        elif ending[i] == 1:
            price = math.floor(raw_price) + 0.49
        else:
            price = max(0.5, round(raw_price, 2))
        records.append({
            "title": title, "description": " ".join(sentences), "category": world.category(lf),
            "brand": brand_name, "price": round(price, 2), "dept": d, "leaf": lf, "brand_idx": b,
            "noun": noun, "adj": adj, "attr": attr, "code": code,
        })
    return pd.DataFrame.from_records(records)


def _latent(rng: np.random.Generator, world: _World, items: pd.DataFrame, dim: int = 16):
    """Unit-ish latent vectors: departments, leaves near their department, items near their leaf and brand."""

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    dept_vec = unit(rng.normal(size=(len(world.departments), dim)))
    leaf_vec = unit(dept_vec[world.leaf_dept_arr] + 0.75 * unit(rng.normal(size=(len(world.leaf_name), dim))))
    brand_vec = unit(rng.normal(size=(len(world.brand_name), dim)))
    item_vec = (leaf_vec[items["leaf"].to_numpy()] + 0.3 * brand_vec[items["brand_idx"].to_numpy()]
                + 0.25 * unit(rng.normal(size=(len(items), dim))))
    return leaf_vec, brand_vec, item_vec


# --------------------------------------------------------------------------------------------
# Users and events
# --------------------------------------------------------------------------------------------

SLOT_SECONDS = 6 * 3600
SLOT_WEIGHTS = np.array([0.04, 0.26, 0.30, 0.40])  # night, morning, afternoon, evening
SESSION_MARGIN = 45 * 60  # a session ends at least this long before its slot does


class _Tastes:
    """Users' latent tastes and the view distribution softmax(tau * user . item + popularity - price)."""

    CHUNK = 256  # users per block of the (users x items) matrices, to bound memory

    def __init__(self, w, item_vec, popularity, zprice, sensitivity, tau: float = 4.5):
        self.w, self.item_vec, self.popularity = w, item_vec, popularity
        self.zprice, self.sensitivity, self.tau = zprice, sensitivity, tau

    def prob(self, users: np.ndarray) -> np.ndarray:
        score = (self.tau * (self.w[users] @ self.item_vec.T) + self.popularity[None, :]
                 - 0.3 * self.sensitivity[users, None] * self.zprice[None, :])
        score -= score.max(axis=1, keepdims=True)
        prob = np.exp(score)
        return prob / prob.sum(axis=1, keepdims=True)

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", self.w[users], self.item_vec[items])


def _users(rng, world: _World, items: pd.DataFrame, leaf_vec, brand_vec, item_vec, n_users: int) -> _Tastes:
    """Each user likes 1-3 departments (1-2 leaves in each), maybe a brand, and has a price sensitivity."""
    n_dept = len(world.departments)
    dept_pop = rng.dirichlet(np.full(n_dept, 8.0))
    dim = leaf_vec.shape[1]
    w = np.zeros((n_users, dim))
    n_fav = rng.choice([1, 2, 3], size=n_users, p=[0.45, 0.4, 0.15])
    for u in range(n_users):
        depts = rng.choice(n_dept, size=n_fav[u], replace=False, p=dept_pop)
        chosen = []
        for d in depts:
            leaves = np.flatnonzero(world.leaf_dept_arr == d)
            chosen.extend(rng.choice(leaves, size=int(rng.integers(1, 3)), replace=False))
        weights = rng.dirichlet(np.full(len(chosen), 2.0))
        w[u] = weights @ leaf_vec[chosen]
        if rng.random() < 0.5:
            brands = np.flatnonzero(world.brand_dept_arr == depts[0])
            w[u] += 0.35 * brand_vec[rng.choice(brands)]
        w[u] += 0.15 * rng.normal(size=dim) / math.sqrt(dim)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    log_price = np.log(items["price"].to_numpy())
    leaf = items["leaf"].to_numpy()
    leaf_mean = pd.Series(log_price).groupby(leaf).transform("mean").to_numpy()
    leaf_std = pd.Series(log_price).groupby(leaf).transform("std").fillna(1.0).replace(0, 1.0).to_numpy()
    zprice = (log_price - leaf_mean) / leaf_std
    popularity = rng.normal(0.0, 0.8, size=len(items)) + rng.normal(0.0, 0.4, size=len(brand_vec))[
        items["brand_idx"].to_numpy()]
    sensitivity = rng.gamma(2.0, 0.35, size=n_users)
    return _Tastes(w, item_vec, popularity, zprice, sensitivity)


def _simulate_events(rng, items: pd.DataFrame, tastes: _Tastes, n_users: int, days: int, start: datetime) -> dict:
    """Sessions of views with a click/cart/purchase funnel. Items are the base items sorted by department."""
    n_items = len(items)
    dept = items["dept"].to_numpy()
    dept_ids, dept_start = np.unique(dept, return_index=True)
    dept_end = np.append(dept_start[1:], n_items)
    n_dept = len(dept_ids)

    # Sessions: distinct 6-hour slots per user, more in the evening and at weekends.
    n_slots = days * 4
    weekday = np.array([(start + timedelta(days=day)).weekday() for day in range(days)])
    day_weight = np.where(weekday >= 5, 1.25, 1.0)
    slot_weight = (day_weight[:, None] * SLOT_WEIGHTS[None, :]).ravel()
    activity = 0.15 * days * np.exp(rng.normal(-0.32, 0.8, size=n_users))
    n_sessions = np.clip(rng.poisson(activity), 1, n_slots)
    keys = np.log(slot_weight)[None, :] + rng.gumbel(size=(n_users, n_slots))
    order = np.argsort(-keys, axis=1, kind="stable")
    taken = np.arange(n_slots)[None, :] < n_sessions[:, None]
    sess_user = np.nonzero(taken)[0]
    sess_slot = order[taken]
    n_sess = len(sess_user)

    # Views: a session focuses on one department most of the time. All draws first, then sampling
    # by inverse CDF in blocks of users (sessions and views are ordered by user).
    focus_draw = rng.random(n_sess)
    views_mean = 2.5 * np.exp(rng.normal(0.0, 0.3, size=n_users))
    n_views = np.clip(1 + rng.poisson(views_mean[sess_user]), 1, 20)
    v_sess = np.repeat(np.arange(n_sess), n_views)
    v_user = sess_user[v_sess]
    restricted = rng.random(len(v_sess)) < 0.7
    view_draw = rng.random(len(v_sess))
    focus = np.zeros(n_sess, dtype=int)
    v_item = np.zeros(len(v_sess), dtype=int)
    sess_bounds = np.searchsorted(sess_user, np.arange(0, n_users + tastes.CHUNK, tastes.CHUNK))
    view_bounds = np.searchsorted(v_user, np.arange(0, n_users + tastes.CHUNK, tastes.CHUNK))
    for block, first_user in enumerate(range(0, n_users, tastes.CHUNK)):
        block_users = np.arange(first_user, min(first_user + tastes.CHUNK, n_users))
        cdf = np.cumsum(tastes.prob(block_users), axis=1)
        cdf /= cdf[:, -1:]
        ss = slice(sess_bounds[block], sess_bounds[block + 1])
        vs = slice(view_bounds[block], view_bounds[block + 1])
        local_sess_user = sess_user[ss] - first_user
        dept_mass = np.diff(np.concatenate([np.zeros((len(block_users), 1)), cdf[:, dept_end - 1]], axis=1), axis=1)
        f = (focus_draw[ss][:, None] > np.cumsum(dept_mass[local_sess_user], axis=1)).sum(axis=1)
        focus[ss] = np.minimum(f, n_dept - 1)
        first, last = dept_start[focus[ss]], dept_end[focus[ss]] - 1  # per session of the block
        lo_sess = np.where(first > 0, cdf[local_sess_user, np.maximum(first - 1, 0)], 0.0)
        hi_sess = cdf[local_sess_user, last]
        local_v_sess = v_sess[vs] - sess_bounds[block]
        local_v_user = v_user[vs] - first_user
        lo = np.where(restricted[vs], lo_sess[local_v_sess], 0.0)
        hi = np.where(restricted[vs], hi_sess[local_v_sess], 1.0)
        flat = (cdf + np.arange(len(block_users))[:, None]).ravel()
        target = local_v_user + lo + view_draw[vs] * (hi - lo)
        picked = np.searchsorted(flat, target, side="right") - local_v_user * n_items
        low_bound = np.where(restricted[vs], first[local_v_sess], 0)
        high_bound = np.where(restricted[vs], last[local_v_sess], n_items - 1)
        v_item[vs] = np.clip(picked, low_bound, high_bound)

    # Funnel.
    aff = tastes.affinity(v_user, v_item)
    price_term = tastes.sensitivity[v_user] * tastes.zprice[v_item]
    clicked = rng.random(len(v_sess)) < _sigmoid(-2.0 + 2.0 * aff)
    carted = clicked & (rng.random(len(v_sess)) < _sigmoid(-1.9 + 1.6 * aff - 0.5 * price_term))
    bought = carted & (rng.random(len(v_sess)) < _sigmoid(-0.4 + 1.2 * aff - 0.9 * price_term))

    # Times within a session (seconds): view, click a few seconds later, cart later, next view after a gap.
    to_click = 2 + np.minimum(rng.exponential(8.0, len(v_sess)), 60).astype(int)
    to_cart = 5 + np.minimum(rng.exponential(35.0, len(v_sess)), 180).astype(int)
    gap = 5 + np.minimum(rng.exponential(45.0, len(v_sess)), 300).astype(int)
    action = clicked * to_click + carted * to_cart
    block = action + gap
    first_view = np.cumsum(n_views) - n_views
    excl = np.cumsum(block) - block
    offset = excl - excl[first_view][v_sess]
    last_view = first_view + n_views - 1
    session_end = offset[last_view] + action[last_view]
    checkout = session_end + 20 + np.minimum(rng.exponential(60.0, n_sess), 300).astype(int)
    buy_rows = np.flatnonzero(bought)
    buy_sess = v_sess[buy_rows]
    buy_rank = np.arange(len(buy_rows)) - np.searchsorted(buy_sess, buy_sess, side="left")
    buy_offset = checkout[buy_sess] + buy_rank
    has_buy = np.zeros(n_sess, dtype=bool)
    has_buy[buy_sess] = True
    duration = np.where(has_buy, checkout + np.bincount(buy_sess, minlength=n_sess), session_end)

    slot_start = sess_slot.astype(np.int64) * SLOT_SECONDS
    sess_start = slot_start + rng.integers(0, int(2.5 * 3600), size=n_sess)
    latest = slot_start + SLOT_SECONDS - SESSION_MARGIN - duration
    sess_start = np.maximum(slot_start, np.minimum(sess_start, latest))

    t_view = sess_start[v_sess] + offset
    parts = [
        (v_user, v_item, 0, t_view, v_sess),
        (v_user[clicked], v_item[clicked], 1, (t_view + to_click)[clicked], v_sess[clicked]),
        (v_user[carted], v_item[carted], 2, (t_view + to_click + to_cart)[carted], v_sess[carted]),
        (v_user[buy_rows], v_item[buy_rows], 3, sess_start[buy_sess] + buy_offset, buy_sess),
    ]
    user = np.concatenate([p[0] for p in parts])
    item = np.concatenate([p[1] for p in parts])
    etype = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    t = np.concatenate([p[3] for p in parts]).astype(np.int64)
    sess = np.concatenate([p[4] for p in parts])
    order = np.lexsort((etype, sess, t))
    # Session ids in order of their start.
    sess_rank = np.empty(n_sess, dtype=np.int64)
    sess_rank[np.lexsort((np.arange(n_sess), sess_start))] = np.arange(n_sess)
    return {
        "user": user[order], "item": item[order], "etype": etype[order], "t": t[order],
        "session": sess_rank[sess[order]], "n_sessions": n_sess,
        "sess_user": sess_user, "sess_start": sess_start, "user_sessions": n_sessions,
    }


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


def _typo(rng, word: str) -> str:
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _query_text(rng, item: pd.Series, accent_word: str | None, used: set[str]) -> str:
    brand = item["brand"].lower()
    adj = item["adj"].lower()
    noun = item["noun"].lower()
    attr = item["attr"].lower()
    parts: list[str] = []
    if accent_word == brand or rng.random() < 0.25:
        parts.append(brand)
    if adj and (accent_word == adj or rng.random() < 0.35):
        parts.append(adj)
    noun_text = noun
    if noun in SYNONYMS and rng.random() < 0.25:
        options = SYNONYMS[noun]
        noun_text = options[int(rng.integers(0, len(options)))]
    parts.append(noun_text)
    if rng.random() < 0.3:
        parts.append(attr)
    if rng.random() < 0.12:
        candidates = [k for k, p in enumerate(parts) if p.isascii() and p.isalpha() and len(p) >= 5]
        if candidates:
            k = candidates[int(rng.integers(0, len(candidates)))]
            parts[k] = _typo(rng, parts[k])
    text = " ".join(parts)
    extras = [attr, brand, adj, item["leaf_name"].lower(), item["code"].lower()]
    for extra in extras:
        if text not in used:
            break
        if extra and extra not in text:
            text = f"{text} {extra}"
    while text in used:  # still taken: add the model code (unique within the brand)
        text = f"{text} {item['code'].lower()}"
    used.add(text)
    return text


def _grade(rng, base: float) -> str:
    ratings = np.clip(np.rint(base + rng.normal(0.0, 0.4, size=3)), 0, 3)
    return str(round(float(ratings.mean()), 2))


_TOKEN = re.compile(r"[0-9a-z]+")


def _make_queries(rng, items: pd.DataFrame, tastes: _Tastes, events: dict, n_users: int, n_queries: int,
                  days: int, n_rows: np.ndarray, accent_queries: set[int]) -> list[dict]:
    """One dict per query: user, t, text, judged [(item, grade)], target."""
    n_items = len(items)
    pop_prob = np.exp(tastes.popularity - tastes.popularity.max())
    pop_prob /= pop_prob.sum()
    leaf = items["leaf"].to_numpy()
    dept = items["dept"].to_numpy()
    title_tokens = [set(_TOKEN.findall(t.casefold())) for t in items["title"]]
    by_leaf = {int(k): np.flatnonzero(leaf == k) for k in np.unique(leaf)}
    by_dept = {int(k): np.flatnonzero(dept == k) for k in np.unique(dept)}
    accent_word = [
        item_brand.lower() if not item_brand.isascii() else (adj.lower() if adj and not adj.isascii() else None)
        for item_brand, adj in zip(items["brand"], items["adj"])
    ]
    accent_items = np.array([k for k, word in enumerate(accent_word) if word and _is_cp1252_invalid_utf8(word)])
    activity = events["user_sessions"].astype(float)
    sess_order = np.argsort(events["sess_user"], kind="stable")
    sess_by_user_start = np.searchsorted(events["sess_user"][sess_order], np.arange(n_users))
    sess_by_user_end = np.searchsorted(events["sess_user"][sess_order], np.arange(n_users), side="right")
    used: set[str] = set()
    queries = []
    for q in range(n_queries):
        anonymous = rng.random() < 0.15
        u = -1 if anonymous else int(rng.choice(n_users, p=activity / activity.sum()))
        p = pop_prob if anonymous else tastes.prob(np.array([u]))[0]
        force = q in accent_queries and len(accent_items) > 0
        if force:
            weights = p[accent_items] / p[accent_items].sum()
            target = int(accent_items[rng.choice(len(accent_items), p=weights)])
        else:
            target = int(rng.choice(n_items, p=p))
        if anonymous:
            t = int(rng.integers(0, days)) * 86400 + int(rng.integers(7 * 3600, 23 * 3600))
        else:
            k = int(rng.integers(sess_by_user_start[u], sess_by_user_end[u]))
            t = max(0, int(events["sess_start"][sess_order[k]]) - int(rng.integers(5, 300)))
        row = items.iloc[target]
        text = _query_text(rng, row, accent_word[target] if force else None, used)
        tokens = set(_TOKEN.findall(text.casefold()))

        total = int(n_rows[q])
        same_leaf = by_leaf[int(leaf[target])]
        same_leaf = same_leaf[same_leaf != target]
        same_dept = by_dept[int(dept[target])]
        same_dept = same_dept[leaf[same_dept] != leaf[target]]
        k_leaf = min(len(same_leaf), int(rng.integers(2, 5)), total - 1)
        k_dept = min(len(same_dept), int(rng.integers(1, 4)), total - 1 - k_leaf)
        overlap = np.array([len(tokens & title_tokens[k]) for k in same_leaf], dtype=float)
        rank = np.lexsort((rng.random(len(same_leaf)), -overlap))
        leaf_pick = same_leaf[rank[:k_leaf]]
        dept_pick = rng.choice(same_dept, size=k_dept, replace=False) if k_dept else np.array([], dtype=int)
        chosen = {target, *map(int, leaf_pick), *map(int, dept_pick)}
        judged = [(target, 3.0)]
        for k in leaf_pick:
            shared = len(tokens & title_tokens[k])
            judged.append((int(k), 2.0 if shared >= 2 else 1.6 if shared == 1 else 1.2))
        for k in dept_pick:
            judged.append((int(k), 0.8 + (0.3 if tokens & title_tokens[k] else 0.0)))
        while len(judged) < total:
            k = int(rng.integers(0, n_items))
            if k in chosen:
                continue
            chosen.add(k)
            judged.append((k, 0.0 if dept[k] != dept[target] else 0.8))
        judged = [judged[j] for j in rng.permutation(len(judged))]
        queries.append({"user": u, "t": t, "text": text, "target": target,
                        "judged": [(k, _grade(rng, base)) for k, base in judged]})
    return queries


def _pii_value(rng, kind: str) -> str:
    if kind == "pii_email":
        first = EMAIL_NAMES[int(rng.integers(0, len(EMAIL_NAMES)))]
        last = EMAIL_SURNAMES[int(rng.integers(0, len(EMAIL_SURNAMES)))]
        domain = EMAIL_DOMAINS[int(rng.integers(0, len(EMAIL_DOMAINS)))]
        style = int(rng.integers(0, 3))
        local = (f"{first}.{last}{int(rng.integers(1, 100))}" if style == 0 else
                 f"{first[0]}{last}" if style == 1 else f"{first}_{last}")
        return f"{local}@{domain}"
    if kind == "pii_phone":
        area = AREA_CODES[int(rng.integers(0, len(AREA_CODES)))]
        line = f"01{int(rng.integers(0, 100)):02d}"
        style = int(rng.integers(0, 3))
        return (f"+1 {area}-555-{line}" if style == 0 else f"({area}) 555-{line}" if style == 1 else
                f"{area}-555-{line}")
    digits = ("4" if rng.random() < 0.6 else f"5{int(rng.integers(1, 6))}")
    digits += "".join(str(d) for d in rng.integers(0, 10, size=15 - len(digits)))
    digits += _luhn_check_digit(digits)
    sep = " " if rng.random() < 0.5 else "-"
    return sep.join(digits[k:k + 4] for k in range(0, 16, 4))


def _with_pii(rng, text: str, value: str) -> str:
    """The text with the value typed before or after it, never right next to a digit."""
    words = text.split(" ")
    ends = [k for k in (0, len(words)) if not (words[0][:1] if k == 0 else words[-1][-1:]).isdigit()]
    if not ends:  # digits at both ends ("4 pack 50 ml"): drop the numeric words
        words = [w for w in words if not w[:1].isdigit() and not w[-1:].isdigit()] or ["order"]
        ends = [0, len(words)]
    k = ends[int(rng.integers(0, len(ends)))]
    return " ".join(words[:k] + [value] + words[k:])


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _csv_field(value: str) -> str:
    if value == "":
        return ""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([value])
    return buffer.getvalue()[:-1]


def _write_csv(frame: pd.DataFrame, path: Path, cp1252_cells: dict[int, str]) -> int:
    """Write the frame as UTF-8 CSV, except the (row -> column) cells given, written in Windows-1252."""
    for name in frame.columns:
        if frame[name].str.contains(r"[\r\n]", regex=True).any():
            raise ValueError(f"{path.name}: newline in column {name}")
    text = frame.to_csv(index=False, lineterminator="\n")
    if not cp1252_cells:
        path.write_bytes(text.encode("utf-8"))
        return path.stat().st_size
    lines = text.split("\n")
    encoded = [line.encode("utf-8") for line in lines]
    columns = list(frame.columns)
    for row, column in cp1252_cells.items():
        values = frame.iloc[row].tolist()
        fields = [_csv_field(v) for v in values]
        if ",".join(fields) != lines[row + 1]:
            raise AssertionError(f"{path.name}: row {row} serializes differently")
        position = columns.index(column)
        encoded[row + 1] = b",".join(
            field.encode("cp1252" if k == position else "utf-8") for k, field in enumerate(fields))
    path.write_bytes(b"\n".join(encoded))
    return path.stat().st_size


# --------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------


def _broken_timestamp(rng, stamp: str) -> str:
    date, clock = stamp[:10], stamp[11:19]
    year = date[:4]
    kind = int(rng.integers(0, 4))
    if kind == 0:
        month_day = ["02-30", "02-31", "04-31", "06-31", "09-31", "11-31"][int(rng.integers(0, 6))]
        return f"{year}-{month_day}T{clock}Z"
    if kind == 1:
        return f"{date}T{int(rng.integers(25, 30))}{clock[2:]}Z"
    if kind == 2:
        return BROKEN_WORDS[int(rng.integers(0, len(BROKEN_WORDS)))]
    return f"{int(rng.integers(13, 32))}/13/{year}"


def _offset_timestamp(start: datetime, seconds: int, offset_minutes: int) -> str:
    local = start + timedelta(seconds=int(seconds) + offset_minutes * 60)
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{local:%Y-%m-%dT%H:%M:%S}{sign}{hours:02d}:{minutes:02d}"


def _insert_copies(rng, n_rows: int, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of base rows plus copies placed 1-4 rows after their source: (source row per output row, is_copy)."""
    position = np.concatenate([np.arange(n_rows, dtype=float),
                               np.minimum(sources + rng.integers(0, 4, size=len(sources)), n_rows - 1) + 0.5])
    origin = np.concatenate([np.arange(n_rows), sources])
    is_copy = np.concatenate([np.zeros(n_rows, dtype=bool), np.ones(len(sources), dtype=bool)])
    order = np.argsort(position, kind="stable")
    return origin[order], is_copy[order]


def _split(rng, pool: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    take = min(sum(counts), len(pool))
    picked = rng.choice(pool, size=take, replace=False) if take else np.array([], dtype=int)
    out, start = [], 0
    for count in counts:
        out.append(np.sort(picked[start:start + count]))
        start += count
    return out


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------


class _Manifest:
    """The defect manifest being built: one entry per damaged row."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int, str, str, str]] = []

    def add(self, table: str, row: int, kind: str, expected: str = "") -> None:
        self.entries.append((table, int(row), kind, DEFECT_FIELDS[table][kind], expected))

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.entries, columns=list(MANIFEST_COLUMNS))
        table_order = {table: k for k, table in enumerate(contract.TABLES)}
        frame = frame.sort_values(["table", "row"], key=lambda s: s.map(table_order) if s.name == "table" else s)
        if frame.duplicated(["table", "row"]).any():
            raise AssertionError("a row carries two defects")
        return frame.reset_index(drop=True)


def _catalog_table(rng, rng_text, base: pd.DataFrame, spare_items: pd.DataFrame, events: dict, m: int,
                   id_width: int, window: int, manifest: _Manifest):
    """The catalog rows (base items in id order, then appended defect rows) and its defects.

    Returns the frame, its Windows-1252 cells {row: column}, {base index of an original: near-duplicate id}
    and the first item number that is free.
    """
    n_items = len(base)
    titles = base["title"].tolist()
    utf8_ok = np.array([not t.isascii() and _is_cp1252_invalid_utf8(t) for t in titles])
    moji_ok = utf8_ok & np.array([set(c for c in t if not c.isascii()) <= _SAFE_MOJIBAKE for t in titles])
    moji_rows, = _split(rng, np.flatnonzero(moji_ok), [m])
    utf8_rows, = _split(rng, np.setdiff1d(np.flatnonzero(utf8_ok), moji_rows), [m])
    taken = np.zeros(n_items, dtype=bool)
    taken[moji_rows] = taken[utf8_rows] = True

    # Near duplicates: re-listings of items that still sell late in the window.
    late_counts = np.bincount(events["item"][events["t"] >= 0.65 * window], minlength=n_items).astype(float)
    late_counts[taken] = 0
    selling = np.flatnonzero(late_counts > 0)
    if len(selling) >= m:
        near_orig = rng.choice(selling, size=m, replace=False, p=late_counts[selling] / late_counts[selling].sum())
    else:
        others = np.flatnonzero(~taken & (late_counts == 0))
        near_orig = np.concatenate([selling, rng.choice(others, size=m - len(selling), replace=False)])
    near_orig = np.sort(near_orig).astype(int)
    taken[near_orig] = True
    exact_src, = _split(rng, np.flatnonzero(~taken), [m])

    id_order = np.argsort(base["item_id"].to_numpy(), kind="stable")  # row -> base index
    row_of_base = np.empty(n_items, dtype=int)
    row_of_base[id_order] = np.arange(n_items)
    catalog = base.iloc[id_order][["item_id", "title", "description", "category", "brand"]].reset_index(drop=True)
    catalog["price"] = [f"{p:.2f}" for p in base["price"].to_numpy()[id_order]]
    cp1252_cells: dict[int, str] = {}
    for k in utf8_rows:
        cp1252_cells[int(row_of_base[k])] = "title"
        manifest.add("catalog", row_of_base[k], "invalid_utf8", titles[k])
    for k in moji_rows:
        catalog.at[int(row_of_base[k]), "title"] = mojibake(titles[k])
        manifest.add("catalog", row_of_base[k], "mojibake", titles[k])

    appended = []  # (kind, record, expected)
    for k in exact_src:
        appended.append(("exact_duplicate", catalog.iloc[int(row_of_base[k])].to_dict(), ""))
    for k in near_orig:
        record = catalog.iloc[int(row_of_base[k])].to_dict()
        record["title"] = _vary_title(rng_text, record["title"])
        appended.append(("near_duplicate", record, record.pop("item_id")))
    for j, kind in enumerate(["missing_title"] * m + ["negative_price"] * m + ["nan_price"] * m):
        spare = spare_items.iloc[j]
        record = {"title": spare["title"], "description": spare["description"], "category": spare["category"],
                  "brand": spare["brand"], "price": f"{spare['price']:.2f}"}
        if kind == "missing_title":
            record["title"] = ""
        elif kind == "negative_price":
            record["price"] = f"-{spare['price']:.2f}"
        else:
            record["price"] = "NaN"
        appended.append((kind, record, ""))
    appended = [appended[j] for j in rng.permutation(len(appended))]
    next_number = n_items + 1
    base_index = {item_id: k for k, item_id in enumerate(base["item_id"])}
    near_ids: dict[int, str] = {}
    rows = []
    for j, (kind, record, expected) in enumerate(appended):
        if kind != "exact_duplicate":  # fresh ids, never referenced except near duplicates (by events)
            record["item_id"] = f"P{next_number:0{id_width}d}"
            next_number += 1
        if kind == "near_duplicate":
            near_ids[base_index[expected]] = record["item_id"]
        rows.append(record)
        manifest.add("catalog", n_items + j, kind, expected)
    if rows:
        catalog = pd.concat([catalog, pd.DataFrame(rows)[catalog.columns]], ignore_index=True)
    return catalog, cp1252_cells, near_ids, next_number


def _events_table(rng, base: pd.DataFrame, events: dict, user_ids: np.ndarray, near_ids: dict[int, str],
                  unknown_number: int, id_width: int, rate: float, window: int, start: datetime,
                  manifest: _Manifest) -> pd.DataFrame:
    n_events = len(events["t"])
    event_item = base["item_id"].to_numpy()[events["item"]].copy()
    switched = np.zeros(n_events, dtype=bool)
    for original, new_id in near_ids.items():  # after its re-listing, an item is often seen under the new id
        switch_at = rng.uniform(0.35, 0.65) * window
        rows = np.flatnonzero((events["item"] == original) & (events["t"] >= switch_at))
        flip = rows[rng.random(len(rows)) < 0.6]
        if len(rows) and not len(flip):
            flip = rows[:1]
        event_item[flip] = new_id
        switched[flip] = True
    frame = pd.DataFrame({
        "event_id": _ids("E", np.arange(1, n_events + 1), _width(7, n_events)),
        "user_id": user_ids[events["user"]],
        "item_id": event_item,
        "event_type": np.array(contract.EVENT_TYPES, dtype=object)[events["etype"]],
        "timestamp": _iso(start, events["t"]),
        "session_id": _ids("S", events["session"] + 1, _width(6, events["n_sessions"])),
    })
    m = _per_kind(n_events, len(DEFECT_KINDS["events"]), 1, rate)
    kinds = [kind for kind in DEFECT_KINDS["events"] if kind != "exact_duplicate"]
    *picks, copy_sources = _split(rng, np.flatnonzero(~switched), [m] * (len(kinds) + 1))
    damaged: dict[int, tuple[str, str]] = {}
    for kind, rows in zip(kinds, picks):
        for k in map(int, rows):
            expected = ""
            if kind == "unknown_item":
                frame.at[k, "item_id"] = f"P{unknown_number + int(rng.integers(0, 10 ** 5)):0{id_width}d}"
            elif kind == "broken_timestamp":
                frame.at[k, "timestamp"] = _broken_timestamp(rng, frame.at[k, "timestamp"])
            elif kind == "offset_timestamp":
                expected = frame.at[k, "timestamp"]
                offset = UTC_OFFSETS_MINUTES[int(rng.integers(0, len(UTC_OFFSETS_MINUTES)))]
                frame.at[k, "timestamp"] = _offset_timestamp(start, int(events["t"][k]), offset)
            elif kind == "invalid_event_type":
                frame.at[k, "event_type"] = INVALID_EVENT_TYPES[int(rng.integers(0, len(INVALID_EVENT_TYPES)))]
            elif kind == "missing_user":
                frame.at[k, "user_id"] = ""
            damaged[k] = (kind, expected)
    origin, is_copy = _insert_copies(rng, n_events, copy_sources)
    final_row = np.empty(n_events, dtype=int)
    final_row[origin[~is_copy]] = np.flatnonzero(~is_copy)
    for row in np.flatnonzero(is_copy):
        manifest.add("events", row, "exact_duplicate")
    for k, (kind, expected) in damaged.items():
        manifest.add("events", final_row[k], kind, expected)
    return frame.iloc[origin].reset_index(drop=True)


def _queries_table(rng_queries, rng, base: pd.DataFrame, tastes: _Tastes, events: dict, user_ids: np.ndarray,
                   params: SampleParams, unknown_number: int, id_width: int, start: datetime,
                   manifest: _Manifest) -> tuple[pd.DataFrame, dict[int, str]]:
    n_queries = params.n_queries
    n_rows = rng_queries.integers(6, 13, size=n_queries)
    m = _per_kind(int(n_rows.sum()), len(DEFECT_KINDS["queries"]), 1, params.defect_rate)
    # Text defects damage whole queries (the text is repeated on each of their rows).
    whole_kinds = ["pii_email", "pii_phone", "pii_card", "invalid_utf8"]
    whole: dict[int, str] = {}
    filled = dict.fromkeys(whole_kinds, 0)
    if m:
        for q in rng.permutation(n_queries):
            open_kinds = [kind for kind in whole_kinds if filled[kind] < m]
            if not open_kinds or len(whole) >= n_queries // 2:
                break
            kind = min(open_kinds, key=lambda name: (filled[name], whole_kinds.index(name)))
            whole[int(q)] = kind
            filled[kind] += int(n_rows[q])
    accent_queries = {q for q, kind in whole.items() if kind == "invalid_utf8"}
    query_list = _make_queries(rng_queries, base, tastes, events, params.n_users, n_queries, params.days, n_rows,
                               accent_queries)
    order = sorted(range(n_queries), key=lambda q: (query_list[q]["t"], q))
    q_width = _width(5, n_queries)
    records = []
    damaged: dict[int, tuple[str, str]] = {}
    cp1252_rows = []
    for rank, q in enumerate(order):
        query = query_list[q]
        text, kind, expected = query["text"], whole.get(q), ""
        if kind in PII_TOKENS:
            value = _pii_value(rng, kind)
            text = _with_pii(rng, text, value)
            expected = text.replace(value, PII_TOKENS[kind], 1)
        elif kind == "invalid_utf8":
            if _is_cp1252_invalid_utf8(text):
                expected = text
            else:
                kind = None  # no accented item to target: the query stays clean
        stamp = _iso(start, np.array([query["t"]]))[0]
        for item, grade in query["judged"]:
            if kind:
                damaged[len(records)] = (kind, expected)
                if kind == "invalid_utf8":
                    cp1252_rows.append(len(records))
            records.append((f"Q{rank + 1:0{q_width}d}", "" if query["user"] < 0 else user_ids[query["user"]], text,
                            base["item_id"].iat[item], grade, stamp))
    frame = pd.DataFrame.from_records(records, columns=contract.columns("queries"))
    n = len(frame)
    free = np.array([row for row in range(n) if row not in damaged], dtype=int)
    unknown_rows, bad_rows, copy_sources = _split(rng, free, [m, m, m])
    for k in map(int, unknown_rows):
        frame.at[k, "item_id"] = f"P{unknown_number + int(rng.integers(0, 10 ** 5)):0{id_width}d}"
        damaged[k] = ("unknown_item", "")
    for k in map(int, bad_rows):
        frame.at[k, "relevance"] = BAD_RELEVANCE[int(rng.integers(0, len(BAD_RELEVANCE)))]
        damaged[k] = ("bad_relevance", "")
    origin, is_copy = _insert_copies(rng, n, copy_sources)
    final_row = np.empty(n, dtype=int)
    final_row[origin[~is_copy]] = np.flatnonzero(~is_copy)
    for row in np.flatnonzero(is_copy):
        manifest.add("queries", row, "exact_duplicate")
    for k, (kind, expected) in damaged.items():
        manifest.add("queries", final_row[k], kind, expected)
    return frame.iloc[origin].reset_index(drop=True), {int(final_row[k]): "query" for k in cp1252_rows}


def generate(params: SampleParams, out_dir: Path) -> dict[str, int]:
    """Write catalog.csv, events.csv, queries.csv and defects.csv into out_dir; return rows per table."""
    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    r_items, r_users, r_events, r_queries, r_defects, r_text = (
        np.random.default_rng(seed) for seed in np.random.SeedSequence(params.seed).spawn(6))
    start = _start_epoch(params.start_date)
    window = params.days * 86400
    world = _World()
    manifest = _Manifest()

    # The shop: items (plus spares for the quarantined catalog rows), users' tastes, their sessions.
    n_items = params.n_items
    m_catalog = _per_kind(n_items, len(DEFECT_KINDS["catalog"]), 5, params.defect_rate)
    items = _make_items(r_items, world, n_items, 3 * m_catalog, min_non_ascii=2 * m_catalog + 4)
    spare_items = items.iloc[n_items:].reset_index(drop=True)
    # Base items sorted by department (contiguous ranges for sampling), their ids in shuffled order.
    base = items.iloc[:n_items].sort_values(["dept", "leaf"], kind="stable").reset_index(drop=True)
    base["leaf_name"] = [world.leaf_name[k] for k in base["leaf"]]
    id_width = _width(6, n_items + 4 * m_catalog + 1)
    base["item_id"] = _ids("P", r_items.permutation(n_items) + 1, id_width)
    leaf_vec, brand_vec, item_vec = _latent(r_users, world, base)
    tastes = _users(r_users, world, base, leaf_vec, brand_vec, item_vec, params.n_users)
    events = _simulate_events(r_events, base, tastes, params.n_users, params.days, start)
    user_ids = _ids("U", np.arange(1, params.n_users + 1), _width(5, params.n_users))

    catalog, catalog_cp1252, near_ids, next_number = _catalog_table(
        r_defects, r_text, base, spare_items, events, m_catalog, id_width, window, manifest)
    unknown_number = next_number + 1000  # item ids from here on are in no table
    event_frame = _events_table(r_defects, base, events, user_ids, near_ids, unknown_number, id_width,
                                params.defect_rate, window, start, manifest)
    query_frame, queries_cp1252 = _queries_table(r_queries, r_defects, base, tastes, events, user_ids, params,
                                                 unknown_number, id_width, start, manifest)

    sizes = {
        "catalog": _write_csv(catalog[contract.columns("catalog")], out_dir / "catalog.csv", catalog_cp1252),
        "events": _write_csv(event_frame[contract.columns("events")], out_dir / "events.csv", {}),
        "queries": _write_csv(query_frame[contract.columns("queries")], out_dir / "queries.csv", queries_cp1252),
    }
    manifest_frame = manifest.frame()
    manifest_frame.to_csv(out_dir / MANIFEST, index=False, lineterminator="\n")
    counts = {"catalog": len(catalog), "events": len(event_frame), "queries": len(query_frame)}
    defects = manifest_frame["table"].value_counts().reindex(list(contract.TABLES), fill_value=0)
    log.info("sample shop generated", extra={
        "out": str(out_dir), "rows": counts, "defects": {t: int(n) for t, n in defects.items()}, "bytes": sizes,
        "seconds": round(time.perf_counter() - began, 2)})
    return counts


def _vary_title(rng, title: str) -> str:
    """The same title up to case, punctuation and spacing (its title_key is unchanged)."""
    pieces = re.findall(r"[A-Za-z0-9]+|[^A-Za-z0-9]+", title)
    separators = [" ", "  ", " - ", ", ", " / ", "-", " | "]
    for _ in range(20):
        out = []
        for k, piece in enumerate(pieces):
            ascii_gap = piece.isascii() and not piece[0].isalnum()
            if ascii_gap and 0 < k < len(pieces) - 1 and rng.random() < 0.35:
                out.append(separators[int(rng.integers(0, len(separators)))])
            elif ascii_gap and k == len(pieces) - 1 and rng.random() < 0.5:
                out.append("")  # e.g. the closing parenthesis of the model code
            else:
                out.append(piece)
        varied = "".join(out).strip()
        case = int(rng.integers(0, 3))
        varied = varied.lower() if case == 0 else varied.upper() if case == 1 else varied
        if rng.random() < 0.3:
            varied += "!"
        if varied != title and title_key(varied) == title_key(title):
            return varied
    return title.upper() if title.upper() != title else title.lower()

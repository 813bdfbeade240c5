"""What `shopfusion bench stream` reads of a folder in the ReChorus (amazon-office) layout.

- `train_only_folder`: a copy of the folder whose interactions are the train rows alone, for the stages to build
  the bundle from. The rechorus adapter needs dev.csv and test.csv with rows, so each user's last train row is
  written to test.csv and the one before it to dev.csv (no negatives) and the stages split with
  `features.interaction_split: leave_one_out`, which holds out exactly those two rows again (users with fewer than
  three train rows stay whole in train.csv, as leave_one_out leaves them in train). The real dev and test rows are
  in no file of the copy: the bundle's histories are every train interaction and nothing after it.
- `replay_events`: the real dev interactions as canonical events, in time order, plus background shoppers that
  repeat them to make the stream long enough to measure a sustained rate.
- `test_positives`: each user's real test item, what the live and the frozen bundle are judged on.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.core.errors import DataError
from pipelines.data.sources.reading import find_one, read_delimited

FILES = ("train.csv", "dev.csv", "test.csv")
EVENT_TYPE = "purchase"  # what the rechorus adapter calls every interaction


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = read_delimited(path, columns, "tab-separated file", sep="\t")
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows")
    return frame


def train_only_folder(source: Path, out: Path) -> dict:
    """Write the train-only copy of `source` into `out` (files rewritten only when their content changes, so an
    unchanged copy leaves the stages' inputs as they were); the row counts of its three interaction files."""
    source, out = Path(source), Path(out)
    train = _read(source / "train.csv", ("user_id", "item_id", "time"))
    out.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.item2index", "*.text"):
        _copy(find_one(source, pattern, "the rechorus layout"), out)
    if (source / "item_meta.csv").exists():
        _copy(source / "item_meta.csv", out)
    ordered = train.assign(_time=train["time"].astype("int64"), _row=range(len(train)))
    ordered = ordered.sort_values(["user_id", "_time", "_row"], kind="stable")
    grouped = ordered.groupby("user_id", sort=False)
    from_end = grouped.cumcount(ascending=False)
    enough = grouped["item_id"].transform("size") >= 3
    parts = {"train.csv": ordered[~enough | (from_end >= 2)], "dev.csv": ordered[enough & (from_end == 1)],
             "test.csv": ordered[enough & (from_end == 0)]}
    counts = {}
    for name, frame in parts.items():
        frame = frame.sort_values("_row")[["user_id", "item_id", "time"]]
        if name != "train.csv":
            frame = frame.assign(neg_items="[]")  # leave_one_out ranks the held-out rows over the catalog
        _write_if_changed(out / name, frame.to_csv(sep="\t", index=False))
        counts[name] = len(frame)
    return counts


def _copy(path: Path, folder: Path) -> None:
    _write_if_changed(folder / path.name, path.read_bytes())


def _write_if_changed(path: Path, content: str | bytes) -> None:
    data = content.encode("utf-8") if isinstance(content, str) else content
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def dev_events(source: Path) -> list[dict]:
    """The real dev interactions as canonical events (raw user ids, as the rechorus adapter names them: the
    service pseudonymizes them with the pipeline's key), in time order; no timestamp yet (the replay stamps each
    event as it sends it)."""
    path = Path(source) / "dev.csv"
    dev = _read(path, ("user_id", "item_id", "time"))
    dev = dev.assign(_time=dev["time"].astype("int64"), _row=range(1, len(dev) + 1))
    dev = dev.sort_values(["_time", "_row"], kind="stable")
    return [{"event_id": f"dev-{row}", "user_id": user, "item_id": item, "event_type": EVENT_TYPE, "session_id": None}
            for row, user, item in zip(dev["_row"], dev["user_id"].str.strip(), dev["item_id"].str.strip())]


def replay_events(dev: list[dict], total: int, shopper_events: int) -> list[dict]:
    """The stream of the replay: about `total` events in rounds over the dev interactions (at least one round),
    interleaved so the whole stream keeps the dev time order. Round 0 is the real dev events of the real users,
    the only ones the evaluation reads; each later round repeats them as background shoppers (user
    `bg<round>-<n>`: `shopper_events` consecutive dev events each, so shoppers have several events in one
    session and the live state's co-occurrences work as in a shop), event ids `<dev id>-r<round>`."""
    rounds = max(1, round(total / max(len(dev), 1)))
    events = []
    for index, event in enumerate(dev):
        events.append(dict(event))
        for number in range(1, rounds):
            events.append({**event, "event_id": f"{event['event_id']}-r{number}",
                           "user_id": f"bg{number}-{index // shopper_events}"})
    return events


def test_positives(source: Path) -> dict[str, str]:
    """user id -> the item of the user's test row (one a user in this layout)."""
    test = _read(Path(source) / "test.csv", ("user_id", "item_id"))
    return dict(zip(test["user_id"].str.strip(), test["item_id"].str.strip()))

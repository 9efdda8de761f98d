"""Load a preference file into ``PreferencePair``s, validating every record.

The schema is detected from the fields of the first record (``bfpo.data.schemas.detect_schema``) unless
``schema=`` names it. A bad record (missing or mistyped field, id out of range, empty response, undecodable
line) either raises a ``DataError`` listing all of its problems with the file, line or record and field
(``on_bad_record="error"``), or is dropped and counted in the ``LoadReport`` (``"skip"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from bfpo.data.readers import Unreadable, read_records
from bfpo.data.records import LoadReport, PreferencePair, Problem, format_problems
from bfpo.data.schemas import convert_record, detect_schema, get_schema
from bfpo.errors import DataError

BAD_RECORD_POLICIES = ("error", "skip")


def load_pairs(path: str | Path, *, schema: str | None = None, on_bad_record: Literal["error", "skip"] = "error",
               split: str | None = None) -> tuple[list[PreferencePair], LoadReport]:
    """(pairs in file order, report) from a JSONL/JSON/Parquet file, a saved dataset directory or a hub id."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise DataError(f"on_bad_record={on_bad_record!r}: expected one of {BAD_RECORD_POLICIES}")
    chosen = None if schema is None else get_schema(schema)
    report = LoadReport(path=str(path), schema=schema or "auto")
    pairs: list[PreferencePair] = []
    for location, record in read_records(path, split=split):
        report.records += 1
        if isinstance(record, Unreadable):
            pair, problems = None, [Problem("<record>", record.reason, record.message)]
        else:
            if chosen is None:
                chosen = detect_schema(record, location)
                report.schema = chosen.name
            pair, problems = convert_record(chosen, record, location)
        if pair is not None:
            pairs.append(pair)
            report.kept += 1
        elif on_bad_record == "error":
            raise DataError(f"bad record ({(chosen.name if chosen else 'schema not yet known')} schema): "
                            + format_problems(location, problems))
        else:
            report.add_bad(location, problems)
    if not pairs:
        raise DataError(f"{path}: no usable records ({report.records} read, {report.dropped} dropped)"
                        + (f"\n{report.summary()}" if report.dropped else ""))
    return pairs, report

"""One BEIR record rule: the corpus loader, the queries loader and TextStore agree line for line.

Every case is a whole file with a hand-written expectation (the records kept, or the line and
the problem of the first error); each reader is checked against that expectation, not only
against the others, so a rule that drifts in one of them fails here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from colbert_lightning.data.beir import BeirRecord, load_corpus, load_queries, parse_beir_record
from colbert_lightning.data.errors import DataFormatError
from colbert_lightning.data.lines import decode_line, is_gzipped, json_value, open_binary
from colbert_lightning.data.text_store import TextStore

FIRST = json.dumps({"_id": "g1", "title": "Wings", "text": "lift"}).encode()
SECOND = json.dumps({"_id": "10", "text": "ten"}).encode()
LAST = json.dumps({"_id": "g9", "text": "last"}).encode()
KEPT = {"g1": "Wings lift", "10": "ten", "g9": "last"}  # id -> text with the title joined


def between(line: bytes) -> list[bytes]:
    """The case's line as line 3 of 4, after two good records and before a third."""
    return [FIRST, SECOND, line, LAST]


def kept_with(record_id: str, text: str) -> dict[str, str]:
    """``KEPT`` with the record of ``between``'s line 3, in file order."""
    return {"g1": KEPT["g1"], "10": KEPT["10"], record_id: text, "g9": KEPT["g9"]}


ACCEPTED: dict[str, tuple[list[bytes], dict[str, str]]] = {
    "string id and title": (
        between(b'{"_id": "d1", "title": "Flutter", "text": "shakes"}'),
        kept_with("d1", "Flutter shakes"),
    ),
    "integer id": (between(b'{"_id": 7, "text": "seven"}'), kept_with("7", "seven")),
    "null title": (
        between(b'{"_id": "d3", "title": null, "text": "no title"}'),
        kept_with("d3", "no title"),
    ),
    "blank title": (
        between(b'{"_id": "d5", "title": " ", "text": "blank title"}'),
        kept_with("d5", "blank title"),
    ),
    "empty text": (between(b'{"_id": "d4", "text": ""}'), kept_with("d4", "")),
    "other fields ignored": (
        between(b'{"_id": "d6", "text": "x", "metadata": {"a": 1}}'),
        kept_with("d6", "x"),
    ),
    "trailing blank lines": ([FIRST, SECOND, LAST, b"", b"  "], KEPT),
    "byte-order mark on line 1": ([b"\xef\xbb\xbf" + FIRST, SECOND, LAST], KEPT),
    "CRLF line endings": ([FIRST + b"\r", SECOND + b"\r", LAST + b"\r"], KEPT),
}

REJECTED: dict[str, tuple[list[bytes], int, str]] = {
    "empty id": (
        between(b'{"_id": "", "text": "x"}'),
        3,
        "field '_id' must be a non-empty string or an integer, got ''",
    ),
    "boolean id": (
        between(b'{"_id": true, "text": "x"}'),
        3,
        "field '_id' must be a non-empty string or an integer, got True",
    ),
    "float id": (
        between(b'{"_id": 1.5, "text": "x"}'),
        3,
        "field '_id' must be a non-empty string or an integer, got 1.5",
    ),
    "null id": (
        between(b'{"_id": null, "text": "x"}'),
        3,
        "field '_id' must be a non-empty string or an integer, got None",
    ),
    "missing id": (between(b'{"text": "x"}'), 3, "missing field '_id'"),
    "missing text": (between(b'{"_id": "d"}'), 3, "missing field 'text'"),
    "integer text": (
        between(b'{"_id": "d", "text": 3}'),
        3,
        "field 'text' must be a string, got int",
    ),
    "integer title": (
        between(b'{"_id": "d", "title": 3, "text": "x"}'),
        3,
        "field 'title' must be a string, got int",
    ),
    "a list": (between(b'["d", "x"]'), 3, "expected a JSON object, got list"),
    "truncated JSON": (between(b'{"_id": "d", "text": "x"'), 3, "bad JSON: "),
    "invalid UTF-8": (between(b'{"_id": "d", "text": "\xff"}'), 3, "invalid UTF-8 at byte 22"),
    "blank line before the end": (between(b""), 3, "empty line"),
    "byte-order mark on line 3 (files joined)": (
        between(b'\xef\xbb\xbf{"_id": "d", "text": "x"}'),
        3,
        "a byte-order mark (U+FEFF) starts this line; only the first line of a file may have one",
    ),
    "UTF-16": (
        ['{"_id": "d", "text": "x"}'.encode("utf-16"), FIRST],
        1,
        "the file is UTF-16 (by its byte-order mark); convert it to UTF-8",
    ),
    "repeated id": (
        between(b'{"_id": "g1", "text": "again"}'),
        3,
        "duplicate id 'g1' (first at line 1)",
    ),
    "integer id repeating a string id": (
        between(b'{"_id": 10, "text": "again"}'),
        3,
        "duplicate id '10' (first at line 2)",
    ),
}

SUFFIXES = [".jsonl", ".jsonl.gz", ".JSONL.GZ"]


def write(folder: Path, suffix: str, lines: list[bytes]) -> Path:
    path = folder / f"corpus{suffix}"
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if suffix.lower().endswith(".gz") else data)
    return path


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_every_reader_keeps_the_same_records(tmp_path: Path, case: str, suffix: str) -> None:
    lines, expected = ACCEPTED[case]
    path = write(tmp_path, suffix, lines)

    corpus = load_corpus(path)
    assert dict(zip(corpus.ids, corpus.texts, strict=True)) == expected
    assert list(load_queries(path)) == list(expected)

    store = TextStore(path, cache_dir=tmp_path / "cache")
    assert list(store.ids()) == list(expected)
    assert {record_id: store[record_id] for record_id in store.ids()} == expected


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("case", sorted(REJECTED))
def test_every_reader_rejects_the_same_line_the_same_way(
    tmp_path: Path, case: str, suffix: str
) -> None:
    lines, line, problem = REJECTED[case]
    path = write(tmp_path, suffix, lines)
    readers = {
        "load_corpus": load_corpus,
        "load_queries": load_queries,
        "TextStore": lambda path: TextStore(path, cache_dir=tmp_path / "cache"),
    }
    for name, read in readers.items():
        with pytest.raises(DataFormatError) as raised:
            read(path)
        error = raised.value
        assert (error.path, error.line) == (str(path), line), name
        assert str(error).startswith(f"{path}:{line}: "), name
        assert problem in error.problem, (name, error.problem)


def test_parse_beir_record_by_hand() -> None:
    assert parse_beir_record('{"_id": 7, "text": "lift"}') == BeirRecord("7", "", "lift")
    record = parse_beir_record('{"_id": "d", "title": "Wings", "text": "lift"}')
    assert (record.title, record.text, record.titled_text) == ("Wings", "lift", "Wings lift")
    with pytest.raises(ValueError, match="missing field 'text'"):
        parse_beir_record('{"_id": "d"}')


def test_one_gzip_decision_and_one_line_decoder(tmp_path: Path) -> None:
    assert is_gzipped("a.jsonl.gz") and is_gzipped(Path("a.TSV.GZ"))
    assert not is_gzipped("a.jsonl") and not is_gzipped("gz")
    path = tmp_path / "a.TSV.GZ"
    path.write_bytes(gzip.compress(b"a\tb\n"))
    with open_binary(path) as file:
        assert file.read() == b"a\tb\n"
    assert decode_line(b"\xef\xbb\xbfx\r\n", first=True) == "x"
    with pytest.raises(ValueError, match="only the first line of a file may have one"):
        decode_line(b"\xef\xbb\xbfx\n", first=False)  # a BOM only starts a file
    with pytest.raises(ValueError, match="bad JSON: "):
        json_value("{")

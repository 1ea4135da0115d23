"""Finding a key given twice in one object of a JSON body.

RFC 8259 leaves such a document's meaning open, and every fast parser (orjson among
them) keeps the last value without a word: `{"price": 5, "price": 50}` would be stored
as 50 while the portal's own code may have read 5. We refuse it instead, naming where.
The standard library's parser hands each object over as its list of pairs, which is the
only place the repetition can still be seen; it costs about 3.5 µs per ad of a batch."""

from __future__ import annotations

import json

Path = tuple[str | int, ...]


# No object the API reads has a tenth as many fields. Beyond, an object is refused as a
# whole: marshmallow names each unknown key, and a body of a million of them took 4.8 s
# to refuse, in an answer of 29 MB.
MAX_OBJECT_KEYS = 200


class DocumentTooDeep(ValueError):
    """Nested deeper than the standard parser can follow (orjson goes a little deeper)."""


class ObjectTooLarge(ValueError):
    """An object with more than MAX_OBJECT_KEYS keys."""


class _Repeated(dict):
    """An object one of whose keys was given more than once: it marks the place, so the
    path to it can be found once the whole document is parsed."""

    repeated_key: str


def repeated_key_path(body: bytes) -> Path | None:
    """The path to the first key given twice in one object of `body` (a document already
    known to be valid JSON), ending with that key; None when there is none. An object
    with more than MAX_OBJECT_KEYS keys raises ObjectTooLarge."""
    seen_one = False

    def to_object(pairs: list[tuple[str, object]]) -> dict:
        nonlocal seen_one
        if len(pairs) > MAX_OBJECT_KEYS:
            raise ObjectTooLarge(f"an object has {len(pairs)} keys")
        result = dict(pairs)
        if len(result) == len(pairs):
            return result
        seen_one = True
        marked = _Repeated(result)
        marked.repeated_key = _first_repeated([key for key, _ in pairs])
        return marked

    try:
        document = json.loads(body, object_pairs_hook=to_object)
    except RecursionError as error:
        raise DocumentTooDeep("nested too deeply to be read") from error
    return _path_to_mark(document) if seen_one else None


def _first_repeated(keys: list[str]) -> str:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no key is repeated")


def _path_to_mark(document: object) -> Path:
    """Depth first, in document order, without recursion (the document may be deep)."""
    stack: list[tuple[Path, object]] = [((), document)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Repeated):
            return (*path, node.repeated_key)
        if isinstance(node, dict):
            children = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            continue
        stack.extend(((*path, key), child) for key, child in reversed(children))
    raise AssertionError("no object is marked")

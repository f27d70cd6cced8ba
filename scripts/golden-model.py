#!/usr/bin/env python3
"""Writes a model (as JSON) with every struct, field and enum variant of
the image schema present and every field holding a value other than its
default, for a new golden image (crates/crest/tests/golden.rs).

    python3 scripts/golden-model.py docs/image-schema.json > crates/crest/tests/golden/NAME.json

The model is not a consistent checkpoint (object references point
anywhere): golden images test decoding, not restore.  Values are
deterministic: integers count up from 3 (within each field's range),
strings are "10.1.X.Y:N" (socket addresses parse them), booleans true, every array holds one element per enum
variant its items can take (at least one), every Option is Some."""

import json
import sys

schema = json.load(open(sys.argv[1]))
defs = schema["$defs"]
counter = [2]

RANGES = {
    "uint8": (0, 255), "uint16": (0, 65535), "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1), "int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1),
    "int128": (-2**127, 2**127 - 1), "uint": (0, 2**64 - 1), "int": (-2**63, 2**63 - 1),
}


def number(s):
    counter[0] += 1
    lo, hi = RANGES.get(s.get("format"), (0, 2**31))
    lo = max(lo, s.get("minimum", lo))
    hi = min(hi, s.get("maximum", hi))
    span = hi - lo + 1
    return lo + 1 + (counter[0] % (span - 1)) if span > 2 else hi


def string(s):
    counter[0] += 1
    if s.get("format") == "ip":
        n = counter[0]
        return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}" if n % 2 else f"fd00::{n:x}"
    # Parses as a socket address too (the schema does not tell those
    # from other strings).
    return f"10.1.{counter[0] // 256 % 256}.{counter[0] % 256}:{counter[0]}"


def alts(s, stack):
    """Every instance needed to cover the variants `s` can take."""
    if "$ref" in s:
        name = s["$ref"].split("/")[-1]
        if name in stack:
            return [None]
        return alts(defs[name], stack + [name])
    if "const" in s:
        return [s["const"]]
    if "enum" in s:
        return list(s["enum"])
    if "oneOf" in s:
        out = []
        for v in s["oneOf"]:
            out += alts(v, stack)
        return out
    if "anyOf" in s:
        out = []
        for v in s["anyOf"]:
            if v.get("type") != "null":
                out += alts(v, stack)
        return out
    t = s.get("type")
    if isinstance(t, list):
        t = [x for x in t if x != "null"][0]
    if t == "object":
        props = s.get("properties")
        if props is None:
            extra = s.get("additionalProperties")
            if isinstance(extra, dict):
                return [{string({}): v for v in alts(extra, stack)}]
            return [{}]
        per = {k: alts(v, stack) for k, v in props.items()}
        n = max([len(v) for v in per.values()] + [1])
        return [{k: v[min(i, len(v) - 1)] for k, v in per.items()} for i in range(n)]
    if t == "array":
        if "prefixItems" in s:
            parts = [alts(p, stack) for p in s["prefixItems"]]
            n = max(len(p) for p in parts)
            return [[p[min(i, len(p) - 1)] for p in parts] for i in range(n)]
        items = alts(s["items"], stack)
        lo, hi = s.get("minItems", 1), s.get("maxItems")
        if hi is not None and lo == hi:
            # A fixed-size array: `lo` values.
            return [[alts(s["items"], stack)[0] if i == 0 else number(s["items"]) if s["items"].get("type") == "integer" else items[0] for i in range(lo)]]
        items = [x for x in items if x is not None]
        return [items]
    if t == "integer":
        return [number(s)]
    if t == "number":
        return [1.5]
    if t == "string":
        return [string(s)]
    if t == "boolean":
        return [True]
    raise SystemExit(f"schema construct not handled: {json.dumps(s)[:200]}")


model = alts(defs["Checkpoint"], ["Checkpoint"])
assert len(model) == 1
ckpt = model[0]
# Object ids in order (the reader requires it), processes by distinct pid.
for i, o in enumerate(ckpt["objects"]):
    o["id"] = i
json.dump(ckpt, sys.stdout, indent=1, sort_keys=True)
print()

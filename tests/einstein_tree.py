"""A code base of distinct, documented functions for the Einstein search tests to find again."""

from __future__ import annotations

import ast
from pathlib import Path

MODULES = {
    "config/loader.py": '''
"""Reading settings files."""
import json
import os


def parse_ini_section(lines, section):
    """Collect the key and value pairs written under one bracketed INI section header."""
    inside, found = False, {}
    for line in lines:
        line = line.strip()
        if line.startswith("["):
            inside = line == f"[{section}]"
        elif inside and "=" in line:
            key, value = line.split("=", 1)
            found[key.strip()] = value.strip()
    return found


def load_json_settings(path):
    """Read a JSON settings file from disk, returning an empty mapping when it is absent."""
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def merge_overrides(defaults, overrides):
    """Overlay user overrides on the defaults, recursing into nested dictionaries."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def expand_environment_variables(text):
    """Replace dollar-prefixed environment variable references with their current values."""
    return os.path.expandvars(text)


def coerce_boolean_flag(value):
    """Turn yes/no, on/off, true/false strings into a boolean, refusing anything else."""
    lowered = str(value).lower()
    if lowered in ("yes", "on", "true", "1"):
        return True
    if lowered in ("no", "off", "false", "0"):
        return False
    raise ValueError(value)


def split_comma_list(value):
    """Split a comma separated string into trimmed items, dropping the empty ones."""
    return [item.strip() for item in value.split(",") if item.strip()]
''',
    "geometry/shapes.py": '''
"""Plane geometry helpers."""
import math


def polygon_area(points):
    """Compute the area of a simple polygon with the shoelace formula over its vertices."""
    total = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


def circle_circumference(radius):
    """Return the perimeter length of a circle given its radius."""
    return 2 * math.pi * radius


def rotate_point(x, y, angle):
    """Rotate a point about the origin counterclockwise by an angle in radians."""
    cos, sin = math.cos(angle), math.sin(angle)
    return x * cos - y * sin, x * sin + y * cos


def bounding_box(points):
    """Find the smallest axis aligned rectangle enclosing every point."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def segments_intersect(a, b, c, d):
    """Tell whether two line segments cross, using orientation tests of their endpoints."""
    def orient(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    return orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0


def triangle_centroid(a, b, c):
    """Average the three vertices of a triangle to find its centre of mass."""
    return (a[0] + b[0] + c[0]) / 3, (a[1] + b[1] + c[1]) / 3
''',
    "net/http_client.py": '''
"""A tiny HTTP client."""
import socket
import time


def build_request_line(method, path, version="HTTP/1.1"):
    """Format the first line of an HTTP request from its method, path and protocol version."""
    return f"{method.upper()} {path} {version}\\r\\n"


def parse_status_line(line):
    """Split an HTTP response status line into protocol, numeric status code and reason."""
    version, code, reason = line.split(" ", 2)
    return version, int(code), reason.strip()


def retry_with_backoff(call, attempts=5, delay=0.1):
    """Call a flaky function again after exponentially growing pauses until it succeeds."""
    for attempt in range(attempts):
        try:
            return call()
        except OSError:
            time.sleep(delay * 2 ** attempt)
    return call()


def open_tcp_connection(host, port, timeout):
    """Connect a TCP socket to a host and port, giving up after the timeout in seconds."""
    return socket.create_connection((host, port), timeout=timeout)


def encode_query_string(params):
    """Percent-encode a mapping of parameters into a URL query string joined by ampersands."""
    from urllib.parse import quote
    return "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in params.items())


def parse_cookie_header(header):
    """Read the name and value pairs of a Cookie request header separated by semicolons."""
    pairs = (part.split("=", 1) for part in header.split(";") if "=" in part)
    return {name.strip(): value.strip() for name, value in pairs}
''',
    "text/words.py": '''
"""Word and sentence utilities."""
import re
from collections import Counter


def count_word_frequencies(text):
    """Tally how many times each lower-cased word occurs in a text."""
    return Counter(re.findall(r"[a-z']+", text.lower()))


def is_palindrome(word):
    """Check whether a word reads the same backwards, ignoring letter case."""
    word = word.lower()
    return word == word[::-1]


def wrap_paragraph(text, width):
    """Break a paragraph into lines no wider than the given column width."""
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + ([current] if current else [])


def slugify_title(title):
    """Make a lowercase hyphenated URL slug out of an article title."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def levenshtein_distance(a, b):
    """Count the single character edits needed to turn one string into another."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def split_sentences(text):
    """Cut a text into sentences at full stops, question marks and exclamation marks."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\\s+", text) if s.strip()]
''',
    "store/cache.py": '''
"""In-memory caching structures."""
import time
from collections import OrderedDict


class LeastRecentlyUsed:
    """A bounded mapping that evicts the entry used longest ago."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.entries = OrderedDict()

    def remember_entry(self, key, value):
        """Store a value under a key, evicting the least recently used entry when full."""
        self.entries[key] = value
        self.entries.move_to_end(key)
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def recall_entry(self, key):
        """Fetch a cached value and mark it as the most recently used."""
        self.entries.move_to_end(key)
        return self.entries[key]


def expire_stale_items(items, max_age, now=None):
    """Drop timestamped items older than the maximum age in seconds."""
    now = time.time() if now is None else now
    return {key: (stamp, value) for key, (stamp, value) in items.items() if now - stamp <= max_age}


def memoize_function(function):
    """Wrap a function so repeated calls with the same arguments reuse the stored result."""
    results = {}

    def wrapper(*args):
        if args not in results:
            results[args] = function(*args)
        return results[args]
    return wrapper


def hit_ratio(hits, misses):
    """Share of cache lookups that found their key, between zero and one."""
    total = hits + misses
    return hits / total if total else 0.0


def consistent_hash_bucket(key, buckets):
    """Map a key onto one of several shards with a stable CRC checksum."""
    import zlib
    return zlib.crc32(key.encode()) % buckets
''',
    "numeric/stats.py": '''
"""Descriptive statistics."""
import math


def arithmetic_mean(values):
    """Sum the values and divide by how many there are."""
    return sum(values) / len(values)


def median_of_sorted(values):
    """Pick the middle element of sorted data, averaging the two middle ones for even lengths."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def sample_standard_deviation(values):
    """Measure spread around the mean with Bessel's correction for a sample."""
    mean = arithmetic_mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def pearson_correlation(xs, ys):
    """Linear correlation coefficient of two paired series, from minus one to one."""
    mx, my = arithmetic_mean(xs), arithmetic_mean(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))


def percentile_rank(values, fraction):
    """Interpolate the value below which the given fraction of observations fall."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def moving_average(values, window):
    """Smooth a series by averaging each run of consecutive window values."""
    return [sum(values[i : i + window]) / window for i in range(len(values) - window + 1)]
''',
}


def _split_modules() -> dict[str, str]:
    """Each top-level function or class of MODULES in a file of its own, with the imports.

    About 35 files, so that finding a function's file among the top five hits means something.
    """
    files = {}
    for rel_path, source in MODULES.items():
        text = source.lstrip("\n")
        tree = ast.parse(text)
        imports = [ast.get_source_segment(text, n) for n in tree.body if _is_import(n)]
        folder = rel_path.rsplit("/", 1)[0]
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                body = "\n".join([*imports, "", "", ast.get_source_segment(text, node), ""])
                files[f"{folder}/{node.name.lower()}.py"] = body
    return files


def _is_import(node: ast.stmt) -> bool:
    return isinstance(node, ast.Import | ast.ImportFrom)


FILES = _split_modules()


def write_functions_tree(root: Path) -> Path:
    """Write FILES under root and return root."""
    for rel_path, source in FILES.items():
        path = root / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def documented_functions() -> list[tuple[str, str, str, int]]:
    """(file, function name, docstring, line of its def) for every documented function."""
    found = []
    for rel_path, source in FILES.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
                found.append((rel_path, node.name, ast.get_docstring(node), node.lineno))
    return found

"""Reading the text files an admin writes (manifests, node tables): TOML and CSV
parsed so that any text at all either gives data or one `TextError` (a line and a
one-line message), never another exception. Pure: the callers read the files and
turn a TextError into their own error, naming the file.
"""
from __future__ import annotations

import csv
import re
from typing import Iterator, List, Optional, Sequence, Tuple

try:
    import tomllib
except ImportError:   # Python < 3.11: the same parser, from PyPI
    import tomli as tomllib

# TOML integers are 64-bit signed (toml.io: "an error must be thrown" beyond); tomllib
# accepts any size, and a huge one cannot even be printed (int_max_str_digits).
TOML_INT_MIN, TOML_INT_MAX = -(1 << 63), (1 << 63) - 1


class TextError(ValueError):
    """`line` (1-based; None when the parser cannot tell) and a one-line message."""

    def __init__(self, line: Optional[int], message: str, path: Tuple = ()) -> None:
        super().__init__(message)
        self.line, self.message, self.path = line, message, path


# What str.splitlines() (and many a terminal) takes for the end of a line.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def one_line(text: str) -> str:
    """A message that stays on one line whatever the input held: breaks are escaped."""
    return "".join(repr(c)[1:-1] if c in LINE_BREAKS else c for c in text)


def loads_toml(text: str) -> dict:
    """tomllib.loads, with its other failures (nesting too deep for the recursion
    limit, integers too long to convert) and out-of-range integers as TextError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+)", str(e))
        raise TextError(int(m.group(1)) if m else 1,
                        "not valid TOML: " + one_line(str(e).split(" (at")[0])) from None
    except RecursionError:
        raise TextError(1, "not valid TOML here: nested too deeply") from None
    except ValueError as e:   # int("9" * 5000): the digit limit of int()
        raise TextError(1, f"not valid TOML here: {one_line(str(e).split(':')[0])}") from None
    _check_ints(data, ())
    return data


def _check_ints(value, path: Tuple) -> None:
    # Iterative: the data may be as deep as the recursion limit allowed tomllib.
    todo = [(value, path)]
    while todo:
        value, path = todo.pop()
        if isinstance(value, dict):
            todo.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((v, path + (i,)) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and \
                not TOML_INT_MIN <= value <= TOML_INT_MAX:
            raise TextError(None, "an integer beyond the 64 bits TOML allows", path)


def text_lines(text: str) -> List[str]:
    """The lines as an editor numbers them (and as open() reads them: \\r\\n, \\r, \\n)."""
    return re.split(r"\r\n|\r|\n", text)


def repeated(names: Sequence[str]) -> Optional[str]:
    """The first of `names` that appears more than once (a header's column), or None."""
    if len(set(names)) == len(names):
        return None
    return next(n for n in names if names.count(n) > 1)


def csv_rows(text: str) -> Iterator[Tuple[int, List[str]]]:
    """(line, fields) of each non-empty row; a line starting with '#' where a row would
    start is a comment (inside a quoted field it is the field's). The line is where the
    row starts, in the text's own numbering."""
    at_row_start = [True]

    def lines():
        for line in text_lines(text):
            if at_row_start[0] and line.lstrip().startswith("#"):
                line = ""                       # keeps the numbering
            at_row_start[0] = False
            yield line + "\n"
    reader = csv.reader(lines())
    start = 1
    while True:
        at_row_start[0] = True
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise TextError(reader.line_num, f"not CSV: {one_line(str(e))}") from None
        if any(field.strip() for field in row):
            yield start, row
        start = reader.line_num + 1

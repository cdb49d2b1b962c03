"""The statements of SQL text and the tokens inside them, found by one lexer whose time
grows with the text alone: a ``;`` inside a string, a quoted name or a comment is skipped
without asking SQLite, so a seed file of one long ``INSERT`` splits as fast as SQLite
reads it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

__all__ = ["DATA_STATEMENT", "EDITS_SCHEMA", "ONLY_COMMENTS", "TOKEN", "script_statements"]

# The tokens that matter for counting parameters and finding a statement's end; string
# literals, quoted identifiers and comments are matched so that what is inside them is not.
TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'?                # a string (or blob x'..') literal, '' inside
    | "(?:[^"]|"")*"?                # a quoted identifier
    | `(?:[^`]|``)*`?                # a MySQL-quoted identifier
    | \[[^\]]*\]?                    # an MS-quoted identifier
    | --[^\n]*                       # a line comment
    | /\*(?:.*?\*/|.*)               # a block comment, perhaps unclosed at the end
    | [A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*  # a word: $ may be inside one
    | (?P<number>\?[0-9]*)           # ? or ?NNN
    | (?P<name>[:@$\#][A-Za-z0-9_$\x80-\U0010ffff]+(?:(?:::[A-Za-z0-9_$\x80-\U0010ffff]+)*
                (?:\([^)]*\))?)?)    # :name, @name, $name, #name (Tcl's ::a and (b) suffixes)
    | (?P<semicolon>;)
    """,
    re.X | re.S,
)
# A statement that reads or writes rows and changes no schema (after comments).
DATA_STATEMENT = re.compile(
    r"(?:\s|--[^\n]*|/\*.*?\*/)*+(?:INSERT|UPDATE|DELETE|REPLACE|WITH|SELECT|VALUES)\b",
    re.I | re.S,
)
# A name of the schema table itself: a statement writing it (SQLite's writable_schema
# procedure) changes the schema, whatever it starts with.
EDITS_SCHEMA = re.compile(r"\bsqlite_(?:temp_)?(?:schema|master)\b", re.I)
# Whitespace and comments only; a block comment ends at its first */ (or, unclosed, at the
# end of the text), so nothing after it is taken for part of it.
ONLY_COMMENTS = re.compile(r"(?:\s|--[^\n]*+(?:\n|$)|/\*(?:[^*]|\*(?!/))*+(?:\*/|$))*+", re.S)


def script_statements(sql: str) -> Iterator[str]:
    """The statements of the script ``sql``, one by one, as SQLite runs them: each ends at
    the first ``;`` that completes it (not at one inside a trigger's body); pieces that
    hold only whitespace and comments are left out."""
    start = 0
    for token in TOKEN.finditer(sql):
        if token.group("semicolon") and sqlite3.complete_statement(sql[start : token.end()]):
            if not ONLY_COMMENTS.fullmatch(sql, start, token.start()):
                yield sql[start : token.end()]
            start = token.end()
    if not ONLY_COMMENTS.fullmatch(sql, start):
        yield sql[start:]

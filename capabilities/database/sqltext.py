"""Reading a block's SQL text before it reaches a database.

A small lexer that knows the quoting rules of the two dialects (string literals, quoted
identifiers, comments, PostgreSQL's escape and dollar-quoted strings) is the base of
three jobs: making sure a query is one statement, turning the block's `?` placeholders
into psycopg's (only where `?` is code, never inside a literal or a comment), and the
statement guard (capabilities.database.guard).

The lexer is not the security boundary: the drivers refuse a second statement on their
own (sqlite3 executes one statement at a time; PostgreSQL's extended protocol, which is
always used because parameters are always bound, refuses several commands), and what a
statement may touch is bounded by the database itself (an authorizer for SQLite, roles
and privileges for PostgreSQL). Reading the text first gives the block author a clear
error before anything runs.
"""

import re
from dataclasses import dataclass

from capabilities.base import CapabilityError
from capabilities.database.limits import MAX_PARAMS, MAX_SQL_LENGTH

SQLITE = "sqlite"
POSTGRES = "postgres"


@dataclass(frozen=True)
class Token:
    kind: str  # word, ident, string, number, param, named_param, positional, op, semicolon
    value: str  # word: lower-cased; ident: unquoted; string: decoded content; else the text
    start: int
    end: int
    prefix: str = ""  # strings: "" plain, "e" escape, "u&" unicode, "b"/"x" bits, "n", "$" dollar; idents: "u&"


def _is_ident_start(ch):
    return ch.isalpha() or ch == "_" or ord(ch) >= 0x80


def _is_ident_char(ch):
    return ch.isalnum() or ch in "_$" or ord(ch) >= 0x80


_NUMBER = re.compile(r"0[xXoObB][0-9a-fA-F_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


def _unterminated(what):
    return CapabilityError("INVALID_ARGUMENT", f"The SQL has an unterminated {what}.")


def _read_quoted(sql, i, quote, backslash_escapes=False):
    """Read a quoted run starting at sql[i] == quote. A doubled quote is one quote
    character; with backslash_escapes a backslash escapes the next character (E'...').
    Returns (raw content without the quotes, index after the closing quote)."""
    n = len(sql)
    j = i + 1
    while j < n:
        ch = sql[j]
        if backslash_escapes and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
                continue
            return sql[i + 1 : j], j + 1
        j += 1
    raise _unterminated("string or quoted name" if quote != "]" else "[bracketed] name")


_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def decode_escape_string(raw):
    """The value of an E'...' literal's content (PostgreSQL's backslash escapes)."""
    out = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "'" and i + 1 < n and raw[i + 1] == "'":
            out.append("'")
            i += 2
            continue
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
            i += 2
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", raw[i + 1 :])
            out.append(chr(int(m.group(), 8) & 0xFF))
            i += 1 + len(m.group())
        elif nxt == "x" and re.match(r"[0-9a-fA-F]", raw[i + 2 : i + 3]):
            m = re.match(r"[0-9a-fA-F]{1,2}", raw[i + 2 :])
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        elif nxt in "uU":
            width = 4 if nxt == "u" else 8
            digits = raw[i + 2 : i + 2 + width]
            if re.fullmatch(r"[0-9a-fA-F]{%d}" % width, digits):
                code = int(digits, 16)
                out.append(chr(code) if code < 0x110000 else "\ufffd")
                i += 2 + width
            else:
                out.append(nxt)
                i += 2
        else:
            out.append(nxt)
            i += 2
    return "".join(out)


def tokenize(sql, dialect):
    """The tokens of `sql` (comments and white space dropped)."""
    tokens = []
    i, n = 0, len(sql)
    pg = dialect == POSTGRES
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if sql.startswith("/*", i):
            # PostgreSQL nests block comments, SQLite does not; an unterminated one runs
            # to the end of the text in both.
            depth, j = 1, i + 2
            while j < n and depth:
                if pg and sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            i = j
            continue
        if ch == "'":
            raw, j = _read_quoted(sql, i, "'")
            tokens.append(Token("string", raw.replace("''", "'"), i, j))
            i = j
            continue
        if ch == '"' or (not pg and ch in "`["):
            close = {"[": "]", "`": "`", '"': '"'}[ch]
            raw, j = _read_quoted(sql, i, close)
            value = raw if close == "]" else raw.replace(close * 2, close)
            tokens.append(Token("ident", value, i, j))
            i = j
            continue
        if _is_ident_start(ch):
            j = i + 1
            while j < n and _is_ident_char(sql[j]):
                j += 1
            word = sql[i:j]
            lower = word.lower()
            # Prefixed literals: E'..' B'..' X'..' N'..' U&'..' U&".." (X'..' in SQLite).
            if j < n and sql[j] == "'" and (lower in ("e", "b", "x", "n") if pg else lower == "x"):
                raw, k = _read_quoted(sql, j, "'", backslash_escapes=(lower == "e"))
                value = decode_escape_string(raw) if lower == "e" else raw.replace("''", "'")
                tokens.append(Token("string", value, i, k, prefix=lower))
                i = k
                continue
            if pg and lower == "u" and sql[j : j + 2] in ("&'", '&"'):
                quote = sql[j + 1]
                raw, k = _read_quoted(sql, j + 1, quote)
                kind = "string" if quote == "'" else "ident"
                tokens.append(Token(kind, raw.replace(quote * 2, quote), i, k, prefix="u&"))
                i = k
                continue
            tokens.append(Token("word", lower, i, j))
            i = j
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and sql[i + 1].isdigit()):
            m = _NUMBER.match(sql, i)
            j = m.end() if m else i + 1
            tokens.append(Token("number", sql[i:j], i, j))
            i = j
            continue
        if ch == "$":
            if pg:
                m = _DOLLAR_TAG.match(sql, i)
                if m:
                    tag = m.group()
                    end = sql.find(tag, m.end())
                    if end < 0:
                        raise _unterminated("dollar-quoted string")
                    tokens.append(Token("string", sql[m.end() : end], i, end + len(tag), prefix="$"))
                    i = end + len(tag)
                    continue
                m = re.compile(r"\$\d+").match(sql, i)
                if m:
                    tokens.append(Token("positional", m.group(), i, m.end()))
                    i = m.end()
                    continue
            elif i + 1 < n and _is_ident_start(sql[i + 1]):
                j = i + 2
                while j < n and (_is_ident_char(sql[j]) or sql[j] == ":"):
                    j += 1
                tokens.append(Token("named_param", sql[i:j], i, j))
                i = j
                continue
        if ch == "?":
            j = i + 1
            if not pg:
                while j < n and sql[j].isdigit():
                    j += 1
            kind = "param" if j == i + 1 else "named_param"
            tokens.append(Token(kind, sql[i:j], i, j))
            i = j
            continue
        if not pg and ch in ":@" and i + 1 < n and _is_ident_start(sql[i + 1]):
            j = i + 2
            while j < n and _is_ident_char(sql[j]):
                j += 1
            tokens.append(Token("named_param", sql[i:j], i, j))
            i = j
            continue
        if ch == ";":
            tokens.append(Token("semicolon", ";", i, i + 1))
            i += 1
            continue
        tokens.append(Token("op", ch, i, i + 1))
        i += 1
    return tokens


def split_statements(tokens, dialect):
    """The statements of a token list, split at semicolons.

    A semicolon inside a trigger body (SQLite's CREATE TRIGGER ... BEGIN ...; END) or a
    SQL-standard function body (PostgreSQL's BEGIN ATOMIC ...; END) does not end the
    statement. CASE ... END inside such a body is counted so its END is not taken for
    the body's.
    """
    statements, current = [], []
    block_depth = 0
    for index, token in enumerate(tokens):
        if token.kind == "semicolon" and block_depth == 0:
            if current:
                statements.append(current)
            current = []
            continue
        current.append(token)
        if token.kind != "word" or not current or current[0].value != "create":
            continue
        if token.value == "begin":
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            starts_body = (
                following is not None and following.kind == "word" and following.value == "atomic"
                if dialect == POSTGRES
                else any(t.kind == "word" and t.value == "trigger" for t in current)
            )
            if starts_body or block_depth:
                block_depth += 1
        elif token.value == "case" and block_depth:
            block_depth += 1
        elif token.value == "end" and block_depth:
            block_depth -= 1
    if current:
        statements.append(current)
    return statements


@dataclass(frozen=True)
class Statement:
    """One statement of a block, read and checked."""

    dialect: str
    text: str  # the statement's own text: from its first token to its last
    tokens: tuple
    placeholders: int

    @property
    def keyword(self):
        first = self.tokens[0]
        return first.value if first.kind == "word" else ""

    def driver_text(self):
        """The text to hand to the driver: for psycopg, each `?` placeholder becomes %s
        and every other % is doubled (psycopg reads % anywhere in the text, inside
        literals too, so a literal '%' must reach it as '%%')."""
        if self.dialect != POSTGRES:
            return self.text
        base = self.tokens[0].start
        pieces, position = [], 0
        for token in self.tokens:
            if token.kind == "param":
                pieces.append(self.text[position : token.start - base].replace("%", "%%"))
                pieces.append("%s")
                position = token.end - base
        pieces.append(self.text[position:].replace("%", "%%"))
        return "".join(pieces)


def parse_statement(sql, dialect):
    """The one statement in `sql`, or INVALID_ARGUMENT."""
    if not isinstance(sql, str):
        raise CapabilityError("INVALID_ARGUMENT", "The SQL must be a string.")
    if len(sql) > MAX_SQL_LENGTH:
        raise CapabilityError("INVALID_ARGUMENT", f"The SQL is {len(sql)} characters; at most {MAX_SQL_LENGTH} are accepted.")
    if "\x00" in sql:
        raise CapabilityError("INVALID_ARGUMENT", "The SQL contains a NUL character.")
    statements = split_statements(tokenize(sql, dialect), dialect)
    if not statements:
        raise CapabilityError("INVALID_ARGUMENT", "The SQL is empty: there is no statement to run.")
    if len(statements) > 1:
        raise CapabilityError(
            "INVALID_ARGUMENT",
            "A query runs one statement, and this SQL has more than one (a second statement follows a ';'). "
            "Run them one by one, or together with database.transaction().",
        )
    tokens = tuple(statements[0])
    for token in tokens:
        if token.kind == "named_param":
            raise CapabilityError(
                "INVALID_ARGUMENT", f"Only ? placeholders are supported, not {token.value[:30]!r}; pass the values in order."
            )
        if token.kind == "positional":
            raise CapabilityError(
                "INVALID_ARGUMENT", f"Use ? placeholders instead of {token.value[:30]}; pass the values in order."
            )
    text = sql[tokens[0].start : tokens[-1].end]
    placeholders = sum(1 for t in tokens if t.kind == "param")
    return Statement(dialect, text, tokens, placeholders)


def check_params(statement, params):
    """The parameters as a list, checked against the statement's placeholders."""
    if params is None:
        params = []
    if not isinstance(params, (list, tuple)):
        raise CapabilityError("INVALID_ARGUMENT", "The parameters must be an array of values, one for each ? placeholder.")
    if len(params) > MAX_PARAMS:
        raise CapabilityError("INVALID_ARGUMENT", f"At most {MAX_PARAMS} parameters can be bound to one statement.")
    if len(params) != statement.placeholders:
        raise CapabilityError(
            "INVALID_ARGUMENT",
            f"The statement has {statement.placeholders} ? placeholder{'s' if statement.placeholders != 1 else ''} "
            f"but {len(params)} parameter{'s were' if len(params) != 1 else ' was'} given.",
        )
    return list(params)


def paren_depths(tokens):
    """Each token's depth of parentheses (0 at the statement's top level)."""
    depths, depth = [], 0
    for token in tokens:
        if token.kind == "op" and token.value == ")":
            depth = max(depth - 1, 0)
        depths.append(depth)
        if token.kind == "op" and token.value == "(":
            depth += 1
    return depths

"""Hostile text for the tests of inert output: every class of character that YAML, Markdown or a
terminal treats specially, and whole break-out attempts built from them."""

from __future__ import annotations

# Every class of character that YAML, Markdown or a terminal treats specially, by what it does.
DANGEROUS = {
    "line feed": "\n",
    "carriage return": "\r",
    "tab": "\t",
    "vertical tab": "\v",
    "form feed": "\f",
    "NUL": "\x00",
    "escape (terminal sequences)": "\x1b",
    "bell": "\x07",
    "delete": "\x7f",
    "NEL (a YAML line break)": "\x85",
    "C1 CSI (a terminal sequence in one byte)": "\x9b",
    "line separator (a YAML line break)": "\u2028",
    "paragraph separator (a YAML line break)": "\u2029",
    "file separator (a Python line break)": "\x1c",
    "left-to-right embedding": "\u202a",
    "right-to-left override": "\u202e",
    "pop directional formatting": "\u202c",
    "left-to-right isolate": "\u2066",
    "pop directional isolate": "\u2069",
    "left-to-right mark": "\u200e",
    "right-to-left mark": "\u200f",
    "Arabic letter mark": "\u061c",
    "zero-width space": "\u200b",
    "zero-width joiner": "\u200d",
    "byte-order mark": "\ufeff",
    "soft hyphen": "\xad",
    "tag character": "\U000e0041",
    "lone surrogate (an undecodable file name byte)": "\udc9b",
    "no-break space (looks like a space)": "\xa0",
    "non-character": "\uffff",
}

# Whole attacks: each would, printed raw, end a YAML comment and add an allow-all rule, start a
# second document, colour or rewrite a terminal line, reorder what an admin reads, or inject HTML.
BREAK_OUTS = {
    "line separator + rule": "evil.example.com\u2028    - {}",
    "paragraph separator + rule": "evil.example.com\u2029    - to: []",
    "NEL + rule": "evil.example.com\x85    - {}",
    "carriage return + rule": "evil.example.com\r    - {}",
    "new document": "evil.example.com\n---\nkind: Secret",
    "terminal colours": "\x1b[31mred\x1b[0m \x1b]0;title\x07",
    "bidi override": "evil\u202egpj.exe",
    "html": "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "markdown": "[click](http://evil.example/) ![x](http://evil.example/x.png) | cell `code`",
}

"""Text that comes from a model file or a server, made safe for each place it is shown.

Layer names, file names, URLs and the exception text of remote backends are untrusted: a hostile
file can hold terminal escapes, newlines that start a GitHub workflow command, rich markup,
characters XML forbids, and a URL can carry a password or a presigned signature. Every output
goes through one function here:

- `redact(text)`: URL passwords (userinfo) and the values of signing and credential query
  parameters become `***`, in a URL or in any text holding URLs (pip's `redact_auth_from_url`
  is the anchor; here a user name alone is redacted too, since tokens travel as user names).
- `printable(text)`: control characters (C0, DEL, C1), the bidirectional overrides that make
  text read differently from what it is, and what cannot be written as UTF-8 or XML 1.0 (lone
  surrogates, U+FFFE, U+FFFF), shown as escapes (`\\x1b`, `\\u202e`): for the terminal, stderr,
  plain-text and JSON-free text outputs, JUnit and HTML.
- `github_data(text)` / `github_property(text)`: GitHub workflow-command escaping on top of
  `printable` (`%`, `\\r`, `\\n`; also `:` and `,` in properties).
- `rich_text(text)`: `printable`, then rich markup escaped, for strings rich parses as markup;
  `rich_literal(text, style)`: `printable` in a rich `Text`, which rich never parses.
- `html_text(text)`: `printable`, then HTML-escaped (quotes too), for text and attribute values.
- `plot_text(text)`: `printable` with `$` escaped, for matplotlib, which reads text between two
  `$` as mathtext (and raises on what it cannot parse).

JSON outputs need none of these: `json.dumps` escapes control characters itself.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit, urlunsplit

if TYPE_CHECKING:
    from rich.text import Text

REDACTED = "***"

# Query (and fragment) parameters whose value is a secret: AWS (X-Amz-Credential, X-Amz-Signature,
# X-Amz-Security-Token), GCS (X-Goog-Credential, X-Goog-Signature), Azure SAS (sig), CloudFront
# (Signature, Policy, Key-Pair-Id), OAuth (access_token, code), API keys. A name matches when it
# holds one of these parts, case-insensitively: redacting a harmless value costs nothing.
SECRET_PARAMETER_PARTS = ("token", "secret", "sig", "credential", "pass", "pwd", "auth", "key", "session",
                          "policy", "code")

# A URL inside any text: a scheme, `://`, then up to whitespace, a quote or an angle bracket.
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")

# C0 controls, DEL, C1 controls; the Unicode bidirectional embeddings, overrides and isolates
# (U+202A-U+202E, U+2066-U+2069) and the line/paragraph separators some terminals break lines at;
# lone surrogates (a file name that is not UTF-8 arrives as U+DC80-U+DCFF, a JSON config can hold
# any) and U+FFFE/U+FFFF: UTF-8 cannot encode the first and XML 1.0 forbids both.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _is_secret_parameter(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in SECRET_PARAMETER_PARTS)


def _redact_parameters(text: str) -> str:
    if not text:
        return text
    pieces = []
    for piece in text.split("&"):
        name, sep, value = piece.partition("=")
        if sep and value and _is_secret_parameter(_unquote(name)):
            piece = f"{name}={REDACTED}"
        pieces.append(piece)
    return "&".join(pieces)


def _unquote(text: str) -> str:
    try:
        return parse_qsl(f"{text}=x", keep_blank_values=True)[0][0]
    except (ValueError, IndexError):
        return text


def redact_url(url: str) -> str:
    """`url` with its password (or a user name standing alone) and secret parameters as `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not parseable as a URL (an unbalanced `[` in the host): keep only the scheme.
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}{REDACTED}" if sep else url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if has_password else f"{REDACTED}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_parameters(parts.query),
                       _redact_parameters(parts.fragment)))


def redact(text: str) -> str:
    """Every URL inside `text` redacted (see `redact_url`); the rest of the text as it is."""
    if "://" not in text:
        return text
    return URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _escape(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` on one line with every control or direction-changing character as a visible escape,
    and every URL redacted."""
    text = redact(str(text))
    # The fast path: most names have nothing to escape, and `search` costs less than `sub`.
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def github_data(text: str) -> str:
    """The message part of a GitHub workflow command (`::error ...::MESSAGE`)."""
    return printable(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_property(text: str) -> str:
    """A property value of a GitHub workflow command (`file=`, `title=`)."""
    return github_data(text).replace(":", "%3A").replace(",", "%2C")


def rich_text(text: str) -> str:
    """`printable(text)` with rich markup escaped, for a string rich renders as markup."""
    from rich.markup import escape

    return escape(printable(text))


def rich_literal(text: str, style: str = "") -> "Text":
    """A rich `Text` holding `printable(text)`: shown as it is, never parsed as markup or emoji."""
    from rich.text import Text

    return Text(printable(text), style=style)


def html_text(text: object) -> str:
    """`printable(text)` HTML-escaped, quotes included: safe in element text and attribute values."""
    return html.escape(printable(text), quote=True)


def plot_text(text: str) -> str:
    """`printable(text)` for a matplotlib text: an even number of `$` would start mathtext, whose
    parser raises on what it cannot read; `\\$` is matplotlib's literal dollar."""
    text = printable(text)
    return text.replace("$", "\\$") if "$" in text else text

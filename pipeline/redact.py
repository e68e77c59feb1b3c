"""What is never printed or written: the password (or token) in a URL's user info, and the
keys a client holds, and what a user typed that may be a key.

`model.base_url` may carry credentials (`http://user:password@host/v1`); every message,
log line and file that names the endpoint shows it through `redact_url`. A client that holds
keys (Oxen's, S3's) passes a foreign error's text through `hidden` before it is shown. A
message that quotes what the user typed (a config line YAML cannot parse, a malformed
`--set`, a value a check refuses) shows it through `masked`.
"""

from __future__ import annotations

import re

HIDDEN = "***"
# scheme://USERINFO@ : the user info is everything up to the last @ before the path.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
_ANY_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")
# Keys with a well-known prefix: OpenAI's and Anthropic's sk-, GitHub's, GitLab's, Slack's.
_PREFIXED = re.compile(
    r"(?<![A-Za-z0-9])(?:sk|ghp|gho|ghs|ghu|github_pat|glpat|xox[abprs])[-_][A-Za-z0-9_-]{6,}"
)
_RUN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])")
_SCHEME = re.compile(r"\b(?P<scheme>Bearer|bearer|Basic)[ \t]+[^\s,;}\]'\"]+")
# KEY: VALUE or KEY=VALUE; or a dotted KEY VALUE (a --set without its =). Quotes may close KEY.
_KEYED = re.compile(r"(?P<key>[A-Za-z0-9_.-]+)[\"']?(?P<sep>[ \t]*[:=][ \t]*|[ \t]+)(?=\S)")
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_SECRET_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth", "authorization"}
    | {"bearer", "credential", "credentials"}
)


def redact_url(url: str) -> str:
    """`url` with the password of its user info replaced by ***; a user name alone (which
    may be a token) is replaced too. A URL without user info is returned as it is."""
    found = _USERINFO.match(url)
    if found is None:
        return url
    return f"{found['scheme']}{_shown(found['userinfo'])}@{url[found.end() :]}"


def redact_in(text: str, url: str) -> str:
    """`text` (an error message, say) with `url`'s user info hidden wherever it appears."""
    found = _USERINFO.match(url)
    if found is None:
        return text
    userinfo = found["userinfo"]
    return text.replace(f"{userinfo}@", f"{_shown(userinfo)}@")


def hidden(text: str, *secrets: str | None) -> str:
    """`text` with each of `secrets` (those set) replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    return text


def masked(text: str) -> str:
    """`text` (what a user typed, or a message quoting it) with what may be a secret
    replaced by ***: the rest of a line after a key named like a secret (`api_key: ...`,
    `Authorization: ...`, `--set model.api_key_env ...`), the credential after Bearer or
    Basic, a URL's user info, and token-like strings: one with a known key prefix (`sk-`,
    `ghp_`, ...), or 20 or more letters, digits, - and _ holding a letter, a digit and a
    part longer than 10 between the - and _ (a model name like claude-3-5-sonnet-20241022
    is kept)."""
    text = _ANY_USERINFO.sub(_userinfo_hidden, text)
    text = _PREFIXED.sub(HIDDEN, text)
    text = _RUN.sub(lambda m: HIDDEN if _token_like(m[0]) else m[0], text)
    text = _SCHEME.sub(lambda m: f"{m['scheme']} {HIDDEN}", text)
    return "\n".join(_masked_line(line) for line in text.split("\n"))


def _userinfo_hidden(found: re.Match[str]) -> str:
    """A URL with its user info hidden; an oxen:// address as it is: its `namespace:repo@`
    names a repository and a branch, no credentials."""
    if found["scheme"].lower() == "oxen://":
        return found[0]
    return f"{found['scheme']}{_shown(found['userinfo'])}@"


def _token_like(run: str) -> bool:
    return (
        any(c.isdigit() for c in run)
        and any(c.isalpha() for c in run)
        and any(len(part) > 10 for part in re.split(r"[-_]", run))
    )


def _masked_line(line: str) -> str:
    for found in _KEYED.finditer(line):
        key, sep = found["key"], found["sep"]
        if (sep.strip() or "." in key) and _secret_name(key):
            return line[: found.end()] + HIDDEN
    return line


def _secret_name(key: str) -> bool:
    return any(word.lower() in _SECRET_WORDS for word in _WORDS.findall(key))


def _shown(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{HIDDEN}" if colon else HIDDEN

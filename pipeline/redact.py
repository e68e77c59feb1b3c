"""What is never printed or written: the password (or token) in a URL's user info, and the
keys a client holds.

`model.base_url` may carry credentials (`http://user:password@host/v1`); every message,
log line and file that names the endpoint shows it through `redact_url`. A client that holds
keys (Oxen's, S3's) passes a foreign error's text through `hidden` before it is shown.
"""

from __future__ import annotations

import re

HIDDEN = "***"
# scheme://USERINFO@ : the user info is everything up to the last @ before the path.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")


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


def _shown(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{HIDDEN}" if colon else HIDDEN

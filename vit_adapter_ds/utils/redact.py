"""Credentials and signatures out of any text that may hold URLs: :func:`redact_url` (messages, warnings,
``status.json``). Only the standard library, so every layer can use it."""
from __future__ import annotations

import re

# query parameters whose values are secrets: AWS SigV4 / SigV2 pre-signed URLs, GCS signed URLs (V4 and V2), Azure SAS,
# OAuth / API tokens
SECRET_QUERY_PARAMS = ("x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
                       "x-goog-credential", "x-goog-security-token", "signature", "sig", "token", "access_token",
                       "id_token", "refresh_token", "awsaccesskeyid", "googleaccessid", "api_key", "apikey", "key",
                       "password", "passwd", "secret", "client_secret", "code")
REDACTED = "REDACTED"
# scheme://userinfo@ -- the userinfo ends at the first '@' before any '/', '?', '#' or white space
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s'\"<>]+@")
# ?name=value / &name=value (also ;name=value and the HTML-escaped &amp;name=value) for the names above; the value
# ends at the next parameter, fragment, white space, quote or bracket (a ':', ',' or '.' just before one of those, or
# at the end, is the message's punctuation: kept)
_SECRET_PARAM = re.compile(r"([?&;](?:amp;)?(?:%s)=)[^&#;\s'\"<>)\]]*?(?=[:,.]?(?:[&#;\s'\"<>)\]]|$))" % "|".join(
    re.escape(n) for n in sorted(SECRET_QUERY_PARAMS, key=len, reverse=True)), re.IGNORECASE)


def redact_url(text) -> str:
    """``text`` (a URL, or any message that may contain URLs) with credentials replaced by ``REDACTED``: the
    userinfo of every ``scheme://user:password@host`` and the values of the query parameters in
    :data:`SECRET_QUERY_PARAMS` (case-insensitive), e.g. ``https://h/o?X-Amz-Signature=REDACTED&x=1``. Anything
    else (host, path, other parameters) is kept, so the message still names the object."""
    text = text if isinstance(text, str) else str(text)
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_PARAM.sub(r"\g<1>" + REDACTED, _USERINFO.sub(r"\g<1>" + REDACTED + "@", text))

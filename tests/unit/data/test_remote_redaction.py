"""``vit_adapter_ds.utils.redact.redact_url``: credentials and signatures of URLs never reach a message. The expected
strings are written out by hand (what a reader of the log should see), not computed by the code under test."""
import pytest

from vit_adapter_ds.data.remote import Retry
from vit_adapter_ds.utils.redact import redact_url

CASES = [
    # userinfo
    ("https://user:pa55@example.com/sets/train/manifest.json",
     "https://REDACTED@example.com/sets/train/manifest.json"),
    ("s3://AKIAKEY:secretkey@bucket/sets", "s3://REDACTED@bucket/sets"),
    ("https://token@host:8443/x.tar", "https://REDACTED@host:8443/x.tar"),
    # AWS SigV4 pre-signed URL: credential, signature and session token; the other parameters stay
    ("https://b.s3.amazonaws.com/s/a.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261206%2Fus"
     "&X-Amz-Date=20261206T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=FwoGZX%2B%3D&X-Amz-SignedHeaders=host"
     "&X-Amz-Signature=9f86d081884c",
     "https://b.s3.amazonaws.com/s/a.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED"
     "&X-Amz-Date=20261206T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=REDACTED&X-Amz-SignedHeaders=host"
     "&X-Amz-Signature=REDACTED"),
    # AWS SigV2 and GCS V2 / V4 signed URLs, lower-case names
    ("https://b.s3.amazonaws.com/a?AWSAccessKeyId=AKIA1&Expires=1&Signature=abc%2Bdef%3D",
     "https://b.s3.amazonaws.com/a?AWSAccessKeyId=REDACTED&Expires=1&Signature=REDACTED"),
    ("https://storage.googleapis.com/b/o?x-goog-algorithm=GOOG4-RSA-SHA256&x-goog-credential=sa%40p.iam&"
     "x-goog-signature=0a1b2c",
     "https://storage.googleapis.com/b/o?x-goog-algorithm=GOOG4-RSA-SHA256&x-goog-credential=REDACTED&"
     "x-goog-signature=REDACTED"),
    # Azure SAS, OAuth tokens; a fragment and other parameters are kept
    ("https://acct.blob.core.windows.net/c/s.tar?sv=2022-11-02&sp=r&sig=AbC%2F123%3D#frag",
     "https://acct.blob.core.windows.net/c/s.tar?sv=2022-11-02&sp=r&sig=REDACTED#frag"),
    ("https://h/p?token=t0k&access_token=a1&page=2", "https://h/p?token=REDACTED&access_token=REDACTED&page=2"),
    # parameters whose names only contain a secret name are kept
    ("https://h/p?signature_version=4&tokens=3&mysig=1", "https://h/p?signature_version=4&tokens=3&mysig=1"),
    # URLs inside messages: quoted, repr'd by aiohttp/yarl, several in one line
    ("reading bytes 5-14 of https://u:p@h/a.tar?sig=S1: ClientResponseError: 503, message='Service Unavailable', "
     "url='https://h/a.tar?sig=S1'",
     "reading bytes 5-14 of https://REDACTED@h/a.tar?sig=REDACTED: ClientResponseError: 503, message='Service "
     "Unavailable', url='https://h/a.tar?sig=REDACTED'"),
    ("URL('http://u:p@127.0.0.1:8/x?Signature=abc')", "URL('http://REDACTED@127.0.0.1:8/x?Signature=REDACTED')"),
    # nothing to redact
    ("gs://bucket/sets/train/shard-000001.tar", "gs://bucket/sets/train/shard-000001.tar"),
    ("gs://bucket/path@v2/x.tar", "gs://bucket/path@v2/x.tar"),  # an '@' in the path is no userinfo
    ("/data/shards/train/manifest.json", "/data/shards/train/manifest.json"),
    ("mail me at someone@example.com", "mail me at someone@example.com"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_redact_url(text, expected):
    assert redact_url(text) == expected


def test_redact_url_takes_any_object():
    from pathlib import Path

    assert redact_url(Path("/a/b")) == "/a/b" and redact_url(None) == "None"


def test_retry_redacts_the_messages_it_raises():
    """The messages of a failed retry and of a permanent error re-raised by Retry, and what their tracebacks print
    (chained exceptions), hold no secret; the permanent error keeps its type."""
    import traceback

    url = "https://u:hunter2@h/a.tar?X-Amz-Signature=deadbeef"

    def text(e):
        return "".join(traceback.format_exception(type(e), e, e.__traceback__))

    def transient():
        raise ConnectionError(f"cannot connect to {url}")

    with pytest.raises(OSError) as e:
        Retry(attempts=2, sleep=lambda s: None)(f"reading {url}", transient)
    assert str(e.value) == ("reading https://REDACTED@h/a.tar?X-Amz-Signature=REDACTED: failed after 2 attempts: "
                            "ConnectionError: cannot connect to https://REDACTED@h/a.tar?X-Amz-Signature=REDACTED")
    assert "hunter2" not in text(e.value) and "deadbeef" not in text(e.value)

    def missing():
        raise FileNotFoundError(url)

    with pytest.raises(FileNotFoundError) as e:  # not retried (pytest.fail as the sleep), the type kept
        Retry(attempts=3, sleep=pytest.fail)(f"reading {url}", missing)
    assert str(e.value) == ("reading https://REDACTED@h/a.tar?X-Amz-Signature=REDACTED: no such object "
                            "(FileNotFoundError)")
    assert "hunter2" not in text(e.value) and "deadbeef" not in text(e.value)

    class LibraryError(Exception):  # a library's own HTTP error (aiohttp, gcsfs): an HTTP status, no OSError
        def __init__(self, status, url):
            super().__init__(f"{status}, message='Forbidden', url='{url}'")
            self.status = status

    def forbidden():
        raise LibraryError(403, url)

    with pytest.raises(PermissionError) as e:
        Retry(attempts=3, sleep=pytest.fail)("size of s3://bucket/a.tar", forbidden)
    assert str(e.value) == ("size of s3://bucket/a.tar: LibraryError: 403, message='Forbidden', "
                            "url='https://REDACTED@h/a.tar?X-Amz-Signature=REDACTED'")
    assert "hunter2" not in text(e.value) and "deadbeef" not in text(e.value)


def test_status_json_never_holds_a_secret(tmp_path):
    """Whatever error text reaches status.json (here not from the data code, which redacts its own messages), its
    credentials and signatures are redacted; the rest of the record stays valid JSON."""
    import json

    from vit_adapter_ds.engine.status import read_status, write_status

    write_status(tmp_path, "failed", error="OSError: https://alice:hunter2@h/x.tar?X-Amz-Signature=s3cr3t&part=1")
    text = (tmp_path / "status.json").read_text()
    assert "hunter2" not in text and "s3cr3t" not in text and "alice" not in text
    rec = read_status(tmp_path)
    assert rec["state"] == "failed" and "part=1" in rec["error"] and json.loads(text) == rec

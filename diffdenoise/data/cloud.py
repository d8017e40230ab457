"""``s3://`` and ``gs://`` objects through fsspec (``s3fs``, ``gcsfs``): an open stream,
and what a failure of their client libraries means for a fetch.

fsspec is the ecosystem's one interface to object stores (WebDataset's ``gopen`` has no
S3 or GCS client of its own and shells out to ``aws`` or ``gsutil``), and its backends read
the credentials a user already has: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_PROFILE`` / ``~/.aws`` / an instance role, and ``AWS_ENDPOINT_URL`` for an
S3-compatible store (MinIO, Ceph, R2); ``GOOGLE_APPLICATION_CREDENTIALS`` or ``gcloud auth
application-default login`` (``STORAGE_EMULATOR_HOST`` for a local GCS emulator). Both
retry a failed request a few times themselves; :mod:`~diffdenoise.data.remote`'s tries
come on top, within ``data.fetch_max_wait_s``.
"""

from __future__ import annotations

import logging

PACKAGES = {"s3": "s3fs", "gs": "gcsfs"}
# Modules whose exceptions are a failed request, not a bug in this program.
CLIENT_MODULES = {"botocore", "aiobotocore", "s3fs", "gcsfs", "google", "aiohttp", "fsspec"}
TRANSIENT_WORDS = ("Connection", "Timeout", "Throttl", "SlowDown", "ServerError", "Unavailable")

# gcsfs logs its last retry with a traceback; with no handler of the user's, Python's
# last-resort handler would print it beside the one line the fetch reports.
logging.getLogger("gcsfs").addHandler(logging.NullHandler())


class MissingBackend(ImportError):
    """The fsspec backend a scheme needs is not installed: a one-line message."""


def open_stream(url: str):
    """An open binary stream of the object ``url`` (its size is read on opening, so a
    missing object is a ``FileNotFoundError`` here, before any byte)."""
    scheme = url.split("://", 1)[0]
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except ImportError as err:
        package = PACKAGES.get(scheme, scheme)
        raise MissingBackend(
            f"{scheme}:// shards need {package} (pip install 'diffdenoise[cloud]'): {err}"
        ) from None


def is_client_error(err: BaseException) -> bool:
    """Whether ``err`` comes from a cloud client library (a request that failed)."""
    return type(err).__module__.split(".")[0] in CLIENT_MODULES


def is_transient(err: BaseException, transient_http: set[int]) -> bool:
    """Whether trying again may help: a connection or timeout failure, throttling, or an
    HTTP status in ``transient_http`` (:data:`~diffdenoise.data.remote.TRANSIENT_HTTP`);
    not a missing object, missing credentials or a refusal."""
    if isinstance(err, (FileNotFoundError, PermissionError)):
        return False
    status = getattr(err, "code", None) or _boto_status(err)
    if isinstance(status, int):
        return status in transient_http
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(word in type(err).__name__ for word in TRANSIENT_WORDS)


def _boto_status(err: BaseException) -> int | None:
    """The HTTP status of a botocore ``ClientError`` (None for other errors)."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None

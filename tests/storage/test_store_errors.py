"""Which object-store errors are the user's settings (exit 2 naming them) and which are
transient (their own OSError, so a retry or the traceback tells the truth). Messages as
pyarrow 25 passes them from the AWS SDK and curl."""

from __future__ import annotations

import pytest

from components.storage.store import _is_setup_error

SETUP = [
    "When getting information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject operation: No response body.",
    "When getting information for key 'x/y' in bucket 'bucket': AWS Error NETWORK_CONNECTION during HeadObject "
    "operation: curlCode: 7, Could not connect to server; Details: Failed to connect to 127.0.0.1 port 9 after 0 ms",
    "Bucket 'nope' not found: AWS Error NO_SUCH_BUCKET during HeadBucket operation",
    "AWS Error SIGNATURE_DOES_NOT_MATCH during ListObjectsV2 operation: The request signature we calculated does not match",
    "AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body.",
    "curlCode: 6, Couldn't resolve host name",
]
TRANSIENT = [
    "AWS Error UNKNOWN (HTTP status 503) during GetObject operation: Service Unavailable",
    "AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.",
    "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was reached",
    "AWS Error INTERNAL_FAILURE during PutObject operation: We encountered an internal error",
]


@pytest.mark.parametrize("message", SETUP)
def test_settings_errors_are_named_as_such(message):
    assert _is_setup_error(OSError(message))


@pytest.mark.parametrize("message", TRANSIENT)
def test_transient_errors_are_not_blamed_on_the_settings(message):
    assert not _is_setup_error(OSError(message))

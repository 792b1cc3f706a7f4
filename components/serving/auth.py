"""The search service's API token: where it comes from and when the service may run without one.

The token is read from the environment (``CHIPMATCH_SERVE_TOKEN``; on Kubernetes from a
secret), never from a config file or a command line, where it would end up in shell
history, process lists and Ray's stored deployment arguments. Clients send it as
``Authorization: Bearer <token>``; it is compared with `hmac.compare_digest`, whose time
does not depend on how many leading characters match.

Without a token the service refuses to start, unless it is asked for explicitly
(``insecure``) *and* it listens on a loopback address, where only this machine can reach it.
"""

from __future__ import annotations

import hmac
import ipaddress

from components.errors import ConfigError

TOKEN_ENV = "CHIPMATCH_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16   # `openssl rand -hex 32` gives 64; anything shorter than 16 is guessable
_MAKE_ONE = f"export {TOKEN_ENV}=$(openssl rand -hex 32)"


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback IP literal (127.0.0.0/8, ::1). Names such as
    'localhost' do not count: what they resolve to is the resolver's choice."""
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def require_token(host: str, token: str | None, insecure: bool) -> bool:
    """Whether the service must check a token (True whenever one is set); ConfigError when
    it must not start at all: no token, and not (`insecure` and a loopback `host`)."""
    if token:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"{TOKEN_ENV} is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH} "
                              f"random characters ({_MAKE_ONE})")
        return True
    if not insecure:
        raise ConfigError(f"the search service needs an API token and {TOKEN_ENV} is not set: {_MAKE_ONE} "
                          "(clients send it as 'Authorization: Bearer <token>'), or pass --insecure to run "
                          "without one on 127.0.0.1")
    if not is_loopback(host):
        raise ConfigError(f"--insecure is only allowed on a loopback host (127.0.0.1 or ::1), not on {host!r}: "
                          f"anyone who can reach {host!r} could search; set {TOKEN_ENV} instead ({_MAKE_ONE})")
    return False


def bearer_token_matches(authorization: str | None, expected: str) -> bool:
    """Whether an ``Authorization`` header carries `expected` as its bearer token."""
    if not authorization:
        return False
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8"), expected.encode("utf-8"))

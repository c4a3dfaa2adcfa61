"""Who a WebSocket connection is: authenticators, and myko's signed access tokens.

`MYKO["AUTHENTICATORS"]` lists authenticator classes by dotted path, like Django's
`AUTHENTICATION_BACKENDS`. When a WebSocket connects, the server asks each in order; the
first that knows the user wins, and a connection none of them knows is anonymous. Shipped:

- `SessionAuthenticator`: Django's session from the session cookie (what a logged-in
  browser sends), checked as Django's own `get_user` does (the auth hash must still
  match, so a password change logs out; the backend must still allow the user).
- `TokenAuthenticator`: a bearer token from the `Authorization: Bearer <token>` header or
  the `access_token` query parameter, as issued by `issue_token()` or
  `manage.py myko_token <username>`.

An authenticator has three methods, all called on one of the server's database threads
(blocking ORM calls are fine; they must not touch the event loop):

- `authenticate(scope) -> (user, credential) | None`: at connect. The user must be active
  and authenticated. `credential` is whatever `recheck` needs to tell later whether the
  connection may go on as that user (hashable and cheap to keep).
- `recheck(credentials) -> [user | None, ...]`: for every open connection it authenticated,
  in one call (the server calls it every `MYKO["AUTH_RECHECK_INTERVAL"]` seconds, default
  0.5): the user, loaded fresh from the database, for each credential that is still good,
  None for one that is not (logged out, expired, revoked, user deactivated or deleted).
  Batch it: a few queries for all credentials, not a few per connection. A connection whose
  credential is no longer good continues as anonymous (its subscriptions end with their
  "Permission denied" errors); one whose user's permissions, groups or fields changed
  continues as the fresh user.
- `authenticate_token(token) -> user | None`: the protocol's per-command `userToken`; None
  when this authenticator does not know the token.

Subclass `BaseAuthenticator` and list the class in `MYKO["AUTHENTICATORS"]` to add one.

Tokens are signed with Django's signing machinery (`SECRET_KEY`, honouring
`SECRET_KEY_FALLBACKS`) and carry the user's primary key, an expiry time
(`MYKO["TOKEN_MAX_AGE"]`, default 7 days, or the `max_age` given) and the user's current
token salt (`TokenSalt`): `revoke_tokens(user)` draws a new salt, which invalidates every
token issued to that user before, on open connections too.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib import auth as django_auth
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.core import signing
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import prefetch_related_objects
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.module_loading import import_string

from myko_django import conf
from myko_django.models import TokenSalt

__all__ = [
    "BaseAuthenticator",
    "SessionAuthenticator",
    "TokenAuthenticator",
    "issue_token",
    "load_users",
    "read_token",
    "revoke_tokens",
]


class BaseAuthenticator:
    """The interface (see the module docstring). The default knows nobody."""

    def authenticate(self, scope: dict) -> tuple[Any, Any] | None:
        return None

    def recheck(self, credentials: Sequence[Any]) -> list[Any]:
        return [None] * len(credentials)

    def authenticate_token(self, token: str) -> Any:
        return None


# ---- users ------------------------------------------------------------------------------


def _pk_key(pk: Any) -> str:
    """A user's primary key as sessions store it (and as dict keys here): a string."""
    return str(pk)


def _user_keys(pks: Iterable[Any]) -> set[Any]:
    """User primary keys in their Python form (ints or their strings); malformed ones out."""
    field = get_user_model()._meta.pk
    keys = set()
    for pk in pks:
        try:
            keys.add(field.to_python(pk))
        except ValidationError:
            continue
    return keys


def load_users(pks: Iterable[Any]) -> dict[str, Any]:
    """The users with these primary keys (any form: ints or their strings), fresh from the
    database in one query, by `str(pk)`; their groups come along (one more query) so that
    `user.groups.all()` needs no query later on the event loop. Unknown or malformed
    keys are left out."""
    keys = _user_keys(pks)
    if not keys:
        return {}
    model = get_user_model()
    users = model._default_manager.filter(pk__in=keys)
    if _has_groups(model):
        users = users.prefetch_related("groups")
    return {_pk_key(user.pk): user for user in users}


def _has_groups(model: Any) -> bool:
    try:
        model._meta.get_field("groups")
    except FieldDoesNotExist:
        return False
    return True


def _can_authenticate(user: Any) -> bool:
    """Active, as Django's ModelBackend requires (a user model without `is_active` is)."""
    return user is not None and getattr(user, "is_active", True) is not False


# ---- sessions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionCredential:
    session_key: str
    user_pk: str


class SessionAuthenticator(BaseAuthenticator):
    """Django's session, from the session cookie (`scope["session"]`, which
    `myko_django.routing.websocket_application()` puts in the scope).

    Valid while the session exists and has not expired, still names the same user, that
    user's session auth hash still matches (changing the password logs out, as in Django;
    `SECRET_KEY_FALLBACKS` hashes too) and the authentication backend that logged them in
    is still configured and still lets them in (`is_active` for `ModelBackend`). Sessions
    in the database (the `db` and `cached_db` engines) are rechecked in one query; other
    session engines are read one by one.
    """

    def authenticate(self, scope: dict) -> tuple[Any, Any] | None:
        session = scope.get("session")
        if session is None or not session.session_key:
            return None
        # Django's own logic (the auth hash, fallback keys, the backend's get_user).
        user = django_auth.get_user(SimpleNamespace(session=session))
        if user is None or not user.is_authenticated or not session.session_key:
            return None
        if _has_groups(type(user)):
            prefetch_related_objects([user], "groups")  # as load_users does
        return user, SessionCredential(session.session_key, _pk_key(user.pk))

    def recheck(self, credentials: Sequence[SessionCredential]) -> list[Any]:
        sessions = _read_sessions({c.session_key for c in credentials})
        wanted: dict[str, tuple[dict, SessionCredential]] = {}
        for credential in credentials:
            data = sessions.get(credential.session_key)
            if data is not None and _pk_key(data.get(SESSION_KEY)) == credential.user_pk:
                wanted[credential.session_key] = (data, credential)
        users = load_users({c.user_pk for _, c in wanted.values()})
        valid: dict[str, Any] = {}
        for key, (data, credential) in wanted.items():
            user = _session_user(data, users.get(credential.user_pk))
            if user is not None:
                valid[key] = user
        return [valid.get(c.session_key) for c in credentials]


def _read_sessions(keys: set[str]) -> dict[str, dict]:
    """The unexpired sessions among `keys`, decoded, by key."""
    store_class = import_string(settings.SESSION_ENGINE + ".SessionStore")
    if issubclass(store_class, DatabaseSessionStore):
        store = store_class()
        rows = store.model.objects.filter(session_key__in=keys, expire_date__gt=timezone.now())
        return {row.session_key: store.decode(row.session_data) for row in rows}
    found = {}
    for key in keys:
        data = store_class(key).load()  # {} when missing or expired
        if data:
            found[key] = data
    return found


def _session_user(data: dict, user: Any) -> Any:
    """Django's `get_user` for a session's data and its (freshly loaded) user, without its
    side effects: the user, or None when the session no longer logs them in."""
    if user is None:
        return None
    backend_path = data.get(BACKEND_SESSION_KEY)
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    backend = django_auth.load_backend(backend_path)
    if isinstance(backend, ModelBackend):
        if not backend.user_can_authenticate(user):
            return None
    elif backend.get_user(user.pk) is None:
        return None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = data.get(HASH_SESSION_KEY)
        if not session_hash:
            return None
        if not constant_time_compare(session_hash, user.get_session_auth_hash()) and not any(
            constant_time_compare(session_hash, fallback)
            for fallback in user.get_session_auth_fallback_hash()
        ):
            return None
    return user


# ---- tokens -----------------------------------------------------------------------------

_SIGNING_SALT = "myko_django.auth.token"


def _signer() -> signing.Signer:
    # "." separates payload and signature (neither uses it), so a token needs no escaping
    # in a header or a query string.
    return signing.Signer(salt=_SIGNING_SALT, sep=".", algorithm="sha256")


@dataclass(frozen=True)
class TokenCredential:
    """What a valid signature vouches for: the user, until when, and the user's token salt
    at the time it was issued."""

    user_pk: str
    expires: float
    salt: str
    password: str  # a fingerprint of the password hash: a password change ends the token


def _user_salt(user: Any) -> str:
    """The user's current token salt, made on first use."""
    salt = TokenSalt.objects.filter(user_id=user.pk).values_list("salt", flat=True).first()
    if salt is not None:
        return salt
    try:
        with transaction.atomic():
            return TokenSalt.objects.create(user_id=user.pk, salt=secrets.token_urlsafe(16)).salt
    except IntegrityError:  # made meanwhile by a concurrent issue_token
        return TokenSalt.objects.get(user_id=user.pk).salt


_PASSWORD_SALT = "myko_django.auth.token.password"


def _password_fingerprints(user: Any) -> list[str]:
    """HMACs of the user's password hash under SECRET_KEY and each of its fallbacks (as
    Django's session auth hash), so a password change ends every token issued before."""
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    password = user.password or ""
    return [
        salted_hmac(_PASSWORD_SALT, password, secret=key, algorithm="sha256").hexdigest()[:32]
        for key in keys
    ]


def issue_token(user: Any, max_age: float | None = None) -> str:
    """A signed access token for `user`, valid for `max_age` seconds (default
    `MYKO["TOKEN_MAX_AGE"]`) or until `revoke_tokens(user)`. Send it as
    `Authorization: Bearer <token>`, as the `access_token` query parameter of the WebSocket
    URL, or as a command's `userToken`."""
    if user is None or not getattr(user, "is_authenticated", False) or user.pk is None:
        raise ValueError("issue_token needs a saved user")
    max_age = conf.get("TOKEN_MAX_AGE") if max_age is None else max_age
    if not conf.EXPECTED["TOKEN_MAX_AGE"][0](max_age):  # a positive, finite number
        raise ValueError(f"max_age must be a positive number of seconds, not {max_age!r}")
    payload = {
        "u": _pk_key(user.pk),
        "e": round(time.time() + max_age, 3),
        "s": _user_salt(user),
        "p": _password_fingerprints(user)[0],
    }
    # Compact JSON, not sign_object's default, so the token stays short and stable.
    data = signing.b64_encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
    return _signer().sign(data)


def revoke_tokens(user: Any) -> None:
    """Invalidate every token issued to `user` so far (open connections using one continue
    as anonymous within `MYKO["AUTH_RECHECK_INTERVAL"]`); tokens issued later work."""
    TokenSalt.objects.update_or_create(
        user_id=user.pk, defaults={"salt": secrets.token_urlsafe(16)}
    )


def read_token(token: Any) -> TokenCredential | None:
    """What a token claims, if its signature is good and it has not expired (no database
    access: the salt and the user are checked by `TokenAuthenticator`)."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        return None
    try:
        data = _signer().unsign(token)
        payload = json.loads(signing.b64_decode(data.encode()))
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if not isinstance(payload, dict):
        return None
    pk, expires, salt = payload.get("u"), payload.get("e"), payload.get("s")
    password = payload.get("p")
    if not (isinstance(pk, str) and isinstance(salt, str) and isinstance(password, str)):
        return None
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return None
    if expires <= time.time():
        return None
    return TokenCredential(pk, float(expires), salt, password)


def _salts(pks: Iterable[str]) -> dict[str, str]:
    keys = _user_keys(pks)
    rows = TokenSalt.objects.filter(user_id__in=keys).values_list("user_id", "salt")
    return {_pk_key(pk): salt for pk, salt in rows}


class TokenAuthenticator(BaseAuthenticator):
    """A bearer token (`issue_token`, `manage.py myko_token`) from the
    `Authorization: Bearer <token>` header or the `access_token` query parameter.

    Valid until it expires, its user's tokens are revoked (`revoke_tokens`), or the user
    is deactivated or deleted. A token that does not check out makes this authenticator
    pass (the connection is anonymous unless a later one knows it)."""

    def authenticate(self, scope: dict) -> tuple[Any, Any] | None:
        token = self.token_from_scope(scope)
        if token is None:
            return None
        credential = read_token(token)
        if credential is None:
            return None
        user = self.recheck([credential])[0]
        return None if user is None else (user, credential)

    @staticmethod
    def token_from_scope(scope: dict) -> str | None:
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin1").strip().partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return token.strip()
        query = scope.get("query_string") or b""
        if isinstance(query, bytes):
            query = query.decode("latin1")
        values = parse_qs(query).get("access_token")
        return values[-1] if values else None

    def recheck(self, credentials: Sequence[TokenCredential]) -> list[Any]:
        now = time.time()
        live = [c for c in credentials if c.expires > now]
        salts = _salts({c.user_pk for c in live})
        good = [c for c in live if constant_time_compare(salts.get(c.user_pk, ""), c.salt)]
        users = load_users({c.user_pk for c in good})
        valid = {
            c: user
            for c in good
            if (user := users.get(c.user_pk)) is not None
            and any(constant_time_compare(c.password, f) for f in _password_fingerprints(user))
        }
        return [user if _can_authenticate(user := valid.get(c)) else None for c in credentials]

    def authenticate_token(self, token: str) -> Any:
        credential = read_token(token)
        return None if credential is None else self.recheck([credential])[0]

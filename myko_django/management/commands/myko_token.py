"""`manage.py myko_token <username> [--max-age SECONDS] [--revoke]`: print an access token
for a user (for non-browser clients: `Authorization: Bearer <token>`), or revoke all of
theirs."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from myko_django import conf
from myko_django.auth import issue_token, revoke_tokens


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Print a signed access token for a user, for WebSocket clients without a browser "
        "session (send it as 'Authorization: Bearer <token>' or ?access_token=<token>). "
        "--revoke invalidates every token issued to the user instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the user's USERNAME_FIELD value")
        parser.add_argument(
            "--max-age",
            type=_positive,
            default=None,
            metavar="SECONDS",
            help="how long the token is valid (default: MYKO['TOKEN_MAX_AGE'], "
            f"{conf.DEFAULTS['TOKEN_MAX_AGE']} s unless set)",
        )
        parser.add_argument(
            "--revoke",
            action="store_true",
            help="revoke every token of this user (open connections using one continue "
            "as anonymous) instead of issuing one",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(options["username"])
        except model.DoesNotExist:
            raise CommandError(f"No user {options['username']!r}") from None
        if options["revoke"]:
            revoke_tokens(user)
            self.stderr.write(f"Revoked every token of {options['username']}.")
            return
        if not user.is_active:
            raise CommandError(f"{options['username']} is inactive: a token would not work")
        self.stdout.write(issue_token(user, max_age=options["max_age"]))

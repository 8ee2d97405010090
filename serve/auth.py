"""Bearer tokens: HS256 JWTs naming the viewer (``sub``), signed with a shared secret (PyJWT).

A missing, forged or expired token is 401; a valid token for user A asking for B's feed is 403.

Example::

    >>> auth = TokenAuth("s3cret-s3cret-s3cret-s3cret-s3cret!")
    >>> auth.viewer("Bearer " + auth.mint(42, ttl_s=60))
    42
"""

from __future__ import annotations

import os
import time

import jwt

from serve.config import AuthConfig

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


class AuthError(Exception):
    """``status`` 401 (no valid token) or 403 (valid token, someone else's data)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class TokenAuth:
    def __init__(self, secret: str, issuer: str = "ray-feed", leeway_s: int = 30) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        self.secret = secret
        self.issuer = issuer
        self.leeway_s = leeway_s

    @classmethod
    def from_config(cls, cfg: AuthConfig) -> TokenAuth:
        secret = cfg.secret or os.environ.get(cfg.secret_env)
        if not secret:
            raise ValueError(f"no JWT secret: set {cfg.secret_env} (or auth.secret in the serve config)")
        return cls(secret, cfg.issuer, cfg.leeway_s)

    def mint(self, user_id: int, ttl_s: float = 3600) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "iat": now, "exp": now + int(ttl_s), "iss": self.issuer}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def viewer(self, authorization: str | None) -> int:
        """The user id a ``Authorization: Bearer <jwt>`` header names; :class:`AuthError` 401 otherwise."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "missing bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token expired") from None
        except jwt.InvalidTokenError as e:
            raise AuthError(401, f"invalid token: {e}") from None
        try:
            return int(claims["sub"])
        except ValueError:
            raise AuthError(401, "invalid token: sub is not a user id") from None

    def authorize(self, authorization: str | None, user_id: int) -> int:
        viewer = self.viewer(authorization)
        if viewer != user_id:
            raise AuthError(403, "this token is for another user")
        return viewer


def main(argv: list[str] | None = None) -> None:
    """``python -m serve.auth USER_ID [--ttl-s S] [--secret-env NAME]``: print a bearer token for USER_ID,
    signed with the secret in ``$FEED_JWT_SECRET`` (argparse: serving imports no CLI framework)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m serve.auth", description=main.__doc__)
    parser.add_argument("user_id", type=int)
    parser.add_argument("--ttl-s", type=float, default=3600.0, help="Lifetime of the token in seconds.")
    parser.add_argument(
        "--secret-env", default="FEED_JWT_SECRET", help="Environment variable with the secret."
    )
    args = parser.parse_args(argv)
    secret = os.environ.get(args.secret_env)
    if not secret:
        sys.exit(f"set {args.secret_env} to the feed's secret")
    sys.stdout.write(TokenAuth(secret).mint(args.user_id, args.ttl_s) + "\n")


if __name__ == "__main__":
    main()

"""`--auth jwt`: `Authorization: Bearer <token>` verified with PyJWT.

Keys: an HS256 secret (`--jwt-secret`, which also signs `--accounts`' login tokens), an
RSA or EC public key (`--jwt-public-key`, PEM), or a JSON Web Key Set (`--jwks-file`,
keys chosen by the token's `kid`). The algorithm is chosen by the key, never by the
token: an `HS*` token is checked only against the secret, anything else only against a
public key, with that key's algorithms as PyJWT's allow-list, so `alg: none` and an
HS256 token "signed" with a public key's bytes are refused. `exp` and `sub` are
required, `nbf` is honoured, `aud` and `iss` are checked when configured. The subject
is the caller (a user); the `scope` claim (space-separated) gives its scopes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine.access import Principal
from engine.errors import Unauthorized
from gateway.config import Settings
from gateway.token_cache import TokenCache
from persistence.node_secret import load_or_create_secret

HMAC_ALGORITHMS = ("HS256",)
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
EC_ALGORITHMS = {"secp256r1": ("ES256",), "secp384r1": ("ES384",), "secp521r1": ("ES512",)}
REQUIRED_CLAIMS = ["exp", "sub"]


class InvalidToken(Unauthorized):
    """A bearer token that does not verify; `challenge` is its WWW-Authenticate value."""

    def __init__(self, message: str, code: str = "invalid_token") -> None:
        super().__init__(message, code)
        description = message.replace("\\", "").replace('"', "'")
        self.challenge = f'Bearer error="invalid_token", error_description="{description}"'


@dataclass(frozen=True)
class VerifyKey:
    key: Any  # a cryptography public key, a PyJWK, or the secret's bytes
    algorithms: tuple[str, ...]


# PyJWT's refusals, most specific first, as (class, our code, what we say).
_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "the token is not valid yet (nbf)"),
    (jwt.InvalidAudienceError, "invalid_audience", "the token is not for this audience"),
    (jwt.InvalidIssuerError, "invalid_issuer", "the token is not from the expected issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim", "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "invalid_signature", "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "invalid_algorithm", "the token's algorithm is not accepted"),
)


def _refusal(exc: jwt.PyJWTError) -> InvalidToken:
    for kind, code, message in _REFUSALS:
        if isinstance(exc, kind):
            return InvalidToken(f"{message}: {exc}", code)
    return InvalidToken(f"the token is not valid: {exc}")


class JwtAuth:
    """The `jwt` authenticator (see module docstring); verified tokens are cached."""

    def __init__(
        self,
        secret: bytes | None = None,
        public_keys: Mapping[str | None, VerifyKey] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        cache: TokenCache | None = None,
    ) -> None:
        self._secret = VerifyKey(secret, HMAC_ALGORITHMS) if secret else None
        self._public = dict(public_keys or {})
        self._audience = audience
        self._issuer = issuer
        self._cache = cache if cache is not None else TokenCache()

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtAuth:
        return cls(
            node_secret(settings),
            load_public_keys(settings.jwt_public_key, settings.jwks_file),
            settings.jwt_audience or None,
            settings.jwt_issuer or None,
        )

    def authenticate(self, request: web.Request) -> Principal | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None  # no bearer token: another authenticator's credential, or none
        token = token.strip()
        if not token:
            raise InvalidToken("the bearer token is empty")
        return self._cache.get(token) or self.verify(token)

    def verify(self, token: str) -> Principal:
        try:
            key = self._key_for(jwt.get_unverified_header(token))
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None
        subject = claims["sub"]
        if not subject:
            raise InvalidToken("the token's subject (sub) is empty")
        principal = Principal(subject, "user", _scopes(claims.get("scope")))
        self._cache.put(token, principal, float(claims["exp"]))
        return principal

    def _key_for(self, header: dict[str, Any]) -> VerifyKey:
        algorithm = header.get("alg")
        if isinstance(algorithm, str) and algorithm.upper().startswith("HS"):
            if self._secret is None:
                raise jwt.InvalidAlgorithmError("HS tokens are not accepted: no secret is set")
            return self._secret
        if None in self._public:  # one PEM key: whatever the kid says
            return self._public[None]
        kid = header.get("kid")
        if kid is None and len(self._public) == 1:
            return next(iter(self._public.values()))
        if not self._public:
            raise jwt.InvalidAlgorithmError(f"{algorithm} tokens are not accepted: no public key")
        key = self._public.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken(f"no key in the JWKS has kid {kid!r}", "unknown_key")
        return key


def _scopes(claim: object) -> frozenset[str]:
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list):
        return frozenset(s for s in claim if isinstance(s, str))
    return frozenset()


def node_secret(settings: Settings) -> bytes | None:
    """The HS256 secret: `--jwt-secret`, or with `--accounts` the data dir's own (made
    on first start, so tokens outlive a restart); None when neither applies."""
    if settings.jwt_secret:
        return settings.jwt_secret.encode()
    if settings.accounts:
        return load_or_create_secret(settings.data_dir / "jwt-secret")
    return None


def load_public_keys(pem: Path | None, jwks: Path | None) -> dict[str | None, VerifyKey]:
    """Verification keys by kid (None for a PEM key); ValueError if a file holds none."""
    if pem is not None and jwks is not None:
        raise ValueError("give --jwt-public-key or --jwks-file, not both")
    if pem is not None:
        return {None: _pem_key(pem)}
    if jwks is not None:
        return dict(_jwks(jwks))
    return {}


def _pem_key(path: Path) -> VerifyKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if isinstance(key, rsa.RSAPublicKey):
        return VerifyKey(key, RSA_ALGORITHMS)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return VerifyKey(key, EC_ALGORITHMS[key.curve.name])
    raise ValueError(f"{path}: expected an RSA or EC (P-256, P-384, P-521) public key")


def _jwks(path: Path) -> dict[str | None, VerifyKey]:
    try:
        keys = jwt.PyJWKSet.from_json(path.read_text()).keys
    except (jwt.PyJWTError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a usable JWKS: {exc}") from None
    found: dict[str | None, VerifyKey] = {}
    for jwk in keys:
        if jwk.algorithm_name.upper().startswith("HS") or jwk.algorithm_name == "none":
            raise ValueError(f"{path}: only public keys belong here; an HS secret is --jwt-secret")
        if jwk.key_id is None and len(keys) > 1:
            raise ValueError(f"{path}: with several keys, each needs a kid")
        found[jwk.key_id] = VerifyKey(jwk, (jwk.algorithm_name,))
    return found

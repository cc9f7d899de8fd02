"""Built-in accounts (`--accounts`): register, log in, who am I."""

from __future__ import annotations

import math

from aiohttp import web

from engine.errors import NotFound, Unauthorized
from gateway.accounts import Accounts
from gateway.codec import json_response, read_body
from gateway.errors import error_response
from gateway.keys import ACCOUNTS, LOGIN_LIMITER, PRINCIPAL
from gateway.openapi import describe
from gateway.schemas import Login, Register, TokenOut, UserOut
from persistence.accounts import Account

routes = web.RouteTableDef()
BASE = "/api/auth"


@routes.post(BASE + "/register")
@describe(
    "Register a built-in account and sign in", body=Register, response=TokenOut, errors=[404, 409]
)
async def register(request: web.Request) -> web.StreamResponse:
    accounts = _accounts(request)
    body = await read_body(request, Register)
    refused = _limited(request, None)  # a hash costs as much as a login attempt
    if refused is not None:
        return refused
    account = await accounts.register(body.email, body.password, body.name)
    return _signed_in(accounts, account)


@routes.post(BASE + "/login")
@describe(
    "Sign in: a bearer token for the account", body=Login, response=TokenOut, errors=[401, 404]
)
async def login(request: web.Request) -> web.StreamResponse:
    accounts = _accounts(request)
    body = await read_body(request, Login)
    refused = _limited(request, body.email.strip().lower())
    if refused is not None:
        return refused
    return _signed_in(accounts, await accounts.login(body.email, body.password))


@routes.get(BASE + "/me")
@describe("The signed-in account", response=UserOut, errors=[404])
async def me(request: web.Request) -> web.StreamResponse:
    accounts = _accounts(request)
    principal = request[PRINCIPAL]
    if principal.kind == "anonymous" or principal.user_id is None:
        raise Unauthorized("sign in to see your account (Authorization: Bearer <token>)")
    account = await accounts.account(principal.user_id)
    if account is None:
        raise NotFound(f"user {principal.user_id} has no built-in account")
    return json_response(_user(account))


def _accounts(request: web.Request) -> Accounts:
    accounts = request.app.get(ACCOUNTS)
    if accounts is None:
        raise NotFound("built-in accounts are off on this node (--accounts turns them on)")
    return accounts


def _limited(request: web.Request, email: str | None) -> web.StreamResponse | None:
    wait = request.app[LOGIN_LIMITER].attempt(email, request.remote or "")
    if not wait:
        return None
    response = error_response(429, "too_many_attempts", "too many attempts; try again later")
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


def _signed_in(accounts: Accounts, account: Account) -> web.StreamResponse:
    token = accounts.tokens.issue(account.user_id)
    return json_response(TokenOut(token, "bearer", accounts.tokens.ttl_seconds, _user(account)))


def _user(account: Account) -> UserOut:
    return UserOut(account.user_id, account.email, account.name, account.created_at)

"""Branches: create, list, get, messages (the leaf's lineage), update, delete."""

from __future__ import annotations

from aiohttp import web

from engine.actor import ConversationActor
from gateway.codec import json_response, path_id, read_body, uuid_str
from gateway.keys import CONVERSATIONS, PRINCIPAL
from gateway.listings import answer_cached, path_listing
from gateway.openapi import MESSAGES, describe
from gateway.paging import page_of
from gateway.responses import Listing
from gateway.schemas import BranchOut, CreateBranch, Deleted, UpdateBranch, branch_out

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}/branches"


@routes.post(BASE)
@describe("Create a branch", body=CreateBranch, response=BranchOut)
async def create(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, CreateBranch)
    principal = request[PRINCIPAL]
    author = principal.author(body.created_by)

    async def apply(actor: ConversationActor) -> web.StreamResponse:
        branch = await actor.create_branch(
            principal, name=body.branch_name, leaf_id=str(body.leaf_message_id), created_by=author
        )
        return json_response(branch_out(actor.id, branch))

    return await request.app[CONVERSATIONS].run(principal, conversation_id, apply)


@routes.get(BASE)
@describe("List a conversation's branches", response=list[BranchOut])
async def list_(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    actor = await request.app[CONVERSATIONS].get(request[PRINCIPAL], conversation_id)
    return json_response([branch_out(actor.id, b) for b in actor.branches()])


@routes.get(BASE + "/{branch_id}")
@describe("Get a branch", response=BranchOut)
async def get(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    actor = await request.app[CONVERSATIONS].get(request[PRINCIPAL], conversation_id)
    return json_response(branch_out(actor.id, actor.branch(path_id(request, "branch_id"))))


@routes.get(BASE + "/{branch_id}/messages")
@describe("A branch's messages: root..leaf", response=MESSAGES, paged=True)
async def messages(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    branch_id = path_id(request, "branch_id")
    page = page_of(request)

    async def build() -> Listing:
        actor = await request.app[CONVERSATIONS].get(request[PRINCIPAL], conversation_id)
        branch = actor.branch(branch_id)
        return path_listing(actor.id, actor.lineage(branch.leaf_message_id), page)

    return await answer_cached(request, conversation_id, page, build)


@routes.put(BASE + "/{branch_id}")
@describe("Rename or move a branch", body=UpdateBranch, response=BranchOut)
async def update(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    branch_id = path_id(request, "branch_id")
    body = await read_body(request, UpdateBranch)
    principal = request[PRINCIPAL]

    async def apply(actor: ConversationActor) -> web.StreamResponse:
        branch = await actor.update_branch(
            principal, branch_id, name=body.branch_name, leaf_id=uuid_str(body.leaf_message_id)
        )
        return json_response(branch_out(actor.id, branch))

    return await request.app[CONVERSATIONS].run(principal, conversation_id, apply)


@routes.delete(BASE + "/{branch_id}")
@describe("Delete a branch", response=Deleted)
async def delete(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    branch_id = path_id(request, "branch_id")
    principal = request[PRINCIPAL]
    await request.app[CONVERSATIONS].run(
        principal, conversation_id, lambda actor: actor.delete_branch(principal, branch_id)
    )
    return json_response(Deleted("Branch deleted successfully"))

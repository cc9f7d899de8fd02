"""Who is calling, and what they may do with a conversation: decided in memory.

The gateway's authentication middleware makes one `Principal` per request and passes
it to every engine call; nothing in the engine reads headers or trusts a body's
`created_by`. A conversation's owner may do everything; a share grants `read`,
`branch` (also append and move branches) or `fork` (also fork); `is_public` grants
`read` to any authenticated caller. What the caller may not see answers 404 (no
existence leak); what they see but may not change answers 403.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.errors import Forbidden, InvalidInput, NotFound
from persistence.records import Conversation, Share

Kind = Literal["user", "service", "anonymous"]
Level = int  # READ < BRANCH < FORK < OWNER

READ, BRANCH, FORK, OWNER = 1, 2, 3, 4
SHARE_LEVELS = {"read": READ, "branch": BRANCH, "fork": FORK}  # a share's permission
LEVEL_NAMES = {READ: "read", BRANCH: "branch", FORK: "fork", OWNER: "owner"}
WRITE_SCOPES = frozenset({"write", "canopy:write"})
# Scopes Canopy reads; others (an identity provider's "openid email") restrict nothing.
CANOPY_SCOPES = WRITE_SCOPES | {"read", "canopy:read"}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request.

    - `user`: an authenticated end user (a JWT's subject, a built-in account).
    - `service`: a trusted backend (an API key). Without `user_id` it may do everything;
      acting for a user (`X-Canopy-User`) it has that user's permissions, and it may
      still name any `created_by`.
    - `anonymous`: no authentication configured (`--auth none`, loopback): nothing is
      checked, as in seed 000; `user_id` is the `X-Canopy-User` header if one was sent.

    `scopes` come from the credential; when it carries Canopy's (`read`, `write`, or
    `canopy:` ones), a mutation needs `write`.
    """

    user_id: str | None
    kind: Kind
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def checked(self) -> bool:
        """Whether permissions apply to this caller at all."""
        return self.kind != "anonymous" and not (self.kind == "service" and self.user_id is None)

    def level(self, meta: Conversation, shares: dict[str, Share]) -> Level | None:
        """What this caller may do with the conversation; None if they may not see it."""
        if not self.checked or self.user_id == meta.created_by:
            return OWNER
        share = shares.get(self.user_id)  # type: ignore[arg-type]  # checked: a user id
        level = SHARE_LEVELS.get(share.permission) if share is not None else None
        if meta.is_public:
            return max(level or READ, READ)
        return level

    def require(
        self, meta: Conversation, shares: dict[str, Share], need: Level, what: str = ""
    ) -> Level:
        """The caller's level, at least `need`: NotFound if they may not see the
        conversation, Forbidden if they see it but may not do this."""
        level = self.level(meta, shares)
        if level is None:
            raise NotFound(f"conversation {meta.conversation_id} not found")
        if need > READ:
            self.require_write()
        if level < need:
            raise Forbidden(
                "permission_denied",
                f"{what or 'this'} needs {LEVEL_NAMES[need]} permission on conversation "
                f"{meta.conversation_id}; you have {LEVEL_NAMES[level]}",
            )
        return level

    def require_write(self) -> None:
        """Forbidden if the credential may only read (Canopy scopes, none to write)."""
        if self.scopes & CANOPY_SCOPES and not self.scopes & WRITE_SCOPES:
            raise Forbidden("insufficient_scope", "this credential may only read (no write scope)")

    def author(self, claimed: str | None, field_name: str = "created_by") -> str:
        """Who a new row is by: the caller. A user (or a service acting for one) that
        names someone else is refused; a service and an unchecked caller name anyone."""
        if self.kind == "user" and claimed is not None and claimed != self.user_id:
            raise Forbidden(
                "author_mismatch", f"{field_name} must be you ({self.user_id}) or left out"
            )
        if claimed is not None:
            return claimed
        if self.user_id is None:
            raise InvalidInput(f"{field_name} is required")
        return self.user_id

    def may_list(self, user_id: str) -> bool:
        """Whether the caller may list `user_id`'s conversations: that user, or a service
        acting for nobody (one acting for a user has that user's permissions)."""
        return not self.checked or self.user_id == user_id


ANONYMOUS = Principal(None, "anonymous")  # --auth none, no X-Canopy-User
SYSTEM = Principal(None, "service")  # the node itself, and trusted backends

"""A chat frontend's day against one Canopy node (locust, FastHttpUser).

Each simulated user owns a conversation: opens the sidebar, opens the conversation,
appends a user message and the assistant's reply, reads the lineage, and sometimes
branches, forks or shares. Run headless and bounded with `make loadtest`.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from locust import FastHttpUser, between, task

API = "/api/v1"
REPLY = "Sure. " + "Here is a longer assistant answer with some detail. " * 6


class ChatUser(FastHttpUser):  # type: ignore[misc]
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.user_id = f"user-{uuid.uuid4().hex[:12]}"
        self.conversation_id = ""
        self.leaf = ""
        self.new_conversation()

    def post(self, path: str, body: dict[str, Any], name: str) -> Any:
        with self.client.post(API + path, json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return None
            return response.json()

    def new_conversation(self) -> None:
        created = self.post(
            "/conversations", {"title": "chat", "created_by": self.user_id}, "create"
        )
        if created is None:
            return
        self.conversation_id = created["conversation_id"]
        tree = self.client.get(
            f"{API}/conversations/{self.conversation_id}/tree", name="tree"
        ).json()
        self.leaf = tree["messages"][-1]["message_id"]

    def append(self, role: str, text: str) -> None:
        body = {
            "parent_message_id": self.leaf,
            "role": role,
            "content": {"type": "text", "text": text},
            "created_by": self.user_id,
        }
        message = self.post(f"/conversations/{self.conversation_id}/messages", body, "append")
        if message is not None:
            self.leaf = message["message_id"]

    @task(10)
    def chat_turn(self) -> None:
        """Sidebar, open the conversation, user message, assistant reply, lineage."""
        base = f"{API}/conversations/{self.conversation_id}"
        self.client.get(f"{API}/users/{self.user_id}/conversations", name="sidebar")
        self.client.get(base, name="conversation")
        self.append("user", f"question {random.randrange(10**6)}")
        self.append("assistant", REPLY)
        self.client.get(f"{base}/messages/{self.leaf}/lineage", name="lineage")

    @task(2)
    def branch(self) -> None:
        body = {"branch_name": "alt", "leaf_message_id": self.leaf, "created_by": self.user_id}
        self.post(f"/conversations/{self.conversation_id}/branches", body, "branch")

    @task(1)
    def fork(self) -> None:
        body = {"title": "fork", "created_by": self.user_id}
        self.post(f"/conversations/{self.conversation_id}/messages/{self.leaf}/fork", body, "fork")

    @task(1)
    def share(self) -> None:
        body = {"shared_with": "teammate", "permission": "read", "shared_by": self.user_id}
        self.post(f"/conversations/{self.conversation_id}/share", body, "share")

    @task(1)
    def start_over(self) -> None:
        self.new_conversation()

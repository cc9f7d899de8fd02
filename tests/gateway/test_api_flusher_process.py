"""The API contract with the write-behind in a flusher process (`--flusher-process`):
some of the restart and sidebar tests again, on Cassandra + Redis, the node's flusher a
child (the restarts recover through the flusher process; the sidebar's hot listing learns
from it what is stored)."""

from __future__ import annotations

from typing import Any

import pytest
from test_api_restart import (  # noqa: F401 - collected here, on this module's backend
    test_a_graceful_close_leaves_no_journal_record_to_replay,
    test_deleted_conversation_stays_not_found_after_restart,
    test_restart_serves_identical_state,
    test_writes_continue_after_restart,
)
from test_sidebar import (  # noqa: F401
    test_paging_while_messages_arrive_sees_each_conversation_once,
    test_shared_conversations_come_with_their_permission,
)

from tests.conftest import FLUSHER_PROCESS, emptied


@pytest.fixture
def backend() -> dict[str, Any]:
    return emptied(FLUSHER_PROCESS)

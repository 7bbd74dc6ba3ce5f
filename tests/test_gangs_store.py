"""The store's part of gangs, as contract cases a second backend runs too (``GangStoreContract``), and the
requirement's ``nodes`` round trip."""

from __future__ import annotations

import json
from pathlib import Path

from mloc_server.services.scheduler import Requirement
from mloc_server.store import SqliteStore, Store
from mloc_server.store.records import GangMember

from tests.test_store_contract import T0, StoreUnderTest, agent, new_task

MEMBERS = [GangMember("a1", (0,)), GangMember("a2", (1, 2))]


class GangStoreContract(StoreUnderTest):

    async def test_a_gang_claim_leases_to_every_member_at_one_epoch_once(self, store: Store) -> None:
        await store.write(lambda tx: tx.insert_task(new_task("t1")))
        claimed = await store.write(lambda tx: tx.claim_gang("t1", MEMBERS, "lan", "poll-9", T0 + 5))
        assert claimed is not None and (claimed.epoch, claimed.attempt) == (1, 1)
        t = await store.get_task("t1")
        assert t is not None and (t.state, t.agent_id, t.epoch) == ("running", "a1", 1)
        assert json.loads(t.gang or "{}") == {"network": "lan", "members": [
            {"agent_id": "a1", "gpus": [0]}, {"agent_id": "a2", "gpus": [1, 2]}]}
        assert await store.write(lambda tx: tx.claim_gang("t1", MEMBERS, "lan", "poll-10", T0 + 6)) is None
        (attempt,) = await store.task_attempts("t1")
        assert json.loads(attempt.members or "[]") == ["a1", "a2"] and attempt.agent_id == "a1"

    async def test_one_requeue_ends_the_gang_attempt_and_the_next_claim_is_a_new_epoch(self, store: Store) -> None:
        await store.write(lambda tx: tx.insert_task(new_task("t1")))
        await store.write(lambda tx: tx.claim_gang("t1", MEMBERS, "lan", "poll-1", T0 + 5))
        assert await store.write(lambda tx: tx.requeue_task("t1", 1, "member lost", T0 + 6, T0 + 6)) == "queued"
        again = await store.write(lambda tx: tx.claim_gang("t1", MEMBERS[::-1], "lan", "poll-2", T0 + 7))
        assert again is not None and (again.epoch, again.attempt) == (2, 2)
        first, second = await store.task_attempts("t1")
        assert (first.outcome, second.outcome) == ("lost", None)
        assert json.loads(second.members or "[]") == ["a2", "a1"]

    async def test_an_agents_network_and_addresses_round_trip(self, store: Store) -> None:
        await store.write(lambda tx: tx.save_agent(agent("a1", network="lab-a", addresses=["198.51.100.66"])))
        (row,) = await store.all_agents()
        assert (row.network, row.addresses) == ("lab-a", ["198.51.100.66"])


class TestSqliteGangStore(GangStoreContract):
    def make_store(self, data_dir: Path) -> Store:
        return SqliteStore.at(str(data_dir / "mloc.db"))


def test_a_requirement_keeps_its_node_count_through_json() -> None:
    req = Requirement(task_type="sft", gpus=1, nodes=4)
    assert Requirement.from_json(req.to_json()) == req
    assert "nodes" not in json.loads(Requirement(task_type="sft").to_json())  # one node: as before
    assert "on each of 4 agents in one network" in req.describe()

"""Store round trips are counted per service and command (`pathway_store_commands_total`)."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry

from services.common.settings import MongoSettings
from services.common.store import CommandCounter, Store, Tx, make_client


async def test_each_store_command_is_counted_once_by_its_name(mongo_url: str) -> None:
    registry = CollectorRegistry()
    client = make_client(MongoSettings(url=mongo_url), commands=CommandCounter("probe", registry))
    store = Store(client, f"commands_{uuid.uuid4().hex[:10]}", "probe")

    def count(command: str) -> float:
        value = registry.get_sample_value(
            "pathway_store_commands_total", {"service": "probe", "command": command}
        )
        return value or 0.0

    try:
        await store.db["things"].insert_one({"_id": "a"})
        await store.db["things"].find_one({"_id": "a"})
        await store.db["things"].update_one({"_id": "b"}, {"$set": {"n": 1}}, upsert=True)
        assert (count("insert"), count("find"), count("update")) == (1, 1, 1)

        async def work(tx: Tx) -> None:
            await tx.db["things"].update_one({"_id": "a"}, {"$set": {"n": 2}}, session=tx.session)

        await store.transact(work, cause_id="cause-1")
        # A unit of work: the processed mark, the change, and the commit.
        assert (count("insert"), count("update"), count("commitTransaction")) == (2, 2, 1)
    finally:
        await client.drop_database(store.db.name)
        await client.close()


async def test_a_client_without_a_counter_still_connects(mongo_url: str) -> None:
    client = make_client(MongoSettings(url=mongo_url))
    try:
        await client.admin.command("ping")
    finally:
        await client.close()

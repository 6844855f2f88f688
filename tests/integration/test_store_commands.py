"""Store round trips are counted per service and command (`pathway_store_commands_total`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from services.common.settings import MongoSettings
from services.common.store import MARKED_AT, PROCESSED, CommandCounter, Store, Tx, make_client


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


async def test_processed_marks_expire_after_the_retention_in_wall_time(mongo_url: str) -> None:
    client = make_client(MongoSettings(url=mongo_url))
    name = f"retention_{uuid.uuid4().hex[:10]}"
    try:
        store = Store(client, name, "probe", processed_retention=timedelta(days=3))
        await store.ensure_kit_indexes()
        indexes = await store.db[PROCESSED].index_information()
        assert indexes[f"{MARKED_AT}_1"]["expireAfterSeconds"] == 3 * 86400

        async def work(tx: Tx) -> None:
            return None

        # A unit of work on a simulated clock years back: the mark expires by the wall clock.
        await store.transact(work, cause_id="cause-1", now=datetime(2020, 1, 1, tzinfo=UTC))
        mark = await store.db[PROCESSED].find_one({"_id": "cause-1"})
        assert mark is not None
        assert mark["at"] == datetime(2020, 1, 1, tzinfo=UTC)
        assert abs(mark[MARKED_AT] - datetime.now(UTC)) < timedelta(minutes=1)

        # The setting changed: the next start changes the index rather than failing.
        longer = Store(client, name, "probe", processed_retention=timedelta(days=5))
        await longer.ensure_kit_indexes()
        indexes = await store.db[PROCESSED].index_information()
        assert indexes[f"{MARKED_AT}_1"]["expireAfterSeconds"] == 5 * 86400
        await longer.ensure_kit_indexes()  # and again, unchanged: nothing to do
    finally:
        await client.drop_database(name)
        await client.close()

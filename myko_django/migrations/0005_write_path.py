"""Issue 14: events are committed without a position into myko_pending_event and given
their positions right after commit, by myko_position_pending() (myko_django/log/append.py
says why and how)."""

from django.db import migrations, models

# "myko" in ASCII: the advisory lock that serializes positioning runs (log/append.py).
LOCK_KEY = 0x6D796B6F
# Seconds between a waiting writer's first checks (below), doubling up to POLL_MAX: a
# run takes about one WAL flush, and many writers checking often would take the CPU the
# run needs.
POLL = 0.0005
POLL_MAX = 0.004

# One positioning run in one call (a plan cached by PL/pgSQL; called on its own, in
# autocommit, a whole transaction in one round trip): take the lock, then in new
# statements, which see every run committed before: when `mine` (pending ids) is given and
# none of them is pending any more, return the head alone (a run took them while we
# waited: no write, so no WAL flush); else move up to `lim` committed pending events,
# lowest ids first, into the log after its head. Returns the head before the move, then
# one row per event moved.
FUNCTION = f"""
CREATE OR REPLACE FUNCTION myko_position_pending(lim integer, mine bigint[])
RETURNS TABLE (o_head bigint, o_position bigint, o_item_type varchar, o_item_id varchar,
               o_change_type varchar, o_item jsonb)
LANGUAGE plpgsql VOLATILE
-- The pending table is small but churns: through its primary key, dead rows that vacuum
-- has not removed yet cost little; read whole, every run reads them all.
SET enable_seqscan = off
AS $$
DECLARE
    pause float8 := {POLL};
BEGIN
    IF mine IS NULL THEN
        PERFORM pg_advisory_xact_lock({LOCK_KEY});
    ELSE
        -- A writer does not queue for the lock (most would find a run took their events
        -- while they waited): it takes the lock if free, else checks every POLL whether a
        -- run took its events (each check a new statement: it sees the latest commits).
        LOOP
            EXIT WHEN pg_try_advisory_xact_lock({LOCK_KEY});
            IF NOT EXISTS (SELECT 1 FROM myko_pending_event p WHERE p.id = ANY(mine)) THEN
                RETURN QUERY SELECT COALESCE(MAX(e.position), 0), NULL::bigint,
                    NULL::varchar, NULL::varchar, NULL::varchar, NULL::jsonb
                    FROM myko_event e;
                RETURN;
            END IF;
            PERFORM pg_sleep(pause);
            pause := LEAST(pause * 2, {POLL_MAX});
        END LOOP;
    END IF;
    RETURN QUERY
    WITH moved AS (
        DELETE FROM myko_pending_event
        WHERE txid IN (SELECT p.txid FROM myko_pending_event p ORDER BY p.id LIMIT lim)
        RETURNING myko_pending_event.*
    ), base AS (
        SELECT COALESCE(MAX(e.position), 0) AS last FROM myko_event e
    ), grouped AS (
        -- Concurrent writers draw ids from one sequence row by row, so one transaction's
        -- ids may interleave with another's: keep each transaction's events together, in
        -- the order of its first id (a later change of an item draws all its ids after
        -- the earlier one committed, so per item the order stays commit order).
        SELECT moved.*, MIN(moved.id) OVER (PARTITION BY moved.txid) AS first_id FROM moved
    ), numbered AS (
        SELECT base.last + row_number() OVER (ORDER BY g.first_id, g.id) AS pos, g.*
        FROM grouped g CROSS JOIN base
    ), inserted AS (
        INSERT INTO myko_event
            (position, tx, item_type, item_id, change_type, item, created_at, source_id)
        SELECT n.pos, n.tx, n.item_type, n.item_id, n.change_type, n.item, n.created_at,
               n.source_id
        FROM numbered n
        RETURNING myko_event.position, myko_event.item_type, myko_event.item_id,
                  myko_event.change_type, myko_event.item
    )
    SELECT base.last, i.position, i.item_type, i.item_id, i.change_type, i.item
    FROM base LEFT JOIN inserted i ON true
    ORDER BY i.position;
END
$$;
"""

# The pending table churns (every row is deleted within milliseconds): vacuum it often,
# or each positioning run scans pages of dead rows.
VACUUM = """
ALTER TABLE myko_pending_event SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000
);
"""


# The writing transaction of each pending event (a column Django does not know: only
# log/append.py's own INSERT and the function above use the table), so a positioning run
# moves whole transactions and keeps each one's events contiguous.
TXID = """
ALTER TABLE myko_pending_event
    ADD COLUMN txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX myko_pending_event_txid ON myko_pending_event (txid);
"""


def create_function(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TXID)
        schema_editor.execute(FUNCTION)
        schema_editor.execute(VACUUM)


def drop_function(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS myko_position_pending(integer, bigint[])")


class Migration(migrations.Migration):
    dependencies = [("myko_django", "0004_adoption")]

    operations = [
        migrations.CreateModel(
            name="PendingEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("tx", models.CharField(max_length=255)),
                ("item_type", models.CharField(max_length=100)),
                ("item_id", models.CharField(max_length=255)),
                (
                    "change_type",
                    models.CharField(choices=[("SET", "SET"), ("DEL", "DEL")], max_length=3),
                ),
                ("item", models.JSONField(null=True)),
                ("created_at", models.DateTimeField()),
                ("source_id", models.CharField(blank=True, max_length=255, null=True)),
            ],
            options={"db_table": "myko_pending_event"},
        ),
        migrations.RunPython(create_function, drop_function),
    ]

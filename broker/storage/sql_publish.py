"""`eventbroker.publish(...)`: publishing from SQL in the caller's own transaction (PostgreSQL).

A service that shares the broker's PostgreSQL server calls the function in the
transaction that makes its own change: the event is stored if and only if that
transaction commits, and it is invisible to consumers until then (a
subscription reads the log by transaction snapshots, so an event whose
transaction commits late is still read). The function lives in a schema of its
own, `eventbroker`, which holds only the callable API; the broker's tables stay
where the migrations made them, and the function names them with that schema.

What it writes is what the log cannot infer, as the broker's own publish does
for most events: the event (its `seq` from the identity, its `txid` the
caller's transaction) and, for an idempotency id, the dedup row. It writes no
delivery rows: every subscription's lease scan routes the event when it reads
it (scheduled, keyed and prioritised events get their rows there), so the
routing decision stays in `broker.delivery.routing`. A `NOTIFY` on the brokers'
channel, delivered at commit and dropped at rollback, wakes every subscription
of every broker (the function does not match filters, so it names none).

The limits are the broker's own (`broker.config`, the client's `limits` and
`durations`), written into the function's body when it is created. A release
that changes one must add a migration that re-creates the function
(`create_statements`): `tests/storage/test_sql_publish.py` compares the
installed body with the one built from the present constants.

Security: `SECURITY DEFINER` (it runs as the owner of the broker's tables, so a
caller needs no privilege on them), a fixed `search_path` (`pg_catalog`, then
`pg_temp`; every table named with its schema), and no `EXECUTE` or schema
`USAGE` for `PUBLIC`: an operator grants both to the roles that may publish.
"""

from __future__ import annotations

from broker import config
from broker.domain import US_PER_S
from broker.names import NAME_MAX_LENGTH, NAME_PATTERN
from broker.storage.postgres import CHANNEL

#: The schema that holds the callable API, and nothing else.
API_SCHEMA = "eventbroker"
#: The function's signature, as `GRANT`, `REVOKE` and `DROP` name it.
PUBLISH_SIGNATURE = (
    f"{API_SCHEMA}.publish(text, jsonb, jsonb, integer, interval, timestamptz, text, text)"
)
#: SQLSTATE of a refused argument: `invalid_parameter_value`.
INVALID_ARGUMENT_SQLSTATE = "22023"
#: The name rule, as the gRPC error words it (`broker.api.convert.NAME_RULE`).
_NAME_RULE = f"must be 1 to {NAME_MAX_LENGTH} characters of letters, digits and . _ - / :"
_DEPTH_RULE = f"arrays and objects may nest at most {config.JSON_DEPTH_MAX} levels deep"
_ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def publish_function_body(tables_schema: str) -> str:
    """The PL/pgSQL body of `eventbroker.publish`, for tables in `tables_schema`."""
    s = _quote_ident(tables_schema)
    max_delay_us = config.MAX_DELAY_S * US_PER_S
    window_us = int(config.DEDUP_WINDOW_S_DEFAULT * US_PER_S)
    return f"""
#variable_conflict use_column
DECLARE
    v_name text := lower(publish.name);
    v_payload bytea;
    v_headers text;
    v_idempotency_id text := nullif(publish.idempotency_id, '');
    v_ordering_key text := nullif(publish.ordering_key, '');
    v_now_us bigint := (extract(epoch FROM clock_timestamp()) * {US_PER_S})::bigint;
    v_deliver_at_us bigint;
    v_delay_us bigint := 0;
    v_size bigint;
    v_first text;
    v_brackets text;
    v_ms bigint;
    v_random bytea;
    v_id text := '';
    v_alphabet constant text := {_literal(_ULID_ALPHABET)};
BEGIN
    IF publish.name IS NULL OR v_name !~ {_literal(NAME_PATTERN)} THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'name',
            MESSAGE = 'name: ' || {_literal(_NAME_RULE)}
                || CASE WHEN coalesce(publish.name, '') = '' THEN ' (it is empty)' ELSE '' END;
    END IF;
    IF publish.headers IS NOT NULL AND jsonb_typeof(publish.headers) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'headers',
            MESSAGE = 'headers: must be a JSON object of strings; got a JSON '
                || jsonb_typeof(publish.headers);
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(coalesce(publish.headers, '{{}}')))
            > {config.HEADERS_MAX_COUNT} THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'headers',
            MESSAGE = 'headers: at most {config.HEADERS_MAX_COUNT} headers; got '
                || (SELECT count(*) FROM jsonb_object_keys(publish.headers));
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_each(coalesce(publish.headers, '{{}}')) AS h
               WHERE h.key = '') THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'headers',
            MESSAGE = 'headers: header names must not be empty';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_each(coalesce(publish.headers, '{{}}')) AS h
               WHERE jsonb_typeof(h.value) <> 'string') THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'headers',
            MESSAGE = 'headers: every value must be a string; '
                || (SELECT quote_literal(h.key) FROM jsonb_each(publish.headers) AS h
                    WHERE jsonb_typeof(h.value) <> 'string' ORDER BY h.key LIMIT 1)
                || ' is not';
    END IF;
    IF length(v_idempotency_id) > {config.DEDUP_ID_MAX_LENGTH} THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'idempotency_id',
            MESSAGE = 'idempotency_id: at most {config.DEDUP_ID_MAX_LENGTH} characters; got '
                || length(v_idempotency_id);
    END IF;
    IF publish.priority IS NULL
            OR publish.priority NOT BETWEEN {config.PRIORITY_MIN} AND {config.PRIORITY_MAX} THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'priority',
            MESSAGE = 'priority: must be between {config.PRIORITY_MIN} and '
                || '{config.PRIORITY_MAX}; got ' || coalesce(publish.priority::text, 'null');
    END IF;
    IF length(v_ordering_key) > {config.ORDERING_KEY_MAX_LENGTH} THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'ordering_key',
            MESSAGE = 'ordering_key: at most {config.ORDERING_KEY_MAX_LENGTH} characters';
    END IF;
    IF publish.delay IS NOT NULL AND publish.deliver_at IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'delay',
            MESSAGE = 'delay: give either delay or deliver_at, not both';
    END IF;
    v_deliver_at_us := v_now_us;
    IF publish.delay IS NOT NULL THEN
        v_delay_us := (extract(epoch FROM publish.delay) * {US_PER_S})::bigint;
        IF v_delay_us < 0 THEN
            RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'delay',
                MESSAGE = 'delay: must not be negative';
        END IF;
        IF v_delay_us > {max_delay_us} THEN
            RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'delay',
                MESSAGE = 'delay: must be at most one year ({config.MAX_DELAY_S} s); got '
                    || (v_delay_us / {US_PER_S}) || ' s';
        END IF;
        v_deliver_at_us := v_now_us + v_delay_us;
    ELSIF publish.deliver_at IS NOT NULL THEN
        IF publish.deliver_at = 'infinity' OR publish.deliver_at = '-infinity' THEN
            RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'deliver_at',
                MESSAGE = 'deliver_at: must be a finite time';
        END IF;
        v_deliver_at_us := (extract(epoch FROM publish.deliver_at) * {US_PER_S})::bigint;
        IF v_deliver_at_us - v_now_us > {max_delay_us} THEN
            RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'deliver_at',
                MESSAGE = 'deliver_at: must be at most one year ahead';
        END IF;
        v_delay_us := greatest(v_deliver_at_us - v_now_us, 0);
        v_deliver_at_us := greatest(v_deliver_at_us, v_now_us);
    END IF;
    -- Too deep: strings removed, then everything but brackets; each round removes the
    -- innermost empty pairs, so data within the limit has none left after that many.
    IF publish.data IS NOT NULL THEN
        v_brackets := publish.data::text;
        IF length(v_brackets) - length(translate(v_brackets, '[{{', ''))
                > {config.JSON_DEPTH_MAX} THEN
            v_brackets := translate(regexp_replace(
                regexp_replace(v_brackets, '"(?:[^"\\\\]|\\\\.)*"', '', 'g'),
                '[^][{{}}]', '', 'g'), '{{}}', '[]');
            FOR i IN 1..{config.JSON_DEPTH_MAX} LOOP
                EXIT WHEN v_brackets = '';
                v_brackets := replace(v_brackets, '[]', '');
            END LOOP;
            IF v_brackets <> '' THEN
                RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'data',
                    MESSAGE = 'data: nested too deep: {_DEPTH_RULE}';
            END IF;
        END IF;
    END IF;
    v_payload := convert_to(coalesce(publish.data, 'null'::jsonb)::text, 'UTF8');
    v_headers := CASE WHEN publish.headers IS NULL OR publish.headers = '{{}}'::jsonb THEN NULL
                      ELSE publish.headers::text END;
    v_size := length(v_name) + octet_length(v_payload)
        + coalesce((SELECT sum(length(h.key) + length(h.value))
                    FROM jsonb_each_text(publish.headers) AS h), 0);
    IF v_size > {config.EVENT_MAX_BYTES_DEFAULT} THEN
        RAISE EXCEPTION USING ERRCODE = '{INVALID_ARGUMENT_SQLSTATE}', COLUMN = 'data',
            MESSAGE = 'data: event is ' || v_size || ' bytes (name, data and headers); '
                || 'the limit is {config.EVENT_MAX_BYTES_DEFAULT} bytes';
    END IF;

    IF v_idempotency_id IS NOT NULL THEN
        -- The broker's own lock for a dedup id: a second publish of it waits for this
        -- transaction to end, then sees its event (or, after a rollback, none).
        PERFORM pg_advisory_xact_lock(hashtextextended(v_idempotency_id, 0));
        SELECT d.event_id INTO v_first FROM {s}.dedup AS d
            WHERE d.dedup_id = v_idempotency_id AND d.expires_at > v_now_us;
        IF FOUND THEN
            event_id := v_first;
            duplicate := true;
            RETURN;
        END IF;
    END IF;

    -- A ULID, as broker.ids makes them: 48 bits of milliseconds, 80 random bits.
    v_ms := v_now_us / 1000;
    FOR i IN REVERSE 9..0 LOOP
        v_id := v_id || substr(v_alphabet, ((v_ms >> (5 * i)) & 31)::int + 1, 1);
    END LOOP;
    v_random := substring(uuid_send(gen_random_uuid()) FROM 1 FOR 6)
        || substring(uuid_send(gen_random_uuid()) FROM 1 FOR 6);
    FOR i IN 0..15 LOOP
        -- Five bits from bit 5i on: the two bytes that hold them, shifted and masked.
        v_id := v_id || substr(v_alphabet, ((((get_byte(v_random, 5 * i / 8) << 8)
            | get_byte(v_random, 5 * i / 8 + 1)) >> (11 - mod(5 * i, 8))) & 31) + 1, 1);
    END LOOP;

    IF v_idempotency_id IS NOT NULL THEN
        INSERT INTO {s}.dedup (dedup_id, event_id, expires_at)
            VALUES (v_idempotency_id, v_id, v_now_us + {window_us})
            ON CONFLICT (dedup_id) DO UPDATE
            SET event_id = excluded.event_id, expires_at = excluded.expires_at;
    END IF;
    INSERT INTO {s}.events (id, name, payload, content_type, headers, dedup_id, priority,
                            ordering_key, published_at, deliver_at, delay_us, txid)
        VALUES (v_id, v_name, v_payload, 'application/json', v_headers, v_idempotency_id,
                publish.priority, v_ordering_key, v_now_us, v_deliver_at_us, v_delay_us,
                txid_current());
    -- Delivered at commit, dropped at rollback; equal messages of one transaction
    -- are delivered once. The empty origin is no broker: nobody answers it.
    PERFORM pg_notify('{CHANNEL}', '|w|*|'
        || CASE WHEN v_deliver_at_us > v_now_us THEN v_deliver_at_us::text ELSE '' END);
    event_id := v_id;
    duplicate := false;
END
"""


def publish_function_sql(tables_schema: str) -> str:
    """`CREATE OR REPLACE FUNCTION eventbroker.publish(...)` for tables in `tables_schema`."""
    body = publish_function_body(tables_schema)
    return f"""CREATE OR REPLACE FUNCTION {API_SCHEMA}.publish(
    name text,
    data jsonb DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    priority integer DEFAULT 0,
    delay interval DEFAULT NULL,
    deliver_at timestamptz DEFAULT NULL,
    idempotency_id text DEFAULT NULL,
    ordering_key text DEFAULT NULL,
    OUT event_id text,
    OUT duplicate boolean
) RETURNS record
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $eventbroker_publish${body}$eventbroker_publish$"""


def create_statements(tables_schema: str) -> list[str]:
    """The statements that create (or re-create) the API, its schema and its privileges.

    Re-created (`CREATE OR REPLACE`), the function keeps the grants operators gave.
    """
    return [
        f"CREATE SCHEMA IF NOT EXISTS {API_SCHEMA}",
        f"REVOKE ALL ON SCHEMA {API_SCHEMA} FROM PUBLIC",
        publish_function_sql(tables_schema),
        f"REVOKE ALL ON FUNCTION {PUBLISH_SIGNATURE} FROM PUBLIC",
        f"COMMENT ON FUNCTION {PUBLISH_SIGNATURE} IS"
        " 'Publish an event in the calling transaction: stored and delivered if it commits."
        " See docs/outbox.md.'",
    ]


def drop_statements() -> list[str]:
    """The statements that remove the API (the schema too, if nothing else was put in it)."""
    return [
        f"DROP FUNCTION IF EXISTS {PUBLISH_SIGNATURE}",
        f"DROP SCHEMA IF EXISTS {API_SCHEMA}",
    ]

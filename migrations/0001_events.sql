-- The append-only, hash-chained event store (DESIGN §6). The columns of `events` and the hash
-- chain are a public audit contract: never change them here, add a migration that keeps them.

CREATE TABLE public.events (
    position    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    stream      text        NOT NULL,
    version     integer     NOT NULL,
    type        text        NOT NULL,
    data        bytea       NOT NULL,
    metadata    bytea       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    hash        bytea       NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream, version),
    CONSTRAINT events_position_positive CHECK (position >= 1),
    CONSTRAINT events_version_positive CHECK (version >= 1),
    CONSTRAINT events_stream_not_empty CHECK (stream <> ''),
    CONSTRAINT events_type_not_empty CHECK (type <> ''),
    CONSTRAINT events_hash_is_sha256 CHECK (octet_length(hash) = 32)
);

COMMENT ON TABLE public.events IS
    'Append-only event store (DESIGN §6): position is global and gapless, hash chains every row '
    'to the previous one. UPDATE, DELETE and TRUNCATE are refused by triggers.';

-- The single head row: writers lock it last in their transaction (SELECT ... FOR UPDATE), take
-- the next positions from it and move it, so transactions commit in position order and a reader
-- never sees position n+1 before position n. `hash` is the hash of the event at `position`
-- (32 zero bytes while the store is empty).
CREATE TABLE public.event_head (
    id       boolean NOT NULL DEFAULT true,
    position bigint  NOT NULL,
    hash     bytea   NOT NULL,
    CONSTRAINT event_head_pkey PRIMARY KEY (id),
    CONSTRAINT event_head_single_row CHECK (id),
    CONSTRAINT event_head_position_not_negative CHECK (position >= 0),
    CONSTRAINT event_head_hash_is_sha256 CHECK (octet_length(hash) = 32)
);

INSERT INTO public.event_head (id, position, hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

-- Refusals. Statement-level, so that even a statement touching no row is refused, and enabled
-- ALWAYS, so that `session_replication_role = replica` does not switch them off: only an
-- explicit `ALTER TABLE ... DISABLE TRIGGER` by the owner or a superuser does.
CREATE FUNCTION public.events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % is refused', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'The event store never changes or removes an event (DESIGN §6); append a new event instead.';
END;
$$;

CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON public.events
    FOR EACH STATEMENT EXECUTE FUNCTION public.events_refuse_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON public.events
    FOR EACH STATEMENT EXECUTE FUNCTION public.events_refuse_change();

ALTER TABLE public.events ENABLE ALWAYS TRIGGER events_refuse_update_delete;
ALTER TABLE public.events ENABLE ALWAYS TRIGGER events_refuse_truncate;

-- The head only moves forward and is never removed: moving it back would hand out positions
-- twice, removing it would stop every writer.
CREATE FUNCTION public.event_head_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.position < OLD.position THEN
            RAISE EXCEPTION 'event_head may not move back (from % to %)', OLD.position, NEW.position
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'event_head: % is refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER event_head_guard_update
    BEFORE UPDATE ON public.event_head
    FOR EACH ROW EXECUTE FUNCTION public.event_head_guard();

CREATE TRIGGER event_head_refuse_delete
    BEFORE DELETE ON public.event_head
    FOR EACH STATEMENT EXECUTE FUNCTION public.event_head_guard();

CREATE TRIGGER event_head_refuse_truncate
    BEFORE TRUNCATE ON public.event_head
    FOR EACH STATEMENT EXECUTE FUNCTION public.event_head_guard();

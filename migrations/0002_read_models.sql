-- Read models (DESIGN §6): updated by GS in the same transactions as the events that change
-- them, and rebuildable from the events at any time. Unlike `events`, they are mutable.

-- One row per player: the balance after the player's latest event, and that stream's version.
CREATE TABLE public.accounts (
    player     text        NOT NULL,
    balance    bigint      NOT NULL,
    version    integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_pkey PRIMARY KEY (player),
    CONSTRAINT accounts_player_id CHECK (player ~ '^[A-Za-z0-9_-]{1,64}$'),
    -- Money is exact for JSON clients up to 2^53 - 1 minor units, and never negative.
    CONSTRAINT accounts_balance_range CHECK (balance >= 0 AND balance <= 9007199254740991),
    CONSTRAINT accounts_version_not_negative CHECK (version >= 0)
);

-- One row per round of a table, as GS saw it on the TABLES stream (and settled it).
CREATE TABLE public.rounds (
    table_id    text        NOT NULL,
    round       bigint      NOT NULL,
    phase       text        NOT NULL,
    seed_hash   bytea,
    closes_at   timestamptz,
    outcome     smallint,
    server_seed bytea,
    -- The TABLES stream sequence of the last transition recorded for this round.
    bus_seq     bigint,
    opened_at   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rounds_pkey PRIMARY KEY (table_id, round),
    CONSTRAINT rounds_table_id CHECK (table_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT rounds_round_positive CHECK (round >= 1),
    CONSTRAINT rounds_phase CHECK (phase IN ('open', 'closed', 'resulted', 'settled', 'voided')),
    CONSTRAINT rounds_seed_hash_is_sha256 CHECK (seed_hash IS NULL OR octet_length(seed_hash) = 32),
    CONSTRAINT rounds_server_seed_length CHECK (server_seed IS NULL OR octet_length(server_seed) = 32),
    CONSTRAINT rounds_outcome_pocket CHECK (outcome IS NULL OR outcome BETWEEN 0 AND 36)
);

-- One row per accepted bet; bet_id is the client's idempotency key (GS inserts with
-- ON CONFLICT (bet_id) DO NOTHING and appends events only for the rows it inserted).
CREATE TABLE public.bets (
    bet_id              uuid        NOT NULL,
    table_id            text        NOT NULL,
    round               bigint      NOT NULL,
    player              text        NOT NULL,
    selection           jsonb       NOT NULL,
    amount              bigint      NOT NULL,
    status              text        NOT NULL DEFAULT 'accepted',
    payout              bigint,
    -- Positions in `events` of the bet's bet_placed and of its bet_settled / bet_refunded.
    placed_position     bigint,
    settled_position    bigint,
    -- A digest of the request's content, to tell a retry from a different bet with the same id.
    request_fingerprint bytea,
    placed_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bets_pkey PRIMARY KEY (bet_id),
    CONSTRAINT bets_table_id CHECK (table_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT bets_round_positive CHECK (round >= 1),
    CONSTRAINT bets_player_id CHECK (player ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT bets_amount_range CHECK (amount > 0 AND amount <= 9007199254740991),
    CONSTRAINT bets_status CHECK (status IN ('accepted', 'settled', 'refunded')),
    CONSTRAINT bets_payout_not_negative CHECK (payout IS NULL OR payout >= 0)
);

CREATE INDEX bets_table_round_idx ON public.bets (table_id, round);

-- Deposits, idempotent by deposit_id; position is that of the funds_deposited event.
CREATE TABLE public.deposits (
    deposit_id  text        NOT NULL,
    player      text        NOT NULL,
    amount      bigint      NOT NULL,
    position    bigint      NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deposits_pkey PRIMARY KEY (deposit_id),
    CONSTRAINT deposits_deposit_id_not_empty CHECK (deposit_id <> ''),
    CONSTRAINT deposits_player_id CHECK (player ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT deposits_amount_range CHECK (amount > 0 AND amount <= 9007199254740991)
);

-- The last TABLES stream sequence each GS consumer has stored, so it resumes from there.
CREATE TABLE public.gs_cursor (
    consumer   text        NOT NULL,
    stream_seq bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT gs_cursor_pkey PRIMARY KEY (consumer),
    CONSTRAINT gs_cursor_stream_seq_not_negative CHECK (stream_seq >= 0)
);

-- The last event position each outbox publisher has published to the bus.
CREATE TABLE public.outbox_cursor (
    name       text        NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_cursor_pkey PRIMARY KEY (name),
    CONSTRAINT outbox_cursor_position_not_negative CHECK (position >= 0)
);

-- Reference data, the health book, referrals, appointments, dead letters, campaign counters.
-- Idempotence: every table has a natural key; sinks upsert on it.

CREATE TABLE provinces (
    code  text PRIMARY KEY CHECK (code ~ '^[0-9]{2}$'),
    name  text NOT NULL
);

CREATE TABLE facilities (
    code      text PRIMARY KEY CHECK (code ~ '^[0-9]{5}$'),
    name      text NOT NULL,
    level     text NOT NULL CHECK (level IN ('central', 'provincial', 'district', 'commune', 'private')),
    district  text,
    active    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per examination episode (natural key: facility + MA_LK).
CREATE TABLE health_book_entries (
    ma_cskcb              text NOT NULL,
    ma_lk                 text NOT NULL,
    event_id              text NOT NULL,
    citizen_key           text NOT NULL,
    so_cccd               text NOT NULL,
    ho_ten                text NOT NULL,
    ngay_sinh             text NOT NULL,
    gioi_tinh             smallint NOT NULL,
    ma_the_bhyt           text NOT NULL,
    ma_dkbd               text NOT NULL,
    registration_province text NOT NULL,
    facility_province     text NOT NULL,
    scope                 text NOT NULL CHECK (scope IN ('in_province', 'out_of_province')),
    ma_loai_kcb           text NOT NULL,
    visit_type            text NOT NULL,
    ma_benh_chinh         text NOT NULL,
    ma_benh_kt            text,
    ngay_vao              timestamptz NOT NULL,
    ngay_ra               timestamptz NOT NULL,
    ket_qua_dtri          smallint NOT NULL,
    ma_loai_rv            smallint NOT NULL,
    t_tongchi_bv          bigint NOT NULL CHECK (t_tongchi_bv >= 0),
    t_tongchi_bh          bigint NOT NULL CHECK (t_tongchi_bh >= 0),
    t_bhtt                bigint NOT NULL CHECK (t_bhtt >= 0),
    has_referral          boolean NOT NULL,
    has_appointment       boolean NOT NULL,
    published_at          timestamptz NOT NULL,
    processed_at          timestamptz NOT NULL,
    persisted_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ma_cskcb, ma_lk)
);
CREATE INDEX health_book_entries_citizen ON health_book_entries (citizen_key);

-- One row per citizen whose health book is integrated (first valid record).
CREATE TABLE health_books (
    citizen_key     text PRIMARY KEY,
    so_cccd         text NOT NULL,
    ho_ten          text NOT NULL,
    first_event_id  text NOT NULL,
    first_ma_cskcb  text NOT NULL,
    integrated_at   timestamptz NOT NULL,   -- admission of the integrating episode (event time)
    persisted_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE referrals (
    referral_id       text PRIMARY KEY,
    event_id          text NOT NULL,
    citizen_key       text NOT NULL,
    origin            text NOT NULL,
    destination       text NOT NULL,
    ma_lydo_ct        smallint NOT NULL,
    ma_benh_chinh     text NOT NULL,
    issued_at         timestamptz NOT NULL,
    deadline          timestamptz NOT NULL,
    status            text NOT NULL CHECK (status IN ('issued', 'completed', 'expired')),
    arrival_event_id  text,
    arrived_at        timestamptz,
    days_to_arrival   double precision,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX referrals_status ON referrals (status);

CREATE TABLE appointments (
    appointment_id  text PRIMARY KEY,
    event_id        text NOT NULL,
    citizen_key     text NOT NULL,
    ma_cskcb        text NOT NULL,
    ma_benh_chinh   text NOT NULL,
    appointment_at  timestamptz NOT NULL,
    status          text NOT NULL CHECK (status IN ('scheduled', 'kept', 'missed')),
    reminded_at     timestamptz,             -- event time of the reminder
    visit_event_id  text,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX appointments_status ON appointments (status);

-- Inputs that could not be processed. Key: the event id when known, else the source position.
CREATE TABLE dead_letters (
    dead_letter_id    text PRIMARY KEY,
    reason            text NOT NULL,
    message           text NOT NULL,
    stage             text NOT NULL,
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    event_index       integer,
    event_id          text,
    ma_cskcb          text,
    schema_id         integer,
    original          bytea NOT NULL,
    published_at      timestamptz NOT NULL,
    failed_at         timestamptz NOT NULL,
    persisted_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX dead_letters_reason ON dead_letters (reason);

-- The campaign's numbers, updated in the same transaction as the rows they count, so the
-- Prometheus counters the sinks export always equal what the tables hold.
CREATE TABLE campaign_counters (
    metric  text NOT NULL,
    label   text NOT NULL DEFAULT '',
    value   bigint NOT NULL DEFAULT 0 CHECK (value >= 0),
    PRIMARY KEY (metric, label)
);

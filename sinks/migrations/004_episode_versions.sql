-- Corrections (docs/corrections.md): an episode (ma_cskcb, ma_lk) has versions; its entry
-- holds the newest, health_book_entry_versions every other one (superseded, or older and
-- arrived late) and the withdrawals, with when each arrived.
ALTER TABLE health_book_entries
    ADD COLUMN version         bigint,
    ADD COLUMN position        bigint NOT NULL DEFAULT 0,
    ADD COLUMN content_digest  text   NOT NULL DEFAULT '',
    ADD COLUMN corrected_at    timestamptz,
    -- the facility withdrew the episode (a newer version restores it)
    ADD COLUMN withdrawn_at    timestamptz,
    -- the scope the episode was counted in when it was first accepted (ehb_examinations_total
    -- counts episodes, once: a correction that changes the scope does not move it); the sink
    -- always sets it, NULL (a row written by other means) counts in scope
    ADD COLUMN counted_scope   text;
UPDATE health_book_entries SET counted_scope = scope;

COMMENT ON COLUMN health_book_entries.version IS
    'The sender''s version of the entry''s episode version (ExaminationEvent.version).';
COMMENT ON COLUMN health_book_entries.position IS
    'offset * 2^20 + index of the version on its facility''s input partition; '
    'the newest version has the highest (coalesce(version, 0), position).';

CREATE TABLE health_book_entry_versions (
    ma_cskcb        text NOT NULL,
    ma_lk           text NOT NULL,
    -- the version's identity: v:<sender version>, or p:<position> when the sender set none
    version_key     text NOT NULL,
    version         bigint,
    position        bigint NOT NULL,
    event_id        text NOT NULL,
    kind            text NOT NULL DEFAULT 'examination' CHECK (kind IN ('examination', 'withdrawal')),
    content_digest  text NOT NULL,
    record          jsonb NOT NULL,          -- the version's health-book row (or withdrawal) as it arrived
    published_at    timestamptz NOT NULL,
    arrived_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ma_cskcb, ma_lk, version_key)
);

CREATE INDEX health_book_entry_versions_withdrawals
    ON health_book_entry_versions (ma_cskcb, ma_lk) WHERE kind = 'withdrawal';

-- A dead-lettered episode later accepted: its dead letters are marked superseded.
ALTER TABLE dead_letters
    ADD COLUMN ma_lk          text,
    ADD COLUMN superseded_at  timestamptz;
CREATE INDEX dead_letters_episode ON dead_letters (ma_cskcb, ma_lk) WHERE ma_lk IS NOT NULL;

-- A newer version of an episode may no longer have its referral or appointment.
ALTER TABLE referrals DROP CONSTRAINT referrals_status_check,
    ADD CONSTRAINT referrals_status_check
        CHECK (status IN ('issued', 'completed', 'expired', 'cancelled'));
ALTER TABLE appointments DROP CONSTRAINT appointments_status_check,
    ADD CONSTRAINT appointments_status_check
        CHECK (status IN ('scheduled', 'kept', 'missed', 'cancelled'));

-- A withdrawn episode is not among the episodes a facility's daily report is reconciled with.
CREATE OR REPLACE FUNCTION facility_day_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO facility_day_count_deltas (ma_cskcb, episode_day, delta)
        SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, count(*)
          FROM new_rows WHERE withdrawn_at IS NULL GROUP BY 1, 2;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO facility_day_count_deltas (ma_cskcb, episode_day, delta)
        SELECT ma_cskcb, day, sum(delta) FROM (
            SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date AS day, 1 AS delta
              FROM new_rows WHERE withdrawn_at IS NULL
            UNION ALL
            SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, -1
              FROM old_rows WHERE withdrawn_at IS NULL
        ) moved GROUP BY 1, 2 HAVING sum(delta) <> 0;
    ELSE
        INSERT INTO facility_day_count_deltas (ma_cskcb, episode_day, delta)
        SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, -count(*)
          FROM old_rows WHERE withdrawn_at IS NULL GROUP BY 1, 2;
    END IF;
    RETURN NULL;
END
$$;

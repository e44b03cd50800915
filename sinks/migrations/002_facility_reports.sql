-- Daily facility reports, reconciled with what the pipeline received (sinks/reconcile.py).
-- An episode belongs to the day of its discharge NGAY_RA, in Vietnam time (UTC+7).

-- One row per facility and day: the facility's own count (NULL while no report has arrived)
-- against the episodes the pipeline received for that facility and day, accepted or
-- dead-lettered. status: pending (the day has not passed yet, or a report arrived since the
-- last reconciliation), ok, mismatch (reported <> received), silent (no report for a day
-- that has passed; only for facilities active in the registry).
CREATE TABLE facility_reports (
    ma_cskcb        text NOT NULL,
    report_day      date NOT NULL,
    reported        integer CHECK (reported >= 0),
    received        integer NOT NULL DEFAULT 0 CHECK (received >= 0),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'ok', 'mismatch', 'silent')),
    report_sent_at  timestamptz,              -- sent_at of the report that counts (the latest)
    reported_at     timestamptz,              -- when that report was persisted
    reconciled_at   timestamptz,
    PRIMARY KEY (ma_cskcb, report_day)
);
CREATE INDEX facility_reports_day_status ON facility_reports (report_day, status);

-- Accepted episodes per facility and day. Statement triggers on health_book_entries append
-- the net change of each sink statement to facility_day_count_deltas, in the sink's own
-- transaction (only rows really inserted count; a resend that moves NGAY_RA moves its count).
-- Appending never waits for or deadlocks with another sink; the reconciler folds the deltas
-- into facility_day_counts, so reconciling a year stays cheap.
CREATE TABLE facility_day_counts (
    ma_cskcb     text NOT NULL,
    episode_day  date NOT NULL,
    accepted     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (ma_cskcb, episode_day)
);
CREATE TABLE facility_day_count_deltas (
    ma_cskcb     text NOT NULL,
    episode_day  date NOT NULL,
    delta        integer NOT NULL
);

CREATE FUNCTION facility_day_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO facility_day_count_deltas (ma_cskcb, episode_day, delta)
        SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, count(*)
          FROM new_rows GROUP BY 1, 2;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO facility_day_count_deltas (ma_cskcb, episode_day, delta)
        SELECT ma_cskcb, day, sum(delta) FROM (
            SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date AS day, 1 AS delta
              FROM new_rows
            UNION ALL
            SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, -1 FROM old_rows
        ) moved GROUP BY 1, 2 HAVING sum(delta) <> 0;
    ELSE
        INSERT INTO facility_day_count_deltas (ma_cskcb, episode_day, delta)
        SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, -count(*)
          FROM old_rows GROUP BY 1, 2;
    END IF;
    RETURN NULL;
END
$$;

-- The reconciler folds the deltas into the counts. SECURITY DEFINER: the sinks' role may not
-- DELETE (migration 090); this one function, owned by the migrating owner, may.
CREATE FUNCTION facility_day_counts_fold() RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH moved AS (
        DELETE FROM facility_day_count_deltas RETURNING ma_cskcb, episode_day, delta
    ), folded AS (
        INSERT INTO facility_day_counts AS c (ma_cskcb, episode_day, accepted)
        SELECT ma_cskcb, episode_day, sum(delta) FROM moved GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (ma_cskcb, episode_day) DO UPDATE SET accepted = c.accepted + EXCLUDED.accepted
        RETURNING 1
    )
    SELECT count(*)::integer FROM folded
$$;

CREATE TRIGGER facility_day_counts_insert AFTER INSERT ON health_book_entries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION facility_day_counts_apply();
CREATE TRIGGER facility_day_counts_update AFTER UPDATE ON health_book_entries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION facility_day_counts_apply();
CREATE TRIGGER facility_day_counts_delete AFTER DELETE ON health_book_entries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION facility_day_counts_apply();

INSERT INTO facility_day_counts (ma_cskcb, episode_day, accepted)
SELECT ma_cskcb, (ngay_ra AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, count(*)
  FROM health_book_entries GROUP BY 1, 2;

-- The episode behind each validation-stage dead letter (decoded once from its original bytes
-- by the reconciler): dead letters count as received too. episode_day is NULL when NGAY_RA is
-- not a date.
CREATE TABLE dead_letter_episodes (
    dead_letter_id  text PRIMARY KEY,
    ma_cskcb        text,
    ma_lk           text,
    episode_day     date
);
CREATE INDEX dead_letter_episodes_day ON dead_letter_episodes (episode_day, ma_cskcb)
    WHERE episode_day IS NOT NULL;

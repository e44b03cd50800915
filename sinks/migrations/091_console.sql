-- The web console (`ehb console`, console/): its accounts, sessions and login attempts, and the
-- least-privilege role it runs as.
--
--   ehb_console: a member of ehb_reader (SELECT on the pipeline's tables, nothing else there);
--     on its own tables: reads the accounts and stamps their last login (no other column: it
--     can neither create an account nor change a role, a facility or a password), opens and
--     closes sessions, records login attempts (the rate limit).
-- Accounts are made by `ehb console add-user` as the database owner, never by the console.
-- After 090_roles.sql (name order): its default privileges would give ehb_reader the password
-- hashes and ehb_writer the accounts; revoked below.
DO $$
BEGIN
    CREATE ROLE ehb_console NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation OR insufficient_privilege THEN NULL;
END $$;
DO $$
BEGIN
    GRANT ehb_reader TO ehb_console;
-- cluster-wide too: another database's migration may be granting it at this moment
EXCEPTION WHEN unique_violation OR insufficient_privilege THEN NULL;
END $$;

CREATE TABLE console_accounts (
    username       text PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9._-]{2,63}$'),
    role           text NOT NULL CHECK (role IN ('operator', 'facility')),
    facility       text REFERENCES facilities (code),
    password_hash  text NOT NULL,              -- argon2id, encoded with its parameters
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz,
    last_login_at  timestamptz,
    CHECK ((role = 'facility') = (facility IS NOT NULL))
);

-- The session cookie carries a random token; only its SHA-256 is stored.
CREATE TABLE console_sessions (
    token_sha256  text PRIMARY KEY,
    username      text NOT NULL REFERENCES console_accounts (username) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Every login attempt, for the rate limit (per account name and per client address).
CREATE TABLE console_login_attempts (
    attempted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    username      text NOT NULL,
    client        text NOT NULL,
    succeeded     boolean NOT NULL
);
CREATE INDEX console_login_attempts_username ON console_login_attempts (username, attempted_at);
CREATE INDEX console_login_attempts_client ON console_login_attempts (client, attempted_at);

REVOKE ALL ON console_accounts, console_sessions, console_login_attempts
    FROM ehb_reader, ehb_writer;

GRANT SELECT, UPDATE (last_login_at) ON console_accounts TO ehb_console;
GRANT SELECT, INSERT, DELETE ON console_sessions TO ehb_console;
GRANT SELECT, INSERT, DELETE ON console_login_attempts TO ehb_console;

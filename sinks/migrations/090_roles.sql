-- Least privilege. Group roles (NOLOGIN); deployments create login users in them:
--   ehb_writer: the sinks: read and write rows, no DDL, no DELETE;
--   ehb_reader: dashboards, analysts, the workers' facility-registry refresh: read only.
-- Migrations run as the database owner (`ehb migrate`), never as these roles. Default
-- privileges give both roles their rights on tables later migrations create.
DO $$
BEGIN
    CREATE ROLE ehb_writer NOLOGIN;
-- Roles are cluster-wide: another database may have made them (or be making them at this
-- moment: the loser of that race gets unique_violation); an owner without CREATEROLE
-- needs them made by the DBA (the GRANTs below then name them).
EXCEPTION WHEN duplicate_object OR unique_violation OR insufficient_privilege THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE ehb_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation OR insufficient_privilege THEN NULL;
END $$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO ehb_writer, ehb_reader;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO ehb_reader;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO ehb_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ehb_writer;

ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO ehb_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE ON TABLES TO ehb_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO ehb_writer;

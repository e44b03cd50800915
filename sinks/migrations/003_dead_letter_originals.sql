-- Dead letters whatever the input's size (README, Reason codes): `original` keeps at most
-- EHB_DEAD_LETTER_ORIGINAL_MAX_BYTES bytes; these columns describe the full original, which
-- stays readable at (source_topic, source_partition, source_offset) while the topic retains it.
ALTER TABLE dead_letters
    ADD COLUMN original_length    bigint,
    ADD COLUMN original_sha256    text,
    ADD COLUMN original_truncated boolean NOT NULL DEFAULT false;

-- Rows written before: their original is whole.
UPDATE dead_letters
   SET original_length = length(original),
       original_sha256 = encode(sha256(original), 'hex')
 WHERE original_length IS NULL;

COMMENT ON COLUMN dead_letters.original_length IS
    'Length in bytes of the full original (original holds only its prefix when original_truncated).';
COMMENT ON COLUMN dead_letters.original_sha256 IS 'SHA-256 of the full original, lowercase hex.';
COMMENT ON COLUMN dead_letters.original_truncated IS
    'true when original holds only the first EHB_DEAD_LETTER_ORIGINAL_MAX_BYTES bytes.';

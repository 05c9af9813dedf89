-- A job records the conversation head it was based on when it started (base_response_id).
-- Saving its image moves the head only if the head is still that one (compare-and-set): a late
-- job (adopted after its process died, or racing one in another process) saves its turn as a
-- branch instead of overwriting a newer turn.

ALTER TABLE jobs ADD COLUMN base_response_id TEXT;

-- A job can draw several images at once (`/imagine count`): each image is a turn of its own, and
-- the turn records the job that made it, so a restart posts every saved image of the job again.

ALTER TABLE turns ADD COLUMN job_id INTEGER;

CREATE INDEX turns_job ON turns (job_id);

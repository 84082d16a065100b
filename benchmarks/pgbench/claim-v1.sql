-- Server-side cost of one first request's claim + finish, design 1: migration
-- 0003's claim writes the in-flight row, finish UPDATEs it (two writes).
-- Compare with claim-v2.sql on a migrated database, one client, alternating:
--   PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -c 1 -t 3000 -f claim-v1.sql DB
-- (synchronous_commit off for this session only, so the commit's fsync does
-- not drown the difference).
\set k random(1, 2000000000)
BEGIN;
SELECT * FROM django_idempotency_claim_v1('user:1', 'pgb-' || :k, 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', 'POST', '/ours/', 'in_flight', now(), now() + interval '1 day', ('x' || substr(md5('pgb-' || :k), 1, 16))::bit(64)::bigint) \gset c_
UPDATE django_idempotency_idempotencyrecord SET state = 'completed', response_status = 201, response_headers = '[["Content-Type", "application/json"]]', response_body = '\x7b226964223a20312c2022736b75223a20226162632d313233222c20227175616e74697479223a20322c20226e6f7465223a202262656e63686d61726b206f72646572227d'::bytea WHERE id = :c_record_id;
COMMIT;

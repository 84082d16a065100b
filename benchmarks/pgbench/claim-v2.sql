-- Server-side cost of one first request's claim + finish, design 2: migration
-- 0005's claim takes the advisory lock and writes nothing, finish INSERTs the
-- finished record once. See claim-v1.sql for how to run it.
\set k random(1, 2000000000)
BEGIN;
SELECT * FROM django_idempotency_claim('user:1', 'pgb-' || :k, 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', 'POST', '/ours/', 'in_flight', now(), now() + interval '1 day', ('x' || substr(md5('pgb-' || :k), 1, 16))::bit(64)::bigint);
INSERT INTO django_idempotency_idempotencyrecord (scope, key, fingerprint, method, path, state, response_status, response_headers, response_body, created_at, expires_at) VALUES ('user:1', 'pgb-' || :k, 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', 'POST', '/ours/', 'completed', 201, '[["Content-Type", "application/json"]]', '\x7b226964223a20312c2022736b75223a20226162632d313233222c20227175616e74697479223a20322c20226e6f7465223a202262656e63686d61726b206f72646572227d'::bytea, now(), now() + interval '1 day');
COMMIT;

"""The help texts of the operations tools (``erp-sync <tool> --help``).

Apart from the tools so that building ``erp-sync``'s argument parser (done for every command,
``run`` included) does not import them: they load the HTTP client and the admin helpers that
``erp-sync run`` does not need (resident memory, issue 14).
"""

STATUS_HELP = """\
Per partition of ERP_SYNC_TOPIC (the first one when it lists several), for the group
ERP_SYNC_GROUP_ID: the committed offset, the high watermark, the lag (messages) and the lag in
seconds (age of the record at the committed offset; 0 when caught up), and the member that owns the
partition (its member id: consumers on one host share a client id). The same per partition of each
source topic's retry topic (ERP_SYNC_RETRY_TOPIC, <topic>.retry: parked records, read by the same
group), or a line saying it does not exist. Then the group's state and active members (member id,
client id, host, partitions); a consumer that died without leaving is still listed until its session
times out (session.timeout.ms). Then the dead-letter topic: letters stored, written in the last hour
and 24 h, and not replayed yet by `erp-sync dlq replay` (its group's position). Then each route
(ERP_SYNC_ROUTES_FILE, or ERP_SYNC_ERP_URL): its URL, and `delivering` or `parked (N records, oldest
X ago, deadline in Y)` (or the retry topic's retention, when sooner), counted from the retry topics
(at most 100,000 records per partition, 10 s; beyond that "at least"). The circuit state of a route
lives in the consumers (metric erp_sync_route_circuit_open{route}): status sees only what is in
Kafka. Reads only: it never joins the group."""

RESET_HELP = """\
Move the committed offsets of ERP_SYNC_GROUP_ID on ERP_SYNC_TOPIC: the topic replay. A dry run by
default: it prints, per partition, current → new offset and how many records will be re-read (new
below current; approved ones are pushed again, with the same Idempotency-Key) or skipped (new above
current). New offsets are clamped to [low, high] watermarks. --execute applies them.

The dry run works at any time (while consumers run it says so: the current offsets move).
--execute is refused (exit 2) while the group has active members, named in the message: stop every
`erp-sync run` of the group first (scale the Deployment to 0), reset, then start them again.
Records re-read that were dead-lettered before are dead-lettered again (a second copy in the DLQ)."""

REPLAY_HELP = """\
Re-push the approved records of ERP_SYNC_TOPIC whose Kafka timestamp is in [--from, --to) (for the day
the ERP lost data), or only the chosen InstanceIds in that window. The group's committed offsets are
not touched (a separate, group-less reader), so it can run while `erp-sync run` does. Each record is
pushed with its usual Idempotency-Key until the ERP accepts or rejects it (retry answers back off),
the way `erp-sync run` pushes: ERP_SYNC_MAX_IN_FLIGHT records at once (--max-in-flight), one at a
time per Kafka key (the InstanceId when a record has no key), at most
ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND requests/s (--max-requests-per-second; 0: no limit).
Rejected, undecodable and invalid records are listed in the summary and are NOT written to the
dead-letter topic. A progress bar (rate, time left) goes to stderr, the summary to stdout.

Times are ISO 8601 (2024-05-01T08:00:00Z, 2024-05-01T10:00+02:00); without a time zone: UTC.
Exit codes: 0 all delivered; 1 some records failed (listed) or Kafka failed; 2 bad options."""

DLQ_REPLAY_HELP = """\
Re-push the dead letters of the dead-letter topic (ERP_SYNC_DLQ_TOPIC, default <topic>.dlq) once the
cause is fixed, the way `erp-sync run` pushes (ERP_SYNC_MAX_IN_FLIGHT at once, one at a time per key;
--max-in-flight, --max-requests-per-second). The group <group>.dlq-replay remembers what is done: its
committed offset is the first dead letter not done, and the commit's metadata names the ones done
beyond it, so a run reads from there and passes over what an earlier run finished. A letter is done
once accepted, skipped (not APPROVED), or written back after failing for a new reason.

A letter that fails again for the same reason (same erp_sync.error.class and .code) is NOT written
back: it stays in place, reported "still failing: same reason", and is tried again by the next run
(the DLQ does not grow however often you replay). One that fails for a new reason is written back
with its original headers and erp_sync.original.* unchanged, fresh erp_sync.error.* headers,
erp_sync.attempts (ERP attempts so far) and erp_sync.replays (times replayed); the old one is done.
Letters written back by a run wait for the next run.

--class: replay only dead letters of that class; the others stay in place (not done) for a run
without --class. --dry-run pushes, writes and commits nothing.
Exit codes: 0 all replayed; 1 some still fail (left in place or written back) or Kafka failed;
2 bad options."""

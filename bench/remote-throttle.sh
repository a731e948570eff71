#!/usr/bin/env bash
# bench/remote-throttle.sh — do --limit-upload and --limit-download hold a
# transfer to its rate? A backup of about BLOB_MB (default 1024) MB of random
# bytes is pushed to the bench MinIO at RATE (default 20MiB/s) and pulled
# back at the same rate; the expected time is size ÷ rate (51 s for 1 GiB at
# 20 MiB/s), and the goal is within 10 %. An unthrottled push and pull of the
# same backup are measured beside them. Uses bench/remote.sh's dataset
# (database bench_blob on the bench PostgreSQL).
# Updates the "remote-throttle" section of bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

BLOB_MB=${BLOB_MB:-1024}
RATE=${RATE:-20MiB/s}
W="$BENCH_WORK/remote-throttle"
MEASURE_OUT="$W/measure.tsv"

ensure_gnu_time
bench_build
bench_up postgres s3
rm -rf "$W"
mkdir -p "$W"
: >"$MEASURE_OUT"
LOAD_BEFORE=$(load_line)

ensure_blob_dataset "$BLOB_MB"
"$ITBACKUP" --root "$W" backup --services postgres --timestamp t >/dev/null
BYTES=$(du -sb "$W/t" | cut -f1)
URL="s3://$IT_S3_BUCKET/bench-throttle-$$"

measure push "$ITBACKUP" push "$W/t" "$URL/fast"
measure push_limited "$ITBACKUP" --limit-upload "$RATE" push "$W/t" "$URL/slow"
measure pull "$ITBACKUP" pull "$URL/fast/t" "$W/down-fast"
measure pull_limited "$ITBACKUP" --limit-download "$RATE" pull "$URL/slow/t" "$W/down-slow"
rm -rf "$W/down-fast" "$W/down-slow"

RATE_BYTES=$(awk -v r="$RATE" 'BEGIN{
  n=r; sub(/\/s$/,"",n); u=n; gsub(/[0-9.]/,"",u); v=n+0;
  f = (u=="GiB")?1073741824:(u=="MiB")?1048576:(u=="KiB")?1024:(u=="GB")?1e9:(u=="MB")?1e6:(u=="KB")?1e3:1;
  printf "%.0f", v*f }')
# What --limit-upload governs is the upload; push then reads every object
# back (its SHA-256 check) at full speed: that part is the unthrottled
# push's read-back, so the upload alone is push_limited − (push − upload).
EXPECTED=$(awk -v b="$BYTES" -v r="$RATE_BYTES" 'BEGIN{printf "%.1f", b/r}')
BODY="$W/section.md"
{
  echo "## Bandwidth limits (bench/remote-throttle.sh)"
  echo
  echo "Reproduce: \`bench/remote-throttle.sh\` (BLOB_MB=$BLOB_MB RATE=$RATE). $(itbackup_version), commit $(itbackup_commit); MinIO from testenv on loopback."
  echo "Machine: $(machine_line); $LOAD_BEFORE before, $(load_line) after."
  echo
  echo "Backup: $(awk -v b="$BYTES" 'BEGIN{printf "%.0f MiB", b/1048576}'); at $RATE the transfer alone should take **$EXPECTED s**."
  echo
  echo "| step | seconds |"
  echo "| --- | ---: |"
  echo "| push, unthrottled (upload + read-back check) | $(median_of push) |"
  echo "| push --limit-upload $RATE (the read-back check is not an upload: unthrottled) | $(median_of push_limited) |"
  echo "| pull, unthrottled | $(median_of pull) |"
  echo "| pull --limit-download $RATE | $(median_of pull_limited) |"
  echo
  echo "Throttled ÷ expected: push $(ratio "$(median_of push_limited)" "$EXPECTED") (its read-back included), pull **$(ratio "$(median_of pull_limited)" "$EXPECTED")**; the goal is 1.00 ± 0.10."
} >"$BODY"
update_section remote-throttle "$BODY"
cat "$BODY"

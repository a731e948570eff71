#!/usr/bin/env bash
# bench/remote.sh [RUNS] — itbackup's repository transfers beside a standard S3
# client, and the cost of age encryption, in one run on the bench stack
# (bench/lib.sh: PostgreSQL and MinIO on their bench ports):
#   upload:   itbackup push DIR s3://…   vs  aws s3 cp --recursive DIR s3://…
#             (itbackup also reads every object back through SHA-256; the
#             same guarantee with the aws CLI is upload + download + sha256sum,
#             reported as a second reference)
#   download: itbackup pull s3://…/TS    vs  aws s3 cp --recursive s3://… DIR
#   sealing:  itbackup backup --services postgres  with and without --encrypt-to,
#             itbackup verify of each (decrypting the sealed one)
#   streaming: itbackup backup --upload URL --no-local (PostgreSQL physical)
#             and verify --from URL, with the root on a 256 MiB tmpfs whose
#             use is sampled every 50 ms: the local-disk high-water mark of
#             each command (pull and aws download write the whole backup)
# Dataset: database bench_blob with BLOB_MB (default 1024) MB of random
# (incompressible) bytes, so that the artifact is as large as the data.
# awscli comes from PyPI into a venv under $BENCH_TOOLS. Each measurement runs
# RUNS times (default 3), alternating which tool goes first; medians reported.
# Updates the "remote" section of bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

RUNS=${1:-${BENCH_RUNS:-3}}
BLOB_MB=${BLOB_MB:-1024}
W="$BENCH_WORK/remote"
MEASURE_OUT="$W/measure.tsv"

ensure_gnu_time
bench_build
bench_up postgres s3

AWS_VENV="$BENCH_TOOLS/awscli"
if [ ! -x "$AWS_VENV/bin/aws" ]; then
  blog "installing awscli from PyPI into $AWS_VENV"
  python3 -m venv "$AWS_VENV"
  "$AWS_VENV/bin/pip" install -q awscli >&2
fi
aws_cli() { "$AWS_VENV/bin/aws" --endpoint-url "$AWS_ENDPOINT_URL" --only-show-errors "$@"; }
AWS_VERSION=$("$AWS_VENV/bin/aws" --version 2>&1 | head -n1)

rm -rf "$W"
mkdir -p "$W"
: >"$MEASURE_OUT"
LOAD_BEFORE=$(load_line)

# ---- dataset ------------------------------------------------------------
ensure_blob_dataset "$BLOB_MB"

"$ITBACKUP" keygen --out "$W/key.txt" >/dev/null
RECIPIENT=$(sed -n 's/^# public key: //p' "$W/key.txt")
BUCKET_URL="s3://$IT_S3_BUCKET/bench-remote-$$"

# The steps below are shell functions run under /usr/bin/time through bash -c.
export AWS_VENV W ITBACKUP RECIPIENT BUCKET_URL
run_fn() { local label="$1"; shift; measure "$label" bash -c "$*"; }

# ---- sealing: backup and verify, plain and encrypted ----------------------
backup_plain() { "$ITBACKUP" --root "$W/plain" backup --services postgres --timestamp "p$1"; }
backup_sealed() { "$ITBACKUP" --root "$W/sealed" --encrypt-to "$RECIPIENT" backup --services postgres --timestamp "s$1"; }
export -f aws_cli backup_plain backup_sealed
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) -eq 1 ]; then
    run_fn backup_plain backup_plain "$run"; run_fn backup_sealed backup_sealed "$run"
  else
    run_fn backup_sealed backup_sealed "$run"; run_fn backup_plain backup_plain "$run"
  fi
  measure verify_plain "$ITBACKUP" --root "$W/plain" verify --path "$W/plain/p$run"
  measure verify_sealed "$ITBACKUP" --root "$W/sealed" --identity "$W/key.txt" verify --path "$W/sealed/s$run"
  # Keep only the first run's backups (disk space).
  [ "$run" -eq 1 ] || rm -rf "$W/plain/p$run" "$W/sealed/s$run"
done
DIR="$W/plain/p1"
export DIR
BYTES=$(du -sb "$DIR" | cut -f1)
SEALED_BYTES=$(du -sb "$W/sealed/s1" | cut -f1)

# ---- transfers ---------------------------------------------------------------
aws_up() { aws_cli s3 cp --recursive "$DIR" "$BUCKET_URL/aws-$1/p1"; }
aws_down() { rm -rf "$W/aws-down"; aws_cli s3 cp --recursive "$BUCKET_URL/aws-$1/p1" "$W/aws-down"; }
aws_up_check() { aws_up "$1" && aws_down "$1" && sha256sum "$W/aws-down"/* >/dev/null; }
itb_push() { "$ITBACKUP" push "$DIR" "$BUCKET_URL/itb-$1"; }
itb_pull() { rm -rf "$W/itb-down"; "$ITBACKUP" pull "$BUCKET_URL/itb-$1/p1" "$W/itb-down"; }
export -f aws_up aws_down aws_up_check itb_push itb_pull
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) -eq 1 ]; then
    run_fn aws_upload aws_up "$run"; run_fn itbackup_push itb_push "$run"
  else
    run_fn itbackup_push itb_push "$run"; run_fn aws_upload aws_up "$run"
  fi
  if [ $((run % 2)) -eq 1 ]; then
    run_fn aws_download aws_down "$run"; run_fn itbackup_pull itb_pull "$run"
  else
    run_fn itbackup_pull itb_pull "$run"; run_fn aws_download aws_down "$run"
  fi
  run_fn aws_upload_download_sha256 aws_up_check "$run"
  aws_cli s3 rm --recursive "$BUCKET_URL/" >/dev/null
done
rm -rf "$W/aws-down" "$W/itb-down"

# ---- streaming through the repository: the root on a tmpfs, its use sampled --
STREAM_ROOT="$W/stream-root"
mkdir -p "$STREAM_ROOT"
mount -t tmpfs -o size=256m tmpfs "$STREAM_ROOT"
trap 'umount "$STREAM_ROOT" 2>/dev/null' EXIT
HWM_OUT="$W/hwm.tsv"
: >"$HWM_OUT"
# disk_hwm LABEL CMD… — run CMD while the tmpfs's use is sampled every 50 ms;
# the peak (bytes) goes into $HWM_OUT.
disk_hwm() {
  local label=$1 flag="$W/sampling" rc=0 sampler
  shift
  touch "$flag"
  (max=0
   while [ -e "$flag" ]; do
     used=$(df --output=used -B1 "$STREAM_ROOT" | tail -n1)
     [ "$used" -gt "$max" ] && max=$used
     sleep 0.05
   done
   printf '%s\t%s\n' "$label" "$max" >>"$HWM_OUT") &
  sampler=$!
  "$@" || rc=$?
  rm -f "$flag"
  wait "$sampler"
  return "$rc"
}
itb_stream_backup() { "$ITBACKUP" --root "$STREAM_ROOT" --json backup --services postgres --postgres-method physical --timestamp "st$1" --upload "$BUCKET_URL/stream" --no-local; }
itb_stream_verify() { "$ITBACKUP" --root "$STREAM_ROOT" verify --from "$BUCKET_URL/stream/st$1"; }
export STREAM_ROOT
export -f itb_stream_backup itb_stream_verify
STREAM_BYTES=0
for run in $(seq 1 "$RUNS"); do
  disk_hwm stream_backup run_fn itbackup_stream_backup itb_stream_backup "$run"
  # The backup's --json: the artifacts' bytes, as stored in the repository.
  STREAM_BYTES=$(python3 -c 'import json,sys; m=json.load(sys.stdin)["result"]["manifest"]; print(sum(a["bytes"] for a in m["artifacts"].values()))' <"$BENCH_WORK/last.out")
  disk_hwm stream_verify run_fn itbackup_stream_verify itb_stream_verify "$run"
done
aws_cli s3 rm --recursive "$BUCKET_URL/" >/dev/null
hwm_of() { awk -F'\t' -v l="$1" '$1==l{ if($2>m) m=$2 } END{ if(m=="") print "n/a"; else if (m < 1048576) printf "%.0f KiB\n", m/1024; else printf "%.1f MiB\n", m/1048576 }' "$HWM_OUT"; }

# ---- report ------------------------------------------------------------------
mbps() { awk -v b="$BYTES" -v s="$1" 'BEGIN{ if (s=="n/a" || s==0) print "n/a"; else printf "%.0f", b/1048576/s }'; }
row() { printf '| %s | %s | %s MB/s | %s | %s |\n' "$1" "$(median_of "$2")" "$(mbps "$(median_of "$2")")" "$(max_rss_of "$2")" "$(runs_of "$2")"; }
BODY="$W/section.md"
{
  echo "## Remote repositories and encryption (bench/remote.sh $RUNS)"
  echo
  echo "Reproduce: \`bench/remote.sh $RUNS\` (BLOB_MB=$BLOB_MB). $(itbackup_version), commit $(itbackup_commit); $AWS_VERSION; MinIO from testenv on loopback, same disk."
  echo "Machine: $(machine_line); $LOAD_BEFORE before, $(load_line) after."
  echo
  echo "Backup directory: $(awk -v b="$BYTES" 'BEGIN{printf "%.0f MB", b/1048576}') (every database of the bench PostgreSQL, among them $BLOB_MB MB of random bytes); sealed: $(awk -v b="$SEALED_BYTES" 'BEGIN{printf "%.0f MB", b/1048576}')."
  echo
  echo "| step | median s | throughput | peak RSS MB | runs (s) |"
  echo "| --- | ---: | ---: | ---: | --- |"
  row "aws s3 cp upload" aws_upload
  row "itbackup push (upload + read-back SHA-256 check)" itbackup_push
  row "aws upload + download + sha256sum (same guarantee)" aws_upload_download_sha256
  row "aws s3 cp download" aws_download
  row "itbackup pull (download, SHA-256 checked)" itbackup_pull
  row "itbackup backup (plain)" backup_plain
  row "itbackup backup --encrypt-to (age)" backup_sealed
  row "itbackup verify (plain)" verify_plain
  row "itbackup verify --identity (decrypt + verify)" verify_sealed
  echo
  up=$(ratio "$(median_of itbackup_push)" "$(median_of aws_upload)")
  same=$(ratio "$(median_of itbackup_push)" "$(median_of aws_upload_download_sha256)")
  down=$(ratio "$(median_of itbackup_pull)" "$(median_of aws_download)")
  enc=$(ratio "$(median_of backup_sealed)" "$(median_of backup_plain)")
  ver=$(ratio "$(median_of verify_sealed)" "$(median_of verify_plain)")
  echo "Ratios (itbackup ÷ aws CLI; lower is faster): push ÷ upload **$up**, push ÷ (upload + download + sha256sum) **$same**, pull ÷ download **$down**."
  echo "Encryption overhead: backup sealed ÷ plain **$enc**, verify sealed ÷ plain **$ver**; sealed size ÷ plain $(ratio "$SEALED_BYTES" "$BYTES")."
  echo
  echo "Streaming through the repository (the root on a 256 MiB tmpfs; a physical base backup of the bench cluster, $(awk -v b="$STREAM_BYTES" 'BEGIN{printf "%.0f MB", b/1048576}') in the repository):"
  echo
  echo "| command | median s | peak RSS MB | local disk high-water mark | runs (s) |"
  echo "| --- | ---: | ---: | ---: | --- |"
  printf '| itbackup backup --upload --no-local | %s | %s | %s | %s |\n' "$(median_of itbackup_stream_backup)" "$(max_rss_of itbackup_stream_backup)" "$(hwm_of stream_backup)" "$(runs_of itbackup_stream_backup)"
  printf '| itbackup verify --from | %s | %s | %s | %s |\n' "$(median_of itbackup_stream_verify)" "$(max_rss_of itbackup_stream_verify)" "$(hwm_of stream_verify)" "$(runs_of itbackup_stream_verify)"
  echo "| itbackup pull, aws s3 cp download (above) | | | the whole backup ($(awk -v b="$BYTES" 'BEGIN{printf "%.0f MB", b/1048576}')) | |"
  echo "| itbackup push, aws s3 cp upload (above) | | | nothing written (they read a local backup of $(awk -v b="$BYTES" 'BEGIN{printf "%.0f MB", b/1048576}')) | |"
} >"$BODY"
update_section remote "$BODY"
cat "$BODY"

# S3: the MinIO server, built from source with the Go toolchain at the module
# version pinned in versions (MinIO has no semver tags: a pseudo-version), the
# module and its dependencies coming from the Go module proxy. Single drive under
# $STATE/s3/data, API on 127.0.0.1:$S3_PORT, web console off, fixed root keys,
# and the test bucket created once the server answers.
#
# The binary is built once per pinned version into $STATE/s3/bin/<version>/, with
# a stamp file naming the module version. A minio already installed in Go's bin
# directory (`go install github.com/minio/minio@<version>`) is copied instead of
# rebuilding when `go version -m` shows the pinned version. A build after
# `rm -rf .testenv` reuses Go's module and build caches and is much quicker.

MINIO_MODULE=github.com/minio/minio
S3_DIR="$STATE/s3"
S3_DATA="$S3_DIR/data"
S3_LOGS="$S3_DIR/logs"
S3_LOG="$S3_LOGS/minio.log"
S3_BUILD_LOG="$S3_LOGS/build.log"
S3_PIDFILE="$S3_DIR/run/minio.pid"
S3_BIN_DIR="$S3_DIR/bin/$MINIO_VERSION"
S3_BIN="$S3_BIN_DIR/minio"
S3_STAMP="$S3_BIN_DIR/minio.version"
S3_URL="http://127.0.0.1:$S3_PORT"

# The go command: IT_TESTENV_GO, else the one on PATH, else the usual install.
s3_go() {
  local go="${IT_TESTENV_GO:-}"
  [ -n "$go" ] || go="$(command -v go || true)"
  [ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
  [ -n "$go" ] && [ -x "$go" ] || die "s3: building MinIO needs the Go toolchain (go on PATH, or IT_TESTENV_GO)"
  printf '%s\n' "$go"
}

s3_installed() {
  [ -x "$S3_BIN" ] && [ "$(cat "$S3_STAMP" 2>/dev/null)" = "$MINIO_MODULE@$MINIO_VERSION" ]
}

# -ldflags as MinIO's own Makefile sets them (buildscripts/gen-ldflags.go), taken
# from the pseudo-version vX.0.0-YYYYMMDDhhmmss-<commit>, so `minio --version`
# names the release date and commit instead of DEVELOPMENT.GOGET.
s3_ldflags() {
  local flags="-s -w" re='^v[0-9]+\.0\.0-([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})-([0-9a-f]{12})$'
  if [[ "$MINIO_VERSION" =~ $re ]]; then
    local m=("${BASH_REMATCH[@]}") pkg="$MINIO_MODULE/cmd"
    local date="${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z"
    flags+=" -X $pkg.Version=$date -X $pkg.ReleaseTag=DEVELOPMENT.${date//:/-} -X $pkg.CopyrightYear=${m[1]}"
    flags+=" -X $pkg.CommitID=${m[7]} -X $pkg.ShortCommitID=${m[7]}"
  fi
  printf '%s\n' "$flags"
}

# Build into OUT_DIR/minio: `go install module@version`, or, should go refuse that
# (say a later pin gains replace directives in its go.mod), `go build` in a
# writable copy of the module's source fetched with `go mod download`.
s3_build() {
  local go="$1" out="$2" ldflags src
  ldflags="$(s3_ldflags)"
  # GOTOOLCHAIN=auto: a Go older than the module's go line fetches a newer
  # toolchain from the module proxy instead of failing.
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" CGO_ENABLED=0
  if [ -z "${IT_TESTENV_S3_BUILD_FROM_SOURCE:-}" ]; then
    echo "+ GOBIN=$out go install -tags kqueue -trimpath -ldflags '$ldflags' $MINIO_MODULE@$MINIO_VERSION"
    GOBIN="$out" "$go" install -tags kqueue -trimpath -ldflags "$ldflags" "$MINIO_MODULE@$MINIO_VERSION" && return 0
    echo "go install failed; building from the module source instead"
  fi
  src="$("$go" mod download -json "$MINIO_MODULE@$MINIO_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -n "$src" ] && [ -s "$src/go.mod" ] || { echo "go mod download gave no source directory"; return 1; }
  rm -rf "$S3_DIR/src"
  cp -r "$src" "$S3_DIR/src" && chmod -R u+w "$S3_DIR/src" || return 1
  echo "+ (cd $S3_DIR/src && GOFLAGS=-mod=mod go build -tags kqueue -trimpath -ldflags '$ldflags' -o $out/minio .)"
  (cd "$S3_DIR/src" && GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" "$go" build -tags kqueue -trimpath \
    -ldflags "$ldflags" -o "$out/minio" .) || return 1
  rm -rf "$S3_DIR/src"
}

s3_install() {
  s3_installed && return 0
  local go tmp="$S3_BIN_DIR.tmp" gobin start
  go="$(s3_go)"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$S3_LOGS"
  gobin="$("$go" env GOBIN)"
  [ -n "$gobin" ] || gobin="$("$go" env GOPATH | cut -d: -f1)/bin"
  if [ -x "$gobin/minio" ] && "$go" version -m "$gobin/minio" 2>/dev/null \
      | grep -qE "^[[:space:]]+mod[[:space:]]+$MINIO_MODULE[[:space:]]+$MINIO_VERSION([[:space:]]|\$)"; then
    log "reusing $gobin/minio (MinIO $MINIO_VERSION)"
    cp "$gobin/minio" "$tmp/minio"
  else
    log "building MinIO $MINIO_VERSION from source with $("$go" env GOVERSION) (once per version; several minutes on 2 cores; log: $S3_BUILD_LOG)"
    start=$SECONDS
    if ! (s3_build "$go" "$tmp") >"$S3_BUILD_LOG" 2>&1; then
      rm -rf "$tmp"
      fail_start s3 "$S3_BUILD_LOG" "building MinIO $MINIO_VERSION failed"
    fi
    log "built MinIO in $((SECONDS - start))s"
  fi
  "$tmp/minio" --version >>"$S3_BUILD_LOG" 2>&1 \
    || { rm -rf "$tmp"; fail_start s3 "$S3_BUILD_LOG" "the built minio binary does not run"; }
  printf '%s\n' "$MINIO_MODULE@$MINIO_VERSION" >"$tmp/minio.version"
  rm -rf "$S3_BIN_DIR"
  mv "$tmp" "$S3_BIN_DIR"
}

s3_answers() {
  curl -fsS --max-time 5 -o /dev/null "$S3_URL/minio/health/ready"
}

# Signed requests with testenv's own SigV4 client (Python's standard library only).
s3_request() {
  AWS_ENDPOINT_URL="$S3_URL" AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
    AWS_REGION="$S3_REGION" python3 "$TESTENV_SRC/s3_request.py" "$@"
}

s3_ensure_bucket() {
  s3_request HEAD "/$S3_BUCKET" 2>/dev/null && return 0
  log "creating bucket $S3_BUCKET"
  local out
  out="$(s3_request PUT "/$S3_BUCKET" 2>&1 >/dev/null)" && return 0
  # Created meanwhile by someone else: fine.
  grep -q BucketAlreadyOwnedByYou <<<"$out" && return 0
  printf '%s\n' "$out" | sed 's/^/  | /' >&2
  die "s3: could not create bucket $S3_BUCKET"
}

s3_start() {
  if pid_alive "$S3_PIDFILE" "$S3_DATA" && s3_answers; then
    s3_ensure_bucket
    return 0
  fi
  s3_install
  mkdir -p "$S3_DATA" "$S3_LOGS" "$S3_DIR/run"
  stop_pidfile s3 "$S3_PIDFILE" "$S3_DATA" 30
  require_free_port s3 "$S3_PORT"
  : >"$S3_LOG"
  # setsid: the server outlives this script and the caller's terminal or pipe.
  # MINIO_BROWSER=off: no web console (nothing listens on its port, which is
  # pinned all the same so that MinIO would never pick a random one).
  env MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" \
    MINIO_SITE_REGION="$S3_REGION" MINIO_BROWSER=off MINIO_UPDATE=off \
    setsid "$S3_BIN" server --address "127.0.0.1:$S3_PORT" \
    --console-address "127.0.0.1:$S3_CONSOLE_PORT" "$S3_DATA" \
    </dev/null >>"$S3_LOG" 2>&1 8>&- &
  echo $! >"$S3_PIDFILE"
  wait_until s3 "$S3_LOG" "$S3_PIDFILE" "$S3_DATA" s3_answers
  s3_ensure_bucket
}

s3_stop() {
  stop_pidfile s3 "$S3_PIDFILE" "$S3_DATA" 30
}

s3_describe() {
  local version
  # The release date our -ldflags gave it; the pinned version for a binary
  # built without them (a plain `go install` says DEVELOPMENT.GOGET).
  version="$("$S3_BIN" --version 2>/dev/null | sed -n 's/^minio version [A-Z]*\.\([0-9][^ ]*\).*/\1/p' | head -n1)"
  printf '%-10s %-22s %s\n' s3 "MinIO ${version:-$MINIO_VERSION}" "$S3_URL s3://$S3_BUCKET"
}

# The command that stops or starts this very stack (its directory and ports).
s3_lifecycle() {
  printf 'IT_TESTENV_DIR=%s IT_TESTENV_S3_PORT=%s IT_TESTENV_S3_CONSOLE_PORT=%s IT_TESTENV_S3_BUCKET=%s %s/%s s3' \
    "$STATE" "$S3_PORT" "$S3_CONSOLE_PORT" "$S3_BUCKET" "$TESTENV_SRC" "$1"
}

s3_env() {
  cat <<ENV
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export AWS_REGION=$S3_REGION
export AWS_DEFAULT_REGION=$S3_REGION
export AWS_ENDPOINT_URL=$S3_URL
export AWS_ENDPOINT=$S3_URL
export AWS_ALLOW_HTTP=true
export IT_S3_BUCKET=$S3_BUCKET
export IT_S3_URL=s3://$S3_BUCKET
export IT_S3_DATA=$S3_DATA
export IT_S3_STOP_CMD="$(s3_lifecycle down)"
export IT_S3_START_CMD="$(s3_lifecycle up)"
ENV
}

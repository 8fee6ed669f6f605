#!/bin/bash
# `make docker-check`: build the workspace image and run the compose stack for real.
#   1. a Docker engine (as root: installs docker.io, docker-compose, debootstrap if missing and
#      starts dockerd, its log in outputs/docker-check/dockerd.log)
#   2. the base image: roboloop-base:bookworm from Debian packages (docker/make_base.sh) unless
#      BASE_IMAGE names one (e.g. debian:bookworm-slim where Docker Hub is reachable)
#   3. docker/local: pip's find-links wheels and CA bundle from this machine's pip config
#   4. roboloop:cpu from docker/Dockerfile.pypi (BuildKit, build network = host)
#   5. `compose up sim recorder` until EPISODES episodes are written, `compose stop`, then
#      `python -m episode_dataset validate` on the shared volume
#   6. `compose run train` for 1 epoch
#   7. ONNX export, `compose up sim policy recorder` (ACTION_SOURCE=topic) for 1 served episode
# Leaves nothing running; the volume is removed at the end (KEEP_VOLUME=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
EPISODES=${EPISODES:-3}
PROJECT=${PROJECT:-roboloop-check}
LOGS=outputs/docker-check
RECORD_TIMEOUT_S=${RECORD_TIMEOUT_S:-300}
mkdir -p "$LOGS"
T0=$SECONDS
say() { printf '[docker-check %4ds] %s\n' $((SECONDS - T0)) "$*"; }
fail() { say "FAILED: $*"; exit 1; }

# 1. engine
missing=()
command -v dockerd > /dev/null || missing+=(docker.io)
command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1 \
    || missing+=(docker-compose)
[ -n "${BASE_IMAGE:-}" ] || command -v debootstrap > /dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "needs ${missing[*]} (apt) and root to install them"
    say "installing ${missing[*]}"
    apt-get update -q > "$LOGS/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >> "$LOGS/apt.log" 2>&1
fi
if ! docker info > /dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no Docker engine answers and only root can start dockerd"
    say "starting dockerd (log: $LOGS/dockerd.log)"
    setsid nohup dockerd > "$LOGS/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 60); do docker info > /dev/null 2>&1 && break; sleep 1; done
    docker info > /dev/null 2>&1 \
        || fail "dockerd did not come up: $(tail -n 3 "$LOGS/dockerd.log")"
fi
say "engine $(docker version --format '{{.Server.Version}}')"

# A client that builds with BuildKit: buildx, or a classic client (< 23) with DOCKER_BUILDKIT=1.
BUILD=()
if docker buildx version > /dev/null 2>&1; then
    BUILD=(docker buildx build --load)
else
    for client in $(type -ap docker); do
        major=$("$client" version --format '{{.Client.Version}}' 2> /dev/null | cut -d. -f1)
        if [ -n "$major" ] && [ "$major" -lt 23 ]; then BUILD=("$client" build); break; fi
    done
fi
[ ${#BUILD[@]} -gt 0 ] || fail "no docker client here builds with BuildKit (install buildx)"
export DOCKER_BUILDKIT=1
if docker compose version > /dev/null 2>&1; then COMPOSE=(docker compose); else
    COMPOSE=(docker-compose); fi
COMPOSE+=(-p "$PROJECT" -f docker/compose.yaml)

# 2. base image
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=roboloop-base:bookworm
    docker image inspect "$BASE_IMAGE" > /dev/null 2>&1 || docker/make_base.sh "$BASE_IMAGE"
fi
say "base image $BASE_IMAGE"

# 3. what this machine's pip uses besides the index: find-links wheels, the CA bundle
PIP=(python3 -m pip)
[ -x .venv/bin/python ] && PIP=(.venv/bin/python -m pip)
pip_config() {  # the last value pip's config gives KEY (global or env)
    "${PIP[@]}" config list 2> /dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'$/\1/p" | tail -n1
}
rm -rf docker/local/wheels docker/local/ca-certificates.crt
mkdir -p docker/local/wheels
for dir in $(pip_config find-links); do
    [ -d "$dir" ] && cp -l "$dir"/*.whl docker/local/wheels/ 2> /dev/null \
        || cp "$dir"/*.whl docker/local/wheels/ 2> /dev/null || true
done
cert=$(pip_config cert)
[ -n "$cert" ] && cp "$cert" docker/local/ca-certificates.crt
# torch's CPU wheel found locally: no other index (PyTorch's CPU index is the default)
if compgen -G 'docker/local/wheels/torch-*.whl' > /dev/null; then
    export PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL-}
fi
say "docker/local: $(ls docker/local/wheels | wc -l) wheel(s), CA bundle ${cert:-none}"

# 4. image
say "building roboloop:cpu (log: $LOGS/build.log)"
t=$SECONDS
nice -n 10 "${BUILD[@]}" --progress=plain --network host \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL-https://download.pytorch.org/whl/cpu}" \
    -f docker/Dockerfile.pypi -t roboloop:cpu . > "$LOGS/build.log" 2>&1 \
    || { tail -n 30 "$LOGS/build.log"; fail "image build"; }
say "built roboloop:cpu in $((SECONDS - t)) s ($(docker image inspect -f '{{.Size}}' roboloop:cpu \
    | awk '{printf "%.2f GB", $1 / 1e9}'))"

# 5. record
cleanup() {
    "${COMPOSE[@]}" logs --no-color > "$LOGS/compose.log" 2>&1 || true
    if [ "${KEEP_VOLUME:-0}" = 1 ]; then "${COMPOSE[@]}" down > /dev/null 2>&1 || true
    else "${COMPOSE[@]}" down -v > /dev/null 2>&1 || true; fi
}
trap cleanup EXIT
"${COMPOSE[@]}" down -v > /dev/null 2>&1 || true
cid() { "${COMPOSE[@]}" ps -q "$1"; }

# stack N SERVICE...: `compose up` until the recorder has written N episodes to $DATASET, check
# that the containers have no way off the host, stop them with SIGINT (all must exit 0).
stack() {
    local n=$1 t=$SECONDS svc code ifaces
    shift
    EPISODES=$n WAIT_FOR_SUBSCRIBERS=${WAIT_FOR_SUBSCRIBERS:-1} "${COMPOSE[@]}" up -d --no-build "$@" 2>&1 | sed 's/^/  /'
    local last="episode demo_$((n - 1)) written"
    # (grep on a captured log: `logs | grep -q` under pipefail fails when grep closes the pipe)
    until grep -q "$last" <<< "$("${COMPOSE[@]}" logs --no-color recorder 2>&1)"; do
        for svc in "$@"; do
            [ "$(docker inspect -f '{{.State.Running}}' "$(cid "$svc")")" = true ] || {
                "${COMPOSE[@]}" logs --no-color --tail 20 "$svc"
                fail "$svc exited early"
            }
        done
        [ $((SECONDS - t)) -lt "$RECORD_TIMEOUT_S" ] || fail "no '$last' in $RECORD_TIMEOUT_S s"
        sleep 2
    done
    say "$* recorded $n episode(s) to /data/$DATASET in $((SECONDS - t)) s"
    for svc in "$@"; do  # no way off the host: loopback is the only interface
        ifaces=$(docker exec "$(cid "$svc")" awk 'NR > 2 {printf "%s ", $1}' /proc/net/dev)
        [ "$ifaces" = "lo: " ] || fail "$svc has network interfaces $ifaces"
    done
    say "$* see no network interface but lo; stopping (SIGINT)"
    "${COMPOSE[@]}" stop "$@" 2>&1 | sed 's/^/  /'
    for svc in "$@"; do
        code=$(docker inspect -f '{{.State.ExitCode}}' "$(cid "$svc")")
        [ "$code" = 0 ] || fail "$svc exited with $code"
    done
    grep -E 'written|stopped' <<< "$("${COMPOSE[@]}" logs --no-color recorder 2>&1)" \
        | sed 's/^/  /'
    say "validating /data/$DATASET"
    "${COMPOSE[@]}" run --rm --no-deps train python -m episode_dataset validate \
        "/data/$DATASET" 2>&1 | sed 's/^/  /'
}
in_train() { "${COMPOSE[@]}" run --rm --no-deps train "$@"; }

# 5. record expert episodes, validate them on the shared volume
export ACTION_SOURCE=expert DATASET=recording.hdf5
stack "$EPISODES" sim recorder

# 6. train one epoch on them
say "training 1 epoch (compose run train)"
t=$SECONDS
EPOCHS=1 "${COMPOSE[@]}" run --rm train > "$LOGS/train.log" 2>&1 \
    || { tail -n 30 "$LOGS/train.log"; fail "compose run train"; }
tail -n 5 "$LOGS/train.log" | sed 's/^/  /'
say "trained in $((SECONDS - t)) s"

# 7. serve it: ONNX export, then the policy service drives the sim (CPU, no GPU reserved)
run_dir=$(sed -n "s/.*'run_dir': '\([^']*\)'.*/\1/p" "$LOGS/train.log" | tail -n1)
[ -n "$run_dir" ] || fail "no run_dir in $LOGS/train.log"
in_train python -m learning.export --ckpt "$run_dir/checkpoints/last.ckpt" \
    --out /data/policy.onnx > "$LOGS/export.log" 2>&1 \
    || { tail -n 20 "$LOGS/export.log"; fail "learning.export"; }
say "exported $run_dir/checkpoints/last.ckpt -> /data/policy.onnx"
export ACTION_SOURCE=topic DATASET=served.hdf5 MODEL=policy.onnx
stack 1 sim policy recorder
grep -m1 -iE 'provider|onnx' <<< "$("${COMPOSE[@]}" logs --no-color policy 2>&1)" \
    | sed 's/^/  /' || true
say "OK: total $((SECONDS - T0)) s"

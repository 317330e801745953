#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), start a local dgrid cluster on loopback (`dgrid up`:
# orchestrator, encoder, denoiser, decoder processes serving the default model), generate one image
# through it (`dgrid generate`), and stop the cluster. Arguments replace the default prompt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
build_dir="${DGRID_BUILD_DIR:-build}"
cd "$root"
dgrid="$build_dir/cli/dgrid"
prompt="${*:-a red circle on a blue background}"
ready="$(mktemp)"; rm -f "$ready"
"$dgrid" up --port 0 --http-port 0 --log-dir dgrid-logs --ready-file "$ready" &
up_pid=$!
trap 'kill -INT $up_pid 2>/dev/null; wait $up_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  [ -s "$ready" ] && break
  kill -0 $up_pid 2>/dev/null || { echo "dgrid up failed; see dgrid-logs/" >&2; exit 1; }
  sleep 0.2
done
read -r grpc_address http_address < "$ready"
"$dgrid" generate --server "$grpc_address" --seed 42 -o dgrid-out.png "$prompt"
echo "image: $root/dgrid-out.png   (cluster logs: $root/dgrid-logs/)"

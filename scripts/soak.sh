#!/usr/bin/env bash
# The soak test for longer than CI's 2 minutes: 4 rank processes, random collectives,
# sizes, types and roots verified against a reference, communicators created, destroyed
# and aborted by a random rank, RSS / descriptor / /dev/shm growth checked.
#   scripts/soak.sh [SECONDS]   (default 3600; OXCCL_SOAK_TRACE=1 prints RSS every 250 generations)
set -euo pipefail
cd "$(dirname "$0")/.."
OXCCL_SOAK_SECS=${1:-3600} cargo test --release --test soak -- --nocapture

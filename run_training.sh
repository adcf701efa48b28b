#!/usr/bin/env bash
# The plan's automated setup and test.
#
#   ./run_training.sh                 # set up, check, smoke-test, print the training command
#   ./run_training.sh --start         # ... then start the full training in the background (nohup)
#   CONFIG=configs/cifar10_native32.yaml ./run_training.sh
#
# Steps: create .venv and install hjepa-kit if needed; check Python, RAM and disk; run a 10-step
# smoke run on the embedded real digits; print (or start) the full command.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG="${CONFIG:-configs/cpu_cifar10.yaml}"
START=0
for arg in "$@"; do
  case "$arg" in
    --start) START=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run_training.sh: unknown option $arg (allowed: --start)" >&2; exit 2 ;;
  esac
done

say() { printf '[run_training] %s\n' "$*"; }

# 1. Python
PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY' || { echo "[run_training] Python 3.10 or newer is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
say "python: $("$PYTHON" --version 2>&1)"

# 2. Environment
if [ ! -x .venv/bin/python ]; then
  say "creating .venv and installing hjepa-kit (torch is a large download the first time)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e .
elif ! .venv/bin/python -c "import hjepa_kit.plugins" 2>/dev/null; then
  say "installing hjepa-kit into the existing .venv"
  .venv/bin/pip install --quiet -e .
fi

# 3. Resources: the plan needs 8 GB RAM (12 GB safe, keep the run under 11 GB) and 10 GB of disk.
mem_gb=$(awk '/MemAvailable/ {printf "%.1f", $2/1048576}' /proc/meminfo 2>/dev/null || echo 0)
disk_gb=$(df -Pk . | awk 'NR==2 {printf "%.1f", $4/1048576}')
cores=$(.venv/bin/python -c "from hjepa_kit.threads import physical_cores; print(physical_cores())")
say "available RAM: ${mem_gb} GB, free disk: ${disk_gb} GB, physical cores: ${cores}"
awk -v m="$mem_gb" 'BEGIN {exit !(m < 8)}' && say "WARNING: less than 8 GB RAM available; use configs/cpu_cifar10_fallback.yaml"
awk -v d="$disk_gb" 'BEGIN {exit !(d < 10)}' && say "WARNING: less than 10 GB of free disk"

# 4. Smoke run: 10 steps of the quickstart on the embedded digits, in a temporary folder.
smoke=$(mktemp -d)
trap 'rm -rf "$smoke"' EXIT
say "smoke run (10 steps on the embedded digits)..."
.venv/bin/hjepa train --config configs/quickstart.yaml --output-dir "$smoke" --name smoke \
  --set training.max_steps=10 --set training.epochs=1 --set logging.interval_steps=5 \
  --set evaluation.online_every_epochs=0 --set 'callbacks=[]' > "$smoke/out.txt" 2>&1 \
  || { cat "$smoke/out.txt"; echo "[run_training] smoke run failed" >&2; exit 1; }
grep "step 10/" "$smoke/logs/smoke/training.log" | tail -1 | sed 's/^/[run_training]   /'
.venv/bin/hjepa config validate --config "$CONFIG" >/dev/null
say "smoke run passed; $CONFIG is valid"

NAME=$(.venv/bin/python -c "import hjepa_kit; print(hjepa_kit.load_config('$CONFIG').name)")
CMD=".venv/bin/python scripts/train.py --config $CONFIG --device cpu"
if [ "$START" = 1 ]; then
  mkdir -p "results/logs/$NAME"
  nohup $CMD --resume auto > "results/logs/$NAME/console.txt" 2>&1 &
  say "training started (pid $!); follow it with: tail -f results/logs/$NAME/training.log"
else
  say "start the full training with (in screen/tmux):"
  echo "    $CMD"
  say "monitor: tail -f results/logs/$NAME/training.log ; tensorboard --logdir results/logs/$NAME"
fi

#!/usr/bin/env bash
# medgan in two commands, on a fresh machine:
#   ./run.sh demo   set up, then train/translate/evaluate on the shipped phantom (runs/demo/)
#   ./run.sh test   set up, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# CPU build of torch, pinned: an unpinned torch pulls gigabytes of CUDA packages.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,tensorboard]"
case "${1:-}" in
  demo) shift; exec .venv/bin/medgan demo "$@" ;;
  test) shift
    # the DICOM validator the DICOM-output tests run (Debian's dicom3tools); they skip without it
    if ! command -v dciodvfy >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      { apt-get install -y -qq dicom3tools || { apt-get update -qq && apt-get install -y -qq dicom3tools; }; } >/dev/null 2>&1 || echo "dicom3tools not installed: the validator test skips" >&2
    fi
    exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: ./run.sh demo|test" >&2; exit 2 ;;
esac

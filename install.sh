#!/usr/bin/env bash
# Installs podbench into ./.venv on a fresh Debian machine (x86_64, Python >= 3.10).
#   ./install.sh          the package and the real data its quickstart suite uses
#   ./install.sh --test   also the test tools, Chromium and TeX (HTML and LaTeX report tests),
#                         PostgreSQL (two tuning drivers on one study),
#                         and the example third-party loss plugin (examples/podbench-focal-loss)
set -euo pipefail
cd "$(dirname "$0")"
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

debs="dataset-fashion-mnist"
if [ "$with_test" = 1 ]; then
  debs="$debs postgresql chromium texlive-latex-base texlive-latex-recommended texlive-fonts-recommended lmodern"
fi
missing=""
for p in $debs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=68" wheel
# torch first, pinned, so pip does not pull a multi-GB build from the index.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
if [ "$with_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e ".[test,lint,type]"
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation ./examples/podbench-focal-loss
else
  .venv/bin/python -m pip install -q -e .
fi
echo "podbench installed in $(pwd)/.venv"

#!/usr/bin/env bash
# One-time set-up on a fresh machine (Python 3.11, no GPU needed): a virtualenv in .venv with torch
# 2.14.1 and the project's packages, WordNet 3.0 from Debian for NLTK, and wslfast built and installed.
# Safe to re-run: every step is skipped when already done.
#   bash scripts/setup.sh            # then: .venv/bin/python train/pretrain.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# Again whenever requirements.txt changed since the last install (a new package for the tests, say).
reqs=.venv/.requirements-installed
if ! "$VPY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null \
   || [ requirements.txt -nt "$reqs" ]; then
  echo "setup: installing torch 2.14.1 and the Python packages (a few minutes)"
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q -r requirements.txt
  touch "$reqs"
fi

# WordNet 3.0 for the hashtag vocabularies (Debian's files, copied where NLTK reads them).
if [ ! -f /usr/share/wordnet/data.noun ] && [ ! -f /usr/share/wordnet/dict/data.noun ]; then
  if command -v apt-get >/dev/null; then
    echo "setup: installing WordNet (wordnet-base, wordnet-sense-index)"
    SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null
  else
    echo "setup: WordNet 3.0 is missing and apt-get is not available; install it by hand" >&2
  fi
fi

# Build wslfast in place and install it editable (CUDA kernels too where nvcc is found;
# WSLFAST_FORCE_CPU=1 skips them). Rebuilt only when a source changed since the last build.
stamp=.venv/.wslfast-built
if [ ! -f "$stamp" ] || [ -n "$(find csrc setup.py pyproject.toml -newer "$stamp" 2>/dev/null | head -1)" ] \
   || ! "$VPY" -c "import wslfast; wslfast.build_info()" 2>/dev/null; then
  echo "setup: building wslfast (MAX_JOBS=${MAX_JOBS:-2}; several minutes with CUDA kernels)"
  MAX_JOBS=${MAX_JOBS:-2} "$VPY" -m pip install -q --no-build-isolation --no-deps -e .
  touch "$stamp"
fi
"$VPY" -m wslfast.data setup-wordnet >/dev/null 2>&1 || echo "setup: WordNet not set up for NLTK (vocabulary tools will say how)" >&2
"$VPY" -c "import wslfast, json; print('setup: wslfast', json.dumps(wslfast.build_info()))"

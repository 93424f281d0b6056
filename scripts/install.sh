#!/usr/bin/env bash
# Create or reuse .venv and install everything rprselect needs, in the only order that works:
#   1. system BLAS/LAPACK (PETSc links against them), when missing;
#   2. torch pinned to the wheel present on the machine (a bare `torch` pulls GBs of CUDA);
#   3. the staged SLEPc build: petsc, petsc4py, slepc, slepc4py, each --no-build-isolation so
#      petsc4py is built once; pip caches the wheels, so only the first run takes ~25 minutes;
#   4. the package itself with its extras.
# A stamp file skips all of it when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PETSC_VERSION=${PETSC_VERSION:-3.26.1}
EXTRAS=${EXTRAS:-all,dev}
STAMP="$VENV/.rprselect-installed"
want="torch=$TORCH_VERSION petsc=$PETSC_VERSION extras=$EXTRAS $(sha256sum pyproject.toml | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

need_pkgs=()
for pkg in libopenblas-dev liblapack-dev patchelf; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "install: system packages ${need_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip setuptools wheel cython numpy
pip install "torch==$TORCH_VERSION"

if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",slepc,"* ]]; then
    if ! "$VENV/bin/python" -c "import slepc4py" 2>/dev/null; then
        echo "install: PETSc/SLEPc $PETSC_VERSION (first build ~25 min on 2 cores, cached afterwards)"
        export PETSC_CONFIGURE_OPTIONS="--with-cuda=0 --with-fc=0"
        for pkg in petsc petsc4py slepc slepc4py; do
            # The Cython modules of petsc4py/slepc4py compile into one huge C file: without
            # debug info and at -O1, gcc needs a fraction of the memory (-O3 -g was OOM-killed).
            if [[ $pkg == *4py ]]; then
                CFLAGS="-O1 -g0" pip install --no-build-isolation "$pkg==$PETSC_VERSION"
            else
                pip install --no-build-isolation "$pkg==$PETSC_VERSION"
            fi
        done
    fi
fi

pip install -e ".[$EXTRAS]" "torch==$TORCH_VERSION"
if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",modal,"* ]]; then
    # modAL 0.4.2.1 pins skorch==0.9.0 (pre torch 2); its code works with current skorch.
    pip install --no-deps "modAL-python==0.4.2.1"
fi
if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",monailabel,"* ]]; then
    # monailabel 0.8.5 pins numpymaxflow and pydicom-seg (numpy<2), which cannot resolve beside
    # monai 1.6 and numpy 2; the extra "monailabel" installed what it imports for the datastore,
    # the app and the REST server. pydicom-seg 0.4.1 imports with pydicom<3 (pinned there).
    pip install --no-deps "monailabel==0.8.5" "pydicom-seg==0.4.1"
fi
if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",baal,"* ]]; then
    # baal 2.1.0 requires jupyter; its heuristics need only what the extra "baal" installed.
    pip install --no-deps "baal==2.1.0"
fi
echo "$want" > "$STAMP"

# Sourced by .ci/run and scripts/ptxas12-report.sh: installs CUDA 12.9's ptxas from NVIDIA's PyPI wheel
# into .cuda12-venv (git-ignored) unless it already holds that exact ptxas, and exports GSDPA_PTXAS12.
#
# Only ptxas: NVIDIA's CUDA 12.x wheel `nvidia-cuda-nvcc-cu12` ships ptxas, libnvvm and the crt headers
# but not the nvcc driver, cudafe++ or fatbinary (the 13.x wheels are the first with a complete nvcc).
# ptxas is the part that decides registers and spills, so CI feeds it the PTX of the 13.x nvcc
# (scripts/ptxas12-report.sh); docs/toolchain.md explains why that is a faithful check.
_gsdpa_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_gsdpa_venv12=$_gsdpa_root/.cuda12-venv
_gsdpa_ptxas12_version=12.9.86
_gsdpa_ptxas12() { ls "$_gsdpa_venv12"/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas 2>/dev/null | head -1; }
if ! "$(_gsdpa_ptxas12)" --version 2>/dev/null | grep -q "V$_gsdpa_ptxas12_version"; then
    echo "== installing ptxas $_gsdpa_ptxas12_version from PyPI into .cuda12-venv"
    python3 -m venv "$_gsdpa_venv12"
    "$_gsdpa_venv12/bin/pip" install -q --no-input --disable-pip-version-check --no-deps \
        "nvidia-cuda-nvcc-cu12==$_gsdpa_ptxas12_version"
fi
GSDPA_PTXAS12=$(_gsdpa_ptxas12)
export GSDPA_PTXAS12
"$GSDPA_PTXAS12" --version | tail -2
unset -f _gsdpa_ptxas12

# Sourced by .ci/run and scripts/gpu-suite-build.sh: installs nvcc from NVIDIA's PyPI wheels into
# .cuda-venv (git-ignored) if it is not there yet, and exports CUDA_HOME. Versions pinned as in
# shared/notes/toolchain.md (CUDA 13.0; nvvm pinned explicitly or pip pulls a newer one).
_gsdpa_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_gsdpa_venv=$_gsdpa_root/.cuda-venv
if ! ls "$_gsdpa_venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
    echo "== installing nvcc 13.0 from PyPI into .cuda-venv"
    python3 -m venv "$_gsdpa_venv"
    "$_gsdpa_venv/bin/pip" install -q --disable-pip-version-check \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
CUDA_HOME=$(ls -d "$_gsdpa_venv"/lib/python3*/site-packages/nvidia/cu13 | head -1)
export CUDA_HOME
"$CUDA_HOME/bin/nvcc" --version | tail -2

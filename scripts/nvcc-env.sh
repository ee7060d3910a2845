# Sourced by .ci/run and scripts/gpu-suite-build.sh: installs nvcc from NVIDIA's PyPI wheels into
# .cuda-venv (git-ignored) unless it already holds that exact nvcc, and exports CUDA_HOME. Versions pinned
# as docs/toolchain.md explains (CUDA 13.0; nvvm pinned explicitly or pip pulls a newer one; cccl for
# <nv/target>, which cuda_fp16.h includes).
_gsdpa_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_gsdpa_venv=$_gsdpa_root/.cuda-venv
_gsdpa_nvcc_version=13.0.88
_gsdpa_cuda_home() { ls -d "$_gsdpa_venv"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -1; }
if ! "$(_gsdpa_cuda_home)/bin/nvcc" --version 2>/dev/null | grep -q "V$_gsdpa_nvcc_version"; then
    echo "== installing nvcc $_gsdpa_nvcc_version from PyPI into .cuda-venv"
    python3 -m venv "$_gsdpa_venv"
    "$_gsdpa_venv/bin/pip" install -q --no-input --disable-pip-version-check \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
CUDA_HOME=$(_gsdpa_cuda_home)
export CUDA_HOME
"$CUDA_HOME/bin/nvcc" --version | tail -2
unset -f _gsdpa_cuda_home

# The disassembler behind the SASS analysis (src/sass.rs, tests/sass.rs, `gsdpa sass`; docs/sass.md):
# cuobjdump and nvdisasm land in $CUDA_HOME/bin next to nvcc. 13.2.86 is pinned because NVIDIA
# publishes no 13.0 build of these wheels; it reads 13.0's SASS.
_gsdpa_disasm_version=13.2.86
if ! "$CUDA_HOME/bin/cuobjdump" --version 2>/dev/null | grep -q "V$_gsdpa_disasm_version"; then
    echo "== installing cuobjdump/nvdisasm $_gsdpa_disasm_version from PyPI into .cuda-venv"
    "$_gsdpa_venv/bin/pip" install -q --no-input --disable-pip-version-check \
        nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86
fi
"$CUDA_HOME/bin/cuobjdump" --version | tail -1
unset _gsdpa_disasm_version

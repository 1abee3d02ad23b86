# On the GPU machine, from the repo root: runtime-only TVM + the ffi wheel for its Python, then gpurun_ops.py.
set -e
R=/tmp/rt; mkdir -p $R; tar -xzf build/gpuops/tvm-rt.tgz -C $R
python3 -m zipfile -e build/gpuops/apache_tvm_ffi-*.whl $R >/dev/null
CUDART=$(python3 -c "import nvidia.cuda_runtime as m; print(list(m.__path__)[0]+'/lib')" 2>/dev/null || true)
export PYTHONPATH=$R TVM_USE_RUNTIME_LIB=1 RTCUDA=$R/tvm/lib/libtvm_runtime_cuda.so
export LD_LIBRARY_PATH=$R/tvm/lib:$R/tvm_ffi/lib:$CUDART:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_oneshot/gpurun_ops.py build/gpuops 2>&1 | grep -v Warning

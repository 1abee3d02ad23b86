set -e
R=/tmp/rt; mkdir -p $R; tar -xzf build/gpucheck/tvm-rt.tgz -C $R
python3 -m zipfile -e build/gpucheck/apache_tvm_ffi-*.whl $R >/dev/null
CUDART=$(python3 -c "import nvidia.cuda_runtime as m, os; print(list(m.__path__)[0]+'/lib')" 2>/dev/null || true)
export PYTHONPATH=$R TVM_USE_RUNTIME_LIB=1 RTCUDA=$PWD/build/gpucheck/libtvm_runtime_cuda.so
export LD_LIBRARY_PATH=$R/tvm/lib:$R/tvm_ffi/lib:$CUDART:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
ls $CUDART 2>/dev/null | head -3; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 build/gpucheck/gpurun.py 2>&1 | grep -v Warning

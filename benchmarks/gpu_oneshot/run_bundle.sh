# On the GPU machine (repo root): a runtime-only TVM + the ffi wheel for its Python, then the bundle's runner.
set -e
R=/tmp/rt; mkdir -p $R; tar -xzf build/cudabundle/tvm-rt.tgz -C $R
python3 -m zipfile -e build/cudabundle/apache_tvm_ffi-*.whl $R >/dev/null
CUDART=$(python3 -c "import nvidia.cuda_runtime as m; print(list(m.__path__)[0]+'/lib')" 2>/dev/null || true)
export PYTHONPATH=$R TVM_USE_RUNTIME_LIB=1
export LD_LIBRARY_PATH=$R/tvm/lib:$R/tvm_ffi/lib:$CUDART:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 --version
cd build/cudabundle/bundle
python3 runner.py --out "$OUT/output" 2>&1 | grep -v Warning | tail -40

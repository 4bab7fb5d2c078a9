#!/usr/bin/env bash
# Cross-builds every C++ source for aarch64 (the CMake selection: no x86 ISA files) and runs the portable
# kernels under qemu, comparing their output with the same program built for the host.
# Needs Debian's g++-aarch64-linux-gnu and qemu-user; not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
py_inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
pb_inc=$(.venv/bin/python -c "import pybind11; print(pybind11.get_include())")
common=(csrc/score_steps.cpp csrc/dispatch.cpp csrc/row_ops_portable.cpp)
aarch64-linux-gnu-g++ -std=c++17 -O2 -fopenmp -fPIC -Icsrc -I"$py_inc" -I"$pb_inc" -c csrc/bindings.cpp -o "$out/bindings.o"
aarch64-linux-gnu-g++ -std=c++17 -O2 -fopenmp -static -Icsrc tests/native/portable_main.cpp "${common[@]}" -o "$out/arm" 2>/dev/null
g++ -std=c++17 -O2 -fopenmp -Icsrc -c csrc/row_ops_avx2.cpp -mavx2 -mfma -mf16c -o "$out/avx2.o"
g++ -std=c++17 -O2 -fopenmp -Icsrc -c csrc/row_ops_avx512.cpp -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma -mf16c -o "$out/avx512.o"
g++ -std=c++17 -O2 -fopenmp -Icsrc tests/native/portable_main.cpp "${common[@]}" "$out/avx2.o" "$out/avx512.o" -o "$out/host"
diff <(qemu-aarch64 "$out/arm") <("$out/host") && echo "aarch64: all sources build; portable kernels give the host's output bit for bit"

#!/bin/sh
# check_image_libs.sh - deploy/Containerfile installs a Debian package for every library the tidal
# binary links (its ELF NEEDED entries, resolved with ldd, owned per dpkg -S), and every package it
# names exists in Debian's lists (apt-cache show). What a missing line would break: the image's
# binary failing at start with "error while loading shared libraries".
# The image is a CPU build (-DTIDAL_CUDA=OFF, as the Containerfile says). Given a binary built with
# the CUDA path, the libraries only that path brings - the CUDA toolkit's own (libcudart,
# libcublasLt) and the C++ runtime of nvcc's objects (libstdc++, libgcc_s) - are named and skipped,
# and the Containerfile must say to build without CUDA.
# usage: check_image_libs.sh SOURCE_DIR TIDAL_BINARY
set -eu
src=$1 bin=$2
cf="$src/deploy/Containerfile"
cuda_build=0
if ldd "$bin" | grep -q 'libcudart'; then
    cuda_build=1
    if ! grep -q 'TIDAL_CUDA=OFF' "$cf"; then
        echo "FAIL: $bin links the CUDA runtime and $cf does not say to build without it (TIDAL_CUDA=OFF)"; exit 1
    fi
fi
# the install list: words after "apt-get install" up to the first "&&"
pkgs=$(sed -n '/apt-get install/,/&&/p' "$cf" | tr ' \\' '\n\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' \
       | grep -vE '^(apt-get|install|rm)$' | sort -u)
fail=0
for lib in $(objdump -p "$bin" | awk '/NEEDED/{print $2}'); do
    path=$(ldd "$bin" | awk -v l="$lib" '$1 == l {print $3}')
    [ -z "$path" ] && continue   # the dynamic loader itself
    if [ $cuda_build = 1 ]; then
        case "$lib" in libcudart.so*|libcublasLt.so*|libcublas.so*|libstdc++.so*|libgcc_s.so*)
            echo "skip $lib: the CUDA path's (the image's binary is built with TIDAL_CUDA=OFF)"; continue;;
        esac
    fi
    pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null || true)
    pkg=${pkg%%:*}
    if [ -z "$pkg" ]; then echo "FAIL: $lib ($path) belongs to no Debian package"; fail=1; continue; fi
    if echo "$pkgs" | grep -qx "$pkg"; then echo "ok   $lib -> $pkg"
    else echo "FAIL: $lib -> $pkg, which $cf does not install"; fail=1; fi
done
for p in $pkgs; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then echo "FAIL: $cf installs $p, which Debian's lists do not have"; fail=1; fi
done
[ $fail = 0 ] && echo "every linked library is installed by $cf"
exit $fail

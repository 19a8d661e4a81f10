#!/usr/bin/env bash
# Prepare ONNX Runtime for this example without changing the system: the C++ headers from Debian 13's
# libonnxruntime-dev (downloaded with a private apt sources list, unpacked into DEST) and a
# libonnxruntime.so symlink to the shared library inside the onnxruntime pip wheel.
# usage: fetch_deps.sh DEST [PYTHON]      -> DEST/include/onnxruntime_cxx_api.h, DEST/lib/libonnxruntime.so
set -euo pipefail
DEST="$(mkdir -p "$1" && cd "$1" && pwd)"
PY="${2:-python3}"
if [ ! -f "$DEST/include/onnxruntime_cxx_api.h" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  cat > "$work/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_opts=(-o "Dir::Etc::SourceList=$work/trixie.sources" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" -qq update
  (cd "$work" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev)
  dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$work/pkg"
  mkdir -p "$DEST/include"
  cp -r "$work/pkg/usr/include/onnxruntime/." "$DEST/include/"
fi
capi="$("$PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
lib="$(ls "$capi"/libonnxruntime.so.* | head -n 1)"
mkdir -p "$DEST/lib"
# The wheel's library has SONAME libonnxruntime.so.1: link through symlinks with both names.
ln -sf "$lib" "$DEST/lib/libonnxruntime.so"
ln -sf "$lib" "$DEST/lib/libonnxruntime.so.1"
echo "$DEST"

#!/usr/bin/env bash
# One-time set-up of a fresh Debian 12 machine for building and testing scanside.
# Idempotent: every step checks first and does nothing when the tool is already there.
set -euo pipefail

need_apt=()
command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
# A real DICOM peer (storescu, echoscu) for the receiver's tests.
command -v storescu >/dev/null || need_apt+=(dcmtk)
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

installed_targets=$(rustup target list --installed)
for target in thumbv7em-none-eabihf aarch64-unknown-linux-gnu; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

command -v defmt-print >/dev/null || cargo install --locked defmt-print

# onnx + onnxruntime validate the exported ONNX files independently of tract; safetensors
# writes the torchvision-named weights the --init tests load.
# pillow: tools/ood_eval.py writes its PNG and DICOM evaluation sets with it.
python3 -c 'import onnx, onnxruntime, numpy, safetensors, PIL' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check onnx onnxruntime numpy safetensors \
       pillow
# pydicom with the pylibjpeg codecs and the public pydicom-data corpus: the reference the DICOM
# decoder is compared with (tools/dicom_corpus.py).
python3 -c 'import pydicom, data_store, pylibjpeg, libjpeg, openjpeg, rle' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check pydicom pydicom-data pylibjpeg \
       pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle
echo "setup: all tools present"

#!/usr/bin/env bash
# JPEG-LS decoding speed: scanside's decoder vs pydicom + pylibjpeg-libjpeg, same file, same run.
# Builds a 2048×2048 12-bit CT-like image (tiles of pydicom's CT_small.dcm), compresses it
# losslessly with dcmtk's dcmcjpls (CharLS), then times five decodes on each side.
#   bash tools/bench/jpegls.sh [path/to/scanside]   (default target/release/scanside)
set -euo pipefail
scanside=$(realpath "${1:-target/release/scanside}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
python3 - <<'PYEOF'
import numpy as np, pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
src = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.int32)
src -= src.min()
img = np.clip(np.tile(src, (2048 // src.shape[0] + 1, 2048 // src.shape[1] + 1))[:2048, :2048], 0, 4095)
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
ds.SOPClassUID = SecondaryCaptureImageStorage
ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CT", 2048, 2048, 1
ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 16, 12, 11
ds.PixelRepresentation, ds.PixelData = 0, img.astype(np.uint16).tobytes()
ds.save_as("native.dcm", enforce_file_format=True)
PYEOF
dcmcjpls native.dcm jpegls.dcm
echo "JPEG-LS file: $(stat -c %s jpegls.dcm) bytes (native $(stat -c %s native.dcm))"
python3 - "$scanside" <<'PYEOF'
import subprocess, sys, time
import numpy as np, pydicom
def best(f, n=5):
    times = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); times.append(time.perf_counter() - t0)
    return min(times), sorted(times)[n // 2]
ours = best(lambda: subprocess.run([sys.argv[1], "inspect", "jpegls.dcm"], check=True, capture_output=True))
native = best(lambda: subprocess.run([sys.argv[1], "inspect", "native.dcm"], check=True, capture_output=True))
peer = best(lambda: pydicom.dcmread("jpegls.dcm").pixel_array)
same = (pydicom.dcmread("jpegls.dcm").pixel_array == pydicom.dcmread("native.dcm").pixel_array).all()
print(f"scanside inspect (whole process): JPEG-LS min {ours[0]:.3f} s, median {ours[1]:.3f} s; native file {native[0]:.3f} s")
print(f"pydicom + libjpeg (read + decode, in process): min {peer[0]:.3f} s, median {peer[1]:.3f} s (lossless round trip {'exact' if same else 'DIFFERS'})")
print(f"ratio (median, scanside / pydicom): {ours[1] / peer[1]:.2f}")
PYEOF

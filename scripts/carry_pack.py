"""Pack a large model for a device call's carry (64 MiB at most) and unpack it there.

Float32 weights compress poorly as they are (xz: MiniLM-L3's 69 MB ONNX to 62 MB, too large
beside the working tree; xz's own delta filter, distance 4: 65 MB). Split into four byte
planes first (every weight's exponent byte together), the same file packs to 58 MB. Nothing
here depends on the file being ONNX: any bytes round-trip exactly.

    python scripts/carry_pack.py pack MODEL.onnx OUT.onnx.bs4.xz
    python3 scripts/carry_pack.py unpack OUT.onnx.bs4.xz       # writes OUT.onnx
"""

from __future__ import annotations

import lzma
import struct
import sys
from pathlib import Path

import numpy as np

SUFFIX = ".bs4.xz"


def pack(source: Path, target: Path) -> None:
    """``source`` as its 4 byte planes, xz-compressed, after its length (8 bytes)."""
    data = source.read_bytes()
    padded = data + b"\0" * (-len(data) % 4)
    planes = np.frombuffer(padded, np.uint8).reshape(-1, 4).T.tobytes()
    target.write_bytes(struct.pack("<Q", len(data)) + lzma.compress(planes, preset=6))


def unpack(source: Path) -> Path:
    """The file ``pack`` packed, written beside ``source`` without the suffix."""
    if not source.name.endswith(SUFFIX):
        raise SystemExit(f"{source}: not a {SUFFIX} file")
    blob = source.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    planes = np.frombuffer(lzma.decompress(blob[8:]), np.uint8).reshape(4, -1)
    target = source.with_name(source.name[: -len(SUFFIX)])
    target.write_bytes(planes.T.tobytes()[:length])
    return target


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "pack":
        pack(Path(argv[1]), Path(argv[2]))
    elif len(argv) == 2 and argv[0] == "unpack":
        print(unpack(Path(argv[1])))
    else:
        print(__doc__.strip().splitlines()[-2:], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

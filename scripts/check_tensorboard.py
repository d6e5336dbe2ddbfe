#!/usr/bin/env python3
"""Loads a TensorBoard event file with tensorboard's own EventAccumulator and prints, as JSON,
what it read: the file version, every scalar ([step, value, wall_time]) and every image
([step, width, height, encoded_bytes]) by tag. Also frames the records itself, checks both CRCs
with tensorboard's masked_crc32c, and whether each record is the canonical protobuf encoding
(what tensorboard's own writer would write for that Event). Used by tests/metrics.rs.

    python scripts/check_tensorboard.py events.out.tfevents.<...>

tensorboard's reader checks both TFRecord CRCs and stops at the first bad record, so a broken
file shows up as missing events.
"""
import json
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c


def framing(path):
    """(record count, all CRCs valid, all records canonically encoded)."""
    data = open(path, "rb").read()
    at, n, crcs_ok, canonical = 0, 0, True, True
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        body = data[at + 12 : at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[at + 12 + length : at + 16 + length])
        crcs_ok &= len_crc == masked_crc32c(header) and body_crc == masked_crc32c(body)
        canonical &= event_pb2.Event.FromString(body).SerializeToString() == body
        at += 16 + length
        n += 1
    return n, crcs_ok and at == len(data), canonical


def main(path):
    acc = ea.EventAccumulator(path, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    records, crcs_ok, canonical = framing(path)
    out = {
        "records": records,
        "crcs_ok": crcs_ok,
        "canonical": canonical,
        "file_version": acc.file_version,
        "scalars": {t: [[e.step, e.value, e.wall_time] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": {
            t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(t)]
            for t in tags["images"]
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: check_tensorboard.py EVENT_FILE")
    main(sys.argv[1])

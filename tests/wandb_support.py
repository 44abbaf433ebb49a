"""Reading W&B offline runs back in tests (unit and integration)."""
import json
import struct
from pathlib import Path

# --- reading an offline run back ------------------------------------------------------------
# W&B 0.31 writes no config.yaml / wandb-summary.json offline: everything is in run-<id>.wandb,
# a LevelDB-style log (7-byte ":W&B" header, 32 KiB blocks, records of crc32/len16/type8)
# of wandb_internal.Record protobufs. The Python reader of older versions is gone, hence this.

def wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment completes a record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def read_run(run_dir: Path, wait_s: float = 10.0) -> dict:
    """The run's records; waits (up to wait_s) for its exit record, which W&B's service
    process may append a moment after `finish()` returns in the caller."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        out = _read_run(run_dir)
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_run(run_dir: Path) -> dict:
    out = {"history": [], "summary": {}, "run": None, "exit_code": None}
    (path,) = run_dir.glob("run-*.wandb")
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def run_dirs(root: Path) -> list:
    return sorted(p for p in root.glob("**/offline-run-*") if p.is_dir() and not p.is_symlink())


def all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())

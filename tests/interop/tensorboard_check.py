#!/usr/bin/env python3
"""TensorBoard must read the event files tessera writes, with its own code.

Usage: tensorboard_check.py WRITE_EVENTS_EXE WORK_DIR

Runs tessera's interop_write_events (a MetricsLogger run and a file of known scalars), then:
  1. walks every record of both files with TensorBoard's own TFRecord reader
     (tensorboard.compat.tensorflow_stub PyRecordReader_New), which checks the masked CRC-32C
     of every length and every payload, and parses each one as tensorboard.compat.proto's
     Event; the first must carry file_version "brain.Event:2";
  2. loads both run folders with EventAccumulator, as `tensorboard --logdir` does, and
     compares the scalars with metrics.jsonl (rounded to float32, as summaries store them)
     and with the known values.

Exits 77 (ctest's SKIP_RETURN_CODE) when tensorboard is not importable: CI does not install
it. pip install tensorboard to run the check.
"""
import json
import os
import struct
import subprocess
import sys

from interop_common import parse_args, run_helper, skipped


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def read_records(path):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    reader = pywrap_tensorflow.PyRecordReader_New(path, 0, None, None)
    events = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            break
        events.append(event_pb2.Event.FromString(reader.record()))
    check(events, f"{path}: no records")
    check(events[0].file_version == "brain.Event:2",
          f"{path}: first event's file_version is {events[0].file_version!r}")
    return events


def accumulate(run_dir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return acc, {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def main() -> int:
    exe, work = parse_args(__doc__)
    try:
        import tensorboard
        from tensorboard.backend.event_processing import event_accumulator  # noqa: F401
        from tensorboard.compat.proto import event_pb2  # noqa: F401
    except ImportError as e:
        return skipped("tensorboard", e, "tensorboard")

    out = run_helper(exe, work, capture=True).split()
    logger_file, known_file = out[0], out[1]

    # 1. Every record through TensorBoard's CRC-checking reader and its Event proto.
    logger_events = read_records(logger_file)
    known_events = read_records(known_file)
    check(len(logger_events) == 1 + 30, f"logger file: {len(logger_events)} events, expected 31")
    check(len(known_events) == 1 + 20 + 1, f"known file: {len(known_events)} events, expected 22")
    check(logger_events[1].step == 1 and logger_events[1].summary.value[0].tag == "train/loss",
          "logger file: the second event is not step 1's train/loss")

    # 2. The scalars as TensorBoard's UI would load them.
    _, scalars = accumulate(os.path.join(work, "logger"))
    with open(os.path.join(work, "logger", "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    check(len(lines) == 30, f"metrics.jsonl has {len(lines)} lines")
    expected_tags = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
                     "train/loss_scale": "loss_scale", "perf/tokens_per_s": "tokens_per_s",
                     "perf/gflops": "gflops", "perf/mfu": "mfu", "perf/step_ms": "ms",
                     "memory/params_bytes": "mem_params", "memory/total_bytes": "mem_total",
                     "val/loss": "val_loss"}
    for tag, key in expected_tags.items():
        check(tag in scalars, f"tag {tag} missing; TensorBoard saw {sorted(scalars)}")
        want = {line["step"]: f32(line[key]) for line in lines if key in line}
        check(scalars[tag] == want,
              f"{tag}: TensorBoard read {scalars[tag]}, metrics.jsonl says {want}")
    check(sorted(scalars["val/loss"]) == [10, 20, 30],
          f"val/loss steps {sorted(scalars['val/loss'])}")

    acc, known = accumulate(os.path.join(work, "known"))
    check(known["check/linear"] == {s: f32(0.25 * s - 1.0) for s in range(20)},
          f"check/linear: {known['check/linear']}")
    check(known["check/a"] == {7: 1.5} and known["check/b"] == {7: -2.5},
          f"check/a, check/b: {known['check/a']}, {known['check/b']}")
    walls = [e.wall_time for e in acc.Scalars("check/linear")]
    check(walls == [1.7e9 + s for s in range(20)], f"wall times {walls}")

    n = sum(len(v) for v in scalars.values()) + sum(len(v) for v in known.values())
    records = len(logger_events) + len(known_events)
    print(f"ok: tensorboard {tensorboard.__version__} read {records} records "
          f"(every CRC checked) and {n} scalars, all as written")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AssertionError, subprocess.CalledProcessError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
